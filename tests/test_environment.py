import re
import tomllib
from pathlib import Path

import pytest
import torch
import yaml

from cifar10_latency.environment import environment_fingerprint, git_commit, resolve_device

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PINS = ["torch==2.14.1", "torchvision==0.29.1"]


def pip_section():
    environment = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    return [package for package in sections[0] if package != "-e ."]


def requirements():
    lines = (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def project_dependencies():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return pyproject["project"]["dependencies"]


# Pinned package lists


def test_env_yml_matches_requirements():
    assert sorted(pip_section()) == sorted(requirements())


def test_requirements_no_duplicates():
    names = [re.split(r"[=<>!~\[ ]", line)[0].lower() for line in requirements()]

    assert len(names) == len(set(names))


@pytest.mark.parametrize("pin", PINS)
def test_pin_in_environment_yml(pin):
    assert pin in pip_section()


@pytest.mark.parametrize("pin", PINS)
def test_pin_in_requirements(pin):
    assert pin in requirements()


@pytest.mark.parametrize("pin", PINS)
def test_pin_in_pyproject(pin):
    assert pin in project_dependencies()


def test_pyproject_deps_in_requirements():
    assert set(project_dependencies()) <= set(requirements())


def test_installed_torch_matches_pin():
    assert torch.__version__.split("+")[0] == "2.14.1"


# Environment fingerprint


def test_resolve_device_auto():
    expected = "cuda" if torch.cuda.is_available() else "cpu"

    assert resolve_device("auto").type == expected


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_resolve_device_cuda_missing():
    with pytest.raises(RuntimeError) as error:
        resolve_device("cuda")

    assert "CUDA" in str(error.value)


def test_fingerprint_cpu_fields():
    info = environment_fingerprint("cpu")

    assert info["device"] == "cpu"
    assert info["torch_version"] == torch.__version__
    assert info["threads"] == torch.get_num_threads()
    threads = torch.get_num_threads()
    assert f"({threads} thread{'s' if threads != 1 else ''})" in info["device_name"]
    assert info["driver_version"] == ""


def test_git_commit_format():
    commit = git_commit()

    assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{12}(-dirty)?", commit)


def test_resolve_device_bad_name():
    with pytest.raises(ValueError, match="device 'gpu' is invalid"):
        resolve_device("gpu")


def test_resolve_device_unsupported_type():
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("meta")
