"""Every ``fashion ...`` and ``mlflow run ...`` command shown in README.md and docs/*.md still works as written.

The training commands (and ``mlflow run`` lines, rendered through MLproject as MLflow renders them) run
with ``--dry-run``: the config is resolved and checked, the data path must exist, and nothing is run or
created. The other commands are checked for options the command no longer has. Placeholders (``PATH``,
``/path/to/dataset``, ``$FASHION_DATA``) become the generated dataset; shell variables set in the same
code block are expanded.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fashion_core.cli.commands import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAINING = {"pretrain", "finetune", "grid", "tune", "run"}
# Not checked, and why.
SKIPPED = {
    "make": "a Makefile target: tests/test_main_job.py runs `make run` and checks its errors",
    "bench": "a benchmark script, not a command of the package",
}
DATA_PLACEHOLDERS = (
    "/path/to/fashion-product-images-small.zip",
    "/path/to/dataset",
    "/shared/PATH",
    "/shared/fashion-product-images-small.tar.gz",
    "/data/fashion",
    "PATH",
)


def shown_commands() -> list[tuple[str, str]]:
    """(where, command line) of every fashion / mlflow run command in the docs' shell code blocks."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", doc.read_text(), re.DOTALL):
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s#\s.*$", "", line).strip()
                assign = re.fullmatch(r'([A-Z_]+)="([^"]*)"', line)
                if assign:
                    variables[assign.group(1)] = assign.group(2)
                    continue
                for part in re.split(r"\s*(?:;|&&|&)\s*", line):
                    part = re.sub(r"^(for .* do|do)\s+", "", part.strip())
                    if re.match(r"^(fashion|mlflow run)\s", part):
                        for k, v in variables.items():
                            part = part.replace(f"${k}", v)
                        out.append((doc.name, part))
    return out


def with_data(args: list[str], data: str) -> list[str]:
    """The placeholders of a dataset path (alone or as ``data=PATH``) become ``data``; ``$i`` (a loop) 1."""

    def one(a: str) -> str:
        key, eq, value = a.rpartition("=")
        if value in DATA_PLACEHOLDERS:
            return key + eq + data
        return a.replace("$FASHION_DATA", data).replace("$i", "1")

    return [one(a) for a in args]


def mlflow_run_args(args: list[str]) -> list[str]:
    """``mlflow run . -e X -P k=v`` -> the ``fashion`` arguments MLflow runs (MLproject's command, values quoted)."""
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    entry = "main"
    given: dict[str, str] = {}
    i = 0
    while i < len(args):
        if args[i] == "-e":
            entry, i = args[i + 1], i + 2
        elif args[i] == "-P":
            k, v = args[i + 1].split("=", 1)
            given[k], i = v, i + 2
        else:
            i += 1
    point = project["entry_points"][entry]
    params = point.get("parameters", {})
    unknown = sorted(set(given) - set(params))
    assert not unknown, f"-P {', '.join(unknown)}: entry point {entry} has no such parameter ({', '.join(params)})"
    values = {
        k: given.get(k, (spec or {}).get("default", "") if isinstance(spec, dict) else "") for k, spec in params.items()
    }
    line = point["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()})
    return shlex.split(line)[1:]  # drop "fashion"


COMMANDS = shown_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 20 and any(c.startswith("mlflow run") for _, c in COMMANDS)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_a_shown_command_is_valid(where, command, dataset, isolated, monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs run from the checkout (experiments/, search_spaces/)
    monkeypatch.setenv("FASHION_DATA", str(dataset))
    monkeypatch.setattr("fashion_core.grid.main_job.has_gpu", lambda: False)  # the same answer on any machine
    args = with_data(shlex.split(command), str(dataset))
    args = mlflow_run_args(args[2:]) if args[:2] == ["mlflow", "run"] else args[1:]
    name = args[0]
    assert name in main.commands, f"{where}: `{command}`: no command {name!r}"
    if name in TRAINING:
        res = CliRunner().invoke(main, [*args, "--dry-run"])
        assert res.exit_code == 0 and "dry run:" in res.output, f"{where}: `{command}`:\n{res.output}"
        assert not (isolated / "mlflow.db").exists(), f"{where}: `{command}` created a store in its dry run"
        return
    options = {o for p in main.commands[name].params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
    unknown = [a.split("=")[0] for a in args[1:] if a.startswith("-") and a.split("=")[0] not in options]
    assert not unknown, f"{where}: `{command}`: {name} has no option {', '.join(unknown)}"
