"""Architectures the unit tests share: the demo file (``TESTDATA``) and one rich architecture.

``RICH`` exercises every resource kind and every link the hydration, resources.yaml and IAM code
handles. Each part is there for a test; keep them when editing (and adapt those tests):

* ``project_id: rich-project``, ``region: us-central1``, ``location: EU``: the defaults hydration
  fills in (region of a service without one, location of a dataset it creates).
* the director ``sd``: its command topic uses an ``env`` lookup (copied to its subscription), its
  completion topic has no key (defaults to ``completion-topic-id``).
* dataflow ``ingest`` (lifecycle ``ephemeral``):

  * ``writer``: explicit ``image_repo`` and ``environment_vars`` (one overridden by hydration),
    a secret env var (``api-key``), default region/cpu/memory, ``dependencies: [reader, sd]``
    (an invoker on an app service, deferred until it is deployed, and one on the director);
  * ``reader``: an account in *another* project, its own region (``europe-west4``), cpu/memory;
  * topics with every lookup method: ``z-events`` (empty), ``a-events`` (yaml), ``events.v1``
    (env, a ``.`` in the name, an ``iam_access_policy``), ``audit`` (env with a key),
    ``db-events`` (db);
  * subscriptions ``a-events-sub`` (reader, empty method) and ``events-sub`` (reader, env);
  * buckets ``rich-archive`` (writer yaml, reader empty method) and ``rich-exports`` (reader env);
  * dataset ``warehouse`` declared (location US); tables ``facts`` (writer yaml, reader env with
    a key), ``alpha`` (read by the writer), ``env-only`` (writer env) in the *undeclared* dataset
    ``other``, which hydration creates (location EU);
  * Firestore database ``state`` (writer) and collection ``sessions``: written by the writer
    (env) and the reader (yaml), read by the reader (env);
  * scheduler job ``nightly`` targeting the reader (no account: hydration names it).
* dataflow ``report``: ``reporter``, with links across dataflows (subscriptions to ingest's
  topics, empty method and env) and a table in ``other`` (created once, in ``ingest``).

A test that needs something else says so where it is used: ``rich_architecture(project_id=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from machines.architecture import Architecture, load_architecture

__all__ = ["RICH", "TESTDATA", "rich_architecture", "rich_yaml"]

TESTDATA = Path(__file__).resolve().parents[1] / "testdata" / "architecture.yaml"

RICH = """
name: rich
project_id: rich-project
region: us-central1
location: EU
service_manager_spec:
  name: sd
  service_account: sd-account
  deployment: {source_path: src, buildable_module_path: sd}
  command_topic: {name: sd-commands, lookup: {key: command-topic-id, method: env}}
  completion_topic: {name: sd-completions, lookup: {method: yaml}}
dataflows:
  ingest:
    services:
      writer:
        service_account: writer-account
        deployment:
          source_path: src
          buildable_module_path: writer
          image_repo: custom
          environment_vars: {PROJECT_ID: overridden, KEEP: me}
          secret_environment_vars: [{name: API_KEY, value_from: api-key}]
        dependencies: [reader, sd]
      reader:
        service_account: reader-account@other-project.iam.gserviceaccount.com
        deployment:
          source_path: src
          buildable_module_path: reader
          region: europe-west4
          cpu: "2"
          memory: 1Gi
    resources:
      topics:
        - name: z-events
          producer_service: {name: writer, lookup: {key: z-topic}}
        - name: a-events
          producer_service: {name: writer, lookup: {key: a-topic, method: yaml}}
        - name: events.v1
          producer_service: {name: writer, lookup: {method: env}}
          iam_access_policy:
            - {name: reader, role: roles/pubsub.viewer}
            - {name: auditor-account, role: roles/pubsub.subscriber, type: service-account}
        - name: audit
          producer_service: {name: writer, lookup: {key: AUDIT, method: env}}
        - name: db-events
          producer_service: {name: writer, lookup: {key: db-topic, method: db}}
      subscriptions:
        - name: a-events-sub
          topic: a-events
          consumer_service: {name: reader, lookup: {key: a-sub}}
        - name: events-sub
          topic: events.v1
          consumer_service: {name: reader, lookup: {method: env}}
      gcs_buckets:
        - name: rich-archive
          storage_class: STANDARD
          producers: [{name: writer, lookup: {key: archive-bucket, method: yaml}}]
          consumers: [{name: reader, lookup: {key: archive-read}}]
        - name: rich-exports
          consumers: [{name: reader, lookup: {method: env}}]
      bigquery_datasets:
        - {name: warehouse, location: US, description: facts}
      bigquery_tables:
        - name: facts
          dataset: warehouse
          producers: [{name: writer, lookup: {key: facts-table}}]
          consumers: [{name: reader, lookup: {key: FACTS, method: env}}]
        - name: alpha
          dataset: warehouse
          consumers: [{name: writer, lookup: {key: alpha-table}}]
        - name: env-only
          dataset: other
          producers: [{name: writer, lookup: {method: env}}]
      firestore_databases:
        - name: state
          producers: [{name: writer, lookup: {key: state-db}}]
      firestore_collections:
        - name: sessions
          database: state
          producers:
            - {name: writer, lookup: {method: env}}
            - {name: reader, lookup: {key: sessions-coll}}
          consumers: [{name: reader, lookup: {method: env}}]
      cloud_scheduler_jobs:
        - {name: nightly, schedule: "0 3 * * *", target_service: reader}
    lifecycle: {strategy: ephemeral}
  report:
    services:
      reporter:
        service_account: reporter-account
        deployment: {source_path: src, buildable_module_path: reporter}
    resources:
      subscriptions:
        - name: z-events-sub
          topic: z-events
          consumer_service: {name: reporter, lookup: {key: z-sub}}
        - name: audit-sub
          topic: audit
          consumer_service: {name: reporter, lookup: {key: AUDIT_SUB, method: env}}
      bigquery_tables:
        - name: summary
          dataset: other
"""


def rich_yaml(**changes: Any) -> str:
    """``RICH`` with ``changes`` applied, as YAML text (``RICH`` itself when there are none).

    Each keyword is a path into the document, ``__`` between the levels, set to its value:
    ``rich_yaml(project_id="p", dataflows__ingest__resources__bigquery_tables=[])``.
    """
    if not changes:
        return RICH
    data = yaml.safe_load(RICH)
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = data
        for part in parents:
            node = node[part]  # a KeyError here is a typo in the test's path
        node[last] = value
    return yaml.safe_dump(data, sort_keys=False)


def rich_architecture(**changes: Any) -> Architecture:
    """``RICH`` with ``changes`` (see ``rich_yaml``), loaded and validated."""
    return load_architecture(rich_yaml(**changes))
