"""``podium logs RUN [SERVICE]``: what a run's services wrote.

Local backend: each service process appends its output to ``<state_dir>/logs/<service>.log``
(``handlers/deploy/local.py``), after a line ``--- podium: starting <service> (...) for run <run>
...`` marking where that process begins. The local registry (``list_processes``) records, per
service, the run that started the process, its log file and ``log_offset``, where its output
starts: that part is printed. A process no longer registered (stopped by ``podium down`` or a
teardown, or one that died) is found by its start line in the log files. A run whose services
were adopted from an earlier run (same image and configuration: no new process) is shown the
processes serving its project, and says so.

gcp backend: the services are Cloud Run services; their output is in Cloud Logging. The command
prints the query (resource type, service names, location, the run's start time), the ``gcloud
logging read`` command line, and a Logs Explorer link, for the architecture's project.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from daemon.config import Settings

EXIT_OK, EXIT_USAGE = 0, 2
FOLLOW_POLL_SECONDS = 0.5
# The line handlers/deploy/local.py writes before a process's output.
START_LINE = re.compile(rb"^--- podium: starting (?P<service>\S+) \(.*\) for run (?P<run>\S+) on port \d+ at \S+ ---$",
                        re.MULTILINE)


@dataclass
class Segment:
    """One process's output in a log file: ``[start, end)``, ``end`` None = to the end of the file."""

    service: str
    run_id: str
    log_path: str
    start: int
    end: int | None = None
    pid: int | None = None
    alive: bool | None = None

    def read(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.start)
                data = fh.read() if self.end is None else fh.read(max(self.end - self.start, 0))
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc.strerror})\n"
        return data.decode(errors="replace")

    def header(self) -> str:
        how = "" if self.alive is None else (f", pid {self.pid} running" if self.alive else ", exited")
        return f"==> {self.service} (run {self.run_id}{how}) {self.log_path} <=="


def show_logs(settings: Settings, run_id: str, service: str | None, *, follow: bool, as_json: bool) -> int:
    if settings.backend == "gcp":
        return _gcp(settings, run_id, service, as_json=as_json)
    return _local(settings, run_id, service, follow=follow, as_json=as_json)


# ---- local ---------------------------------------------------------------------------------

def _registered(records: Sequence[dict[str, Any]], run_id: str) -> list[Segment]:
    return [Segment(str(r["service"]), run_id, str(r["log_path"]), int(r.get("log_offset") or 0),
                    pid=r.get("pid"), alive=bool(r.get("alive")))
            for r in sorted(records, key=lambda r: str(r.get("service")))
            if r.get("run_id") == run_id and r.get("log_path")]


def _from_start_lines(folders: Sequence[Path], run_id: str) -> list[Segment]:
    """Segments of ``run_id`` found by the start lines in ``folders/*.log`` (each to the next start line)."""
    found: list[Segment] = []
    for path in sorted({p.resolve() for folder in folders for p in folder.glob("*.log")}):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        starts = list(START_LINE.finditer(data))
        for i, match in enumerate(starts):
            if match["run"].decode(errors="replace") == run_id:
                end = starts[i + 1].start() if i + 1 < len(starts) else None
                found.append(Segment(match["service"].decode(errors="replace"), run_id, str(path), match.start(), end))
    # one process per service: a service restarted within the run keeps every segment, in order
    return found


def _local(settings: Settings, run_id: str, service: str | None, *, follow: bool, as_json: bool) -> int:
    from cli.status import store_for
    from handlers.deploy.local import list_processes

    records = list_processes(settings)
    segments = _registered(records, run_id)
    note = None
    if not segments:
        folders = [Path(settings.state_dir) / "logs", *{Path(str(r["log_path"])).parent for r in records
                                                        if r.get("log_path")}]
        segments = _from_start_lines([f for f in folders if f.is_dir()], run_id)
    if not segments:
        doc = store_for(settings).get(run_id)
        if doc is None:
            print(f"podium logs: no run {run_id!r} (and no local service output of it)", file=sys.stderr)
            return EXIT_USAGE
        project = (doc.get("architecture") or {}).get("project_id")
        serving = [r for r in records if project and r.get("project") == project and r.get("log_path")]
        segments = [Segment(str(r["service"]), str(r.get("run_id")), str(r["log_path"]),
                            int(r.get("log_offset") or 0), pid=r.get("pid"), alive=bool(r.get("alive")))
                    for r in serving]
        if segments:
            note = (f"run {run_id} started no process of its own: its services were adopted from "
                    f"{', '.join(sorted({f'run {s.run_id}' for s in segments}))} (same image and configuration); "
                    f"showing the processes serving project {project}")
        else:
            print(f"podium logs: run {run_id} (state {doc.get('state')}) has no local service output: "
                  f"nothing was deployed by it here, or its log files are not under {Path(settings.state_dir) / 'logs'} "
                  "(set PODIUM_STATE_DIR to the daemon's)", file=sys.stderr)
            return EXIT_OK
    if service is not None:
        mine = [s for s in segments if s.service == service]
        if not mine:
            names = ", ".join(sorted({s.service for s in segments}))
            print(f"podium logs: run {run_id} has no local output of service {service!r} (services: {names})",
                  file=sys.stderr)
            return EXIT_USAGE
        segments = mine
    if note:
        print(f"podium logs: {note}", file=sys.stderr)
    if as_json:
        print(json.dumps([asdict(s) | {"log": s.read()} for s in segments], indent=2))
        return EXIT_OK
    headers = len(segments) > 1
    for i, segment in enumerate(segments):
        if headers:
            print(("\n" if i else "") + segment.header())
        text = segment.read()
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()
    if follow:
        _follow(segments, run_id, headers=headers)
    return EXIT_OK


def _follow(segments: Sequence[Segment], run_id: str, *, headers: bool) -> None:
    """Print what the open-ended segments' files gain until Ctrl-C; a file whose service is
    restarted for another run (a new start line) is no longer followed."""
    positions: dict[str, int] = {}
    for s in segments:
        if s.end is None:
            try:
                positions[s.log_path] = Path(s.log_path).stat().st_size
            except OSError:
                positions[s.log_path] = s.start
    names = {s.log_path: s.service for s in segments}
    last_shown = segments[-1].log_path if segments else None
    try:
        while positions:
            time.sleep(FOLLOW_POLL_SECONDS)
            for path, position in list(positions.items()):
                try:
                    with open(path, "rb") as fh:
                        fh.seek(position)
                        data = fh.read()
                except OSError:
                    continue
                if not data:
                    continue
                start = START_LINE.search(data)
                if start is not None and start["run"].decode(errors="replace") != run_id:
                    data = data[: start.start()]
                    del positions[path]
                else:
                    positions[path] = position + len(data)
                if not data:
                    continue
                if headers and path != last_shown:
                    sys.stdout.write(f"\n==> {names[path]} <==\n")
                    last_shown = path
                sys.stdout.write(data.decode(errors="replace"))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass


# ---- gcp -----------------------------------------------------------------------------------

def cloud_logging_query(services: Sequence[str], since: str | None, regions: Sequence[str] = ()) -> str:
    """The Logging query language filter for these Cloud Run services (one condition a line)."""
    quoted = [json.dumps(s) for s in services]
    names = quoted[0] if len(quoted) == 1 else "(" + " OR ".join(quoted) + ")"
    lines = ['resource.type="cloud_run_revision"', f"resource.labels.service_name={names}"]
    if len(regions) == 1:
        lines.append(f"resource.labels.location={json.dumps(regions[0])}")
    if since:
        lines.append(f"timestamp>={json.dumps(since)}")
    return "\n".join(lines)


def _gcp(settings: Settings, run_id: str, service: str | None, *, as_json: bool) -> int:
    from cli.status import as_datetime, store_for
    from machines.architecture import Architecture
    from machines.hydration import all_services

    doc = store_for(settings).get(run_id)
    if doc is None:
        print(f"podium logs: no run {run_id!r} in collection {settings.collection!r}", file=sys.stderr)
        return EXIT_USAGE
    if not doc.get("architecture"):
        print(f"podium logs: run {run_id} has no valid architecture (state {doc.get('state')}): it deployed nothing",
              file=sys.stderr)
        return EXIT_OK
    arch = Architecture.from_dict(doc["architecture"], source=f"run {run_id}")
    specs = all_services(arch)
    if service is not None and service not in specs:
        print(f"podium logs: run {run_id} has no service {service!r} (services: {', '.join(specs)})", file=sys.stderr)
        return EXIT_USAGE
    director = arch.service_manager_spec.name
    names = [service] if service else [director, *sorted(n for n in specs if n != director)]
    regions = sorted({(s.deployment.region if s.deployment and s.deployment.region else arch.region)
                      for n, (_df, s) in specs.items() if n in names} - {""})
    project = arch.project_id or settings.project
    created = as_datetime(doc.get("created_at"))
    since = created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else None
    query = cloud_logging_query(names, since, regions)
    one_line = " AND ".join(query.splitlines())
    read = (f"gcloud logging read {shlex.quote(one_line)} --project={shlex.quote(project)} --order=asc "
            "--limit=1000 --format='value(timestamp,resource.labels.service_name,severity,textPayload,jsonPayload.message)'")
    tail = f"gcloud beta logging tail {shlex.quote(one_line)} --project={shlex.quote(project)}"
    url = ("https://console.cloud.google.com/logs/query;query=" + urllib.parse.quote(query, safe="")
           + f"?project={urllib.parse.quote(project)}")
    if as_json:
        print(json.dumps({"run_id": run_id, "project": project, "services": names, "query": query,
                          "gcloud": read, "tail": tail, "console_url": url}, indent=2))
        return EXIT_OK
    print(f"# Cloud Logging query for run {run_id} (project {project}):")
    print(query)
    print("\n# read it:")
    print(read)
    print("\n# follow it:")
    print(tail)
    print("\n# Logs Explorer:")
    print(url)
    return EXIT_OK
