"""handlers.preflight: runs a service's own tests in a subprocess (real pytest, go test and commands, tiny tmp services)."""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import Settings
from handlers.base import EffectContext
from handlers.preflight import OUTPUT_TAIL_CHARS, preflight_effect, run_preflight, run_preflight_all
from machines.architecture import Architecture
from machines.hydration import hydrate
from machines.messages import RunView, StartCommand
from machines.start import prepare_architecture as prepare


def make_service(root: Path, name: str, tests: dict[str, str]) -> Path:
    """A service folder with ``tests/<file>`` for each entry of ``tests``."""
    service = root / name
    (service / "tests").mkdir(parents=True)
    (service / "main.py").write_text("print('hello')\n")
    for filename, body in tests.items():
        (service / "tests" / filename).write_text(textwrap.dedent(body))
    return service


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def test_passing_service(tmp_path: Path) -> None:
    service = make_service(
        tmp_path, "ok", {"test_ok.py": "def test_ok():\n    assert 1 + 1 == 2\n"}
    )

    result = run_preflight("ok", service, timeout=60)

    assert result.passed, result.output_tail
    assert result.reason == "passed"
    assert result.exit_code == 0
    assert result.service == "ok"
    assert "1 passed" in result.output_tail
    assert result.duration_s > 0


def test_failing_service_reports_the_assertion(tmp_path: Path) -> None:
    service = make_service(
        tmp_path,
        "bad",
        {
            "test_bad.py": """
                def test_bad():
                    got = "actual-value-xyz"
                    assert got == "expected-value", "the value the service read was wrong"
            """
        },
    )

    result = run_preflight("bad", service, timeout=60)

    assert not result.passed
    assert result.reason == "failed"
    assert result.exit_code == 1
    assert "actual-value-xyz" in result.output_tail
    assert "the value the service read was wrong" in result.output_tail


def test_output_tail_is_bounded_and_keeps_the_end(tmp_path: Path) -> None:
    service = make_service(
        tmp_path,
        "loud",
        {
            "test_loud.py": """
                def test_loud():
                    print("x" * 20000)
                    assert False, "the-last-words"
            """
        },
    )

    result = run_preflight("loud", service, timeout=60)

    assert result.reason == "failed"
    assert len(result.output_tail) <= OUTPUT_TAIL_CHARS
    assert "1 failed" in result.output_tail  # the summary line is at the very end


def test_hanging_service_times_out_and_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    service = make_service(
        tmp_path,
        "hang",
        {
            "test_hang.py": f"""
                import os, subprocess, time

                def test_hang():
                    child = subprocess.Popen(["sleep", "60"])  # stays in the process group
                    with open({str(pids)!r}, "w") as f:
                        f.write(f"{{os.getpid()}} {{child.pid}}")
                    print("about to hang", flush=True)
                    time.sleep(60)
            """
        },
    )

    started = time.monotonic()
    result = run_preflight("hang", service, timeout=2)
    elapsed = time.monotonic() - started

    assert result.reason == "timeout"
    assert not result.passed
    assert result.exit_code is None
    assert elapsed < 10, elapsed
    assert "timed out after 2 s" in result.output_tail
    pytest_pid, sleep_pid = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (pid_alive(pytest_pid) or pid_alive(sleep_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pytest_pid), "the nested pytest survived the timeout"
    assert not pid_alive(sleep_pid), "a process the test started survived the timeout"


def test_folder_without_tests_is_no_tests(tmp_path: Path) -> None:
    service = make_service(tmp_path, "empty", {"helpers.py": "X = 1\n"})

    result = run_preflight("empty", service, timeout=60)

    assert not result.passed
    assert result.reason == "no_tests"
    assert result.result == "no_tests" and not result.fails_run  # reported, not a failure
    assert result.runner == "pytest"
    assert result.exit_code == 5
    assert "no tests were collected" in result.output_tail
    assert "preflight.skip: true" in result.output_tail  # says how to declare it on purpose
    assert str(service) in result.output_tail


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    result = run_preflight("ghost", missing, timeout=60)

    assert result == result.__class__(
        service="ghost",
        passed=False,
        reason="missing_dir",
        exit_code=None,
        duration_s=result.duration_s,
        output_tail=f"preflight: service folder {missing} does not exist",
    )


def test_nested_pytest_gets_a_minimal_environment_plus_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Leaked into the nested run, this option would make it fail with a usage error.
    monkeypatch.setenv("PYTEST_ADDOPTS", "--no-such-option-podium")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-podium")
    monkeypatch.setenv("PODIUM_PREFLIGHT_INHERITED", "yes")
    monkeypatch.setenv("UNRELATED_DAEMON_VARIABLE", "daemon-only-value")
    monkeypatch.setenv("PODIUM_SECRET_DB_PASSWORD", "hunter2-secret-value")
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8681")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    service = make_service(
        tmp_path,
        "env",
        {
            "test_env.py": """
                import os

                def test_env():
                    print(dict(os.environ))  # shown in the tail: nothing of the daemon's may be in it
                    assert os.environ["RESOURCES_HINT"] == "given"
                    assert os.environ["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:8681"
                    assert os.environ["LC_ALL"] == "C.UTF-8"
                    assert "PATH" in os.environ and "HOME" in os.environ
                    assert False, "show the output"
            """
        },
    )

    result = run_preflight("env", service, timeout=60, env={"RESOURCES_HINT": "given"})

    assert result.reason == "failed" and "show the output" in result.output_tail, result.output_tail
    assert "AssertionError" in result.output_tail and "KeyError" not in result.output_tail, result.output_tail
    for leaked in ("PYTHONPATH", "PYTEST_ADDOPTS", "PODIUM_", "UNRELATED_DAEMON_VARIABLE",
                   "daemon-only-value", "hunter2-secret-value"):
        assert leaked not in result.output_tail, leaked


def test_known_secrets_are_redacted_from_the_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_SECRET_OTHER_SERVICE", "other-services-secret")
    service = make_service(
        tmp_path,
        "leaky",
        {
            "test_leak.py": """
                import os

                def test_leak():
                    print("my token is", os.environ["API_TOKEN"])
                    print("a daemon secret reached by other means: other-services-secret")
                    assert os.environ["API_TOKEN"] == "no", "token " + os.environ["API_TOKEN"]
            """
        },
    )

    token = "s3cr3t-token-value"
    result = run_preflight("leaky", service, timeout=60, env={"API_TOKEN": token}, secrets=[token, "ab"])

    assert result.reason == "failed"
    assert token not in result.output_tail
    assert "other-services-secret" not in result.output_tail
    assert "my token is ***" in result.output_tail
    assert "by other means: ***" in result.output_tail


MARKING_TEST = """
    import os, time

    def test_mark():
        marks = os.environ["PREFLIGHT_MARKS"]
        name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        start = time.monotonic()
        time.sleep(1.0)
        with open(os.path.join(marks, name), "w") as f:
            f.write(f"{start} {time.monotonic()}")
"""


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = best = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        best = max(best, running)
    return best


def test_parallel_runner_bounds_concurrency_and_keeps_order(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    names = ["svc-d", "svc-a", "svc-c", "svc-b"]
    items = [(n, make_service(tmp_path, n, {"test_mark.py": MARKING_TEST})) for n in names]

    results = run_preflight_all(
        items, timeout=60, concurrency=2, env={"PREFLIGHT_MARKS": str(marks)}
    )

    assert [r.service for r in results] == names
    assert all(r.passed for r in results), [r.output_tail for r in results if not r.passed]
    intervals = []
    for n in names:
        start, end = (float(x) for x in (marks / n).read_text().split())
        intervals.append((start, end))
    assert max_overlap(intervals) == 2  # bounded by 2, and it did run two at a time


def test_parallel_runner_mixed_results_in_input_order(tmp_path: Path) -> None:
    ok = make_service(tmp_path, "ok", {"test_ok.py": "def test_ok():\n    pass\n"})
    bad = make_service(tmp_path, "bad", {"test_bad.py": "def test_bad():\n    assert 0\n"})
    items = [("bad", bad), ("missing", tmp_path / "missing"), ("ok", ok)]

    results = run_preflight_all(items, timeout=60, concurrency=3)

    assert [(r.service, r.reason) for r in results] == [
        ("bad", "failed"),
        ("missing", "missing_dir"),
        ("ok", "passed"),
    ]
    assert run_preflight_all([], timeout=1) == []


# ---------------------------------------------------------------------------------------------
# Other languages: Go, an explicit command, nothing recognised.
# ---------------------------------------------------------------------------------------------

GO = shutil.which("go")
needs_go = pytest.mark.skipif(GO is None, reason="go is not installed (apt-get install golang-go)")


def make_go_service(root: Path, name: str, files: dict[str, str]) -> Path:
    """A Go module ``example.com/<name>`` with ``files`` (path → source)."""
    service = root / name
    service.mkdir(parents=True)
    (service / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.18\n")
    for path, body in files.items():
        (service / path).parent.mkdir(parents=True, exist_ok=True)
        (service / path).write_text(textwrap.dedent(body))
    return service


GO_LIB = """
    package calc

    func Add(a, b int) int { return a + b }
"""


@needs_go
def test_go_service_runs_go_test(tmp_path: Path) -> None:
    service = make_go_service(tmp_path, "gosvc", {
        "calc/calc.go": GO_LIB,
        "calc/calc_test.go": """
            package calc

            import "testing"

            func TestAdd(t *testing.T) {
                if Add(2, 3) != 5 {
                    t.Fatal("add is broken")
                }
            }
        """,
        "main.py": "print('a stray python file does not make it a python service')\n",
    })

    result = run_preflight("gosvc", service, timeout=120)

    assert result.reason == "passed", result.output_tail
    assert result.runner == "go"
    assert result.command == (GO, "test", "./...")
    assert "ok  \texample.com/gosvc/calc" in result.output_tail


@needs_go
def test_go_service_failing_test_fails(tmp_path: Path) -> None:
    service = make_go_service(tmp_path, "gobad", {
        "calc/calc.go": GO_LIB,
        "calc/calc_test.go": """
            package calc

            import "testing"

            func TestAdd(t *testing.T) {
                if Add(2, 2) != 5 {
                    t.Fatalf("two and two made %d, not five", Add(2, 2))
                }
            }
        """,
    })

    result = run_preflight("gobad", service, timeout=120)

    assert result.reason == "failed" and result.fails_run
    assert result.exit_code == 1
    assert "two and two made 4, not five" in result.output_tail


@needs_go
def test_go_service_without_test_files_is_no_tests(tmp_path: Path) -> None:
    service = make_go_service(tmp_path, "gonone", {"calc/calc.go": GO_LIB, "util/util.go": "package util\n"})

    result = run_preflight("gonone", service, timeout=120)

    assert result.reason == "no_tests", result.output_tail
    assert not result.fails_run
    assert "[no test files]" in result.output_tail
    assert "found no test files" in result.output_tail


def test_go_service_without_go_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = make_go_service(tmp_path, "nogo", {"calc/calc.go": GO_LIB})
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # the child's PATH comes from the daemon's

    result = run_preflight("nogo", service, timeout=60)

    assert result.reason == "missing_tool" and result.fails_run
    assert result.runner == "go"
    assert result.command == ("go", "test", "./...")  # what would have run
    assert result.exit_code is None
    assert "has a go.mod" in result.output_tail
    assert "install Go" in result.output_tail and "golang-go" in result.output_tail


def script(service: Path, code: str, name: str = "check") -> str:
    """An executable Python script of the service (what preflight.command may name): ``./name``."""
    path = service / name
    path.write_text(f"#!{sys.executable}\n{code}\n")
    path.chmod(0o755)
    return f"./{name}"


def test_explicit_command_passes(tmp_path: Path) -> None:
    service = tmp_path / "node"
    service.mkdir()
    (service / "package.json").write_text("{}\n")
    code = "import os; print('ran in', os.getcwd()); print('runner says all green')"

    result = run_preflight("node", service, timeout=60, command=[script(service, code)])

    assert result.reason == "passed", result.output_tail
    assert result.runner == "command"
    assert result.command == (str(service.resolve() / "check"),)
    assert f"ran in {service}" in result.output_tail
    assert "runner says all green" in result.output_tail


def test_explicit_command_wins_over_the_folder(tmp_path: Path) -> None:
    service = make_service(tmp_path, "py", {"test_ok.py": "def test_ok():\n    pass\n"})
    (service / "go.mod").write_text("module example.com/py\n\ngo 1.18\n")

    result = run_preflight("py", service, timeout=60, command=[script(service, "print('custom')")])

    assert result.runner == "command" and result.reason == "passed"
    assert "custom" in result.output_tail and "passed" not in result.output_tail


def test_explicit_command_failing_fails_with_its_output(tmp_path: Path) -> None:
    service = tmp_path / "rust"
    service.mkdir()
    code = "import sys; print('test result: FAILED. 1 passed; 1 failed'); sys.exit(101)"

    result = run_preflight("rust", service, timeout=60, command=[script(service, code)])

    assert result.reason == "failed" and result.fails_run
    assert result.exit_code == 101
    assert "1 failed" in result.output_tail


def test_explicit_command_is_not_run_through_a_shell(tmp_path: Path) -> None:
    service = tmp_path / "shell"
    service.mkdir()
    mark = tmp_path / "shell-ran"

    result = run_preflight(
        "shell", service, timeout=60,
        command=[script(service, "import sys; print(sys.argv[1:])"), f"; touch {mark}", "$HOME"],
    )

    assert result.reason == "passed", result.output_tail
    assert f"['; touch {mark}', '$HOME']" in result.output_tail
    assert not mark.exists()


def test_explicit_command_times_out_and_its_group_is_killed(tmp_path: Path) -> None:
    service = tmp_path / "hang"
    service.mkdir()
    pids = tmp_path / "pids"
    code = textwrap.dedent(f"""
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        print("hanging", flush=True)
        time.sleep(60)
    """)

    started = time.monotonic()
    result = run_preflight("hang", service, timeout=2, command=[script(service, code)])

    assert result.reason == "timeout" and result.fails_run
    assert time.monotonic() - started < 10
    assert "hanging" in result.output_tail and "timed out after 2 s" in result.output_tail
    runner_pid, sleep_pid = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 5
    while (pid_alive(runner_pid) or pid_alive(sleep_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(runner_pid) and not pid_alive(sleep_pid)


def test_explicit_command_gets_the_minimal_environment_and_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODIUM_SECRET_OTHER", "another-services-secret")
    monkeypatch.setenv("UNRELATED_DAEMON_VARIABLE", "daemon-only-value")
    service = tmp_path / "envsvc"
    service.mkdir()
    code = "import os; print(sorted(os.environ)); print('token', os.environ['API_TOKEN'])"

    result = run_preflight(
        "envsvc", service, timeout=60, env={"API_TOKEN": "tok-secret-123"}, secrets=["tok-secret-123"],
        command=[script(service, code)],
    )

    assert result.reason == "passed", result.output_tail
    assert "'API_TOKEN'" in result.output_tail and "'PATH'" in result.output_tail
    assert "token ***" in result.output_tail and "tok-secret-123" not in result.output_tail
    for leaked in ("PODIUM_", "UNRELATED_DAEMON_VARIABLE"):
        assert leaked not in result.output_tail, leaked


def test_explicit_command_not_in_the_service_is_a_clear_failure(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    service.mkdir()

    result = run_preflight("svc", service, timeout=60, command=["./podium-no-such-runner", "test"])

    assert result.reason == "missing_tool" and result.fails_run
    assert "'./podium-no-such-runner' is not a file in" in result.output_tail


@pytest.mark.parametrize("program", ["sh", "/bin/sh", "../outside.sh", "./escape"])
def test_explicit_command_may_run_only_a_file_of_the_service(tmp_path: Path, program: str) -> None:
    """A start command may run only the service's own code: no PATH lookup (``sh -c ...``), no
    absolute path, no ``..``, no link leaving the folder."""
    service = tmp_path / "svc"
    service.mkdir()
    mark = tmp_path / "ran"
    outside = tmp_path / "outside.sh"
    outside.write_text(f"#!/bin/sh\ntouch {mark}\n")
    outside.chmod(0o755)
    (service / "escape").symlink_to(outside)

    result = run_preflight("svc", service, timeout=60, command=[program, "-c", f"touch {mark}"])

    assert result.reason == "refused" and result.fails_run, result.output_tail
    assert not mark.exists()


def test_folder_without_a_recognised_runner_is_no_tests(tmp_path: Path) -> None:
    service = tmp_path / "web"
    (service / "node_modules" / "dep").mkdir(parents=True)
    (service / "node_modules" / "dep" / "setup.py").write_text("")  # a vendored file does not count
    (service / "package.json").write_text("{}\n")

    result = run_preflight("web", service, timeout=60)

    assert result.reason == "no_tests" and not result.fails_run
    assert result.runner == "none" and result.command == () and result.exit_code is None
    assert "no test runner applies" in result.output_tail


# ---------------------------------------------------------------------------------------------
# The effect: skipping, and what it reports.
# ---------------------------------------------------------------------------------------------


def effect_ctx(root: Path, preflight: dict[str, Any] | None, *, plan: dict[str, Any] | None = None,
               timeout: float = 60.0) -> EffectContext:
    """The ``preflight`` effect of service ``svc`` (folder ``root/svc``) of a tiny architecture."""
    deployment: dict[str, Any] = {"source_path": ".", "buildable_module_path": "svc"}
    if preflight is not None:
        deployment["preflight"] = preflight
    doc = {
        "name": "pf", "project_id": "podium-local",
        "service_manager_spec": {"name": "director", "service_account": "director-sa"},
        "dataflows": {"flow": {"services": {"svc": {"service_account": "svc-sa", "deployment": deployment}}}},
    }
    arch = hydrate(Architecture.from_dict(doc))
    run = RunView.model_validate(
        {"run_id": "pf-1", "architecture": arch.to_dict(), "source_root": str(root), "plan": plan or {}}
    )
    settings = Settings(project="podium-local", state_dir=root / "state", source_root=root,
                        preflight_timeout_seconds=timeout)
    return EffectContext(run_id="pf-1", effect_id="preflight:svc:a0", kind="preflight", item="svc",
                         params={}, attempt=0, run=run, settings=settings)


def marking_service(root: Path) -> tuple[Path, Path]:
    """Service ``svc`` whose test leaves a mark when it runs."""
    mark = root / "ran"
    make_service(root, "svc", {"test_mark.py": f"def test_mark():\n    open({str(mark)!r}, 'w').close()\n"})
    return root / "svc", mark


def test_effect_reports_passed_with_its_result(tmp_path: Path) -> None:
    _, mark = marking_service(tmp_path)

    [outcome] = preflight_effect(effect_ctx(tmp_path, None))

    assert mark.exists()
    assert outcome.type == "preflight.passed" and outcome.item == "svc"
    assert outcome.data["result"] == "passed" and outcome.data["reason"] == "passed"
    assert outcome.data["runner"] == "pytest"


def test_effect_skips_a_service_marked_skip(tmp_path: Path) -> None:
    _, mark = marking_service(tmp_path)

    [outcome] = preflight_effect(effect_ctx(tmp_path, {"skip": True, "command": ["./podium-no-such-runner"]}))

    assert not mark.exists()
    assert outcome.type == "preflight.passed"
    assert outcome.data["result"] == "skipped" and outcome.data["reason"] == "skipped"
    assert "deployment.preflight.skip" in outcome.data["output_tail"]


def test_effect_skips_every_service_of_a_run_started_with_skip_preflight(tmp_path: Path) -> None:
    _, mark = marking_service(tmp_path)
    command = StartCommand.model_validate(
        {"command": "start", "architecture": effect_ctx(tmp_path, None).run.architecture, "skip_preflight": True}
    )
    plan = prepare(command, "podium-local").plan

    [outcome] = preflight_effect(effect_ctx(tmp_path, None, plan=plan))

    assert plan["skip_preflight"] is True
    assert not mark.exists()
    assert outcome.type == "preflight.passed" and outcome.data["result"] == "skipped"
    assert "--skip-preflight" in outcome.data["output_tail"]


def test_start_command_without_skip_preflight_leaves_the_plan_as_it_was(tmp_path: Path) -> None:
    architecture = effect_ctx(tmp_path, None).run.architecture
    plan = prepare(StartCommand.model_validate({"command": "start", "architecture": architecture}), "p-local").plan

    assert "skip_preflight" not in plan
    assert plan["all_services"] == ["director", "svc"]


def test_cli_start_skip_preflight_sets_the_command_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daemon.pubsub
    from cli.main import main

    sent: list[dict[str, Any]] = []

    def publish(_settings: Any, body: dict[str, Any]) -> str:
        sent.append(body)
        return f"m-{len(sent)}"

    monkeypatch.setattr(daemon.pubsub, "publish_command", publish)
    arch = tmp_path / "architecture.yaml"
    arch.write_text(yaml.safe_dump(dict(effect_ctx(tmp_path, None).run.architecture)))

    assert main(["start", str(arch), "--run-id", "pf-2", "--skip-preflight"]) == 0
    assert main(["start", str(arch), "--run-id", "pf-3"]) == 0

    assert [b.get("skip_preflight") for b in sent] == [True, None]
    assert StartCommand.model_validate(sent[0]).skip_preflight is True


def test_effect_reports_no_tests_without_failing(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "Cargo.toml").write_text("[package]\n")

    [outcome] = preflight_effect(effect_ctx(tmp_path, None))

    assert outcome.type == "preflight.passed"
    assert outcome.data["result"] == "no_tests" and outcome.data["runner"] == "none"


def test_effect_runs_the_declared_command_and_fails_the_run_on_failure(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    code = "import os, sys; print('SERVICE_NAME=' + os.environ['SERVICE_NAME']); sys.exit(3)"

    [outcome] = preflight_effect(effect_ctx(tmp_path, {"command": [script(tmp_path / "svc", code)]}))

    assert outcome.type == "preflight.failed"
    assert outcome.data["result"] == "failed" and outcome.data["reason"] == "failed"
    assert outcome.data["runner"] == "command"
    assert "SERVICE_NAME=svc" in outcome.data["error"]


def test_effect_timeout_is_the_shorter_of_the_service_and_the_daemon(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    hang = [script(tmp_path / "svc", "import time; time.sleep(60)")]

    [shorter] = preflight_effect(effect_ctx(tmp_path, {"command": hang, "timeout_seconds": 1}, timeout=60))
    [capped] = preflight_effect(effect_ctx(tmp_path, {"command": hang, "timeout_seconds": 600}, timeout=1))

    assert shorter.type == "preflight.failed" and shorter.data["reason"] == "timeout"
    assert shorter.data["timeout_s"] == 1 and "timeout_capped_from" not in shorter.data
    assert capped.type == "preflight.failed" and capped.data["reason"] == "timeout"
    assert capped.data["timeout_s"] == 1 and capped.data["timeout_capped_from"] == 600
    assert "capped by PODIUM_PREFLIGHT_TIMEOUT_SECONDS" in capped.data["error"]
