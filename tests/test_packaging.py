"""Packaging: pyproject.toml, the jobs' conda environment, environment.yml, CI and the README's
install line agree with each other."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# pip name -> conda-forge name, where they differ (the -base packages leave out GUI toolkits)
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base", "seaborn": "seaborn-base"}


def _name(requirement: str) -> str:
    """Package name of a pip or conda requirement ("torch>=2.2", "pytorch >=2.2", "python=3.11")."""
    return re.match(r"[A-Za-z0-9_.\-]+", requirement.strip()).group(0).lower()


def _conda_names(path: Path) -> set[str]:
    env = yaml.safe_load(path.read_text())
    return {_name(d) for d in env["dependencies"] if isinstance(d, str)}


def test_conda_env_has_the_packages_of_pyproject():
    pip = {CONDA_NAME.get(_name(r), _name(r)) for r in PYPROJECT["project"]["dependencies"]}
    jobs_env = ROOT / "workflow" / "envs" / "pcn.yaml"
    assert _conda_names(jobs_env) - {"python"} == pip
    assert _conda_names(ROOT / "environment.yml") - {"python", "pip"} == pip
    for path in (jobs_env, ROOT / "environment.yml"):
        channels = yaml.safe_load(path.read_text())["channels"]
        assert set(channels) <= {"conda-forge", "nodefaults"} and channels[0] == "conda-forge", path


def test_tools_are_extras_not_runtime_dependencies():
    project = PYPROJECT["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    assert not runtime & {"pytest", "snakemake", "snakemake-executor-plugin-slurm", "snakefmt"}
    assert "pyarrow" in runtime  # the Parquet tables
    extras = {k: " ".join(v) for k, v in project["optional-dependencies"].items()}
    assert "snakemake>=8" in extras["workflow"]
    assert "snakemake-executor-plugin-slurm>=2" in extras["slurm"]
    assert "pytest" in extras["test"] and "snakefmt" in extras["test"] and "slurm" in extras["test"]
    assert project["license"] == "MIT" and project["readme"] == "README.md" and project["authors"]
    # CI and the conda environment install what the tests need
    assert 'pip install -q -e ".[test,slurm]"' in (ROOT / ".ci" / "run").read_text()
    assert "-e .[test,slurm]" in (ROOT / "environment.yml").read_text()


def test_readme_quick_start_is_three_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ['pip install -e ".[test]"', "snakemake --cores 8", "python -m pytest -q"]


def test_every_package_is_listed_in_pyproject():
    """A package folder missing from [tool.setuptools] packages would be left out of a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pcn").rglob("__init__.py")}
    assert found == listed, (found - listed, listed - found)
