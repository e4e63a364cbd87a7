"""The ConfigGenerator: stable files, atomic writes, only its own files removed, and
``config_templates`` copied inside each service's folder and nowhere else."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from handlers import configgen
from handlers.configgen import (
    MARKER_PREFIX,
    MAX_TEMPLATE_BYTES,
    generate_configs,
    marker_line,
    plan_configs,
    plan_templates,
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


# ---------------------------------------------------------------------------------------------
# config_templates: plain copies inside the service folder (issue 13 point 4).
# ---------------------------------------------------------------------------------------------

TEMPLATE = b"project: {{ .ProjectID }}\nid: ${PROJECT_ID}\n\x00\xff binary is fine\n"


def with_templates(arch: Architecture, templates: dict[str, str], service: str = "publisher") -> Architecture:
    data = arch.to_dict()
    data["dataflows"]["tracer"]["services"][service]["deployment"]["config_templates"] = templates
    return Architecture.from_dict(data)


def unvalidated(arch: Architecture, templates: dict[str, str]) -> Architecture:
    """The publisher with ``templates`` set without validation (a model built around the loader)."""
    flow = arch.dataflows["tracer"]
    spec = flow.services["publisher"]
    assert spec.deployment is not None
    deployment = spec.deployment.model_copy(update={"config_templates": templates})
    spec = spec.model_copy(update={"deployment": deployment})
    flow = flow.model_copy(update={"services": {**flow.services, "publisher": spec}})
    return arch.model_copy(update={"dataflows": {**arch.dataflows, "tracer": flow}})


def refused(arch: Architecture, root: Path, *expected: str) -> str:
    """generate_configs refuses, names the publisher, and writes or removes nothing."""
    before = snapshot(root)
    with pytest.raises(HandlerError) as info:
        generate_configs(arch, root)
    message = info.value.message
    assert not info.value.retryable
    assert message.startswith("service 'publisher': "), message
    for part in expected:
        assert part in message, message
    assert snapshot(root) == before
    return message


def test_config_templates_are_copied_verbatim(arch: Architecture, root: Path) -> None:
    pub = root / "publisher"
    (pub / "tracer.tmpl.yaml").write_bytes(TEMPLATE)
    (pub / "conf").mkdir()
    (pub / "conf" / "app.ini").write_bytes(b"[app]\n")
    (pub / "link.tmpl").symlink_to("conf/app.ini")  # a symlink that stays in the folder is fine
    templates = {"tracer.tmpl.yaml": "tracer.yaml", "conf/app.ini": "./conf/app.local.ini",
                 "link.tmpl": "linked.ini"}
    files = generate_configs(with_templates(arch, templates), root)
    copies = [f for f in files if f.kind == "template"]
    assert [(f.service, f.path.relative_to(root).as_posix(), f.changed) for f in copies] == [
        ("publisher", "publisher/tracer.yaml", True),
        ("publisher", "publisher/conf/app.local.ini", True),
        ("publisher", "publisher/linked.ini", True),
    ]
    assert [f.kind for f in files[:4]] == ["resources", "resources", "resources", "services"]
    assert (pub / "tracer.yaml").read_bytes() == TEMPLATE  # no rendering, no marker
    assert (pub / "conf" / "app.local.ini").read_bytes() == b"[app]\n"
    assert not (pub / "linked.ini").is_symlink() and (pub / "linked.ini").read_bytes() == b"[app]\n"
    for f in copies:
        assert f.sha256 == hashlib.sha256(f.path.read_bytes()).hexdigest()
    assert oct((pub / "tracer.yaml").stat().st_mode & 0o777) == oct(0o644)
    assert [p for p in root.rglob("*") if p.name.startswith(".")] == []


def test_config_templates_are_idempotent_and_never_deleted(arch: Architecture, root: Path) -> None:
    pub = root / "publisher"
    (pub / "a.tmpl").write_bytes(TEMPLATE)
    templated = with_templates(arch, {"a.tmpl": "a.yaml"})
    generate_configs(templated, root)
    first = snapshot(root)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = generate_configs(templated, root)
    assert not any(f.changed for f in again)
    assert snapshot(root) == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == mtimes
    # a changed src is copied again; a hand-edited dest is overwritten
    (pub / "a.tmpl").write_bytes(b"v2\n")
    (changed,) = [f for f in generate_configs(templated, root) if f.changed]
    assert changed.path == pub / "a.yaml" and (pub / "a.yaml").read_bytes() == b"v2\n"
    # a copied file carries no marker: once the entry is gone, it is left alone
    assert {f.kind for f in generate_configs(arch, root)} == {"resources", "services"}
    assert (pub / "a.yaml").read_bytes() == b"v2\n"


def test_a_template_can_copy_a_generated_file(arch: Architecture, root: Path) -> None:
    """Sources are read before anything is written: a generated file is copied from its planned
    bytes, so the first run already copies what it writes, and the second changes nothing."""
    templated = with_templates(arch, {"resources.yaml": "resources.copy.yaml"})
    generate_configs(templated, root)
    pub = root / "publisher"
    assert (pub / "resources.copy.yaml").read_bytes() == (pub / "resources.yaml").read_bytes()
    assert not any(f.changed for f in generate_configs(templated, root))


def test_plan_templates_writes_nothing(arch: Architecture, root: Path) -> None:
    (root / "publisher" / "a.tmpl").write_bytes(TEMPLATE)
    before = snapshot(root)
    (copy,) = plan_templates(with_templates(arch, {"a.tmpl": "a.yaml"}), root)
    assert (copy.service, copy.path, copy.kind, copy.content) == (
        "publisher", root / "publisher" / "a.yaml", "template", TEMPLATE
    )
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("templates", "expected"),
    [
        ({"../x": "x.yaml"}, "src '../x' has a '..' component"),
        ({"a.tmpl": "../subscriber/a.yaml"}, "dest '../subscriber/a.yaml' has a '..' component"),
        ({"/etc/passwd": "passwd"}, "src '/etc/passwd' is an absolute path"),
        ({"a.tmpl": "resources.yaml"}, "dest 'resources.yaml' is named like a file Podium generates"),
        ({"a.tmpl": "x.yaml", "b.tmpl": "./x.yaml"}, "dest './x.yaml' is also the dest of entry 'a.tmpl'"),
    ],
)
def test_paths_refused_at_load_are_refused_here_too(
    arch: Architecture, root: Path, templates: dict[str, str], expected: str
) -> None:
    """A model built without validation does not get past configgen either."""
    refused(unvalidated(arch, templates), root, "deployment.config_templates: ", expected)


def test_a_missing_src_is_refused(arch: Architecture, root: Path) -> None:
    refused(with_templates(arch, {"missing.tmpl": "a.yaml"}), root,
            "config_templates entry 'missing.tmpl' -> 'a.yaml': src ", "missing.tmpl does not exist")


def test_a_src_that_is_a_folder_or_a_fifo_is_refused(arch: Architecture, root: Path) -> None:
    (root / "publisher" / "conf").mkdir()
    refused(with_templates(arch, {"conf": "a.yaml"}), root, "entry 'conf' -> 'a.yaml'", "is a folder")
    os.mkfifo(root / "publisher" / "pipe")  # opened without blocking, never read
    refused(with_templates(arch, {"pipe": "a.yaml"}), root, "entry 'pipe' -> 'a.yaml'", "is not a regular file")


@pytest.mark.parametrize("target", ["outside", "root", "sibling"])
def test_a_src_symlink_out_of_the_service_folder_is_refused(
    arch: Architecture, root: Path, tmp_path_factory: pytest.TempPathFactory, target: str
) -> None:
    secret = {
        "outside": tmp_path_factory.mktemp("elsewhere") / "secret",  # outside the source root
        "root": root / "secret",  # inside the source root, outside the service folder
        "sibling": root / "subscriber" / "secret",  # another service's folder
    }[target]
    secret.write_text("s3cret\n")
    (root / "publisher" / "a.tmpl").symlink_to(secret)
    message = refused(with_templates(arch, {"a.tmpl": "a.yaml"}), root,
                      "entry 'a.tmpl' -> 'a.yaml': src 'a.tmpl' resolves to", "outside the service folder")
    assert str(secret.resolve()) in message
    assert not (root / "publisher" / "a.yaml").exists()


def test_a_src_under_a_symlinked_folder_out_of_the_service_folder_is_refused(
    arch: Architecture, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "id_rsa").write_text("key\n")
    (root / "publisher" / "keys").symlink_to(elsewhere, target_is_directory=True)
    refused(with_templates(arch, {"keys/id_rsa": "a.yaml"}), root, "src 'keys/id_rsa' resolves to")


def test_a_dest_symlink_out_of_the_service_folder_is_refused(
    arch: Architecture, root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    (root / "publisher" / "a.tmpl").write_bytes(TEMPLATE)
    victim = tmp_path_factory.mktemp("elsewhere") / "victim"
    victim.write_text("keep me\n")
    (root / "publisher" / "out.yaml").symlink_to(victim)
    (root / "publisher" / "conf").symlink_to(victim.parent, target_is_directory=True)
    for dest in ("out.yaml", "conf/new.yaml"):
        refused(with_templates(arch, {"a.tmpl": dest}), root, f"dest {dest!r} resolves to",
                "outside the service folder")
    assert victim.read_text() == "keep me\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def test_a_dest_onto_a_generated_file_is_refused(arch: Architecture, root: Path) -> None:
    (root / "publisher" / "a.tmpl").write_bytes(TEMPLATE)
    (root / "publisher" / "alias.yaml").symlink_to("resources.yaml")
    refused(with_templates(arch, {"a.tmpl": "alias.yaml"}), root,
            "entry 'a.tmpl' -> 'alias.yaml': dest resolves to", "a file Podium generates")


def test_a_dest_that_is_a_folder_or_in_a_missing_folder_is_refused(arch: Architecture, root: Path) -> None:
    (root / "publisher" / "a.tmpl").write_bytes(TEMPLATE)
    (root / "publisher" / "conf").mkdir()
    refused(with_templates(arch, {"a.tmpl": "conf"}), root, "entry 'a.tmpl' -> 'conf'", "is a folder")
    refused(with_templates(arch, {"a.tmpl": "nope/a.yaml"}), root, "nope does not exist")


def test_an_oversized_src_is_refused(arch: Architecture, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = root / "publisher"
    (pub / "big.tmpl").write_bytes(b"x" * (MAX_TEMPLATE_BYTES + 1))
    refused(with_templates(arch, {"big.tmpl": "big.yaml"}), root,
            "entry 'big.tmpl' -> 'big.yaml'", f"larger than {MAX_TEMPLATE_BYTES} bytes")
    (pub / "big.tmpl").write_bytes(b"x" * MAX_TEMPLATE_BYTES)  # exactly the cap is fine
    generate_configs(with_templates(arch, {"big.tmpl": "big.yaml"}), root)
    assert (pub / "big.yaml").stat().st_size == MAX_TEMPLATE_BYTES
    # many copies of one file are bounded together
    monkeypatch.setattr(configgen, "MAX_TEMPLATES_TOTAL_BYTES", 3 * MAX_TEMPLATE_BYTES)
    many = {"big.tmpl": "big.yaml", **{f"l{i}.tmpl": f"c{i}.yaml" for i in range(4)}}
    for i in range(4):
        (pub / f"l{i}.tmpl").symlink_to("big.tmpl")
    refused(with_templates(arch, many), root, "entry 'l2.tmpl' -> 'c2.yaml'", "more than")


def test_services_sharing_a_folder_may_not_write_one_dest_from_two_srcs(arch: Architecture, root: Path) -> None:
    data = arch.to_dict()
    services = data["dataflows"]["tracer"]["services"]
    services["subscriber"]["deployment"]["buildable_module_path"] = "publisher/sub"
    services["publisher"]["deployment"]["config_templates"] = {"a.tmpl": "sub/x.yaml"}
    services["subscriber"]["deployment"]["config_templates"] = {"b.tmpl": "x.yaml"}
    (root / "publisher" / "sub").mkdir()
    (root / "publisher" / "a.tmpl").write_text("a\n")
    (root / "publisher" / "sub" / "b.tmpl").write_text("b\n")
    with pytest.raises(HandlerError) as info:
        generate_configs(Architecture.from_dict(data), root)
    assert info.value.message.startswith("service 'subscriber': config_templates entry 'b.tmpl' -> 'x.yaml': ")
    assert "also written by service 'publisher''s entry 'a.tmpl' from another src" in info.value.message
    assert list(root.rglob("*.yaml")) == []
