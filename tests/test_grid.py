"""The technique grid on generated data: child runs, the failing technique, source choice, reuse, planning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import technique_raw
from fashion_core.grid.plan import config_hash, model_kind, parse_seeds, plan_grid, select_techniques
from fashion_core.grid.scheduler import run_grid
from fashion_core.tracking.runs import grid_run_ids
from fashion_core.tracking.versions import code_version
from tests.helpers.grid import EXP, TINY, cell_numbers, record_status
from tests.helpers.store import module_store


def experiments_dir(root: Path) -> Path:
    """A techniques folder: baseline, a technique that fails at run time, the metadata-only baseline, and ncm."""
    d = root / "experiments"
    (d / "pretrain").mkdir(parents=True)
    (d / "finetune").mkdir(parents=True)
    shutil.copy(EXP / "pretrain" / "baseline.yaml", d / "pretrain")
    # meta_only names a parent technique: written out whole, so the folder holds only these four
    raw = {k: v for k, v in technique_raw(EXP / "pretrain" / "meta_only.yaml").items() if k != "technique"}
    (d / "pretrain" / "meta_only.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(EXP / "finetune" / "ncm.yaml", d / "finetune")
    (d / "pretrain" / "broken.yaml").write_text(
        "description: weights that do not exist - fails once running\nmodel:\n  init: /nonexistent/weights.pt\n"
    )
    return d


@pytest.fixture(scope="module")
def store(tmp_path_factory, dataset):
    """One MLflow store and cache for the module; the grid below runs once."""
    with module_store(tmp_path_factory, "grid") as (root, mp):
        # Others may edit this working copy while the tests run; reuse must not depend on that here.
        mp.setattr("fashion_core.grid.scheduler.code_version", lambda: "c0ffee+test")
        yield root


@pytest.fixture(scope="module")
def grid(store, dataset):
    tasks = plan_grid(experiments_dir(store), seeds=[0, 1], profile="smoke", overrides=TINY)
    return tasks, run_grid(tasks, str(dataset), profile="smoke", seeds=[0, 1], register=False)


@pytest.mark.integration  # a whole grid end to end (the module's `grid` fixture)
def test_grid_parent_children_and_the_failing_technique(grid):
    from mlflow.tracking import MlflowClient

    tasks, res = grid
    client = MlflowClient()
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "grid"
    assert parent.info.run_name == "grid/smoke/seeds0,1"
    assert parent.data.metrics["n_runs"] == 8 and parent.data.metrics["n_failed"] == 2
    runs = res.runs.set_index(["stage", "technique", "seed"])
    assert list(res.runs["stage"]) == ["pretrain"] * 6 + ["finetune"] * 2  # pretrain first
    assert list(res.runs["technique"][:3]) == ["baseline", "broken", "meta_only"]  # seed 0 first
    for key, row in runs.iterrows():
        run = client.get_run(row["run_id"])
        # the technique first and short, the stage and profile as tags (also a cell that failed before training)
        assert run.info.run_name == f"{key[1]} · s{key[2]}"
        assert run.data.tags["stage"] == key[0]
        assert row["status"] == "FAILED" or run.data.tags["profile"] == "smoke"
        assert run.data.tags["mlflow.parentRunId"] == res.parent_run_id
        assert run.data.tags["config_hash"] == row["config_hash"]
        assert run.data.tags["code_version"] == "c0ffee+test"
        assert run.info.status == row["status"]
    for seed in (0, 1):
        broken = runs.loc[("pretrain", "broken", seed)]
        assert broken["status"] == "FAILED" and "nonexistent" in broken["error"]
        assert "nonexistent" in client.get_run(broken["run_id"]).data.tags["error"]
        assert runs.loc[("finetune", "ncm", seed), "status"] == "FINISHED"  # the grid went on
        meta = client.get_run(runs.loc[("pretrain", "meta_only", seed), "run_id"])  # run_stage dispatched it
        assert meta.info.status == "FINISHED" and meta.data.tags["baseline"] == "metadata_only"
    assert "FAILED" in parent.data.tags["mlflow.note.content"]
    listed = pd.read_csv(
        client.download_artifacts(res.parent_run_id, "grid/runs.csv"), dtype=str, keep_default_na=False
    )
    assert set(listed["run_id"]) == set(res.runs["run_id"])


@pytest.mark.integration  # a whole grid end to end (the module's `grid` fixture)
def test_finetune_starts_from_the_best_pretrain_run_by_validation(grid):
    from mlflow.tracking import MlflowClient

    from fashion_core.tracking.runs import best_val_score

    _, res = grid
    pre = res.runs[(res.runs["stage"] == "pretrain") & (res.runs["status"] == "FINISHED")]
    # The metadata-only baseline is no network to start from, however well it does on validation.
    assert set(pre.loc[pre["technique"] == "meta_only", "kind"]) == {""}
    pre = pre[pre["technique"] == "baseline"]
    scores = {r: best_val_score(r) for r in pre["run_id"]}
    best = max(scores, key=lambda r: (scores[r], -list(scores).index(r)))
    assert res.source_run_id == best
    assert MlflowClient().get_run(res.parent_run_id).data.tags["source_run_id"] == best
    for _, row in res.runs[res.runs["technique"] == "ncm"].iterrows():
        assert row["source_run_id"] == best == MlflowClient().get_run(row["run_id"]).data.tags["source_run_id"]
    assert set(res.rankings["run_id"]) == set(pre["run_id"]) and res.sources == {"image": best}


@pytest.mark.integration  # a whole grid end to end (the module's `grid` fixture)
def test_rerun_reuses_finished_runs_and_compare_reads_the_grid(grid, dataset, store):
    from fashion_core.report.compare import run_compare

    tasks, first = grid
    again = run_grid(tasks, str(dataset), profile="smoke", seeds=[0, 1], register=False)
    ok = first.runs["status"] == "FINISHED"
    assert again.runs["reused"].tolist() == ok.tolist()  # finished runs reused, failed ones tried again
    assert again.runs.loc[ok, "run_id"].tolist() == first.runs.loc[ok, "run_id"].tolist()
    assert again.source_run_id == first.source_run_id
    assert set(grid_run_ids(again.parent_run_id)) == set(again.runs["run_id"])
    rep = run_compare(grid="latest", out=store / "report")
    assert rep.scope.grid_run_id == again.parent_run_id
    assert set(rep.tables.runs["run_id"]) == set(first.runs.loc[ok, "run_id"])
    assert set(rep.tables.summary) == {"pretrain", "finetune"}
    assert (rep.tables.runs["n_mismatch"] == 0).all()  # per_class.csv agrees with predictions.csv
    assert "failed" in " ".join(rep.scope.left_out["reason"])
    ncm = [t for t in tasks if t.cfg.technique == "ncm"][:1]  # no training: a cheap forced rerun
    forced = run_grid(ncm, str(dataset), source=first.source_run_id, reuse=False)
    old_ncm = first.runs.loc[first.runs["technique"] == "ncm", "run_id"].iloc[0]
    assert not forced.runs["reused"].any() and forced.runs["run_id"][0] != old_ncm
    assert forced.runs["config_hash"][0] == first.runs.loc[first.runs["technique"] == "ncm", "config_hash"].iloc[0]


@pytest.mark.integration  # a whole grid end to end (the module's `grid` fixture), then a second grid
def test_under_mlflow_run_the_launched_run_is_the_parent(grid, dataset, monkeypatch):
    """`mlflow run . -e grid` creates a run, logs the entry point's parameters and exports MLFLOW_RUN_ID."""
    import os

    from mlflow.tracking import MlflowClient

    tasks, first = grid
    client = MlflowClient()
    launched = client.create_run(first.experiment_id, tags={"mlflow.source.type": "PROJECT"}).info.run_id
    client.log_param(launched, "profile", "smoke")
    client.log_param(launched, "from", "''")  # how `mlflow run` logs an empty parameter
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    ncm = [t for t in tasks if t.cfg.technique == "ncm"][:1]
    res = run_grid(ncm, str(dataset), source=first.source_run_id, profile="smoke")
    assert res.parent_run_id == launched and "MLFLOW_RUN_ID" not in os.environ
    parent = client.get_run(launched)
    assert parent.info.run_name == "grid/smoke/seeds0" and parent.data.tags["stage"] == "grid"
    assert parent.data.params["from"] == "''" and parent.data.params["n_tasks"] == "1"
    assert res.runs["reused"][0] and parent.info.status == "FINISHED"
    assert res.runs["config_hash"][0] in set(first.runs["config_hash"])  # the ncm run of the first grid, or a rerun


def test_a_technique_failing_before_its_run_is_recorded(store, dataset):
    from mlflow.tracking import MlflowClient

    tasks = plan_grid(EXP, ["finetune/ncm"], seeds=[0], profile="smoke", overrides=TINY)
    res = run_grid(tasks, str(dataset), experiment="no-pretrain-here")
    row = res.runs.iloc[0]
    assert row["status"] == "FAILED" and "pretrain" in row["error"]
    run = MlflowClient().get_run(row["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["mlflow.parentRunId"] == res.parent_run_id
    assert run.info.run_name == "ncm · s0"  # failed before run_stage opened a run: named as the runners name theirs


def test_bad_from_fails_before_any_run(store, dataset):
    from fashion_core.tracking.references import SourceError
    from fashion_core.tracking.runs import find_runs

    before = len(find_runs("tags.stage = 'grid'"))
    tasks = plan_grid(EXP, ["finetune/ncm"], seeds=[0], profile="smoke", overrides=TINY)
    with pytest.raises(SourceError, match="no run"):
        run_grid(tasks, str(dataset), source="0" * 32)
    assert len(find_runs("tags.stage = 'grid'")) == before


def test_plan_order_names_and_errors(tmp_path):
    tasks = plan_grid(EXP, ["ncm", "focal", "pretrain/baseline"], seeds=[0, 2], profile="quick", overrides=TINY)
    assert [t.name for t in tasks] == [
        "pretrain/focal/seed0",
        "pretrain/baseline/seed0",
        "pretrain/focal/seed2",
        "pretrain/baseline/seed2",
        "finetune/ncm/seed0",
        "finetune/ncm/seed2",
    ]
    assert all(t.cfg.data.top_k == 4 and t.cfg.train.epochs == 1 for t in tasks)
    assert tasks[0].cfg.loss.name == "focal" and tasks[4].cfg.transfer.method == "ncm"
    everything = select_techniques(EXP)
    assert [p.parent.name for p in everything] == sorted([p.parent.name for p in everything], reverse=True)
    assert {p.stem for p in everything} >= {"baseline", "focal", "ncm", "finetune"}
    assert all(p.parent.name == "finetune" for p in select_techniques(EXP, stages=["finetune"]))
    with pytest.raises(ConfigError, match="unknown technique 'nope'; choose from: .*pretrain/baseline"):
        select_techniques(EXP, ["nope"])
    with pytest.raises(ConfigError, match="unknown stage"):
        select_techniques(EXP, stages=["train"])
    both = tmp_path / "x"
    for s in ("pretrain", "finetune"):
        (both / s).mkdir(parents=True)
        (both / s / "same.yaml").write_text(f"stage: {s}\n")
    with pytest.raises(ConfigError, match="write pretrain/same or finetune/same"):
        select_techniques(both, ["same"])
    assert parse_seeds("0,1, 2") == [0, 1, 2] and parse_seeds("3-5,4") == [3, 4, 5]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("a")
    a, b = tasks[0].cfg, tasks[0].cfg.replace(**{"loss.gamma": 1.0})
    assert config_hash(a) == config_hash(a) != config_hash(b)
    ncm = tasks[4].cfg
    assert config_hash(ncm, "1" * 32) != config_hash(ncm, "2" * 32)  # the source is part of a transfer's identity


def test_code_version_is_the_commit_plus_local_changes_plus_libraries():
    from fashion_core.tracking.versions import git_commit

    commit, dirty = git_commit()
    version = code_version()
    base, _, libs = version.partition("~lib")
    assert base.startswith(commit) and len(libs) == 8
    assert base == commit or (len(base) == len(commit) + 13 and base[len(commit)] == "+")


def git_repo(root: Path) -> Path:
    """A tiny git checkout with one committed module."""
    import subprocess

    root.mkdir(parents=True)
    (root / "model.py").write_text("WIDTH = 64\n")
    for args in (
        ["init", "-q"],
        ["add", "model.py"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"],
    ):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
    return root


def test_reuse_needs_the_same_dataset_digest_not_just_the_folder_name(store, dataset, tmp_path):
    """Another dataset in a folder of the same name (the same experiment): one product moved from 2012 to 2013.
    The grid must rerun, not reuse the runs of the first dataset."""
    tasks = [
        t
        for t in plan_grid(experiments_dir(tmp_path), seeds=[0], profile="smoke", overrides=TINY)
        if t.cfg.technique == "meta_only"
    ]
    quiet = dict(profile="smoke", seeds=[0], register=False)
    first = run_grid(tasks, str(dataset), **quiet)
    assert run_grid(tasks, str(dataset), **quiet).runs["reused"].all()  # the same data: reused
    other = tmp_path / "elsewhere" / dataset.name
    shutil.copytree(dataset, other)
    lines = (other / "styles.csv").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ",2012," in ln and ln.split(",")[0].isdigit())
    lines[at] = lines[at].replace(",2012,", ",2013,")
    (other / "styles.csv").write_text("\n".join(lines) + "\n")
    again = run_grid(tasks, str(other), **quiet)
    assert not again.runs["reused"].any() and again.runs["run_id"][0] != first.runs["run_id"][0]


def test_a_real_code_change_changes_the_version_and_stops_reuse(tmp_path, isolated, monkeypatch):
    """Edited, new and committed source files, and other library versions, each give a version no run matches."""
    import subprocess

    import mlflow

    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking import versions
    from fashion_core.tracking.runs import find_reusable
    from fashion_core.tracking.versions import git_commit

    repo = git_repo(tmp_path / "repo")
    clean = code_version(repo)
    assert git_commit(repo)[1] is False and "+" not in clean.partition("~")[0]
    exp = tracking.set_experiment("reuse")
    run = mlflow.MlflowClient().create_run(exp, tags={"config_hash": "h", "dataset_digest": "d", "code_version": clean})
    mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
    assert find_reusable("h", "d", clean, exp).info.run_id == run.info.run_id

    (repo / "model.py").write_text("WIDTH = 128\n")  # an uncommitted edit
    edited = code_version(repo)
    assert edited != clean and git_commit(repo)[1] is True
    (repo / "model.py").write_text("WIDTH = 64\n")
    assert code_version(repo) == clean  # undone: the same code again

    (repo / "layers.py").write_text("DEPTH = 3\n")  # a new, untracked source file
    assert git_commit(repo)[1] is True  # dirty counts it (it did not with --untracked-files=no)
    untracked = code_version(repo)
    subprocess.run(["git", "add", "layers.py"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "two"], cwd=repo, check=True
    )
    committed = code_version(repo)
    (repo / "notes.txt").write_text("not source")  # an untracked non-source file changes nothing
    assert code_version(repo) == committed and git_commit(repo)[1] is False

    monkeypatch.setattr(
        versions,
        "library_versions",
        lambda: {"torch": "0.0.1", "torchvision": "0.0.1", "scikit-learn": "0.0.1", "numpy": "0.0.1"},
    )
    other_libs = code_version(repo)
    versions = [clean, edited, untracked, committed, other_libs]
    assert len(set(versions)) == len(versions)
    for v in versions[1:]:
        assert find_reusable("h", "d", v, exp) is None


def test_an_unknown_code_version_is_never_reused(tmp_path, isolated):
    import mlflow

    from fashion_core.tracking import runs as tracking
    from fashion_core.tracking.runs import find_reusable

    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert code_version(outside) == "unknown"
    exp = tracking.set_experiment("unknown")
    run = mlflow.MlflowClient().create_run(
        exp, tags={"config_hash": "h", "dataset_digest": "d", "code_version": "unknown"}
    )
    mlflow.MlflowClient().set_terminated(run.info.run_id, "FINISHED")
    assert find_reusable("h", "d", "unknown", exp) is None


def test_source_choice_follows_validation_when_test_disagrees():
    """The better-validation run is the source although another run scores better on test."""
    from fashion_core.grid.cells import RUN_COLUMNS
    from fashion_core.grid.plan import pick_best_pretrain

    rows = [
        {
            "stage": "pretrain",
            "technique": "baseline",
            "seed": 0,
            "kind": "image",
            "run_id": "a" * 32,
            "status": "FINISHED",
            "test_top1_mean": 0.95,
            "val_top1_best": 0.70,
        },
        {
            "stage": "pretrain",
            "technique": "focal",
            "seed": 0,
            "kind": "image",
            "run_id": "b" * 32,
            "status": "FINISHED",
            "test_top1_mean": 0.60,
            "val_top1_best": 0.80,
        },
        {
            "stage": "pretrain",
            "technique": "late",
            "seed": 0,
            "kind": "late-12345678",
            "run_id": "c" * 32,
            "status": "FINISHED",
            "test_top1_mean": 0.99,
            "val_top1_best": 0.99,
        },
        {
            "stage": "pretrain",
            "technique": "broken",
            "seed": 0,
            "kind": "image",
            "run_id": "d" * 32,
            "status": "FAILED",
            "test_top1_mean": float("nan"),
            "val_top1_best": 0.99,
        },
    ]
    runs = pd.DataFrame(rows).reindex(columns=list(RUN_COLUMNS))
    best, ranking = pick_best_pretrain(runs, "image")
    assert best == "b" * 32  # best validation (0.80), worst test (0.60)
    assert ranking["run_id"].tolist() == ["b" * 32, "a" * 32] and "test_top1_mean" not in ranking


def test_model_kinds_pair_finetune_techniques_with_compatible_sources():
    base = plan_grid(EXP, ["baseline"], profile="smoke")[0].cfg
    assert model_kind(base) == "image" == model_kind(base.replace(**{"fusion.aux_master": 0.3}))
    assert model_kind(base.replace(**{"fusion.mode": "metadata_only"})) == ""
    late = base.replace(**{"fusion.mode": "late"})
    assert model_kind(late).startswith("late-")
    assert model_kind(late) == model_kind(late.replace(**{"fusion.meta_dropout": 0.25, "stage": "finetune"}))
    assert model_kind(late) != model_kind(late.replace(**{"fusion.fields": "gender"}))
    assert model_kind(late) != model_kind(late.replace(**{"fusion.mode": "film"}))


def test_cli_grid_validates_before_any_run(isolated):
    from click.testing import CliRunner

    from fashion_core.cli.commands import main

    for args, message in (
        (["--techniques", "nope"], "unknown technique 'nope'"),
        (["--seeds", "x"], "--seeds"),
        (["--profile", "fast"], "Invalid value for '--profile'"),
        (["-o", "loss.gamma=-1"], "loss.gamma must be >= 0"),
    ):
        r = CliRunner().invoke(main, ["grid", "--experiments-dir", str(EXP), *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    assert not (isolated / "mlflow.db").exists()  # rejected before MLflow was touched


@pytest.mark.integration  # a --jobs 2 pool of worker processes
def test_jobs_2_gives_the_sequential_grid_numbers(grid, dataset):
    """Two local worker processes (as many threads each as the sequential grid had): the same metrics per cell."""
    import torch

    _, seq = grid
    tasks = plan_grid(EXP, ["pretrain/baseline", "finetune/ncm"], seeds=[0, 1], profile="smoke", overrides=TINY)
    par = run_grid(
        tasks,
        str(dataset),
        experiment="jobs-2",
        register=False,
        jobs=2,
        threads_per_cell=torch.get_num_threads(),
    )
    assert (par.runs["status"] == "FINISHED").all() and not par.runs["reused"].any()
    assert [t.name for t in tasks] == [f"{r.stage}/{r.technique}/seed{r.seed}" for r in par.runs.itertuples()]
    assert par.runs["worker"].nunique() == 2 and all(w.startswith("pid ") for w in par.runs["worker"])
    expected = cell_numbers(seq)
    got = cell_numbers(par)
    assert got == {k: expected[k] for k in got}  # every metric of every cell, and the same source choice
    again = run_grid(tasks, str(dataset), experiment="jobs-2", register=False, jobs=2)
    assert again.runs["reused"].all() and list(again.runs["run_id"]) == list(par.runs["run_id"])


@pytest.mark.integration  # a --jobs 2 pool of worker processes
def test_jobs_2_status_shows_a_cell_running_only_once_a_worker_started_it(store, dataset, monkeypatch):
    """Four cells submitted at once to two workers: two wait queued, never more than two show running."""
    monkeypatch.setenv("FASHION_PROGRESS", "0")
    seen = record_status(monkeypatch)
    tasks = plan_grid(EXP, ["pretrain/baseline"], seeds=[0, 1, 2, 3], profile="smoke", overrides=TINY)
    res = run_grid(
        tasks,
        str(dataset),
        experiment="jobs-2-status",
        register=False,
        jobs=2,
        threads_per_cell=1,
        show_status=True,
        profile="smoke",
    )
    assert (res.runs["status"] == "FINISHED").all()
    assert seen[3] == {"pending": 0, "queued": 4, "running": 0, "finished": 0, "reused": 0, "failed": 0}
    assert 1 <= max(c["running"] for c in seen) <= 2, seen
    assert seen[-1]["finished"] == 4 and seen[-1]["running"] == seen[-1]["queued"] == 0


def test_status_never_shows_more_cells_running_than_slots_even_when_the_executor_says_more_started(
    store, dataset, monkeypatch
):
    """An executor that says every submitted cell has started (a worker that takes its next cell a moment
    before the previous one's end reaches the grid): the status still shows at most ``concurrency`` running."""
    import concurrent.futures as cf
    import time

    from fashion_core.grid import scheduler as grid
    from fashion_core.grid.cells import task_row

    class Eager(cf.ThreadPoolExecutor):
        def started(self, futures):
            return set(futures)  # more than the 2 slots: all 4 at once

    def fake_cell(cell):
        time.sleep(1.2)  # a few of the grid's status polls (0.5 s)
        return {
            **task_row(cell.task, None, "FINISHED", False, 1.2, cell.cfg_hash, None),
            "host": "here",
            "worker": "thread",
            "device": "cpu",
        }

    monkeypatch.setenv("FASHION_PROGRESS", "0")
    monkeypatch.setattr(grid, "run_cell", fake_cell)
    monkeypatch.setattr(
        grid, "_executor", lambda *a, **k: (Eager(max_workers=4), {"executor": "fake", "jobs": 4, "concurrency": 2})
    )
    seen = record_status(monkeypatch)
    tasks = plan_grid(EXP, ["pretrain/baseline"], seeds=[0, 1, 2, 3], profile="smoke", overrides=TINY)
    res = run_grid(
        tasks,
        str(dataset),
        experiment="status-cap",
        register=False,
        jobs=4,
        show_status=True,
        profile="smoke",
    )
    assert (res.runs["status"] == "FINISHED").all()
    assert max(c["running"] for c in seen) == 2, seen  # capped at the slots, and the cap was reached
    assert all(c["running"] + c["finished"] <= 4 for c in seen) and seen[-1]["finished"] == 4
