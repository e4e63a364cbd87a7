"""handlers.preflight: runs a service's own tests in a subprocess (real pytest, tiny tmp services)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from handlers.preflight import OUTPUT_TAIL_CHARS, run_preflight, run_preflight_all


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
    assert result.exit_code == 5
    assert "no tests were collected" in result.output_tail
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
