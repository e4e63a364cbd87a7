"""gs:// source roots: fetched once, pinned by sha256, unpacked safely, configs regenerated."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.upload import upload_source
from daemon.config import Settings
from handlers.base import EffectContext
from handlers.source_archives import gs_source_problem, parse_gs_source, unpack
from machines.architecture import load_architecture
from machines.errors import HandlerError
from machines.hydration import hydrate
from machines.messages import RunView
from tests.architectures import TESTDATA
from tests.fakes.storage import StorageFake, start_storage_fake

BUCKET = "podium-sources"


@pytest.fixture(scope="module")
def gcs() -> Iterator[StorageFake]:
    fake = start_storage_fake()
    fake.client("p").create_bucket(BUCKET)
    yield fake
    fake.stop()


def settings_for(gcs: StorageFake, state_dir: Path) -> Settings:
    return Settings(project="p", state_dir=state_dir, gcp_endpoints=f"storage={gcs.endpoint}")


def ctx_for(source_root: str, settings: Settings) -> EffectContext:
    arch = hydrate(load_architecture(TESTDATA.read_text()))
    run = RunView.model_validate({"run_id": "r", "architecture": arch.to_dict(), "source_root": source_root})
    return EffectContext("r", "e", "build", "publisher", {}, 0, run, settings)


def tarball(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_gs_urls_are_checked() -> None:
    assert parse_gs_source("gs://b-1/src/app.tar.gz").object == "src/app.tar.gz"
    pinned = parse_gs_source("gs://b-1/app.tgz#sha256=" + "a" * 64)
    assert pinned.sha256 == "a" * 64 and pinned.url == "gs://b-1/app.tgz"
    for bad in ("gs://b/app.zip", "gs://B_UP/app.tar.gz", "gs://bucket/", "gs://bucket/a.tar.gz#sha256=xyz",
                "http://bucket/a.tar.gz", "gs://bucket/a\x00.tar.gz"):
        assert gs_source_problem(bad), bad


def test_the_upload_round_trips_and_each_replica_regenerates_the_configs(gcs: StorageFake, workspace: Path,
                                                                        tmp_path: Path) -> None:
    settings = settings_for(gcs, tmp_path / "state")
    url = upload_source(workspace, f"gs://{BUCKET}/demo.tar.gz", settings)
    assert url.startswith(f"gs://{BUCKET}/demo.tar.gz#sha256=")
    ctx = ctx_for(url, settings)
    tree = ctx.source_root
    assert tree.is_relative_to(tmp_path / "state") and (tree / "publisher" / "main.py").is_file()
    assert (tree / "publisher" / "resources.yaml").is_file()  # configgen ran on this copy
    again = ctx_for(url, settings).source_root  # a later effect of the run: no second download
    assert again == tree


def test_a_pinned_digest_that_does_not_match_fails_the_run(gcs: StorageFake, workspace: Path, tmp_path: Path) -> None:
    settings = settings_for(gcs, tmp_path / "state")
    url = upload_source(workspace, f"gs://{BUCKET}/pinned.tar.gz", settings)
    wrong = url[: -64] + "0" * 64
    with pytest.raises(HandlerError) as err:
        _ = ctx_for(wrong, settings).source_root
    assert err.value.retryable is False and "sha256" in err.value.message
    with pytest.raises(HandlerError) as missing:
        _ = ctx_for(f"gs://{BUCKET}/nothing.tar.gz", settings).source_root
    assert missing.value.retryable is False and "no such object" in missing.value.message


@pytest.mark.parametrize(
    ("members", "links", "says"),
    [
        ({"../escape.txt": b"x"}, None, "unpacked safely"),
        ({}, {"link": "/etc/passwd"}, "unpacked safely"),
        ({}, {"up": "../../outside"}, "unpacked safely"),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, members, links, says: str) -> None:
    archive = tarball(tmp_path / "a.tar.gz", members, links)
    with pytest.raises(HandlerError) as err:
        unpack(archive, tmp_path / "out")
    assert says in err.value.message and err.value.retryable is False
    assert not (tmp_path / "escape.txt").exists()


def test_an_absolute_name_lands_inside_the_tree(tmp_path: Path) -> None:
    unpack(tarball(tmp_path / "a.tar.gz", {"/etc/evil": b"x"}), tmp_path / "out")
    assert (tmp_path / "out" / "etc" / "evil").read_bytes() == b"x"  # the data filter strips the "/"


def test_an_archive_that_unpacks_too_big_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from handlers import source_archives

    monkeypatch.setattr(source_archives, "MAX_UNPACKED_BYTES", 1000)
    archive = tarball(tmp_path / "a.tar.gz", {"a": b"0" * 600, "b": b"0" * 600})
    with pytest.raises(HandlerError) as err:
        unpack(archive, tmp_path / "out")
    assert "more than 1000 bytes" in err.value.message
    assert not (tmp_path / "out" / "b").exists()
