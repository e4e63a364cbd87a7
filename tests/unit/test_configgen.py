"""The ConfigGenerator: stable files, atomic writes, and only its own files removed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from handlers.configgen import (
    MARKER_PREFIX,
    generate_configs,
    marker_line,
    plan_configs,
    remove_stale_configs,
)
from machines.architecture import Architecture, load_architecture
from machines.errors import HandlerError
from machines.hydration import hydrate
from machines.resources import resources_for_service

TESTDATA = Path(__file__).resolve().parents[2] / "testdata" / "architecture.yaml"
SERVICES = ("director", "publisher", "subscriber")


@pytest.fixture
def arch() -> Architecture:
    return load_architecture(TESTDATA.read_text())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name in SERVICES:
        (tmp_path / name).mkdir()
    return tmp_path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def without_subscriber(arch: Architecture) -> Architecture:
    data = arch.to_dict()
    flow = data["dataflows"]["tracer"]
    del flow["services"]["subscriber"]
    del flow["resources"]["subscriptions"]
    return Architecture.from_dict(data)


def test_writes_every_file(arch: Architecture, root: Path) -> None:
    files = generate_configs(arch, root)
    assert [(f.service, f.path.relative_to(root).as_posix(), f.kind) for f in files] == [
        ("director", "director/resources.yaml", "resources"),
        ("publisher", "publisher/resources.yaml", "resources"),
        ("subscriber", "subscriber/resources.yaml", "resources"),
        ("director", "director/services.yaml", "services"),
    ]
    for f in files:
        content = f.path.read_bytes()
        assert f.sha256 == hashlib.sha256(content).hexdigest()
        assert f.changed
        first, _, body = content.decode().partition("\n")
        assert first == marker_line(arch) == f"{MARKER_PREFIX} (architecture podium-demo)"
        if f.kind == "resources":
            assert yaml.safe_load(body) == resources_for_service(arch, f.service)


def test_services_yaml_is_the_hydrated_architecture(arch: Architecture, root: Path) -> None:
    generate_configs(arch, root)
    text = (root / "director" / "services.yaml").read_text()
    assert load_architecture(text) == hydrate(arch)


def test_output_is_byte_for_byte_stable(
    arch: Architecture, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    generate_configs(arch, root)
    first = snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.yaml")}
    again = generate_configs(load_architecture(TESTDATA.read_text()), root)
    assert snapshot(root) == first
    assert not any(f.changed for f in again)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.yaml")} == mtimes  # not rewritten
    # a fresh tree gets the very same bytes
    other = tmp_path_factory.mktemp("other")
    for name in SERVICES:
        (other / name).mkdir()
    generate_configs(arch, other)
    assert snapshot(other) == first


def test_changed_content_is_rewritten(arch: Architecture, root: Path) -> None:
    generate_configs(arch, root)
    target = root / "publisher" / "resources.yaml"
    target.write_text(marker_line(arch) + "\nstale: true\n")
    files = {f.path: f for f in generate_configs(arch, root)}
    assert files[target].changed
    assert "stale" not in target.read_text()
    assert not files[root / "subscriber" / "resources.yaml"].changed


def test_no_temporary_files_left(arch: Architecture, root: Path) -> None:
    generate_configs(arch, root)
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []
    assert oct((root / "publisher" / "resources.yaml").stat().st_mode & 0o777) == oct(0o644)


def test_stale_generated_files_are_removed(arch: Architecture, root: Path) -> None:
    generate_configs(arch, root)
    stale = root / "subscriber" / "resources.yaml"
    assert stale.exists()
    files = generate_configs(without_subscriber(arch), root)
    assert not stale.exists()
    assert {f.service for f in files} == {"director", "publisher"}


def test_moved_director_leaves_no_services_yaml_behind(arch: Architecture, root: Path) -> None:
    generate_configs(arch, root)
    (root / "sd").mkdir()
    data = arch.to_dict()
    data["service_manager_spec"]["deployment"]["buildable_module_path"] = "sd"
    generate_configs(Architecture.from_dict(data), root)
    assert not (root / "director" / "services.yaml").exists()
    assert not (root / "director" / "resources.yaml").exists()
    assert (root / "sd" / "services.yaml").exists()


def test_files_without_the_marker_are_never_deleted(arch: Architecture, root: Path) -> None:
    handwritten = root / "subscriber" / "resources.yaml"
    handwritten.write_text("topics: []\n")
    nested = root / "publisher" / "config" / "services.yaml"
    nested.parent.mkdir()
    nested.write_text("# my own services file\n")
    removed = remove_stale_configs(without_subscriber(arch), root)
    assert removed == []
    generate_configs(without_subscriber(arch), root)
    assert handwritten.read_text() == "topics: []\n"
    assert nested.read_text() == "# my own services file\n"


def test_another_architectures_files_are_never_deleted(arch: Architecture, root: Path) -> None:
    other = root / "legacy" / "resources.yaml"
    other.parent.mkdir()
    other.write_text(f"{MARKER_PREFIX} (architecture something-else)\ntopics: []\n")
    mine = root / "old-service" / "resources.yaml"
    mine.parent.mkdir()
    mine.write_text(f"{marker_line(arch)}\ntopics: []\n")
    generate_configs(arch, root)
    assert other.exists()
    assert not mine.exists()


def test_hidden_and_virtualenv_folders_are_skipped(arch: Architecture, root: Path) -> None:
    for folder in (".git", "node_modules", "venv-x"):
        path = root / folder / "resources.yaml"
        path.parent.mkdir()
        path.write_text(f"{marker_line(arch)}\n{{}}\n")
    (root / "venv-x" / "pyvenv.cfg").write_text("home = /usr\n")
    generate_configs(arch, root)
    for folder in (".git", "node_modules", "venv-x"):
        assert (root / folder / "resources.yaml").exists()


def test_missing_build_folder(arch: Architecture, tmp_path: Path) -> None:
    (tmp_path / "director").mkdir()
    with pytest.raises(HandlerError) as info:
        generate_configs(arch, tmp_path)
    assert not info.value.retryable
    assert str(tmp_path / "publisher") in info.value.message
    assert str(tmp_path / "subscriber") in info.value.message
    assert list(tmp_path.rglob("*.yaml")) == []  # nothing written


def test_shared_build_folder_with_different_content(arch: Architecture, root: Path) -> None:
    data = arch.to_dict()
    data["dataflows"]["tracer"]["services"]["subscriber"]["deployment"]["buildable_module_path"] = (
        "publisher"
    )
    with pytest.raises(HandlerError, match="share the build folder"):
        generate_configs(Architecture.from_dict(data), root)


def test_director_without_deployment(arch: Architecture, root: Path) -> None:
    data = arch.to_dict()
    del data["service_manager_spec"]["deployment"]
    files = generate_configs(Architecture.from_dict(data), root)
    assert {f.service for f in files} == {"publisher", "subscriber"}
    assert not (root / "director" / "services.yaml").exists()


def test_secrets_stay_names(arch: Architecture, root: Path) -> None:
    os.environ["PODIUM_TEST_SECRET_VALUE"] = "hunter2-do-not-write"
    try:
        data = arch.to_dict()
        data["dataflows"]["tracer"]["services"]["publisher"]["deployment"][
            "secret_environment_vars"
        ] = [{"name": "API_KEY", "value_from": "PODIUM_TEST_SECRET_VALUE"}]
        generate_configs(Architecture.from_dict(data), root)
    finally:
        del os.environ["PODIUM_TEST_SECRET_VALUE"]
    services = (root / "director" / "services.yaml").read_text()
    assert "value_from: PODIUM_TEST_SECRET_VALUE" in services
    assert all("hunter2" not in p.read_text() for p in root.rglob("*.yaml"))


def test_plan_configs_is_pure(arch: Architecture, tmp_path: Path) -> None:
    planned = plan_configs(arch, tmp_path)
    assert [p.path.relative_to(tmp_path).as_posix() for p in planned] == [
        "director/resources.yaml",
        "publisher/resources.yaml",
        "subscriber/resources.yaml",
        "director/services.yaml",
    ]
    assert list(tmp_path.iterdir()) == []
