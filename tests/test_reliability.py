"""Reliability: bad input, interrupted runs, concurrent writers, safe loading, loopback servers.

Every fault is driven through the ``fashion`` command (in-process with click's runner, or as a
subprocess for signals and concurrency) and what actually happened - exit code, the message,
the MLflow run states - is written as a Markdown table for the README's "Reliability" table: to the file that
FASHION_RELIABILITY_REPORT names, else into pytest's temporary folder (tests write nothing into the checkout).

    FASHION_RELIABILITY_REPORT=reports/reliability.md .venv/bin/python -m pytest -q tests/test_reliability.py
    cat reports/reliability.md
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fashion_core.cli.commands import main
from tests.helpers.data import write_tar

ROOT = Path(__file__).resolve().parents[1]
FASHION = [sys.executable, "-m", "fashion_core.cli.commands"]
EXPERIMENTS = str(ROOT / "experiments")
SMOKE = ["--profile", "smoke", "--top-k", "4", "--device", "cpu", "--experiments-dir", EXPERIMENTS]

AREAS = (
    "catalogue",
    "archives",
    "configuration",
    "finetune --from",
    "interrupts",
    "concurrent writers",
    "safe loading",
    "servers",
)
ROWS: list[tuple[str, str, str]] = []  # (area, fault, what happened), filled by the tests as they observe it


@pytest.fixture(scope="module", autouse=True)
def reliability_report(tmp_path_factory):
    """After the module: the observed outcomes as a Markdown table (FASHION_RELIABILITY_REPORT, else a temporary
    file)."""
    yield
    if not ROWS:
        return
    report = Path(os.environ.get("FASHION_RELIABILITY_REPORT") or tmp_path_factory.getbasetemp() / "reliability.md")
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| Area | Fault tried | What happened |", "|---|---|---|"]
    tmp = re.compile(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s'`]+")  # this run's temporary folders say nothing
    lines += [f"| {a} | {f} | {tmp.sub('<tmp>', w).replace('|', '/')} |" for a, f, w in ROWS]
    missing = [a for a in AREAS if a not in {r[0] for r in ROWS}]
    lines.append("")
    lines.append(
        f"Observed by `pytest tests/test_reliability.py` ({len(ROWS)} faults)"
        + (f"; not run this time: {', '.join(missing)} (add `-m ''` for the slow ones)." if missing else ".")
    )
    report.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- helpers


def run_states() -> dict[str, str]:
    """run id -> status of every run in the current store (all experiments)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r.info.status for r in client.search_runs(ids, max_results=5000)} if ids else {}


def error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("Error")]


def describe_failure(code: int, output: str, before: dict[str, str], after: dict[str, str]) -> str:
    """The observed outcome of a refused command, in words for the report."""
    new = {k: v for k, v in after.items() if k not in before}
    runs = "no run started" if not new else "run(s) " + ", ".join(sorted(set(new.values())))
    msg = error_lines(output)[0][len("Error: ") :] if error_lines(output) else output.strip().splitlines()[-1]
    return f"exit {code}, `{msg[:160]}`; {runs}"


def invoke(args: list[str]):
    """``fashion ARGS`` in-process; returns (exit code, stdout+stderr, run states before, after)."""
    before = run_states()
    res = CliRunner().invoke(main, args, catch_exceptions=True)
    return res.exit_code, res.output, res.exception, before, run_states()


def check_refused(area: str, fault: str, args: list[str], match: str) -> str:
    """Assert the command fails with one clear error line, no traceback, and no run left RUNNING."""
    code, out, exc, before, after = invoke(args)
    assert code != 0, f"{fault}: accepted\n{out}"
    assert isinstance(exc, SystemExit), f"{fault}: {type(exc).__name__}: {exc}\n{out}"  # not an unhandled error
    assert "Traceback" not in out, out
    assert len(error_lines(out)) == 1 and out.strip().splitlines()[-1].startswith("Error"), out  # one line, last
    assert "\x1b[" not in out, out
    assert "RUNNING" not in after.values(), after
    assert re.search(match, error_lines(out)[0]), out  # the line says what is wrong
    what = describe_failure(code, out, before, after)
    ROWS.append((area, fault, what))
    return what


def _member(name: str, kind=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


# ---------------------------------------------------------------- bad input: the catalogue


def _copy_dataset(src: Path, dst: Path, styles: str | None) -> Path:
    """A dataset folder sharing ``src``'s images, with its own styles.csv (None: absent)."""
    dst.mkdir(parents=True)
    (dst / "images").symlink_to(src / "images")
    if styles is not None:
        (dst / "styles.csv").write_text(styles)
    return dst


@pytest.mark.parametrize(
    "fault,styles,match",
    [
        ("styles.csv absent", None, "no styles.csv"),
        ("styles.csv empty", "", "empty"),
        ("styles.csv with missing columns", "id,gender,articleType\n1,Men,Shirts\n", "lacks the columns"),
    ],
)
def test_bad_styles_csv_is_one_line(tmp_path, dataset, isolated_module, fault, styles, match):
    data = _copy_dataset(dataset, tmp_path / "ds", styles)
    check_refused("catalogue", fault, ["prepare", "--data", str(data)], match)


def test_bad_rows_and_images_are_counted_exclusions(tmp_path, dataset, isolated_module):
    """Duplicate ids, bad years, empty/truncated/non-image files: excluded, counted, logged; odd modes kept."""
    from mlflow.tracking import MlflowClient

    lines = (dataset / "styles.csv").read_text().splitlines()
    data = _copy_dataset(dataset, tmp_path / "ds", "\n".join(lines + [lines[1]]) + "\n")  # one duplicated id
    code, out, exc, before, after = invoke(["prepare", "--data", str(data), "--top-k", "4", "--workers", "1"])
    assert code == 0 and exc is None, out
    new = [k for k in after if k not in before]
    assert "Traceback" not in out and len(new) == 1 and after[new[0]] == "FINISHED"
    run = MlflowClient().get_run(new[0])
    m = run.data.metrics
    excluded = MlflowClient().download_artifacts(run.info.run_id, "splits/excluded.csv", str(tmp_path))
    import pandas as pd

    reasons = pd.read_csv(excluded).set_index("id")["reason"].to_dict()
    expected = {  # fault -> (reason, ids the generated data holds for it)
        "duplicate id in styles.csv": ("duplicate_id", [int(lines[1].split(",")[0])]),
        "non-numeric year": ("bad_year", [90003]),
        "empty year": ("no_year", [90002]),
        "empty image file": ("empty_image", [90005]),
        "truncated image file": ("undecodable_image", [90006]),
        "a text file named .jpg (not an image)": ("undecodable_image", [90007]),
        "row without image file": ("no_image", [90004]),
    }
    summary = next(ln for ln in out.splitlines() if ln.startswith("rows "))  # "rows N  valid N  excluded N {..}"
    for fault, (reason, ids) in expected.items():
        for i in ids:
            assert reasons.get(i) == reason, (fault, i, reasons.get(i))
        n = int(m[f"invalid_{reason}"])
        assert n >= len(ids) and f"'{reason}': {n}" in summary, summary
        ROWS.append(
            (
                "catalogue",
                fault,
                f"prepare exit {code}: excluded as `{reason}` (metric invalid_{reason}="
                f"{n}, listed in splits/excluded.csv, printed in the summary)",
            )
        )
    for i, mode in ((90008, "grayscale"), (90009, "CMYK"), (90010, "RGBA PNG"), (90011, "53x77 (odd size)")):
        assert i not in reasons, (mode, reasons.get(i))
        ROWS.append(("catalogue", f"{mode} image", f"prepare exit {code}: kept, converted to RGB and resized"))


# ---------------------------------------------------------------- bad input: archives


def test_hostile_archives_are_refused_and_write_nothing_outside(tmp_path, isolated_module):
    cache = Path(os.environ["FASHION_CACHE"])
    payload = b"id\n"
    cases = {
        "archive entry with an absolute path": [(_member(str(tmp_path / "abs_evil")), b"x")],
        "archive entry with `..`": [(_member("ds/../../dotdot_evil"), b"x")],
        "archive symlink pointing outside": [
            (_member("ds/styles.csv"), payload),
            (_member("ds/images/1.jpg", tarfile.SYMTYPE, "../../../../etc/passwd"), None),
        ],
        "archive hard link pointing outside": [
            (_member("ds/styles.csv"), payload),
            (_member("ds/images/2.jpg", tarfile.LNKTYPE, "../../outside"), None),
        ],
    }
    for fault, members in cases.items():
        archive = write_tar(tmp_path / f"bad{len(ROWS)}.tar.gz", members)
        check_refused("archives", fault, ["prepare", "--data", str(archive)], "refusing")
        assert not (tmp_path / "abs_evil").exists() and not list(tmp_path.parent.glob("dotdot_evil"))
        extracted = cache / "extracted"
        assert not extracted.exists() or not any(extracted.iterdir())  # the partial extraction is removed
    fake = tmp_path / "data.tar.gz"
    fake.write_text("not an archive at all")
    check_refused(
        "archives",
        "a .tar.gz that is not an archive",
        ["prepare", "--data", str(fake)],
        "neither a folder nor a .zip/.tar.gz archive",
    )
    txt = tmp_path / "data.csv"
    txt.write_text("id\n1\n")
    check_refused(
        "archives",
        "--data naming a plain file",
        ["prepare", "--data", str(txt)],
        "neither a folder nor a .zip/.tar.gz archive",
    )


# ---------------------------------------------------------------- bad input: configuration


@pytest.mark.parametrize(
    "fault,extra,match",
    [
        ("unknown technique", ["--technique", "nope"], "unknown pretrain technique"),
        ("unknown backbone", ["-o", "model.backbone=vgg99"], "unknown backbone"),
        ("unknown loss", ["-o", "loss.name=hinge"], "unknown loss"),
        ("unknown class-weight scheme", ["-o", "loss.weights=magic"], "class-weight scheme"),
        ("unknown config key", ["-o", "train.epoch=3"], "unknown config key"),
        ("focal gamma < 0", ["-o", "loss.name=focal", "-o", "loss.gamma=-1"], "gamma"),
        ("learning rate 0", ["-o", "train.lr=0"], "train.lr"),
        ("learning rate < 0", ["-o", "train.lr=-0.1"], "train.lr"),
        ("0 epochs (--epochs)", ["--epochs", "0"], "epochs"),
        ("0 epochs (-o train.epochs=0)", ["-o", "train.epochs=0"], "train.epochs"),
        ("batch size 0", ["-o", "train.batch_size=0"], "batch_size"),
        ("non-numeric learning rate", ["-o", "train.lr=fast"], "train.lr"),
        ("top-k larger than the number of classes", ["--top-k", "50"], "top_k=50"),
    ],
)
def test_bad_config_is_refused_before_any_run(dataset, isolated_module, fault, extra, match):
    args = [
        "pretrain",
        "--data",
        str(dataset),
        "--profile",
        "smoke",
        "--device",
        "cpu",
        "--no-register",
        "--experiments-dir",
        EXPERIMENTS,
    ]
    if "--top-k" not in extra:
        args += ["--top-k", "4"]
    what = check_refused("configuration", fault, args + extra, match)
    assert "no run started" in what


@pytest.fixture(scope="module")
def odd_runs(dataset, isolated_module):
    """A FAILED pretrain run and a FINISHED prepare run to point ``--from`` at."""
    from fashion_core.tracking import runs as tracking

    tracking.set_experiment("fashion-mini")
    with pytest.raises(RuntimeError):
        with tracking.start_run("pretrain", "baseline", "0" * 16) as r:
            failed = r.info.run_id
            raise RuntimeError("boom")
    with tracking.start_run("prepare", "prepare", "0" * 16) as r:
        prepare = r.info.run_id
    return {"failed": failed, "prepare": prepare}


@pytest.mark.parametrize(
    "fault,which,match",
    [
        ("finetune --from a missing run", "missing", "no run"),
        ("finetune --from a FAILED run", "failed", "not FINISHED"),
        ("finetune --from a run of the wrong stage", "prepare", "not a pretrain run"),
        ("finetune --from a malformed reference", "yesterday", "expected a run id"),
        ("finetune --from latest with no pretrain run", "latest", "no finished pretrain run"),
        ("finetune --from an unknown registered model", "models:/nope@best", "models:/nope@best"),
    ],
)
def test_bad_finetune_source(dataset, odd_runs, fault, which, match):
    ref = {"missing": "0" * 32, **odd_runs}.get(which, which)
    check_refused("finetune --from", fault, ["finetune", "--data", str(dataset), "--from", ref, *SMOKE], match)


def test_resume_of_a_run_without_checkpoint(dataset, odd_runs):
    check_refused(
        "interrupts",
        "--resume naming a run without checkpoint/last.pt",
        ["pretrain", "--data", str(dataset), *SMOKE, "--resume", odd_runs["prepare"]],
        "--resume",
    )


# ---------------------------------------------------------------- interrupts and --resume


def _metric_history(run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, key)}


def _interrupt(args: list[str], sig: int, after_epoch: int, cwd: Path) -> tuple[str, int, str]:
    """Start ``fashion ARGS`` as a subprocess, send ``sig`` once it has logged ``after_epoch``; (run id, rc, output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        FASHION + args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own session: only it gets the signal
        # A shell's background job inherits SIGINT ignored, and Python then keeps ignoring
        # it; restore the default so the child installs its KeyboardInterrupt handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    out, run_id = [], None
    try:
        for line in proc.stdout:
            out.append(line)
            m = re.search(r"run ([0-9a-f]{32})", line)
            run_id = run_id or (m.group(1) if m else None)
            if line.startswith(f"epoch {after_epoch}/"):
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return run_id, proc.returncode, "".join(out) + rest


@pytest.mark.integration  # `fashion` processes sent signals
@pytest.mark.slow  # three short trainings and two interrupted subprocesses: about a minute on 2 idle cores
def test_interrupted_runs_end_killed_and_resume_to_the_same_result(tmp_path, dataset, isolated):
    """SIGTERM / SIGINT mid-training: KILLED with checkpoint/last.pt; --resume reaches the uninterrupted metrics."""
    from mlflow.tracking import MlflowClient

    args = ["pretrain", "--data", str(dataset), *SMOKE, "--epochs", "4", "--seed", "3", "--no-register"]
    code, out, exc, _, _ = invoke(args)
    assert code == 0, out
    reference = re.search(r"run ([0-9a-f]{32})", out).group(1)
    want_loss = _metric_history(reference, "train_loss")
    want_test = MlflowClient().get_run(reference).data.metrics["test_top1_mean"]
    assert sorted(want_loss) == list(range(1, 5))
    for sig in (signal.SIGTERM, signal.SIGINT):
        run_id, rc, text = _interrupt(args, sig, after_epoch=1, cwd=tmp_path)
        run = MlflowClient().get_run(run_id)
        logged = {a.path for a in MlflowClient().list_artifacts(run_id, "checkpoint")}
        assert rc != 0 and "Traceback" not in text, text
        assert run.info.status == "KILLED", (run.info.status, text)
        assert "checkpoint/last.pt" in logged, (logged, text)
        done = len(_metric_history(run_id, "train_loss"))  # 0 or 1: the signal may beat epoch 1's metrics
        assert done < 4, text
        code, out, exc, _, after = invoke(args + ["--resume", run_id])
        assert code == 0, out
        run = MlflowClient().get_run(run_id)
        got_loss = _metric_history(run_id, "train_loss")
        assert run.info.status == "FINISHED" and after[run_id] == "FINISHED"
        assert sorted(got_loss) == sorted(want_loss)
        assert [got_loss[k] for k in sorted(got_loss)] == pytest.approx(
            [want_loss[k] for k in sorted(want_loss)], rel=1e-6
        )
        assert run.data.metrics["test_top1_mean"] == want_test
        name = signal.Signals(sig).name
        ROWS.append(
            (
                "interrupts",
                f"{name} during training (after epoch 1 of 4)",
                f"exit {rc}, run KILLED with "
                f"checkpoint/last.pt logged; `--resume {run_id[:8]}…` ended FINISHED with the same per-epoch "
                f"train_loss and test_top1_mean ({want_test:.4f}) as an uninterrupted run with the same seed",
            )
        )


# ---------------------------------------------------------------- concurrent writers

WORKER = r"""
import sys, time
from pathlib import Path
import mlflow, optuna
from fashion_core.tracking import runs as tracking

ready, idx, n, storage = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
(ready / str(idx)).touch()
deadline = time.time() + 300
while len(list(ready.iterdir())) < 4 and time.time() < deadline:  # all four start on the empty stores together
    time.sleep(0.01)
tracking.set_experiment("concurrent")
for i in range(n):
    with tracking.start_run("pretrain", f"worker{idx}", "0" * 16, run_name=f"w{idx}/{i}",
                            config={"train": {"lr": 0.1, "seed": i}, "worker": idx}):
        for step in range(3):
            tracking.log_metrics({"train_loss": 1.0 / (step + 1), "worker": idx}, step=step)
        mlflow.log_text(f"worker {idx} run {i}", f"notes/w{idx}_{i}.txt")
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(study_name="concurrent", storage=storage, load_if_exists=True, direction="maximize")
study.optimize(lambda t: t.suggest_float("x", 0, 1) + idx, n_trials=n)
print("done", idx)
"""


@pytest.mark.integration  # four writer processes
def test_four_writers_on_one_sqlite_store_lose_nothing(tmp_path, monkeypatch):
    """4 processes, empty sqlite MLflow store and Optuna storage: schema creation race, no lost run or trial."""
    import optuna
    from mlflow.tracking import MlflowClient

    n, workers = 4, 4
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ready), str(i), str(n), storage],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    errors = [(p.returncode, err[-3000:]) for p, (_, err) in zip(procs, outs) if p.returncode != 0]
    assert not errors, errors
    assert not any("database is locked" in err for _, err in outs)
    client = MlflowClient()
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == n * workers and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs) == sorted(f"w{i}/{j}" for i in range(workers) for j in range(n))
    for r in runs:
        assert r.data.params["train.lr"] == "0.1" and len(client.get_metric_history(r.info.run_id, "train_loss")) == 3
        assert [a.path for a in client.list_artifacts(r.info.run_id, "notes")] == [
            f"notes/w{r.data.params['worker']}_{r.info.run_name.split('/')[1]}.txt"
        ]
    trials = optuna.load_study(study_name="concurrent", storage=storage).trials
    assert len(trials) == n * workers
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    ROWS.append(
        (
            "concurrent writers",
            f"{workers} processes start together on an empty sqlite MLflow store and an "
            f"empty Optuna sqlite storage, {n} runs (params, 3-step metrics, an artifact) and {n} trials each",
            f"all exit 0; {len(runs)}/{n * workers} runs FINISHED with every param, metric step and artifact; "
            f"{len(trials)}/{n * workers} trials COMPLETE; no `database is locked`",
        )
    )


# ---------------------------------------------------------------- safe loading


class Payload:
    """Pickles into "call open(marker, 'w')": any loader that unpickles it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_checkpoint_is_refused_by_every_loader(tmp_path, dataset, isolated_module):
    import mlflow
    import torch

    from fashion_core.config.checks import ConfigError
    from fashion_core.engine.train import load_checkpoint
    from fashion_core.models.backbones import read_state_dict
    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.references import SourceError, load_run_model

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"conv.weight": torch.zeros(1)}, "extra": Payload(marker)}, evil)
    with pytest.raises(pickle.UnpicklingError):  # torch.load(weights_only=True) refuses the payload's class
        load_checkpoint(evil)
    with pytest.raises(ConfigError, match="cannot read a state dict"):
        read_state_dict(str(evil), "resnet18")
    tracking.set_experiment("fashion-mini")
    with tracking.start_run("pretrain", "baseline", "0" * 16) as run:
        d = tmp_path / "ckpt"
        d.mkdir()
        for name in ("model_state.pt", "last.pt"):
            shutil.copy(evil, d / name)
        (d / "model.json").write_text(json.dumps({"model": {}, "classes": ["a"], "height": 80, "width": 60}))
        mlflow.log_artifacts(str(d), "checkpoint")
    with pytest.raises(SourceError, match="no usable model checkpoint"):
        load_run_model(run.info.run_id)
    assert not marker.exists()
    ROWS.append(
        (
            "safe loading",
            "checkpoint holding a pickled callable (train.load_checkpoint, model.init reader, load_run_model)",
            "refused by torch.load(weights_only=True); the payload never ran",
        )
    )
    image = str(dataset / "images" / "1000.jpg")
    rid = run.info.run_id
    for fault, args, match in [
        (
            "`fashion predict --model RUN` whose checkpoint holds a pickled callable",
            ["predict", image, "--model", rid],
            "pickled Python object",
        ),
        (
            "`--resume RUN` whose last.pt holds a pickled callable",
            ["pretrain", "--data", str(dataset), *SMOKE, "--resume", rid],
            "pickled Python object",
        ),
        (
            "`-o model.init=FILE` holding a pickled callable",
            ["pretrain", "--data", str(dataset), *SMOKE, "--no-register", "-o", f"model.init={evil}"],
            "cannot read a state dict .*Unsupported global",
        ),
    ]:
        check_refused("safe loading", fault, args, match)
        assert not marker.exists(), fault


def test_nothing_unpickles_without_weights_only():
    """Every torch.load in the package passes weights_only=True; no pickle/joblib/MLflow model loader is used."""
    pkg = ROOT / "fashion_core"
    found = []
    for path in sorted(pkg.rglob("*.py")):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            assert "weights_only=True" in m.group(0), f"{path.name}: {m.group(0)}"
            found.append(path.name)
        risky = re.search(
            r"\b(?:c?pickle|joblib|dill)\.loads?\(|(?:pyfunc|pytorch|sklearn)\.load_model\(|"
            r"allow_pickle\s*=\s*True|torch\.export\.load\(",
            text,
        )
        assert risky is None, f"{path.name} calls {risky.group(0)}"
    assert found
    ROWS.append(
        (
            "safe loading",
            "source scan for torch.load / pickle / joblib / mlflow model loaders",
            f"{len(found)} torch.load call(s), all weights_only=True; no other unpickling loader",
        )
    )


# ---------------------------------------------------------------- servers


def test_servers_bind_to_loopback_by_default():
    """`make ui` and the optuna-dashboard hint bind 127.0.0.1; both tools default to it too."""
    make = (ROOT / "Makefile").read_text()
    ui = [ln for ln in make.splitlines() if "mlflow ui" in ln or "mlflow server" in ln]
    assert ui and all("--host 127.0.0.1" in ln for ln in ui), ui
    from mlflow.cli import server

    host = next(p for p in server.params if p.name == "host")
    assert "127.0.0.1" in (host.help or "") or host.default in (None, "127.0.0.1"), host.default
    dashboard = Path(sys.executable).with_name("optuna-dashboard")
    helptext = subprocess.run([str(dashboard), "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "hostname (default: 127.0.0.1)" in helptext, helptext
    code = " ".join(p.read_text() for p in (ROOT / "fashion_core").rglob("*.py"))
    assert "0.0.0.0" not in code
    ROWS.append(
        (
            "servers",
            "`make ui`, `mlflow server`, `optuna-dashboard` as started by the project",
            "bind 127.0.0.1 (Makefile passes --host 127.0.0.1; both tools default to it; no 0.0.0.0 in the code)",
        )
    )
