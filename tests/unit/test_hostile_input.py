"""Hostile input (issue 10, points 1, 2 and 7): what a publisher of commands cannot make the daemon do.

No emulators: the HTTP server runs with a fake engine, the handlers on tmp folders.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from daemon.config import Settings
from daemon.engine import Inbound, Verdict, prepare_architecture
from daemon.http import DaemonHTTP
from handlers.base import EffectContext
from handlers.configgen import generate_configs
from handlers.image_builds.local import build_local
from handlers.preflight import preflight_effect
from handlers.secrets import child_env, known_secret_values, redact
from machines.architecture import (
    MAX_ARCHITECTURE_BYTES,
    Architecture,
    load_architecture,
    parse_yaml,
)
from machines.errors import HandlerError, InvalidArchitecture, PodiumError
from machines.hydration import hydrate
from machines.messages import RunView, StartCommand

TESTDATA = Path(__file__).resolve().parents[2] / "testdata"
ARCHITECTURE_YAML = (TESTDATA / "architecture.yaml").read_text()


# ==== point 1: the HTTP surface ===================================================================


class FakeEngine:
    def __init__(self) -> None:
        self.calls: list[Inbound] = []
        self.settings: Settings | None = None

    def on_command(self, msg: Inbound) -> Verdict:
        self.calls.append(msg)
        return Verdict.ACK

    on_event = on_dead_letter = on_cloud_build = on_command

    def routes(self) -> dict[str, tuple[str, Callable[[Inbound], Verdict]]]:
        return {self.settings.commands_subscription: ("commands", self.on_command)}


def serve(settings: Settings) -> tuple[DaemonHTTP, FakeEngine]:
    engine = FakeEngine()
    engine.settings = settings
    http = DaemonHTTP(settings, engine, lambda: True, port=0)  # type: ignore[arg-type]
    http.start()
    return http, engine


def push_envelope(settings: Settings) -> bytes:
    body = base64.b64encode(json.dumps({"command": "cancel", "run_id": "r"}).encode()).decode()
    return json.dumps({"message": {"data": body, "messageId": "1"},
                       "subscription": f"projects/p/subscriptions/{settings.commands_subscription}"}).encode()


def test_http_binds_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PODIUM_HOST", raising=False)
    http, _ = serve(Settings(backend="standin"))
    try:
        assert http.server.server_address[0] == "127.0.0.1"
    finally:
        http.stop()
    monkeypatch.setenv("PODIUM_HOST", "0.0.0.0")
    assert Settings().host == "0.0.0.0"


@pytest.mark.parametrize("delivery", ["pull", "push"])
def test_push_endpoint_exists_only_in_push_delivery(delivery: str) -> None:
    settings = Settings(backend="standin", delivery=delivery)  # type: ignore[arg-type]
    http, engine = serve(settings)
    try:
        reply = requests.post(f"http://127.0.0.1:{http.port}/pubsub/push", data=push_envelope(settings), timeout=5)
        health = requests.get(f"http://127.0.0.1:{http.port}/healthz", timeout=5)
    finally:
        http.stop()
    assert health.status_code == 200
    if delivery == "pull":
        assert reply.status_code == 404
        assert engine.calls == []  # nothing reached the engine
    else:
        assert reply.status_code == 200, reply.text
        assert len(engine.calls) == 1


# ==== point 1: service folders resolve under the source root =====================================


@pytest.fixture
def escaping_root(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of testdata whose ``publisher`` folder is a symlink to a folder outside the root,
    holding a conftest.py and a main.py that would leave a mark if anything ran them."""
    root = tmp_path / "src"
    # Not the configs a local run generated into testdata (git-ignored): the tests check that
    # nothing is written, so the copy starts without them.
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "resources.yaml",
                                                                  "services.yaml"))
    outside = tmp_path / "outside"
    outside.mkdir()
    mark = tmp_path / "ran"
    (outside / "conftest.py").write_text(f"open({str(mark)!r}, 'w').write('conftest')\n")
    (outside / "main.py").write_text(f"open({str(mark)!r}, 'w').write('main')\n")
    (outside / "tests").mkdir()
    (outside / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    shutil.rmtree(root / "publisher")
    (root / "publisher").symlink_to(outside, target_is_directory=True)
    return root, mark


def effect_ctx(root: Path, kind: str, item: str | None, state_dir: Path,
               arch_yaml: str = ARCHITECTURE_YAML) -> EffectContext:
    arch = hydrate(load_architecture(arch_yaml))
    return EffectContext(
        run_id="hostile-1", effect_id=f"hostile-1:a0:{kind}:{item}", kind=kind, item=item, params={},
        attempt=0, run=RunView.model_validate({"run_id": "hostile-1", "architecture": arch.to_dict(), "source_root": str(root)}),
        settings=Settings(project="podium-test", state_dir=state_dir, source_root=root),
    )


def test_preflight_refuses_a_service_folder_that_resolves_outside_the_root(
    escaping_root: tuple[Path, Path], tmp_path: Path
) -> None:
    root, mark = escaping_root
    with pytest.raises(HandlerError) as refused:
        preflight_effect(effect_ctx(root, "preflight", "publisher", tmp_path / "state"))
    assert refused.value.retryable is False
    assert "'publisher'" in refused.value.message and "outside the source root" in refused.value.message
    assert str(tmp_path / "outside") in refused.value.message
    assert not mark.exists(), "pytest ran a conftest.py outside the source root"


def test_build_refuses_a_service_folder_that_resolves_outside_the_root(
    escaping_root: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = escaping_root
    with pytest.raises(HandlerError, match="outside the source root") as refused:
        build_local(effect_ctx(root, "build", "publisher", tmp_path / "state"))
    assert refused.value.retryable is False
    assert not (tmp_path / "state" / "artifacts").exists() or not any((tmp_path / "state" / "artifacts").iterdir())


def test_configgen_refuses_before_writing_anything(escaping_root: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = escaping_root
    arch = load_architecture(ARCHITECTURE_YAML)
    with pytest.raises(HandlerError, match="'publisher'.*outside the source root"):
        generate_configs(arch, root)
    assert not (tmp_path / "outside" / "resources.yaml").exists()
    assert not (root / "subscriber" / "resources.yaml").exists()


def test_service_folders_inside_the_root_still_work(tmp_path: Path) -> None:
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    (root / "shared").mkdir()
    shutil.move(root / "subscriber", root / "shared" / "subscriber")
    (root / "subscriber").symlink_to(root / "shared" / "subscriber")  # a symlink that stays inside
    files = generate_configs(load_architecture(ARCHITECTURE_YAML), root)
    assert {f.service for f in files} == {"director", "publisher", "subscriber"}


# ==== point 1: the start command's source_root ====================================================


def start(source_root: str | None, yaml_text: str = ARCHITECTURE_YAML) -> StartCommand:
    return StartCommand(command="start", run_id="r-1", architecture_yaml=yaml_text, source_root=source_root)


def test_source_root_must_resolve_under_the_daemons_root(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "team" / "app").mkdir(parents=True)
    (base / "escape").symlink_to(tmp_path)
    local = Settings(backend="local", source_root=base)
    for ok in (None, str(base), str(base / "team" / "app"), str(base / "team" / ".." / "team")):
        prepare_architecture(start(ok), "podium-local", settings=local)
    for bad in ("/", str(tmp_path), str(base / ".."), str(base / "escape"), "/etc", "gs://bucket/src.tar.gz",
                "relative/../../..", "a\x00b"):
        with pytest.raises(InvalidArchitecture) as refused:
            prepare_architecture(start(bad), "podium-local", settings=local)
        assert refused.value.problems[0].startswith("source_root: "), refused.value.problems
        assert "refused" in refused.value.problems[0]
    gcp = Settings(backend="gcp", source_root=base)
    prepare_architecture(start("gs://bucket/src.tar.gz"), "podium-local", settings=gcp)
    with pytest.raises(InvalidArchitecture, match="PODIUM_SOURCE_ROOT"):
        prepare_architecture(start("/etc"), "podium-local", settings=gcp)
    for malformed in ("gs://bucket/src.zip", "gs://Bucket/src.tar.gz", "gs://bucket/src.tar.gz#sha256=beef"):
        with pytest.raises(InvalidArchitecture, match="gs://BUCKET/OBJECT.tar.gz"):
            prepare_architecture(start(malformed), "podium-local", settings=gcp)


# ==== point 2: alias bombs and oversized input ====================================================


def billion_laughs() -> str:
    """The classic: 9 levels of 9 aliases each, ~2 KB of YAML naming 9**9 strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    names = "abcdefghij"
    for i in range(1, 10):
        refs = ",".join([f"*{names[i - 1]}"] * 9)
        lines.append(f"{names[i]}: &{names[i]} [{refs}]")
    return "\n".join(lines) + "\n" + ARCHITECTURE_YAML[:1500]


def test_billion_laughs_is_refused_at_once_and_small() -> None:
    text = billion_laughs()
    assert 1500 < len(text) < 4096
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(InvalidArchitecture) as refused:
            prepare_architecture(start(None, text), "podium-local")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - began < 2.0
    assert peak < 10 * 1024 * 1024, peak
    assert refused.value.reason == "invalid_architecture"
    assert refused.value.problems == [
        "(yaml) line 1, column 4: found anchor &a: anchors and aliases are not supported (write the value out)"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: *nothing\n", "line 1, column 4: found alias *nothing"),
        ("a: &x [*x]\n", "line 1, column 4: found anchor &x"),
        ("base: &b {x: 1}\nother:\n  <<: *b\n", "line 1, column 7: found anchor &b"),
        ("a: " + "1" * 5000 + "\n", "cannot be read: ValueError"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
        # libyaml refuses 1000 levels itself ("exceeded maximum nesting depth"), the pure-Python
        # parser leaves it to our 64-level limit: refused either way
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nest"),
        ("a: [" + ",".join(["1"] * 60_000) + "]\n", "more than 50000 nodes"),
        ("a: '" + "x" * MAX_ARCHITECTURE_BYTES + "'\n", f"at most {MAX_ARCHITECTURE_BYTES}"),
        ("a: '" + "é" * (MAX_ARCHITECTURE_BYTES // 2 + 1) + "'\n", "bytes; an architecture may have"),
    ],
    ids=["alias", "circular", "merge-alias", "huge-int", "deep", "very-deep", "many-nodes", "big", "big-utf8"],
)
def test_hostile_yaml_is_an_invalid_architecture(text: str, problem: str) -> None:
    began = time.monotonic()
    with pytest.raises(InvalidArchitecture) as refused:
        parse_yaml(text)
    assert time.monotonic() - began < 5.0
    assert problem in refused.value.problems[0], refused.value.problems


def test_plain_files_still_parse() -> None:
    assert parse_yaml("a: [1, {b: c}]\n") == {"a": [1, {"b": "c"}]}
    assert load_architecture(ARCHITECTURE_YAML).name == "podium-demo"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_json_architecture_shape_is_bounded() -> None:
    base = yaml.safe_load(ARCHITECTURE_YAML)
    circular: dict[str, Any] = {}
    circular["self"] = circular
    cases = {
        "deep": {**base, "labels": nested(10_000)},
        "wide": {**base, "labels": {f"k{i}": "v" for i in range(60_000)}},
        "long": {**base, "labels": {"k": "x" * (MAX_ARCHITECTURE_BYTES + 1)}},
        "circular": {**base, "labels": circular},
    }
    for name, doc in cases.items():
        with pytest.raises(InvalidArchitecture) as refused:
            prepare_architecture(StartCommand(command="start", architecture=doc), "podium-local")
        assert refused.value.problems[0].startswith("(root): "), (name, refused.value.problems)
    Architecture.from_dict({**base, "labels": nested(3)} | {"labels": {"a": "b"}})


def test_every_parse_failure_is_a_non_retryable_podium_error() -> None:
    for text in ("a: [", "a: *x", "\t- x", "a: " + "9" * 5000, "[" * 100_000):
        with pytest.raises(PodiumError) as caught:
            prepare_architecture(start(None, text), "podium-local")
        assert caught.value.reason == "invalid_architecture" and not caught.value.retryable


# ==== point 7: secrets ============================================================================


def test_redact_replaces_known_values_longest_first_and_leaves_short_ones() -> None:
    text = "token=abcd1234 prefix=abcd pin=42 again abcd1234"
    assert redact(text, ["abcd", "abcd1234", "42", ""]) == "token=*** prefix=*** pin=42 again ***"
    assert redact("nothing here", []) == "nothing here"


def test_known_secret_values_and_child_env(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "db").write_text("from-a-file\n")
    environ = {"PODIUM_SECRET_X": "from-env", "PODIUM_BACKEND": "local", "PATH": "/bin", "HOME": "/h",
               "LC_ALL": "C", "PUBSUB_EMULATOR_HOST": "h:1", "AWS_SECRET_ACCESS_KEY": "k", "PYTHONPATH": "/p"}
    assert sorted(known_secret_values(tmp_path, environ)) == ["from-a-file", "from-env"]
    assert child_env({"OWN": "1"}, environ) == {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C",
                                                "PUBSUB_EMULATOR_HOST": "h:1", "OWN": "1"}


SECRET_ARCH = ARCHITECTURE_YAML.replace(
    """          environment_vars:
            PUBLISH_INTERVAL_SECONDS: "0.5"
""",
    """          environment_vars:
            PUBLISH_INTERVAL_SECONDS: "0.5"
          secret_environment_vars:
            - {name: API_TOKEN, value_from: hostile-api-token}
""",
)


def test_preflight_effect_gets_its_own_secret_and_the_stored_tail_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SECRET_ARCH != ARCHITECTURE_YAML
    root = tmp_path / "src"
    shutil.copytree(TESTDATA, root, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    (root / "publisher" / "tests" / "test_preflight.py").write_text(
        "import os\n\n"
        "def test_prints_its_environment():\n"
        "    print('ENVIRONMENT', sorted(os.environ))\n"
        "    print('MY TOKEN', os.environ['API_TOKEN'])\n"
        "    assert os.environ['PROJECT_ID'] == 'podium-local'\n"
        "    assert os.environ['SERVICE_NAME'] == 'publisher'\n"
        "    assert os.environ['PUBLISH_INTERVAL_SECONDS'] == '0.5'\n"
        "    assert False, 'failing on purpose'\n"
    )
    token = "hostile-token-value-123"
    monkeypatch.setenv("PODIUM_SECRET_HOSTILE_API_TOKEN", token)
    monkeypatch.setenv("PODIUM_SECRET_SOMEONE_ELSE", "someone-elses-secret")
    monkeypatch.setenv("UNRELATED_DAEMON_VARIABLE", "daemon-only")

    (outcome,) = preflight_effect(effect_ctx(root, "preflight", "publisher", tmp_path / "state", SECRET_ARCH))

    assert outcome.type == "preflight.failed"
    stored = json.dumps(outcome.data)
    assert "failing on purpose" in stored
    assert "MY TOKEN ***" in outcome.data["output_tail"]
    assert token not in stored
    for leaked in ("PODIUM_", "UNRELATED_DAEMON_VARIABLE", "someone-elses-secret"):
        assert leaked not in stored, leaked
