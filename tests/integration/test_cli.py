"""The ``podium`` CLI against the emulators and an in-process daemon (stand-in backend).

Commands run in-process through ``cli.main.main`` with the environment a user would set;
``--help`` and one real command also run as the installed ``podium`` console script.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from cli import main as cli
from machines import orchestration
from tests.integration.conftest import (
    REPO,
    TESTDATA,
    publish,
    run_doc,
    settings_env,
    start_body,
    wait_for,
    wait_status,
)

ARCHITECTURE = TESTDATA / "architecture.yaml"
# Valid YAML, invalid architecture: the run is created and fails with every problem listed.
BROKEN = "name: demo\nproject_id: podium-local\ndataflows:\n  d:\n    services:\n      s:\n        name: s\n"
COMMANDS = ["serve", "start", "status", "cancel", "retry", "watch", "logs", "plan", "up", "down", "graph"]


@pytest.fixture
def env(settings, monkeypatch, tmp_path):
    """The variables a user sets so the CLI talks to this test's topics (emulator hosts are set).

    The in-process daemon's log lines go to a file, so stdout holds only what the CLI prints.
    """
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=(tmp_path / "daemon.log").open("a")))
    for key, value in {
        "PODIUM_PROJECT": settings.project,
        "PODIUM_COMMANDS_TOPIC": settings.commands_topic,
        "PODIUM_EVENTS_TOPIC": settings.events_topic,
        "PODIUM_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "PODIUM_COLLECTION": settings.collection,
    }.items():
        monkeypatch.setenv(key, value)
    yield settings
    structlog.configure(**saved)


@pytest.fixture
def broken_file(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    return path


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_out(capsys: Any, *argv: str) -> tuple[int, Any]:
    code, out, err = run(capsys, *argv)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON (exit {code}): {out!r} {err!r}") from exc


def podium_script() -> list[str]:
    script = REPO / ".venv" / "bin" / "podium"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


# ---- help ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command, capsys):
    argv = [command, "--help"] if command else ["--help"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: podium")
    if command is None:
        assert all(c in out for c in COMMANDS)


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["explode"], ["status", "--status", "weird"], ["start"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2, argv


def test_console_script_help_and_a_real_command(settings, db, daemon_factory):
    help_run = subprocess.run([*podium_script(), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert help_run.returncode == 0
    assert "COMMAND" in help_run.stdout and "start" in help_run.stdout
    daemon_factory(settings)
    environment = settings_env(settings)
    started = subprocess.run([*podium_script(), "start", str(ARCHITECTURE), "--run-id", "script-1", "--json",
                              "--wait", "--timeout", "60"],
                             capture_output=True, text=True, timeout=120, cwd=REPO, env=environment)
    assert started.returncode == 0, (started.stdout, started.stderr)
    assert json.loads(started.stdout)["run_id"] == "script-1"
    status = subprocess.run([*podium_script(), "status", "script-1", "--json"],
                            capture_output=True, text=True, timeout=60, cwd=REPO, env=environment)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "succeeded"


# ---- start ---------------------------------------------------------------------------------

def test_start_json_prints_run_and_message_id(env, db, daemon_factory, capsys):
    daemon_factory(env)
    code, out = json_out(capsys, "start", str(ARCHITECTURE), "--run-id", "cli-1", "--json")
    assert code == 0
    assert set(out) == {"run_id", "message_id"}
    assert out["run_id"] == "cli-1"
    assert out["message_id"].isdigit()
    assert wait_status(db, env, "cli-1")["status"] == "succeeded"


def test_start_without_run_id_uses_the_message_id(env, db, daemon_factory, capsys):
    daemon_factory(env)
    code, out = json_out(capsys, "start", str(ARCHITECTURE), "--json")
    assert code == 0
    assert out["run_id"] == out["message_id"]
    assert wait_status(db, env, out["run_id"])["status"] == "succeeded"


def test_start_wait_exits_0_when_the_run_succeeds(env, db, daemon_factory, capsys):
    daemon_factory(env)
    code, out, err = run(capsys, "start", str(ARCHITECTURE), "--run-id", "cli-wait", "--wait", "--timeout", "60")
    assert code == cli.EXIT_OK, (out, err)
    assert "cli-wait" in out
    assert "succeeded" in out
    assert run_doc(db, env, "cli-wait")["status"] == "succeeded"


def test_start_wait_exits_1_when_the_run_fails(env, db, daemon_factory, capsys, broken_file):
    daemon_factory(env)
    code, _out, _err = run(capsys, "start", str(broken_file), "--run-id", "cli-wait-bad", "--no-validate",
                           "--wait", "--json", "--timeout", "60")
    assert code == cli.EXIT_RUN_FAILED
    assert run_doc(db, env, "cli-wait-bad")["error"]["reason"] == "invalid_architecture"


def test_start_of_an_invalid_file_exits_2_with_the_problems_and_publishes_nothing(env, db, capsys, broken_file):
    code, out, err = run(capsys, "start", str(broken_file), "--run-id", "never")
    assert code == cli.EXIT_USAGE
    assert out == ""
    assert "service_account" in err
    assert str(broken_file) in err
    code, _out, err = run(capsys, "start", str(broken_file.parent / "missing.yaml"))
    assert code == cli.EXIT_USAGE
    assert "cannot read" in err
    assert run_doc(db, env, "never") is None


# ---- status --------------------------------------------------------------------------------

def test_status_lists_runs_and_shows_one_with_its_events(env, db, daemon_factory, capsys, broken_file):
    daemon_factory(env)
    publish(env, start_body("st-ok"))
    assert wait_status(db, env, "st-ok")["status"] == "succeeded"
    assert run(capsys, "start", str(broken_file), "--run-id", "st-bad", "--no-validate")[0] == 0
    assert wait_status(db, env, "st-bad")["status"] == "failed"

    code, runs = json_out(capsys, "status", "--json")
    assert code == 0
    assert isinstance(runs, list)
    by_id = {r["run_id"]: r for r in runs}
    assert set(by_id) == {"st-ok", "st-bad"}
    for r in runs:
        assert {"run_id", "state", "status", "version"} <= set(r)
        assert isinstance(r["version"], int)
    assert (by_id["st-ok"]["state"], by_id["st-ok"]["status"]) == ("succeeded", "succeeded")
    assert by_id["st-bad"]["status"] == "failed"
    assert "service_account" in by_id["st-bad"]["error"]

    code, failed = json_out(capsys, "status", "--json", "--status", "failed")
    assert [r["run_id"] for r in failed] == ["st-bad"]

    code, doc = json_out(capsys, "status", "st-ok", "--json", "--events")
    assert code == 0
    assert doc["run_id"] == "st-ok" and doc["status"] == "succeeded"
    assert "architecture" not in doc  # the hydrated architecture is not printed
    assert isinstance(doc["events"], list) and doc["events"]
    applied = [e for e in doc["events"] if e["outcome"] == "applied"]
    assert len(applied) == doc["version"]
    assert applied[-1]["to_state"] == "succeeded"
    assert {"type", "received_at", "from_state", "to_state", "outcome", "message_id"} <= set(applied[0])

    code, doc = json_out(capsys, "status", "st-ok", "--json")
    assert code == 0 and "events" not in doc
    code, doc = json_out(capsys, "status", "st-bad", "--json")
    assert code == cli.EXIT_RUN_FAILED  # a failed run's status exits 1
    assert doc["error"]["reason"] == "invalid_architecture"

    code, out, _err = run(capsys, "status")  # the table
    assert code == 0 and "st-ok" in out and "st-bad" in out
    code, out, _err = run(capsys, "status", "st-ok", "--events")
    assert code == 0 and "state=succeeded" in out and "OUTCOME" in out  # the audit table's header


def test_status_of_an_unknown_run_exits_2(env, capsys):
    code, out, err = run(capsys, "status", "no-such-run")
    assert code == cli.EXIT_USAGE
    assert "no-such-run" in out + err
    code, out, err = run(capsys, "status", "no-such-run", "--json")
    assert code == cli.EXIT_USAGE


# ---- watch ---------------------------------------------------------------------------------

def _watch_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_watch_follows_a_run_to_success(env, db, daemon_factory, capsys):
    from handlers import standin

    release = threading.Event()

    def held_preflight(ctx: Any) -> Any:
        release.wait(30)
        return standin.HANDLERS["preflight"](ctx)

    daemon = daemon_factory(env)
    daemon.effects.handlers["preflight"] = held_preflight
    publish(env, start_body("watch-ok"))
    wait_for(lambda: (run_doc(db, env, "watch-ok") or {}).get("state") == "preflight", 30, "preflight")
    threading.Timer(1.0, release.set).start()  # the run moves on while watch is following it
    code, out, err = run(capsys, "watch", "watch-ok", "--json", "--timeout", "60")
    assert code == cli.EXIT_OK, (out, err)
    lines = _watch_lines(out)
    assert lines, "watch printed nothing"
    assert lines[0]["state"] == "preflight"
    assert all(line["run_id"] == "watch-ok" for line in lines)
    assert len(lines) > 1  # it saw the run move
    assert run_doc(db, env, "watch-ok")["status"] == "succeeded"


def test_watch_exits_1_for_a_failed_run(env, db, daemon_factory, capsys, broken_file):
    daemon_factory(env)
    assert run(capsys, "start", str(broken_file), "--run-id", "watch-bad", "--no-validate")[0] == 0
    wait_for(lambda: run_doc(db, env, "watch-bad"), 30, "the run to exist")
    code, out, err = run(capsys, "watch", "watch-bad", "--json", "--timeout", "60")
    assert code == cli.EXIT_RUN_FAILED, (out, err)
    assert run_doc(db, env, "watch-bad")["status"] == "failed"


def test_watch_of_an_unknown_run_exits_2(env, capsys):
    code, out, err = run(capsys, "watch", "ghost-run", "--json", "--timeout", "5")
    assert code == cli.EXIT_USAGE
    assert "ghost-run" in out + err


# ---- cancel / retry ------------------------------------------------------------------------

def _held_at_director(env: Any, db: Any, daemon_factory: Any, run_id: str) -> Any:
    daemon = daemon_factory(env)
    daemon.effects.handlers["director.command"] = lambda ctx: []  # a director that never answers
    publish(env, start_body(run_id))
    wait_for(lambda: (run_doc(db, env, run_id) or {}).get("state") == "awaiting_director", 30,
             "awaiting_director")
    return daemon


def test_cancel_a_run_held_at_the_director(env, db, daemon_factory, capsys):
    _held_at_director(env, db, daemon_factory, "cancel-cli")
    code, out = json_out(capsys, "cancel", "cancel-cli", "--json", "--timeout", "30")
    assert code == cli.EXIT_OK, out
    assert out["run_id"] == "cancel-cli"
    assert (out["from"], out["to"], out["status"]) == ("awaiting_director", "cancelled", "cancelled")
    assert out["message_id"].isdigit()
    assert run_doc(db, env, "cancel-cli")["status"] == "cancelled"


def test_cancel_and_retry_of_an_unknown_run_exit_2(env, capsys):
    for command in ("cancel", "retry"):
        code, _out, err = run(capsys, command, "ghost-run", "--timeout", "5")
        assert code == cli.EXIT_USAGE
        assert "ghost-run" in err


def test_retry_of_a_run_that_has_not_failed_says_so_at_once(env, db, daemon_factory, capsys):
    import time

    _held_at_director(env, db, daemon_factory, "retry-running")
    began = time.monotonic()
    code, out = json_out(capsys, "retry", "retry-running", "--json", "--timeout", "30")
    assert code == cli.EXIT_RUN_FAILED, out
    assert time.monotonic() - began < 20  # answered from the daemon's record, not by timing out
    assert out["outcome"] == "ignored"
    assert out["from"] == out["to"] == "awaiting_director"
    assert "command.retry" in out["detail"]
    doc = run_doc(db, env, "retry-running")
    assert (doc["state"], doc["status"]) == ("awaiting_director", "running")

    code, out, err = run(capsys, "retry", "retry-running", "--timeout", "30")  # the human form
    assert code == cli.EXIT_RUN_FAILED
    assert "ignored" in out and "awaiting_director" in out


def test_retry_of_a_failed_run_redrives_it(env, db, daemon_factory, capsys):
    from handlers import standin

    env = env.model_copy(update={"director_ready_budget_seconds": 2.0})
    daemon = daemon_factory(env)
    daemon.effects.handlers["director.command"] = lambda ctx: []
    publish(env, start_body("retry-cli"))
    doc = wait_status(db, env, "retry-cli")
    assert (doc["status"], doc["error"]["state"]) == ("failed", "awaiting_director")
    daemon.effects.handlers["director.command"] = standin.director_reply
    code, out = json_out(capsys, "retry", "retry-cli", "--json", "--timeout", "30")
    assert code == cli.EXIT_OK, out
    assert (out["from"], out["to"], out["status"], out["outcome"]) == ("failed", "awaiting_director", "running",
                                                                       "applied")
    assert wait_status(db, env, "retry-cli")["status"] == "succeeded"
    # cancelling a run that has ended is refused (without publishing: the machine would ignore it), and said so
    code, out = json_out(capsys, "cancel", "retry-cli", "--json", "--timeout", "30")
    assert code == cli.EXIT_RUN_FAILED
    assert out["outcome"] == "refused" and out["status"] == "succeeded" and out["message_id"] is None


# ---- graph ---------------------------------------------------------------------------------

def test_graph_mermaid_and_dot(capsys):
    code, out, _err = run(capsys, "graph", "--format", "mermaid")
    assert code == 0
    assert "stateDiagram" in out
    for state in orchestration.STATES:
        assert f'state "{state}" as {state}' in out, state
    code, out, _err = run(capsys, "graph")  # mermaid is the default
    assert "stateDiagram" in out
    code, out, _err = run(capsys, "graph", "--format", "dot")
    assert code == 0
    assert "digraph" in out
    for state in orchestration.STATES:
        assert state in out


def test_graph_writes_to_a_file(capsys, tmp_path):
    target = tmp_path / "machine.mmd"
    code, out, _err = run(capsys, "graph", "-o", str(target))
    assert code == 0 and str(target) in out
    assert "stateDiagram" in target.read_text()


def test_graph_highlights_a_runs_state(env, db, daemon_factory, capsys):
    _held_at_director(env, db, daemon_factory, "graph-run")
    code, out, _err = run(capsys, "graph", "graph-run")
    assert code == 0
    active = [line.split()[1] for line in out.splitlines() if line.strip().startswith("Class ")
              and line.strip().endswith(" s_active")]
    assert active == ["awaiting_director"]
    code, out, _err = run(capsys, "graph", "graph-run", "--format", "dot")
    highlighted = [line.split()[0] for line in out.splitlines() if "fillcolor=darksalmon" in line]
    assert highlighted == ["awaiting_director"]
    code, _out, err = run(capsys, "graph", "ghost-run")
    assert code == cli.EXIT_USAGE and "ghost-run" in err


# ---- plan ----------------------------------------------------------------------------------

def test_plan_json(env, capsys):
    code, plan = json_out(capsys, "plan", str(ARCHITECTURE), "--json")
    assert code == 0
    assert {"files", "service_accounts", "bindings", "order"} <= set(plan)
    assert plan["architecture"] == "podium-demo"
    assert {f["service"] for f in plan["files"]} >= {"director", "publisher", "subscriber"}
    assert {sa["service"] for sa in plan["service_accounts"]} >= {"director", "publisher", "subscriber"}
    assert plan["bindings"] and all(b["reason"] for b in plan["bindings"])
    phases = [step["phase"] for step in plan["order"]]
    assert phases[0] == "generating_config" and phases[-1] == "dependent_setup"
    assert plan["compared_with"] is None and plan["diff"] == []


def test_plan_compares_with_the_last_successful_run(env, db, daemon_factory, capsys):
    daemon_factory(env)
    publish(env, start_body("plan-base"))
    assert wait_status(db, env, "plan-base")["status"] == "succeeded"
    code, plan = json_out(capsys, "plan", str(ARCHITECTURE), "--json")
    assert code == 0
    assert plan["compared_with"] == "plan-base"


def test_plan_of_a_broken_file_exits_2(env, capsys, broken_file):
    code, out, err = run(capsys, "plan", str(broken_file), "--json")
    assert code == cli.EXIT_USAGE
    assert "service_account" in out + err
    code, out, err = run(capsys, "plan", str(broken_file.parent / "missing.yaml"))
    assert code == cli.EXIT_USAGE
    assert "cannot read" in out + err


def test_down_stops_what_the_local_backend_started(env, capsys):
    import subprocess
    from datetime import UTC, datetime

    from handlers.deploy.local import registry_for
    from handlers.deploy.registry import ProcessRecord, fingerprint

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        record = ProcessRecord(
            project="some-arch-project", service="lonely", pid=proc.pid, port=1, url="http://127.0.0.1:1",
            image="local://lonely@sha256:0", started_at=datetime.now(UTC), run_id="r", effect_id="e",
            log_path="/dev/null", log_offset=0, fingerprint=fingerprint(proc.pid) or "", workdir="/tmp",
            config_hash="x",
        )
        assert registry_for(env.project).replace(record, None)
        code, out = json_out(capsys, "down", "--json")
        assert code == 0
        assert out == {"stopped": ["lonely"]}
        assert proc.wait(10) is not None  # the process is gone
        code, out = json_out(capsys, "down", "--json")
        assert out == {"stopped": []}
    finally:
        if proc.poll() is None:
            proc.kill()
