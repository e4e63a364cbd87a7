"""Cloud Run packaging (deploy/): what can be checked without Docker or a Google project.

* deploy/Dockerfile, read by a small parser: stages, what is copied, the user, the entrypoint.
* The entrypoint itself: the installed ``podium`` console script and ``PORT`` in the settings.
* deploy/service.yaml and deploy/service-push.yaml: the documented Cloud Run settings.
* deploy/setup.sh: ``bash -n`` (and shellcheck when installed), and runs against a fake
  ``gcloud`` that records every call: exactly the topics and subscriptions daemon/config.py
  names, with the policies daemon/pubsub.py gives them, describe before create, idempotent.
* deploy/firestore.indexes.json against the Firestore queries in the source: every query on two
  or more fields has its composite index and every index serves a query, so a new query
  without an index fails here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import Settings
from machines.architecture import Architecture
from machines.iam_grants import PROJECT_ROLES
from machines.iam_plan import plan_iam

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
SETUP = DEPLOY / "setup.sh"
INDEXES = DEPLOY / "firestore.indexes.json"
SPECS = {"pull": DEPLOY / "service.yaml", "push": DEPLOY / "service-push.yaml"}
SOURCE_DIRS = ("daemon", "cli", "devtools", "machines", "handlers")

DEFAULTS = Settings(project="podium-local")
GCP = DEFAULTS.model_copy(update={"backend": "gcp"})  # what the image runs (PODIUM_BACKEND=gcp)
DAEMON_SUBSCRIPTIONS = (
    GCP.commands_subscription, GCP.events_subscription, GCP.dead_letter_subscription, GCP.cloud_builds_subscription,
)
RUNS_COLLECTION = str(Settings.model_fields["collection"].default)
DAEMON_SA = "podium-daemon@PROJECT_ID.iam.gserviceaccount.com"
PUSH_SA = "podium-push@PROJECT_ID.iam.gserviceaccount.com"
APIS = {
    f"{name}.googleapis.com"
    for name in ("run", "pubsub", "firestore", "iam", "cloudresourcemanager", "cloudbuild",
                 "artifactregistry", "secretmanager", "storage")
}


# ==== Dockerfile ===================================================================================
KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


@dataclass
class Instruction:
    name: str
    args: str
    line: int
    stage: int  # index of the FROM it belongs to (-1 before the first FROM)

    def exec_form(self) -> list[str] | None:
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (Dockerfile semantics:
    a comment line inside a continued instruction is removed, not ending it)."""
    out: list[Instruction] = []
    stage = -1
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        pending = []
        name, _, args = joined.partition(" ")
        name = name.upper()
        if name == "FROM":
            stage += 1
        out.append(Instruction(name, args.strip(), start, stage))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) == 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: words[1]}
    return dict(w.split("=", 1) for w in words)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_dockerfile_instructions_are_known_and_start_with_from(dockerfile: list[Instruction]) -> None:
    unknown = [(i.line, i.name) for i in dockerfile if i.name not in KNOWN_INSTRUCTIONS]
    assert not unknown, f"unknown Dockerfile instructions: {unknown}"
    first = next(i for i in dockerfile if i.name != "ARG")
    assert first.name == "FROM"


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: list[Instruction]) -> None:
    froms = [i.args.split() for i in dockerfile if i.name == "FROM"]
    assert len(froms) >= 2, "builder + runtime stages"
    assert all(f[0] == "python:3.11-slim" for f in froms), froms
    builder = froms[0]
    assert len(builder) == 3 and builder[1].upper() == "AS", "the builder stage is named"
    final_stage = len(froms) - 1
    copies_from_builder = [
        i for i in dockerfile
        if i.stage == final_stage and i.name == "COPY" and f"--from={builder[2]}" in i.args.split()
    ]
    assert [c.args.split()[1:] for c in copies_from_builder] == [["/opt/venv", "/opt/venv"]]


def test_dockerfile_builder_installs_the_gcp_and_preflight_extras_into_a_venv(dockerfile: list[Instruction]) -> None:
    runs = " ".join(i.args for i in dockerfile if i.stage == 0 and i.name == "RUN")
    assert "python -m venv /opt/venv" in runs
    # preflight runs the services' tests with pytest inside the daemon's image
    assert re.search(r"pip install (\S+ )*\"?\.\[gcp,preflight\]\"?", runs), runs
    paths = [i.args for i in dockerfile if i.stage == 0 and i.name == "ENV"]
    assert any("PATH=/opt/venv/bin:" in p for p in paths)


def test_dockerfile_copies_only_what_runs(dockerfile: list[Instruction]) -> None:
    assert not [i for i in dockerfile if i.name == "ADD"], "COPY, never ADD"
    allowed = {"pyproject.toml", "README.md", "README.md*", "daemon/", "cli/", "devtools/", "machines/", "handlers/"}
    copied: set[str] = set()
    for i in dockerfile:
        if i.name != "COPY":
            continue
        words = [w for w in i.args.split() if not w.startswith("--")]
        if any(w.startswith("--from=") for w in i.args.split()):
            continue
        copied.update(words[:-1])
    assert copied <= allowed, f"copied beyond what runs: {sorted(copied - allowed)}"
    assert {"pyproject.toml", "daemon/", "cli/", "devtools/", "machines/", "handlers/"} <= copied
    forbidden = ("tests", "testdata", "bench", ".venv", ".podium", ".git")
    assert not [c for c in copied if c.strip("./").split("/")[0] in forbidden]


def test_dockerfile_runs_as_uid_10001_after_every_install(dockerfile: list[Instruction]) -> None:
    final_stage = max(i.stage for i in dockerfile)
    final = [i for i in dockerfile if i.stage == final_stage]
    users = [i for i in final if i.name == "USER"]
    assert len(users) == 1, "exactly one USER in the runtime stage"
    user = users[0].args.split(":")[0]
    if not user.isdigit():  # a name: find its uid in the useradd line
        match = re.search(rf"useradd\b.*--uid (\d+)\b.*\b{re.escape(user)}\b", " ".join(i.args for i in final))
        assert match, f"no useradd for {user}"
        user = match.group(1)
    assert user == "10001"
    user_at = final.index(users[0])
    late = [(i.line, i.name) for i in final[user_at:] if i.name in ("RUN", "COPY", "ADD")]
    assert not late, f"installs after USER run as the runtime user: {late}"
    created = " ".join(i.args for i in final if i.name == "RUN")
    assert re.search(r"useradd\b.*--uid 10001\b", created), "the runtime user exists in /etc/passwd"


def test_dockerfile_environment_and_port(dockerfile: list[Instruction]) -> None:
    final_stage = max(i.stage for i in dockerfile)
    env: dict[str, str] = {}
    for i in dockerfile:
        if i.stage == final_stage and i.name == "ENV":
            env.update(env_pairs(i.args))
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PODIUM_BACKEND"] == "gcp"
    assert env["PODIUM_LOG_FORMAT"] == "json"
    # The daemon binds loopback unless told otherwise; in the container Cloud Run connects from outside.
    assert DEFAULTS.host == "127.0.0.1"
    assert env["PODIUM_HOST"] == "0.0.0.0"
    # Cloud Run injects PORT; the image must not pin it (or PODIUM_PORT) to another value.
    for name in ("PORT", "PODIUM_PORT"):
        assert env.get(name, str(DEFAULTS.port)) == str(DEFAULTS.port)
    exposed = [i.args.split() for i in dockerfile if i.stage == final_stage and i.name == "EXPOSE"]
    assert exposed == [[str(DEFAULTS.port)]] == [["8080"]]


def test_dockerfile_entrypoint_is_podium_serve(dockerfile: list[Instruction]) -> None:
    final_stage = max(i.stage for i in dockerfile)
    entry = [i for i in dockerfile if i.stage == final_stage and i.name == "ENTRYPOINT"]
    cmd = [i for i in dockerfile if i.stage == final_stage and i.name == "CMD"]
    assert len(entry) == 1 and len(cmd) == 1
    # Exec form, so `podium` is PID 1 and gets Cloud Run's SIGTERM itself.
    assert entry[0].exec_form() == ["podium"]
    assert cmd[0].exec_form() == ["serve"]
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["podium"] == "cli.main:main"


def test_dockerignore_keeps_the_context_small() -> None:
    patterns = {
        line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", ".git", "tests", "bench", ".podium", "testdata", "**/__pycache__",
                   ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, needed
    for kept in ("daemon", "cli", "devtools", "machines", "handlers", "pyproject.toml", "README.md"):
        assert kept not in patterns


def test_parser_sees_continuations_and_comments() -> None:
    text = "# c\nFROM python:3.11-slim AS b\nRUN a \\\n    # inside\n    && b\nENV A=1 \\\n    B=\"two words\"\n"
    parsed = parse_dockerfile(text)
    assert [(i.name, i.args) for i in parsed] == [
        ("FROM", "python:3.11-slim AS b"), ("RUN", "a && b"), ("ENV", 'A=1 B="two words"'),
    ]
    assert env_pairs(parsed[2].args) == {"A": "1", "B": "two words"}


# ==== the entrypoint ===============================================================================
def test_installed_console_script_runs_podium_serve_help() -> None:
    script = Path(sys.executable).parent / "podium"
    assert script.exists(), f"console script not installed next to {sys.executable}"
    result = subprocess.run([str(script), "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: podium serve" in result.stdout


def test_settings_honour_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIUM_PORT", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert Settings().port == 8080
    monkeypatch.setenv("PORT", "9090")
    assert Settings().port == 9090
    monkeypatch.delenv("PORT")
    monkeypatch.setenv("PODIUM_PORT", "9191")
    assert Settings().port == 9191


# ==== service specs ===============================================================================
def load_spec(mode: str) -> dict[str, Any]:
    spec = yaml.safe_load(SPECS[mode].read_text(encoding="utf-8"))
    assert isinstance(spec, dict)
    return spec


def container(spec: dict[str, Any]) -> dict[str, Any]:
    containers = spec["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(spec).get("env", [])}


def setting_for(env_name: str) -> str | None:
    """The Settings field an environment variable sets, or None."""
    for name, info in Settings.model_fields.items():
        aliases = getattr(info.validation_alias, "choices", None)
        if aliases is not None:
            if env_name in aliases:
                return name
        elif env_name == f"PODIUM_{name.upper()}":
            return name
    return None


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_service_spec_common(mode: str) -> None:
    spec = load_spec(mode)
    assert spec["apiVersion"] == "serving.knative.dev/v1" and spec["kind"] == "Service"
    assert spec["metadata"]["name"] == "podium-daemon"
    assert spec["metadata"]["labels"]["cloud.googleapis.com/location"] == "REGION"
    template = spec["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "1"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    run_spec = template["spec"]
    assert run_spec["serviceAccountName"] == DAEMON_SA
    assert isinstance(run_spec["containerConcurrency"], int) and run_spec["containerConcurrency"] > 0
    # A push is acked by a 2xx within the ack deadline: a longer request is useless.
    assert run_spec["timeoutSeconds"] == DEFAULTS.ack_deadline_seconds
    # Cloud Run fixes the grace period (SIGKILL 10 s after SIGTERM): nothing to set, only noted.
    assert "terminationGracePeriodSeconds" not in run_spec
    assert "10 s" in SPECS[mode].read_text(encoding="utf-8")
    c = container(spec)
    assert c["image"] == "IMAGE"
    assert c.get("args", ["serve"]) == ["serve"]
    assert [p["containerPort"] for p in c["ports"]] == [DEFAULTS.port]
    for probe in ("startupProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get.get("port", DEFAULTS.port) == DEFAULTS.port
        assert c[probe].get("timeoutSeconds", 1) <= c[probe].get("periodSeconds", 10)
    env = env_of(spec)
    assert "PORT" not in env, "PORT is reserved: Cloud Run sets it"
    # DESIGN.md section 3 settings that differ from their defaults.
    assert env["PODIUM_PROJECT"] == "PROJECT_ID"
    assert env["PODIUM_BACKEND"] == "gcp"
    assert env["PODIUM_HOST"] == "0.0.0.0", "Cloud Run connects from outside the container"
    unknown = [name for name in env if setting_for(name) is None]
    assert not unknown, f"env vars that no setting reads: {unknown}"


def test_pull_spec_is_internal() -> None:
    spec = load_spec("pull")
    assert spec["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"
    env = env_of(spec)
    assert "PODIUM_PUSH_AUDIENCE" not in env
    assert env.get("PODIUM_DELIVERY", DEFAULTS.delivery) == "pull"


def test_push_spec_has_the_push_identity() -> None:
    spec = load_spec("push")
    env = env_of(spec)
    assert env["PODIUM_DELIVERY"] == "push", "no streaming pull on push subscriptions"
    assert env["PODIUM_PUSH_SERVICE_ACCOUNT"] == PUSH_SA
    audience = env["PODIUM_PUSH_AUDIENCE"]
    assert json.loads(spec["metadata"]["annotations"]["run.googleapis.com/custom-audiences"]) == [audience]
    # setup.sh gives Pub/Sub the same audience.
    assert 'PUSH_AUDIENCE="podium-push.${PROJECT_ID}"' in SETUP.read_text(encoding="utf-8")
    assert audience == "podium-push.PROJECT_ID"


# ==== setup.sh ====================================================================================
def test_setup_sh_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(SETUP, os.X_OK), "setup.sh is executable"
    text = SETUP.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_setup_sh_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(SETUP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def shell_var(text: str, name: str) -> str:
    match = re.search(rf'^{name}="?([^"\n]*)"?$', text, re.M)
    assert match, f"{name} not set in setup.sh"
    value = match.group(1)
    return re.sub(r"\$\{(\w+)\}", lambda m: shell_var(text, m.group(1)), value)


def test_setup_sh_names_are_the_settings_names() -> None:
    text = SETUP.read_text(encoding="utf-8")
    assert shell_var(text, "COMMANDS_TOPIC") == DEFAULTS.commands_topic
    assert shell_var(text, "EVENTS_TOPIC") == DEFAULTS.events_topic
    assert shell_var(text, "DEAD_LETTER_TOPIC") == DEFAULTS.dead_letter_topic
    assert shell_var(text, "COMMANDS_SUBSCRIPTION") == DEFAULTS.commands_subscription == "podium-commands-podium"
    assert shell_var(text, "EVENTS_SUBSCRIPTION") == DEFAULTS.events_subscription == "podium-events-podium"
    assert shell_var(text, "DEAD_LETTER_SUBSCRIPTION") == DEFAULTS.dead_letter_subscription
    assert shell_var(text, "CLOUD_BUILDS_TOPIC") == DEFAULTS.cloud_builds_topic
    assert shell_var(text, "CLOUD_BUILDS_SUBSCRIPTION") == DEFAULTS.cloud_builds_subscription
    assert int(shell_var(text, "MAX_DELIVERY_ATTEMPTS")) == DEFAULTS.max_delivery_attempts
    assert int(shell_var(text, "ACK_DEADLINE")) == DEFAULTS.ack_deadline_seconds


def test_setup_sh_gives_a_reason_for_every_role() -> None:
    lines = SETUP.read_text(encoding="utf-8").splitlines()
    grants = [n for n, line in enumerate(lines) if line.strip().startswith("grant_project ")]
    assert len(grants) >= 8
    for n in grants:
        assert lines[n - 1].strip().startswith("# "), f"no reason comment above: {lines[n].strip()}"
    roles = {lines[n].split()[-1] for n in grants}
    assert {
        "roles/datastore.user", "roles/iam.serviceAccountAdmin", "roles/run.admin",
        "roles/cloudbuild.builds.editor", "roles/artifactregistry.writer",
    } <= roles
    assert roles & {"roles/pubsub.editor", "roles/pubsub.admin"}
    assert "roles/owner" not in roles and "roles/editor" not in roles


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Records each call (arguments separated by \x1f) and answers like a project that is empty
# (FAKE_EXISTS=0: every describe fails) or already set up (FAKE_EXISTS=1).
{ printf '%s\x1f' "$@"; printf '\n'; } >> "$FAKE_DIR/calls"
for arg in "$@"; do  # a condition file is gone once setup.sh exits: keep what it said
  [[ "$arg" == --condition-from-file=* ]] && cat "${arg#*=}" >> "$FAKE_DIR/conditions"
done
args=" $* "
case "$args" in
  *" projects describe "*) echo 123456789012; exit 0;;
  *" run services describe "*"status.url"*) echo "https://podium-daemon-abc-ew.a.run.app"; exit 0;;
  *" builds submit "*)
    (cd "$3" && find . -mindepth 1 -maxdepth 1 | sort) > "$FAKE_DIR/context"
    find "$3" -name __pycache__ > "$FAKE_DIR/pycache"
    exit 0;;
  *" run services replace "*) cp "$4" "$FAKE_DIR/replaced.yaml"; exit 0;;
esac
if [[ "${FAKE_EXISTS:-0}" == 1 ]]; then
  case "$args" in
    *enableMessageOrdering*) echo True; exit 0;;
    *pushConfig.pushEndpoint*) echo ""; exit 0;;
    *" indexes composite create "*)
      echo "ERROR: (gcloud.firestore.indexes.composite.create) ALREADY_EXISTS: index already exists" >&2
      exit 1;;
  esac
  exit 0
fi
case "$args" in
  *" describe "*) exit 1;;
esac
exit 0
"""


@dataclass
class SetupRun:
    returncode: int
    stderr: str
    calls: list[list[str]]
    dir: Path

    def named(self, *prefix: str) -> list[list[str]]:
        return [c for c in self.calls if c[: len(prefix)] == list(prefix)]

    def rendered(self) -> dict[str, Any]:
        return yaml.safe_load((self.dir / "replaced.yaml").read_text(encoding="utf-8"))


def flags(call: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in call:
        if word.startswith("--"):
            key, _, value = word.partition("=")
            out[key] = value
    return out


def run_setup(tmp_path: Path, *args: str, exists: bool = False, env: dict[str, str] | None = None) -> SetupRun:
    fake_dir = tmp_path / ("fake-existing" if exists else "fake-empty")
    bin_dir = fake_dir / "bin"
    bin_dir.mkdir(parents=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD, encoding="utf-8")
    gcloud.chmod(0o755)
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_DIR": str(fake_dir),
        "FAKE_EXISTS": "1" if exists else "0",
        "IMAGE": "europe-west1-docker.pkg.dev/demo-proj/podium/podium:test",
        **(env or {}),
    }
    result = subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, env=environ,
                            cwd=tmp_path, timeout=120)
    calls_file = fake_dir / "calls"
    calls = [
        line.split("\x1f")[:-1] for line in calls_file.read_text(encoding="utf-8").splitlines()
    ] if calls_file.exists() else []
    return SetupRun(result.returncode, result.stderr, calls, fake_dir)


@pytest.fixture(scope="module")
def pull_run(tmp_path_factory: pytest.TempPathFactory) -> SetupRun:
    run = run_setup(tmp_path_factory.mktemp("pull"), "demo-proj")
    assert run.returncode == 0, run.stderr
    return run


@pytest.fixture(scope="module")
def push_run(tmp_path_factory: pytest.TempPathFactory) -> SetupRun:
    run = run_setup(tmp_path_factory.mktemp("push"), "demo-proj", "us-central1", "push")
    assert run.returncode == 0, run.stderr
    return run


def test_setup_every_call_targets_the_project_quietly(pull_run: SetupRun) -> None:
    assert pull_run.calls
    for call in pull_run.calls:
        assert "--project=demo-proj" in call and "--quiet" in call, call


def test_setup_enables_the_apis(pull_run: SetupRun) -> None:
    enabled = pull_run.named("services", "enable")
    assert len(enabled) == 1
    assert {w for w in enabled[0][2:] if not w.startswith("--")} == APIS


def test_setup_creates_exactly_the_daemons_pubsub_names(pull_run: SetupRun) -> None:
    topics = {c[3] for c in pull_run.named("pubsub", "topics", "create")}
    assert topics == {GCP.commands_topic, GCP.events_topic, GCP.dead_letter_topic, GCP.cloud_builds_topic}
    subs = {c[3]: flags(c) for c in pull_run.named("pubsub", "subscriptions", "create")}
    assert set(subs) == set(DAEMON_SUBSCRIPTIONS)
    assert subs["cloud-builds-podium"]["--topic"] == "cloud-builds"
    for sub in subs.values():
        assert "--push-endpoint" not in sub, "pull mode"


def daemon_subscription_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """What daemon/pubsub.py ensure_daemon_plumbing asks Pub/Sub for in gcp mode, clients faked."""
    import daemon.pubsub as pubsub

    requests: dict[str, dict[str, Any]] = {}

    class FakePublisher:
        def create_topic(self, request: dict[str, Any]) -> None:
            pass

    class FakeSubscriber:
        def create_subscription(self, request: dict[str, Any]) -> None:
            requests[request["name"].rsplit("/", 1)[-1]] = request

        def close(self) -> None:
            pass

    monkeypatch.setattr(pubsub.pubsub_v1, "PublisherClient", FakePublisher)
    monkeypatch.setattr(pubsub.pubsub_v1, "SubscriberClient", FakeSubscriber)
    pubsub.ensure_daemon_plumbing(GCP)
    return requests


def seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return int(match.group(1))


def test_setup_subscriptions_match_the_daemons_own(pull_run: SetupRun, monkeypatch: pytest.MonkeyPatch) -> None:
    wanted = daemon_subscription_requests(monkeypatch)
    made = {c[3]: flags(c) for c in pull_run.named("pubsub", "subscriptions", "create")}
    assert set(wanted) == set(made) == set(DAEMON_SUBSCRIPTIONS)
    for name, request in wanted.items():
        got = made[name]
        assert got["--topic"] == request["topic"].rsplit("/", 1)[-1], name
        assert int(got["--ack-deadline"]) == request["ack_deadline_seconds"], name
        assert ("--enable-message-ordering" in got) == request["enable_message_ordering"], name
        assert seconds(got["--min-retry-delay"]) == request["retry_policy"]["minimum_backoff"].seconds
        assert seconds(got["--max-retry-delay"]) == request["retry_policy"]["maximum_backoff"].seconds
        policy = request.get("dead_letter_policy")
        if policy:
            assert got["--dead-letter-topic"] == policy["dead_letter_topic"].rsplit("/", 1)[-1], name
            assert int(got["--max-delivery-attempts"]) == policy["max_delivery_attempts"], name
        else:
            assert "--dead-letter-topic" not in got, name
    assert "--enable-message-ordering" not in made[DEFAULTS.events_subscription]  # Settings.events_ordering off


def test_setup_grants_the_pubsub_agent_its_dead_letter_rights(pull_run: SetupRun) -> None:
    agent = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
    topic = [(c[3], flags(c)) for c in pull_run.named("pubsub", "topics", "add-iam-policy-binding")]
    assert topic == [(DEFAULTS.dead_letter_topic, {"--member": agent, "--role": "roles/pubsub.publisher",
                                                   "--project": "demo-proj", "--quiet": ""})]
    subs = {c[3]: flags(c) for c in pull_run.named("pubsub", "subscriptions", "add-iam-policy-binding")}
    # Every subscription with a dead-letter policy.
    assert set(subs) == {GCP.commands_subscription, GCP.events_subscription, GCP.cloud_builds_subscription}
    assert all(f["--member"] == agent and f["--role"] == "roles/pubsub.subscriber" for f in subs.values())


def test_setup_describes_before_it_creates(pull_run: SetupRun) -> None:
    tolerant = {("services",), ("beta", "services", "identity"), ("firestore", "indexes", "composite")}
    for n, call in enumerate(pull_run.calls):
        if "create" not in call:
            continue
        k = call.index("create")
        group = tuple(call[:k])
        if group in tolerant:
            continue
        target = call[k + 1] if k + 1 < len(call) and not call[k + 1].startswith("--") else None
        earlier = [c for c in pull_run.calls[:n] if tuple(c[:k]) == group and c[k] == "describe"]
        assert earlier, f"create without describe: {call}"
        if target is not None and group != ("iam", "service-accounts"):
            assert any(target in c for c in earlier), f"create without describe: {call}"
    account_checks = pull_run.named("iam", "service-accounts", "describe")
    assert account_checks[0][3] == "podium-daemon@demo-proj.iam.gserviceaccount.com"


def test_setup_firestore_database_and_indexes(pull_run: SetupRun) -> None:
    created = pull_run.named("firestore", "databases", "create")
    assert len(created) == 1
    f = flags(created[0])
    assert f["--type"] == "firestore-native" and f["--location"] == "europe-west1"
    scopes = {"COLLECTION": "collection", "COLLECTION_GROUP": "collection-group"}
    wanted = [
        (ix["collectionGroup"], scopes[ix["queryScope"]],
         [f"field-path={fl['fieldPath']},order={fl['order'].lower()}" for fl in ix["fields"]])
        for ix in json.loads(INDEXES.read_text(encoding="utf-8"))["indexes"]
    ]
    made = [
        (flags(c)["--collection-group"], flags(c)["--query-scope"],
         [w.split("=", 1)[1] for w in c if w.startswith("--field-config=")])
        for c in pull_run.named("firestore", "indexes", "composite", "create")
    ]
    assert made == wanted


def test_setup_builds_a_context_of_what_runs(pull_run: SetupRun) -> None:
    builds = pull_run.named("builds", "submit")
    assert len(builds) == 1
    assert flags(builds[0])["--tag"] == "europe-west1-docker.pkg.dev/demo-proj/podium/podium:test"
    context = (pull_run.dir / "context").read_text(encoding="utf-8").split()
    expected = {"./Dockerfile", *(f"./{d}" for d in SOURCE_DIRS), "./pyproject.toml"}
    assert expected <= set(context) <= expected | {"./README.md"}
    assert (pull_run.dir / "pycache").read_text(encoding="utf-8") == ""


def test_setup_deploys_the_rendered_pull_spec(pull_run: SetupRun) -> None:
    replaced = pull_run.named("run", "services", "replace")
    assert len(replaced) == 1 and flags(replaced[0])["--region"] == "europe-west1"
    spec = pull_run.rendered()
    text = yaml.safe_dump(spec)
    assert not re.search(r"\b(PROJECT_ID|REGION|IMAGE)\b", text)
    assert container(spec)["image"] == "europe-west1-docker.pkg.dev/demo-proj/podium/podium:test"
    assert spec["spec"]["template"]["spec"]["serviceAccountName"] == "podium-daemon@demo-proj.iam.gserviceaccount.com"
    assert spec["metadata"]["labels"]["cloud.googleapis.com/location"] == "europe-west1"
    assert env_of(spec)["PODIUM_PROJECT"] == "demo-proj"
    assert spec["spec"]["template"]["metadata"]["labels"]["podium-mode"] == "pull"


def test_setup_push_mode(push_run: SetupRun) -> None:
    spec = push_run.rendered()
    assert spec["spec"]["template"]["metadata"]["labels"]["podium-mode"] == "push"
    assert env_of(spec)["PODIUM_PUSH_AUDIENCE"] == "podium-push.demo-proj"
    push_sa = "podium-push@demo-proj.iam.gserviceaccount.com"
    assert env_of(spec)["PODIUM_PUSH_SERVICE_ACCOUNT"] == push_sa
    names = [c[3] for c in push_run.calls if c[:3] == ["iam", "service-accounts", "create"]]
    assert names == ["podium-daemon", "podium-builder", "podium-push"]
    invoker = push_run.named("run", "services", "add-iam-policy-binding")
    assert len(invoker) == 1
    assert flags(invoker[0])["--member"] == f"serviceAccount:{push_sa}"
    assert flags(invoker[0])["--role"] == "roles/run.invoker"
    # The subscriptions come after the deploy (they need its URL) and push to /pubsub/push.
    deploy_at = push_run.calls.index(push_run.named("run", "services", "replace")[0])
    subs = {}
    for n, c in enumerate(push_run.calls):
        if c[:3] == ["pubsub", "subscriptions", "create"]:
            subs[c[3]] = (n, flags(c))
    assert set(subs) == set(DAEMON_SUBSCRIPTIONS)
    for name in DAEMON_SUBSCRIPTIONS:
        n, f = subs[name]
        assert n > deploy_at
        assert f["--push-endpoint"] == "https://podium-daemon-abc-ew.a.run.app/pubsub/push"
        assert f["--push-auth-service-account"] == push_sa
        assert f["--push-auth-token-audience"] == "podium-push.demo-proj"
    assert "--enable-message-ordering" not in subs[DEFAULTS.events_subscription][1]


def test_setup_is_idempotent_on_a_project_already_set_up(tmp_path: Path) -> None:
    run = run_setup(tmp_path, "demo-proj", exists=True)
    assert run.returncode == 0, run.stderr
    creates = [c for c in run.calls if "create" in c]
    # The only creates left: the service identity (idempotent API) and the indexes, whose
    # ALREADY_EXISTS answer is tolerated.
    assert {tuple(c[:3]) for c in creates} <= {("beta", "services", "identity"), ("firestore", "indexes", "composite")}
    assert "index exists" in run.stderr
    updated = {c[3] for c in run.named("pubsub", "subscriptions", "update")}
    assert updated == set(DAEMON_SUBSCRIPTIONS)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [((), {}, "PROJECT_ID is required"), (("demo-proj", "europe-west1", "both"), {}, "MODE must be pull or push")],
)
def test_setup_refuses_bad_input(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], message: str) -> None:
    run = run_setup(tmp_path, *args, env=env)
    assert run.returncode != 0
    assert message in run.stderr
    assert run.calls == []


# ==== Firestore indexes vs the queries in the source ==============================================
EQUALITY = {"==", "in"}
RANGE = {"<", "<=", ">", ">=", "!=", "not-in", "not_in"}
ARRAY = {"array_contains", "array-contains", "array_contains_any", "array-contains-any"}
# Collections reached through a constructor parameter: (file, parameter) -> collection.
# RunStore(client, settings.collection, ...) in daemon/server.py and cli/status.py.
PARAMETER_COLLECTIONS = {("daemon/store.py", "collection"): RUNS_COLLECTION}


@dataclass
class Query:
    where: str
    collection: str | None
    scope: str
    fields: dict[str, set[str]] = field(default_factory=dict)  # field -> kinds

    @property
    def composite(self) -> bool:
        return len(self.fields) >= 2


def _module_constants(tree: ast.Module) -> dict[str, str]:
    """String constants of a module, its own and those it imports from the project's modules."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and (REPO / (node.module.replace(".", "/") + ".py")).is_file():
            theirs = _module_constants(ast.parse((REPO / (node.module.replace(".", "/") + ".py")).read_text()))
            out.update({(a.asname or a.name): theirs[a.name] for a in node.names if a.name in theirs})
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value.value
    return out


def _self_attributes(tree: ast.Module) -> dict[str, ast.expr]:
    out: dict[str, ast.expr] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                    out.setdefault(target.attr, node.value)
    return out


def _own_nodes(func: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a function, without those of functions nested in it."""
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


class SourceQueries:
    def __init__(self, rel: str, text: str) -> None:
        self.rel = rel
        self.tree = ast.parse(text)
        self.constants = _module_constants(self.tree)
        self.attributes = _self_attributes(self.tree)

    def name_value(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.constants:
                return self.constants[node.id]
            return PARAMETER_COLLECTIONS.get((self.rel, node.id))
        if isinstance(node, ast.Attribute) and ast.unparse(node).endswith("settings.collection"):
            return RUNS_COLLECTION
        return None

    def collection_of(self, node: ast.expr, assigned: dict[str, ast.expr], depth: int = 0) -> tuple[str | None, str]:
        """The collection (or group) a query expression reads, outermost first."""
        if depth > 20:
            return None, "COLLECTION"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in ("collection", "collection_group") and node.args:
                scope = "COLLECTION_GROUP" if method == "collection_group" else "COLLECTION"
                return self.name_value(node.args[0]), scope
            return self.collection_of(node.func.value, assigned, depth + 1)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in self.attributes:
                return self.collection_of(self.attributes[node.attr], assigned, depth + 1)
            return self.collection_of(node.value, assigned, depth + 1)
        if isinstance(node, ast.Name) and node.id in assigned:
            return self.collection_of(assigned[node.id], assigned, depth + 1)
        return None, "COLLECTION"

    def queries(self) -> list[Query]:
        found: dict[tuple[str, str | None, str], Query] = {}
        for func in ast.walk(self.tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            nodes = list(_own_nodes(func))
            assigned: dict[str, ast.expr] = {}
            for node in nodes:
                target, value = None, None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    target, value = node.target, node.value
                if isinstance(target, ast.Name) and value is not None:
                    uses_itself = any(isinstance(n, ast.Name) and n.id == target.id for n in ast.walk(value))
                    if not uses_itself:
                        assigned.setdefault(target.id, value)
            for node in nodes:
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                method = node.func.attr
                if method not in ("where", "order_by"):
                    continue
                collection, scope = self.collection_of(node.func.value, assigned)
                key = (f"{self.rel}:{func.name}", collection, scope)
                query = found.setdefault(key, Query(key[0], collection, scope))
                name, kind = self.clause(node)
                query.fields.setdefault(name, set()).add(kind)
        return list(found.values())

    def clause(self, call: ast.Call) -> tuple[str, str]:
        where = f"{self.rel}:{call.lineno}"
        assert isinstance(call.func, ast.Attribute)
        if call.func.attr == "order_by":
            assert call.args and isinstance(call.args[0], ast.Constant), f"order_by on a computed field at {where}"
            direction = next((k.value for k in call.keywords if k.arg == "direction"), None)
            if direction is None and len(call.args) > 1:
                direction = call.args[1]
            descending = direction is not None and "DESCENDING" in ast.unparse(direction)
            return str(call.args[0].value), "order:" + ("DESCENDING" if descending else "ASCENDING")
        args = list(call.args)
        flt = next((k.value for k in call.keywords if k.arg == "filter"), None)
        if isinstance(flt, ast.Call):
            assert ast.unparse(flt.func).endswith("FieldFilter"), f"composite filter (And/Or) at {where}: extend this test"
            args = list(flt.args)
        assert len(args) >= 2 and all(isinstance(a, ast.Constant) for a in args[:2]), f"unreadable where() at {where}"
        name, op = str(args[0].value), str(args[1].value)  # type: ignore[attr-defined]
        if op in EQUALITY:
            return name, "eq"
        if op in RANGE:
            return name, "range"
        if op in ARRAY:
            return name, "array"
        raise AssertionError(f"unknown operator {op!r} at {where}")


def source_queries() -> list[Query]:
    out: list[Query] = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            out.extend(SourceQueries(path.relative_to(REPO).as_posix(), path.read_text(encoding="utf-8")).queries())
    return out


def index_serves(index: dict[str, Any], query: Query) -> bool:
    if index["collectionGroup"] != query.collection or index["queryScope"] != query.scope:
        return False
    fields = index["fields"]
    if {f["fieldPath"] for f in fields} != set(query.fields):
        return False
    seen_non_equality = False
    for f in fields:
        kinds = query.fields[f["fieldPath"]]
        orders = {k.split(":", 1)[1] for k in kinds if k.startswith("order:")}
        if "array" in kinds:
            if f.get("arrayConfig") != "CONTAINS":
                return False
            continue
        if orders and f.get("order") not in orders:
            return False
        if "range" in kinds and not orders and f.get("order") != "ASCENDING":
            return False
        if kinds == {"eq"}:
            if seen_non_equality:
                return False  # equality fields come first
        else:
            seen_non_equality = True
    return True


def load_indexes() -> list[dict[str, Any]]:
    data = json.loads(INDEXES.read_text(encoding="utf-8"))
    assert set(data) <= {"indexes", "fieldOverrides"} and not data.get("fieldOverrides")
    return list(data["indexes"])


def test_indexes_file_format() -> None:
    for index in load_indexes():
        assert set(index) == {"collectionGroup", "queryScope", "fields"}, index
        assert index["queryScope"] in ("COLLECTION", "COLLECTION_GROUP")
        assert len(index["fields"]) >= 2, "single-field indexes are automatic"
        for f in index["fields"]:
            assert set(f) in ({"fieldPath", "order"}, {"fieldPath", "arrayConfig"}), f
            assert f.get("order", "ASCENDING") in ("ASCENDING", "DESCENDING")
        assert len({f["fieldPath"] for f in index["fields"]}) == len(index["fields"])


def test_the_scanner_finds_the_known_queries() -> None:
    queries = {(q.where, q.collection): q.fields for q in source_queries()}
    assert queries[("daemon/store.py:expired_effects", "effects")] == {"status": {"eq"}, "lease_expires": {"range"}}
    assert queries[("daemon/store.py:list_runs", RUNS_COLLECTION)] == {
        "status": {"eq"}, "created_at": {"order:DESCENDING"},
    }
    assert queries[("daemon/store.py:due_timers", RUNS_COLLECTION)] == {"wake_at": {"range"}}
    assert queries[("daemon/store.py:events", "events")] == {"received_at": {"order:ASCENDING"}}


def test_a_new_query_without_an_index_is_caught() -> None:
    source = (
        "from google.cloud.firestore_v1.base_query import FieldFilter\n"
        "RUNS = 'orchestrations'\n"
        "def stale(client, settings, now):\n"
        "    q = client.collection(settings.collection)\n"
        "    q = q.where(filter=FieldFilter('status', '==', 'running'))\n"
        "    return q.order_by('updated_at').stream()\n"
        "def listed(client, status):\n"
        "    return client.collection(RUNS).where('status', '==', status).order_by('created_at', direction='DESCENDING')\n"
    )
    queries = {q.where: q for q in SourceQueries("daemon/example.py", source).queries()}
    stale, listed = queries["daemon/example.py:stale"], queries["daemon/example.py:listed"]
    assert stale.collection == listed.collection == RUNS_COLLECTION
    assert stale.fields == {"status": {"eq"}, "updated_at": {"order:ASCENDING"}}
    indexes = load_indexes()
    assert not any(index_serves(index, stale) for index in indexes)
    assert any(index_serves(index, listed) for index in indexes)


def test_every_multi_field_query_has_a_composite_index() -> None:
    indexes = load_indexes()
    missing = []
    for query in source_queries():
        if not query.composite:
            continue
        assert query.collection is not None, (
            f"{query.where}: cannot tell which collection this query reads; teach "
            "PARAMETER_COLLECTIONS or the scanner about it"
        )
        if not any(index_serves(index, query) for index in indexes):
            missing.append(f"{query.where} on {query.collection} ({query.scope}): {query.fields}")
    assert not missing, "queries without a composite index in deploy/firestore.indexes.json:\n" + "\n".join(missing)


def test_every_composite_index_serves_a_query_in_the_source() -> None:
    queries = [q for q in source_queries() if q.composite]
    unused = [index for index in load_indexes() if not any(index_serves(index, q) for q in queries)]
    assert not unused, f"indexes no query in {SOURCE_DIRS} needs: {unused}"


# ==== setup.sh's Pub/Sub step through the real gcloud, against the Pub/Sub emulator ================
EMULATOR_GCLOUD = r"""#!/usr/bin/env bash
# Pub/Sub commands go to the real gcloud, pointed at the emulator; the rest is answered here.
case " $* " in
  *" projects describe "*) echo 123456789012; exit 0;;
  *" add-iam-policy-binding "*) exit 0;;
  *" pubsub "*)
    export CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB="http://${PUBSUB_EMULATOR_HOST}/"
    exec "$REAL_GCLOUD" "$@" --access-token-file="$TOKEN_FILE";;
esac
exit 0
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_setup_pubsub_step_on_the_emulator_equals_the_daemons_plumbing(emulators: Any, tmp_path: Path) -> None:
    from google.cloud import pubsub_v1

    from daemon.pubsub import ensure_daemon_plumbing

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(EMULATOR_GCLOUD, encoding="utf-8")
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "token").write_text("emulator\n", encoding="utf-8")
    suffix = uuid.uuid4().hex[:8]
    by_setup, by_daemon = f"setup-{suffix}", f"daemon-{suffix}"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "REAL_GCLOUD": str(shutil.which("gcloud")),
        "TOKEN_FILE": str(tmp_path / "token"),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
        "STEPS": "pubsub",
    }
    for attempt in ("create", "converge"):
        result = subprocess.run(["bash", str(SETUP), by_setup], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{attempt}: {result.stderr}"
    ensure_daemon_plumbing(GCP.model_copy(update={"project": by_daemon}))

    subscriber = pubsub_v1.SubscriberClient()

    def config(project: str, name: str) -> dict[str, Any]:
        s = subscriber.get_subscription(request={"subscription": f"projects/{project}/subscriptions/{name}"})
        return {
            "topic": s.topic.rsplit("/", 1)[-1],
            "ack_deadline": s.ack_deadline_seconds,
            "ordering": s.enable_message_ordering,
            "dead_letter": s.dead_letter_policy.dead_letter_topic.rsplit("/", 1)[-1],
            "attempts": s.dead_letter_policy.max_delivery_attempts,
            "retry": (s.retry_policy.minimum_backoff, s.retry_policy.maximum_backoff),
            "push": s.push_config.push_endpoint,
        }

    try:
        for name in DAEMON_SUBSCRIPTIONS:
            assert config(by_setup, name) == config(by_daemon, name), name
    finally:
        subscriber.close()


def test_setup_grants_least_privilege(pull_run: SetupRun) -> None:
    """Issue 12: no project-wide serviceAccountUser, projectIamAdmin only for the plan's roles,
    the builder's roles on the builder, and no data-plane IAM roles unless asked for."""
    daemon, builder = "serviceAccount:podium-daemon@demo-proj.iam.gserviceaccount.com", \
        "serviceAccount:podium-builder@demo-proj.iam.gserviceaccount.com"
    project = [flags(c) for c in pull_run.named("projects", "add-iam-policy-binding")]
    of = {m: {f["--role"] for f in project if f["--member"] == m} for m in (daemon, builder)}
    assert "roles/iam.serviceAccountUser" not in of[daemon]
    assert of[builder] == {"roles/artifactregistry.writer", "roles/logging.logWriter"}
    assert not of[daemon] & {"roles/owner", "roles/editor", "roles/secretmanager.admin", "roles/storage.admin",
                             "roles/bigquery.dataOwner", "roles/artifactregistry.writer"}
    (admin,) = [f for f in project if f["--role"] == "roles/resourcemanager.projectIamAdmin"]
    assert "--condition-from-file" in admin and admin["--member"] == daemon
    condition = yaml.safe_load((pull_run.dir / "conditions").read_text(encoding="utf-8"))
    allowed = re.findall(r"'(roles/[^']+)'", condition["expression"])
    assert set(allowed) == PROJECT_ROLES and "modifiedGrantsByRole" in condition["expression"]
    acts = [flags(c) for c in pull_run.named("iam", "service-accounts", "add-iam-policy-binding")]
    assert [(f["--member"], f["--role"], c[3]) for f, c in zip(acts, pull_run.named(
        "iam", "service-accounts", "add-iam-policy-binding"), strict=True)] == [
        (daemon, "roles/iam.serviceAccountUser", "podium-builder@demo-proj.iam.gserviceaccount.com")]


def test_the_plan_never_grants_a_project_role_setup_did_not_allow(rich: Architecture, demo: Architecture) -> None:
    for arch in (rich, demo):
        granted = {b.role for b in plan_iam(arch).bindings if b.resource_type == "project"}
        assert granted <= PROJECT_ROLES, granted - PROJECT_ROLES
    text = SETUP.read_text(encoding="utf-8")
    assert set(shell_var(text, "PLAN_PROJECT_ROLES").split()) == PROJECT_ROLES


def test_data_plane_iam_roles_only_when_asked_for(tmp_path: Path) -> None:
    run = run_setup(tmp_path, "demo-proj", env={"DATA_ROLES": "secrets,bigquery", "STEPS": "accounts"})
    assert run.returncode == 0, run.stderr
    roles = {flags(c)["--role"] for c in run.named("projects", "add-iam-policy-binding")}
    assert {"roles/secretmanager.admin", "roles/bigquery.dataOwner"} <= roles and "roles/storage.admin" not in roles
    bad = run_setup(tmp_path / "bad", "demo-proj", env={"DATA_ROLES": "everything", "STEPS": "accounts"})
    assert bad.returncode != 0 and "DATA_ROLES" in bad.stderr
