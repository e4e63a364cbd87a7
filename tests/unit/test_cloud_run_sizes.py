"""Cloud Run's CPU and memory rules are checked when the architecture is loaded (issue 12)."""

from __future__ import annotations

import pytest

from machines.architecture import load_architecture
from machines.architecture.cloud_run_sizes import sizing_problem
from machines.errors import InvalidArchitecture
from tests.architectures import TESTDATA


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [("", ""), ("1", "512Mi"), ("0.08", "128Mi"), ("0.5", "1Gi"), ("500m", "512Mi"), ("2", "8Gi"),
     ("4", "2Gi"), ("8", "32Gi"), ("1", "4G"), ("0.999", "1Gi")],
)
def test_sizes_cloud_run_accepts(cpu: str, memory: str) -> None:
    assert sizing_problem(cpu, memory) is None


@pytest.mark.parametrize(
    ("cpu", "memory", "says"),
    [
        ("0.05", "", "minimum is 0.08"),
        ("0.0005", "", "minimum is 0.08"),
        ("0.1234", "", "steps of 0.001"),
        ("3", "", "1, 2, 4, 6 or 8"),
        ("16", "", "1, 2, 4, 6 or 8"),
        ("1.5", "", "1, 2, 4, 6 or 8"),
        ("many", "", "not a number"),
        ("nan", "", "not a number"),
        ("", "lots", "not a size"),
        ("", "512MB", "not a size"),
        ("1", "8Gi", "128Mi to 4Gi"),
        ("0.4", "1Gi", "128Mi to 512Mi"),
        ("4", "1Gi", "2Gi to 16Gi"),
        ("8", "64Gi", "4Gi to 32Gi"),
        ("", "16Gi", "128Mi to 4Gi"),
    ],
)
def test_sizes_cloud_run_refuses_are_explained(cpu: str, memory: str, says: str) -> None:
    problem = sizing_problem(cpu, memory)
    assert problem is not None and says in problem


def test_the_director_needs_a_whole_cpu() -> None:
    assert sizing_problem("0.5", "512Mi") is None
    problem = sizing_problem("0.5", "512Mi", director=True)
    assert problem is not None and "ServiceDirector" in problem
    assert sizing_problem("1", "512Mi", director=True) is None


def test_loading_reports_the_size_problem_with_its_path() -> None:
    text = TESTDATA.read_text().replace(
        "          buildable_module_path: publisher\n",
        '          buildable_module_path: publisher\n          cpu: "3"\n',
    )
    with pytest.raises(InvalidArchitecture) as bad:
        load_architecture(text)
    assert "dataflows.tracer.services.publisher.deployment" in str(bad.value) and "cpu '3'" in str(bad.value)
    director = TESTDATA.read_text().replace(
        "    buildable_module_path: director\n", '    buildable_module_path: director\n    cpu: "0.5"\n'
    )
    with pytest.raises(InvalidArchitecture) as bad:
        load_architecture(director)
    assert "service_manager_spec" in str(bad.value) and "at least 1 vCPU" in str(bad.value)
