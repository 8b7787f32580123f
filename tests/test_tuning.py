"""Optuna tuning on generated data: spaces, a test-blind objective, pruning, resuming, dead and parallel workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import flatten, load_experiment, to_dict
from fashion_core.data.prepared import without_test
from fashion_core.tuning.run import run_tune
from fashion_core.tuning.spaces import base_config, best_config_yaml, load_space, trial_config
from fashion_core.tuning.storage import check_storage_url, mask_url
from fashion_core.tuning.study import make_pruner
from tests.helpers.store import module_store

ROOT = Path(__file__).resolve().parents[1]
SPACES, EXP = ROOT / "search_spaces", ROOT / "experiments"
FAST = {"data.top_k": 4, "train.epochs": 2, "train.max_batches_per_epoch": 2}  # with the smoke profile: ~1 s a trial
CLI_FAST = ["--profile", "smoke", "-o", "data.top_k=4", "-o", "train.epochs=1", "-o", "train.max_batches_per_epoch=2"]


def focal():
    return load_space("focal_weights", SPACES, EXP)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store and image cache for the module (a new sqlite store costs seconds of migrations);
    each test keeps to its own study name and Optuna storage."""
    with module_store(tmp_path_factory, "tuning") as (root, mp):
        yield root


def tune(dataset, tmp_path, study_name: str, **kw):
    """run_tune of the focal space on the generated data, fast settings, a sqlite storage under tmp_path."""
    opts = dict(profile="smoke", overrides=FAST, storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name=study_name)
    return run_tune(focal(), str(dataset), **{**opts, **kw})


def study_runs(study_name: str, role: str = "trial"):
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True,
        output_format="list",
        filter_string=f"tags.optuna_study = '{study_name}' and tags.tune_role = '{role}'",
    )


def trial_runs_by_number(study_name: str) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in study_runs(study_name):
        out.setdefault(int(r.data.tags["optuna_trial"]), []).append(r)
    return out


# ---------------------------------------------------------------- search spaces


def test_repository_spaces_load_and_focal_space_is_as_documented():
    for path in sorted(SPACES.glob("*.yaml")):
        assert load_space(path, SPACES, EXP).params, path
    sp = focal()
    p = {x.name: x for x in sp.params}
    assert sp.stage == "pretrain" and sp.base_path == EXP / "pretrain" / "baseline.yaml"
    assert sp.objective == "val_top1_mean" and dict(sp.fixed) == {"loss.name": "focal"}
    assert (p["loss.gamma"].low, p["loss.gamma"].high) == (0.0, 5.0)
    assert p["loss.weights"].choices == ("none", "inverse", "inverse_sqrt", "effective_number")
    assert p["loss.beta"].when == (("loss.weights", ("effective_number",)),)
    assert p["train.lr"].log and "train.weight_decay" in p


def test_beta_is_searched_only_with_effective_number():
    import optuna

    sp = focal()
    common = {"loss.gamma": 1.0, "train.lr": 1e-3, "train.weight_decay": 1e-3}
    plain = sp.sample(optuna.trial.FixedTrial({**common, "loss.weights": "inverse"}))
    assert "loss.beta" not in plain and plain["loss.weights"] == "inverse"
    cb = sp.sample(optuna.trial.FixedTrial({**common, "loss.weights": "effective_number", "loss.beta": 0.99}))
    assert cb["loss.beta"] == 0.99
    cfg = trial_config(base_config(sp, "smoke"), cb)
    assert (cfg.loss.name, cfg.loss.weights, cfg.loss.beta, cfg.train.lr) == ("focal", "effective_number", 0.99, 1e-3)


BAD_SPACES = {
    "unknown parameter": ("params:\n  loss.gama: {type: float, low: 0, high: 5}", "unknown config key 'loss.gama'"),
    "low > high": ("params:\n  loss.gamma: {type: float, low: 5, high: 1}", "low (5.0) > high (1.0)"),
    "empty choices": ("params:\n  loss.weights: {type: categorical, choices: []}", "choices must be a non-empty list"),
    "unknown type": ("params:\n  loss.gamma: {type: real, low: 0, high: 5}", "choose one of: float, int, categorical"),
    "unknown field": ("params:\n  loss.gamma: {type: float, lo: 0, high: 5}", "unknown field(s) lo"),
    "log from zero": ("params:\n  train.lr: {type: float, low: 0, high: 1, log: true}", "a log range needs low > 0"),
    "invalid bound": ("params:\n  loss.gamma: {type: float, low: -1, high: 5}", "loss.gamma must be >= 0"),
    "invalid choice": (
        "params:\n  loss.weights: {type: categorical, choices: [none, sqrt]}",
        "unknown class-weight scheme 'sqrt'",
    ),
    "condition on a later parameter": (
        "params:\n  loss.beta: {type: float, low: 0.9, high: 0.99, when: {loss.weights: effective_number}}\n"
        "  loss.weights: {type: categorical, choices: [none, effective_number]}",
        "not an earlier categorical",
    ),
    "condition on a missing value": (
        "params:\n  loss.weights: {type: categorical, choices: [none, inverse]}\n"
        "  loss.beta: {type: float, low: 0.9, high: 0.99, when: {loss.weights: effective_number}}",
        "is not among its choices",
    ),
    "no parameters": ("params: {}", "params must map at least one"),
    "test objective": (
        "objective: test_top1_mean\nparams:\n  loss.gamma: {type: float, low: 0, high: 5}",
        "validation metrics only",
    ),
    "unknown top-level key": (
        "paramz: {}\nparams:\n  loss.gamma: {type: float, low: 0, high: 5}",
        "unknown key(s) paramz",
    ),
    "fixed and searched": (
        "fixed: {loss.gamma: 1}\nparams:\n  loss.gamma: {type: float, low: 0, high: 5}",
        "both fixed and searched",
    ),
    "int with a float bound": ("params:\n  train.epochs: {type: int, low: 1.5, high: 4}", "must be an integer"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_spaces_are_clear_errors(tmp_path, case):
    body, message = BAD_SPACES[case]
    path = tmp_path / "bad.yaml"
    path.write_text("base: pretrain/baseline\n" + body + "\n")
    with pytest.raises(ConfigError) as e:
        load_space(path, SPACES, EXP)
    assert message in str(e.value) and "bad.yaml" in str(e.value)


def test_unknown_space_and_base_list_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="choose one of: .*focal_weights"):
        load_space("nope", SPACES, EXP)
    path = tmp_path / "bad.yaml"
    path.write_text("base: pretrain/nope\nparams:\n  loss.gamma: {type: float, low: 0, high: 5}\n")
    with pytest.raises(ConfigError, match="choose one of: .*baseline"):
        load_space(path, SPACES, EXP)


def test_overriding_a_searched_key_is_an_error():
    with pytest.raises(ConfigError, match="loss.gamma searched"):
        base_config(focal(), "smoke", {"loss.gamma": "1.0"})


def test_best_config_yaml_is_a_technique_file_that_reproduces_the_trial(tmp_path):
    sp = focal()
    params = {
        "loss.gamma": 1.25,
        "loss.weights": "effective_number",
        "loss.beta": 0.999,
        "train.lr": 0.004,
        "train.weight_decay": 0.01,
    }
    path = tmp_path / "tuned.yaml"
    path.write_text(best_config_yaml(sp, params, "Tuned.", "a comment"))
    assert path.read_text().startswith("# a comment\n")
    got = load_experiment(path, overrides=FAST, profile="smoke", stage="pretrain")
    want = trial_config(base_config(sp, "smoke", FAST), params)
    diff = {k for k, v in flatten(to_dict(got)).items() if flatten(to_dict(want))[k] != v}
    assert diff == {"technique", "description"}  # the file's stem names the technique


def test_storage_urls():
    assert check_storage_url("sqlite:///optuna.db") == "rdb"
    assert check_storage_url("postgresql+psycopg2://u:p@h:5432/db") == "rdb"
    assert check_storage_url("journal:/tmp/x.journal") == check_storage_url("optuna.journal") == "journal"
    with pytest.raises(ConfigError, match="postgresql://"):
        check_storage_url("optuna.db")
    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_cli_rejects_a_bad_space_or_storage_before_anything_runs(isolated, tmp_path):
    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("base: pretrain/baseline\nparams:\n  loss.gamma: {type: float, low: 5, high: 1}\n")
    res = CliRunner().invoke(main, ["tune", "--space", str(bad), "--experiments-dir", str(EXP)])
    assert res.exit_code == 2 and "low (5.0) > high (1.0)" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["tune", "--spaces-dir", str(SPACES), "--storage", "optuna.db"])
    assert res.exit_code == 2 and "--storage" in res.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


def test_median_pruner_prunes_below_the_median_from_the_first_epoch():
    import optuna
    from optuna.distributions import FloatDistribution

    study = optuna.create_study(direction="maximize", pruner=make_pruner(True, prune_from=1))
    for v in (0.5, 0.6, 0.7, 0.8, 0.9):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": v}, distributions={"x": FloatDistribution(0, 1)}, value=v, intermediate_values={1: v, 2: v}
            )
        )
    bad, good = study.ask(), study.ask()
    bad.report(0.1, 1)
    good.report(0.95, 1)
    assert bad.should_prune() and not good.should_prune()
    assert isinstance(make_pruner(False), optuna.pruners.NopPruner)


# ---------------------------------------------------------------- the objective


class GuardCache:
    """An image cache that fails the test when asked for any test-split image."""

    def __init__(self, cache, forbidden):
        self._cache, self.forbidden, self.asked = cache, set(forbidden), 0

    def take(self, ids):
        leaked = self.forbidden & {int(i) for i in ids}
        assert not leaked, f"the objective gathered test images: {sorted(leaked)[:5]}"
        self.asked += len(ids)
        return self._cache.take(ids)

    def __getattr__(self, name):
        return getattr(self._cache, name)


def test_objective_never_touches_the_test_split(dataset, store, tmp_path):
    import dataclasses

    from fashion_core.data.prepared import prepare_data
    from fashion_core.tuning.study import Objective

    sp = focal()
    p = prepare_data(str(dataset), base_config(sp, "smoke", FAST).data)
    test = p.splits[p.splits["split"] == "test"]
    assert len(test)
    # Poison the test split: its images may not be gathered, and its labels are nonsense.
    splits = p.splits.copy()
    splits.loc[splits["split"] == "test", "label"] = "POISON"
    guard = GuardCache(p.cache, test["id"])
    poisoned = dataclasses.replace(p, cache=guard, splits=splits)
    assert "test" not in set(without_test(poisoned).splits["split"])
    res = tune(dataset, tmp_path, "blind", n_trials=2, prepared=poisoned, pruning=False)
    assert res.counts["complete"] == 2 and guard.asked > 0
    for r in study_runs("blind"):
        assert r.data.tags["trial_state"] == "complete"
        assert not [m for m in r.data.metrics if m.startswith("test_")]
        assert r.data.metrics["objective"] == pytest.approx(r.data.metrics["best_val_top1_mean"])
    with pytest.raises(ValueError, match="validation-only"):
        Objective(sp, base_config(sp, "smoke", FAST), p, p.digest, "x", None, "s")


def test_pruned_trial_stops_and_is_tagged(dataset, store, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    # A pruner that prunes every report: the first epoch's report must stop the trial.
    res = tune(dataset, tmp_path, "pruned", n_trials=1, pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    assert res.counts["pruned"] == 1 and res.best_trial is None
    (run,) = study_runs("pruned")
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "pruned"
    assert run.data.metrics["pruned_at_epoch"] == 1
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_top1_mean")] == [1]


@pytest.mark.integration  # a study end to end, resumed, and its final run
def test_resumed_study_continues_and_final_run_reproduces_the_best_trial(dataset, store, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    first = tune(dataset, tmp_path, "resumed", n_trials=2)
    second = tune(dataset, tmp_path, "resumed", n_trials=1, final=True)
    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.number for t in study.trials] == [0, 1, 2]  # the second invocation went on from trial 2
    by_number = trial_runs_by_number("resumed")
    assert {n: len(v) for n, v in by_number.items()} == {0: 1, 1: 1, 2: 1}
    assert by_number[0][0].data.tags["mlflow.parentRunId"] == first.parent_run_id
    assert by_number[2][0].data.tags["mlflow.parentRunId"] == second.parent_run_id != first.parent_run_id
    assert len(study_runs("resumed", "study")) == 2
    client = MlflowClient()
    parent = client.get_run(second.parent_run_id)
    assert parent.data.tags["stage"] == "tune" and parent.data.metrics["n_trials"] == 3
    arts = {a.path for a in client.list_artifacts(second.parent_run_id, "tune/figures")}
    assert {"tune/figures/optimization_history.html", "tune/figures/param_importances.html"} <= arts
    assert client.list_artifacts(second.parent_run_id, "tune/best")[0].path == "tune/best/focal_weights.yaml"
    # --final: a normal pretrain run of the best trial's config, evaluated on test once, tagged selected=true
    final = client.get_run(second.final_run_id)
    best = study.best_trial
    assert final.data.tags["selected"] == "true" and final.data.tags["stage"] == "pretrain"
    assert final.data.tags["optuna_trial"] == str(best.number) and "mlflow.parentRunId" not in final.data.tags
    assert "test_top1_mean" in final.data.metrics
    assert float(final.data.params["loss.gamma"]) == pytest.approx(best.params["loss.gamma"])
    assert final.data.metrics["best_val_top1_mean"] == pytest.approx(best.value)
    # a worker with other settings may not join the study
    with pytest.raises(ConfigError, match="train.epochs"):
        tune(dataset, tmp_path, "resumed", n_trials=1, overrides={**FAST, "train.epochs": 1})


# ---------------------------------------------------------------- dead workers


def _fake_dead_trial(study, space, worker: str) -> tuple[object, str]:
    """A RUNNING trial with an open MLflow run, as a worker that died mid-trial leaves it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("fashion-mini")
    run = client.create_run(
        exp.experiment_id, tags={"optuna_study": study.study_name, "tune_role": "trial", "optuna_trial": "0"}
    )
    trial = study.ask()
    space.sample(trial)
    for k, v in (("worker", worker), ("worker_trial", trial.number), ("mlflow_run_id", run.info.run_id)):
        trial.set_user_attr(k, v)
    return trial, run.info.run_id


def _assert_retried(study, dead_run_id: str) -> None:
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t1.state == TrialState.COMPLETE
    assert t1.params == t0.params and t1.system_attrs["failed_trial"] == 0
    dead = MlflowClient().get_run(dead_run_id)
    assert dead.info.status == "FAILED" and dead.data.tags["trial_state"] == "failed"
    (retry,) = trial_runs_by_number(study.study_name)[1]
    assert retry.data.tags["retry_of_trial"] == "0" and retry.data.tags["trial_state"] == "complete"


def test_trial_of_a_dead_worker_is_failed_and_retried_by_heartbeat(dataset, store, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    tune(dataset, tmp_path, "heartbeat", create_only=True, heartbeat=1)
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.load_study(study_name="heartbeat", storage=storage)
    trial, run_id = _fake_dead_trial(study, focal(), "elsewhere:1")
    storage.record_heartbeat(trial._trial_id)  # its last sign of life; then silence
    time.sleep(3)
    tune(dataset, tmp_path, "heartbeat", n_trials=1, heartbeat=1)
    _assert_retried(study, run_id)


def test_trial_of_a_dead_worker_is_failed_and_retried_on_a_journal(dataset, store, tmp_path):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = f"journal:{tmp_path / 'optuna.journal'}"
    tune(dataset, tmp_path, "reaped", create_only=True, storage=url)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.load_study(study_name="reaped", storage=storage)
    _, run_id = _fake_dead_trial(study, focal(), f"{socket.gethostname()}:{gone.pid}")
    tune(dataset, tmp_path, "reaped", n_trials=1, storage=url)
    _assert_retried(study, run_id)


# ---------------------------------------------------------------- parallel workers


def _cli(dataset, storage: str, study: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashion_core.cli.commands",
        "tune",
        "--data",
        str(dataset),
        "--spaces-dir",
        str(SPACES),
        "--experiments-dir",
        str(EXP),
        *CLI_FAST,
        "--storage",
        storage,
        "--study-name",
        study,
        *extra,
    ]


def _run_parallel_workers(dataset, storage: str, study_name: str, workers: int = 2, trials_each: int = 2):
    """Create the study once, then run `fashion tune` worker processes at the same time; check every trial."""
    import optuna
    from click.testing import CliRunner
    from optuna.trial import TrialState

    from fashion_core.cli.commands import main
    from fashion_core.tuning.storage import open_storage

    # the storage, the study and the MLflow experiment, once, before any worker starts
    created = CliRunner().invoke(main, _cli(dataset, storage, study_name, "--create-only")[3:])
    assert created.exit_code == 0, created.output
    procs = [
        subprocess.Popen(
            _cli(dataset, storage, study_name, "--n-trials", str(trials_each), "--seed", str(i)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(workers)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert not any("database is locked" in out for out in outs)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage).storage)
    trials = study.get_trials()
    n = workers * trials_each
    assert sorted(t.number for t in trials) == list(range(n))  # none lost, none run twice
    assert all(t.state == TrialState.COMPLETE for t in trials)
    by_number = trial_runs_by_number(study_name)
    assert {k: len(v) for k, v in by_number.items()} == {i: 1 for i in range(n)}  # one MLflow run per trial
    parents = Counter(r[0].data.tags["mlflow.parentRunId"] for r in by_number.values())
    assert sorted(parents.values()) == [trials_each] * workers  # each worker's trials under its own parent run
    workers_seen = {t.user_attrs["worker"] for t in trials}
    assert len(workers_seen) == workers
    for t in trials:  # the run holds the trial's own parameters
        params = by_number[t.number][0].data.params
        assert float(params["loss.gamma"]) == pytest.approx(t.params["loss.gamma"])
    return study


@pytest.mark.integration  # `fashion tune` worker processes
def test_parallel_workers_on_a_journal_file(dataset, store, tmp_path):
    _run_parallel_workers(dataset, f"journal:{tmp_path / 'optuna.journal'}", "parallel")


@pytest.mark.integration  # PostgreSQL and `fashion tune` worker processes
def test_parallel_workers_on_postgresql(dataset, store):
    import optuna

    url = os.environ.get("FASHION_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL: source .ci/start-postgres.sh (sets FASHION_TEST_POSTGRES_URL)")
    from fashion_core.tuning.storage import open_storage

    name = f"parallel-{uuid.uuid4().hex[:8]}"
    study = _run_parallel_workers(dataset, url, name)
    optuna.delete_study(study_name=study.study_name, storage=open_storage(url).storage)


@pytest.mark.integration  # `fashion tune` processes, one killed
@pytest.mark.slow
def test_killed_worker_process_trial_is_retried_by_the_next_worker(dataset, store, tmp_path):
    """SIGKILL a real worker mid-trial; the next worker fails that trial and runs its parameters again."""
    import signal

    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    url = f"journal:{tmp_path / 'optuna.journal'}"
    slow = ["-o", "train.max_batches_per_epoch=1", "--no-pruning"]
    subprocess.run(
        _cli(dataset, url, "kill", "--create-only", *slow, "-o", "train.epochs=40"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    study = optuna.load_study(study_name="kill", storage=storage)
    worker = subprocess.Popen(
        _cli(dataset, url, "kill", "--n-trials", "1", *slow, "-o", "train.epochs=40"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not any("mlflow_run_id" in t.user_attrs for t in study.get_trials()):
        time.sleep(0.1)
    # kill at once: the trial's run is open and it is training; on idle cores its 40 one-batch epochs take about
    # two seconds, so a pause here let the trial finish before the kill
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    (t0,) = study.get_trials()
    assert t0.state == TrialState.RUNNING
    subprocess.run(
        _cli(dataset, url, "kill", "--n-trials", "1", *slow, "-o", "train.epochs=40"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    t0, t1 = study.get_trials()
    assert t0.state == TrialState.FAIL and t1.state == TrialState.COMPLETE and t1.params == t0.params
    dead = MlflowClient().get_run(t0.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and dead.data.tags["trial_state"] == "failed"
    assert MlflowClient().get_run(t0.user_attrs["mlflow_parent_run_id"]).info.status == "KILLED"
