"""resources.yaml content: which resources each service links to, and how it reads them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from machines.architecture import Architecture, load_architecture
from machines.hydration import hydrate
from machines.resources import lookup_map, render_resources_yaml, resources_for_service
from tests.architectures import RICH


def names(resources: dict[str, Any], kind: str) -> list[str]:
    return [item["name"] for item in resources.get(kind, [])]


def test_testdata_publisher(demo: Architecture) -> None:
    assert resources_for_service(demo, "publisher") == {
        "topics": [
            {
                "name": "tracer-topic",
                "producer_service": {
                    "name": "publisher",
                    "lookup": {"key": "tracer-topic-id", "method": "yaml"},
                },
            }
        ]
    }


def test_testdata_subscriber_gets_the_subscription_only(demo: Architecture) -> None:
    assert resources_for_service(demo, "subscriber") == {
        "subscriptions": [
            {
                "name": "tracer-sub",
                "topic": "tracer-topic",
                "ack_deadline_seconds": 20,
                "consumer_service": {
                    "name": "subscriber",
                    "lookup": {"key": "tracer-subscription-id", "method": "yaml"},
                },
            }
        ]
    }


def test_director_gets_completion_topic_and_command_subscription(demo: Architecture) -> None:
    res = resources_for_service(demo, "director")
    assert names(res, "topics") == ["director-completions"]  # not the command topic
    assert names(res, "subscriptions") == ["director-commands-sub"]
    assert lookup_map(res) == {
        "completion-topic-id": "director-completions",
        "command-subscription-id": "director-commands-sub",
    }


def test_hydrated_or_not_gives_the_same(demo: Architecture) -> None:
    for service in ("director", "publisher", "subscriber"):
        assert resources_for_service(demo, service) == resources_for_service(hydrate(demo), service)


def test_yaml_and_empty_methods_only(rich: Architecture) -> None:
    res = resources_for_service(rich, "writer")
    assert names(res, "topics") == ["a-events", "z-events"]  # sorted; env and db left out
    assert "subscriptions" not in res


def test_resource_io_and_datasets(rich: Architecture) -> None:
    res = resources_for_service(rich, "writer")
    assert names(res, "gcs_buckets") == ["rich-archive"]
    assert names(res, "bigquery_tables") == ["alpha", "facts"]  # env-only table left out
    assert res["bigquery_datasets"] == [
        {"name": "warehouse", "location": "US", "description": "facts"}
    ]
    assert names(res, "firestore_databases") == ["state"]
    assert "firestore_collections" not in res
    assert "cloud_scheduler_jobs" not in res
    reader = resources_for_service(rich, "reader")
    assert names(reader, "gcs_buckets") == ["rich-archive"]
    assert names(reader, "firestore_collections") == ["sessions"]
    assert names(reader, "subscriptions") == ["a-events-sub"]
    assert "cloud_scheduler_jobs" not in reader  # even as a scheduler's target


def test_cross_dataflow_link(rich: Architecture) -> None:
    assert names(resources_for_service(rich, "reporter"), "subscriptions") == ["z-events-sub"]


def test_no_empty_fields(rich: Architecture) -> None:
    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                assert v not in (None, "", [], {}, False)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for service in ("sd", "writer", "reader", "reporter"):
        walk(resources_for_service(rich, service))


def test_unknown_service(rich: Architecture) -> None:
    with pytest.raises(KeyError):
        resources_for_service(rich, "nobody")


def test_lookup_map_maps_keys_to_resource_names(rich: Architecture) -> None:
    writer = resources_for_service(rich, "writer")
    assert lookup_map(writer, "writer") == {
        "a-topic": "a-events",
        "z-topic": "z-events",
        "facts-table": "facts",
        "alpha-table": "alpha",
        "archive-bucket": "rich-archive",  # the bucket, not the service (the anchor's bug)
        "state-db": "state",
    }
    # without a service filter, other services' links on the same objects count too
    assert lookup_map(writer)["archive-read"] == "rich-archive"
    assert lookup_map(resources_for_service(rich, "reader"), "reader") == {
        "a-sub": "a-events-sub",
        "archive-read": "rich-archive",
        "sessions-coll": "sessions",
    }


def test_lookup_map_reads_a_rendered_file(demo: Architecture) -> None:
    text = render_resources_yaml(resources_for_service(demo, "publisher"))
    assert lookup_map(yaml.safe_load(text)) == {"tracer-topic-id": "tracer-topic"}
    assert lookup_map({}) == {}


def test_render_is_stable(rich: Architecture) -> None:
    for service in ("sd", "writer", "reader", "reporter"):
        res = resources_for_service(rich, service)
        text = render_resources_yaml(res)
        assert text == render_resources_yaml(
            resources_for_service(load_architecture(RICH), service)
        )
        assert yaml.safe_load(text) == res


def test_render_format(demo: Architecture) -> None:
    assert render_resources_yaml(resources_for_service(demo, "publisher")) == (
        "topics:\n"
        "- name: tracer-topic\n"
        "  producer_service:\n"
        "    lookup:\n"
        "      key: tracer-topic-id\n"
        "      method: yaml\n"
        "    name: publisher\n"
    )
    assert render_resources_yaml({}) == "{}\n"
