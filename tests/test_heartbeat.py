"""Nothing RUNNING after a crash: heartbeats, the sweep of dead runs, grid continuation and shared cells.

The first tests drive ``heartbeat`` and ``grid_claims`` directly on an isolated store. The ``slow`` ones
start ``fashion grid`` as subprocesses on generated data with a 1 s heartbeat, ``kill -9`` them (the whole
grid, a ``--jobs`` worker then the grid, a Ray worker then the grid), run the same command again, and
check what a user sees: no run RUNNING, one FINISHED run per cell, one grid run (continued); and two
identical grids started at once: one FINISHED run per cell.

    .venv/bin/python -m pytest -q tests/test_heartbeat.py -m ""
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = str(ROOT / "experiments")


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def test_a_run_beats_while_open_and_stops_when_it_ends(isolated, monkeypatch):
    from fashion_core.tracking import heartbeat
    from fashion_core.tracking import runs as tracking

    monkeypatch.setenv("FASHION_HEARTBEAT_S", "0.2")
    tracking.set_experiment("beats")
    with tracking.start_run("prepare", "prepare", "d0") as run:
        rid = run.info.run_id
        first = float(_client().get_run(rid).data.tags["heartbeat"])
        deadline = time.time() + 20  # a loaded machine may delay the beat thread; it must beat well within this
        tags = _client().get_run(rid).data.tags
        while float(tags["heartbeat"]) <= first and time.time() < deadline:
            time.sleep(0.2)
            tags = _client().get_run(rid).data.tags
        assert float(tags["heartbeat"]) > first and tags["heartbeat_s"] == "0.2"
        assert tags["heartbeat_process"].split(":")[1] == str(os.getpid())
        assert rid in heartbeat.beaten_here()
    assert rid not in heartbeat.beaten_here()
    time.sleep(0.3)  # a beat already on its way when the run ended may still land
    last = _client().get_run(rid).data.tags["heartbeat"]
    time.sleep(1.0)
    run = _client().get_run(rid)
    assert run.info.status == "FINISHED" and run.data.tags["heartbeat"] == last  # no beat after the end


def test_a_top_level_run_ends_the_dead_runs_of_its_experiment(isolated, monkeypatch, caplog):
    """Dead: its process is gone (same machine), a stale heartbeat, no heartbeat and older than the window.
    Alive: a fresh heartbeat from another machine, no heartbeat but young, a slow writer's heartbeat within its own
    period, and the runs this process beats."""
    from fashion_core.tracking import heartbeat
    from fashion_core.tracking import runs as tracking

    monkeypatch.setenv("FASHION_HEARTBEAT_S", "1")
    exp = tracking.set_experiment("sweep")
    client = _client()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    here = heartbeat.process_id()

    def run(name: str, tags: dict, start: float | None = None) -> str:
        return client.create_run(exp, run_name=name, tags=tags, start_time=int((start or now) * 1000)).info.run_id

    ids = {
        "process gone": run(
            "a", {"heartbeat": f"{now:.1f}", "heartbeat_s": "1", "heartbeat_process": heartbeat.process_id(gone.pid)}
        ),
        "stale": run(
            "b",
            {"heartbeat": f"{now - 60:.1f}", "heartbeat_s": "1", "heartbeat_process": "elsewhere/1:123:1.00"},
            start=now - 100,
        ),
        "old, no heartbeat": run("c", {}, start=now - 60),
        "fresh elsewhere": run(
            "d", {"heartbeat": f"{now:.1f}", "heartbeat_s": "1", "heartbeat_process": "elsewhere/1:123:1.00"}
        ),
        "young, no heartbeat": run("e", {}),
        "slow writer": run(
            "f",
            {
                "heartbeat": f"{now - 30:.1f}",
                "heartbeat_s": "60",  # its own period: not stale
                "heartbeat_process": "elsewhere/1:123:1.00",
            },
        ),
        "this process": run("g", {"heartbeat": f"{now - 60:.1f}", "heartbeat_s": "1", "heartbeat_process": here}),
    }
    heartbeat.start(ids["this process"])  # beaten here (its next beat not due yet): alive whatever its tag says
    try:
        with tracking.start_run("finetune", "ncm", "d0"):  # a stage starting at the top level sweeps
            pass
    finally:
        heartbeat.stop(ids["this process"])
    state = {k: client.get_run(v) for k, v in ids.items()}
    for k in ("process gone", "stale", "old, no heartbeat"):
        assert state[k].info.status == "KILLED", k
        said = [r for r in caplog.records if r.getMessage().startswith(f"ended run {ids[k]} ")]
        assert len(said) == 1 and said[0].levelno == logging.WARNING, k  # a warning each
    assert state["process gone"].data.tags["killed_reason"].startswith(f"its process is gone (pid {gone.pid}")
    assert state["stale"].data.tags["killed_reason"].startswith("stale heartbeat (last seen ")
    assert state["stale"].info.end_time == int(float(state["stale"].data.tags["heartbeat"]) * 1000)
    assert state["old, no heartbeat"].data.tags["killed_reason"].startswith("stale heartbeat (none since its start")
    for k in ("fresh elsewhere", "young, no heartbeat", "slow writer", "this process"):
        assert state[k].info.status == "RUNNING" and "killed_reason" not in state[k].data.tags, k
    for rid in ids.values():
        if client.get_run(rid).info.status == "RUNNING":
            client.set_terminated(rid, "FINISHED")


def test_a_bad_heartbeat_interval_is_one_line(monkeypatch):
    from fashion_core.config.checks import ConfigError
    from fashion_core.tracking import heartbeat

    monkeypatch.setenv("FASHION_HEARTBEAT_S", "0")
    with pytest.raises(ConfigError, match="FASHION_HEARTBEAT_S='0': expected a positive number"):
        heartbeat.interval()


def _claim_tags(key: str) -> dict:
    from fashion_core.tracking import heartbeat

    return {"cell_key": key, **heartbeat.run_tags()}


def test_a_cell_claimed_by_a_live_run_is_waited_for_and_a_dead_claim_is_taken_over(isolated, monkeypatch):
    from fashion_core.grid.claims import claim_cell, holder_state
    from fashion_core.tracking import heartbeat
    from fashion_core.tracking import runs as tracking

    monkeypatch.setenv("FASHION_HEARTBEAT_S", "1")
    exp = tracking.set_experiment("claims")
    client = _client()
    made: list[str] = []

    def create() -> str:
        made.append(client.create_run(exp, tags=_claim_tags("k1")).info.run_id)
        return made[-1]

    elsewhere = {
        "cell_key": "k1",
        "heartbeat": f"{time.time():.1f}",
        "heartbeat_s": "1",
        "heartbeat_process": "elsewhere/1:123:1.00",
    }
    other = client.create_run(exp, tags=elsewhere).info.run_id  # another machine's grid runs the cell
    assert claim_cell(exp, "k1", create) == (None, other) and not made  # waited for, nothing created
    assert holder_state(other) == "running"
    client.set_tag(other, "heartbeat", f"{time.time() - 30:.1f}")  # that machine went silent
    assert holder_state(other) == "gone"
    assert client.get_run(other).data.tags["killed_reason"].startswith("stale heartbeat (last seen")
    mine, holder = claim_cell(exp, "k1", create)
    assert holder is None and mine == made[-1] and client.get_run(mine).info.status == "RUNNING"
    heartbeat.start(mine)
    try:
        assert claim_cell(exp, "k1", create) == (None, mine)  # a second grid of this machine waits for it
    finally:
        heartbeat.stop(mine)
    client.set_terminated(mine, "FINISHED")
    assert holder_state(mine) == "finished"


def test_claims_made_at_the_same_moment_never_both_win(isolated, monkeypatch):
    """Two grids claim the same cells at once (threads released by a barrier): at most one wins each cell,
    a loser's claim is deleted, and a cell nobody won is claimed again by a later try."""
    from fashion_core.grid.claims import claim_cell
    from fashion_core.tracking import runs as tracking

    monkeypatch.setenv("FASHION_HEARTBEAT_S", "1")
    exp = tracking.set_experiment("races")
    client = _client()
    for cell in range(6):
        key = f"race{cell}"
        barrier, results = threading.Barrier(2), []

        def claim(key=key, barrier=barrier, results=results):
            def create():
                barrier.wait(timeout=30)  # both look, then both create
                return client.create_run(exp, tags=_claim_tags(key)).info.run_id

            results.append(claim_cell(exp, key, create))

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        winners = [r for r, _ in results if r is not None]
        assert len(results) == 2 and len(winners) <= 1, results
        live = client.search_runs([exp], f"tags.cell_key = '{key}'")
        assert [r.info.run_id for r in live] == winners  # the loser's claim is gone
        if not winners:  # a tie: both lost; the next try wins
            again, _ = claim_cell(exp, key, lambda k=key: client.create_run(exp, tags=_claim_tags(k)).info.run_id)
            assert again is not None
        for r in client.search_runs([exp], f"tags.cell_key = '{key}'"):
            client.set_terminated(r.info.run_id, "FINISHED")


# ---------------------------------------------------------------- fashion grid as a process, killed


def _env(root: Path, heartbeat_s: str = "1") -> dict:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "FASHION_CACHE": str(root / "cache"),
        "FASHION_HEARTBEAT_S": heartbeat_s,
        "FASHION_PROGRESS": "0",
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    }


def _grid_cmd(dataset: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fashion_core.cli.commands",
        "grid",
        "--data",
        str(dataset),
        "--profile",
        "smoke",
        "--top-k",
        "4",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--experiments-dir",
        EXP,
        "--techniques",
        "pretrain/baseline,finetune/ncm",
        "--seeds",
        "0,1",
        "--no-register",
        "--experiment",
        "crash",
        *extra,
    ]


def _runs(root: Path) -> list:
    """Every run of the test's store (read through a client of that store). The first read may create the
    store's tables while the grid's process does too: it takes the lock ``tracking.ensure_store`` takes."""
    import fcntl

    from mlflow.tracking import MlflowClient

    with open(f"{root / 'mlflow.db'}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:  # the client's constructor is what creates the tables: it too must hold the lock
            client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
            client.search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    exp = client.get_experiment_by_name("crash")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


def _wait_for(root: Path, proc: subprocess.Popen, what, timeout: float = 600):
    """Poll the store until ``what(runs)`` gives something (returned); fail when the grid ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the grid ended (rc {proc.returncode}) before the point to kill it"
        try:
            got = what(_runs(root))
        except Exception:  # noqa: BLE001 - the store is still being created
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the grid")


def _running_pretrain(runs, pid_tag: str = "worker_pid", skip: tuple = ()):
    for r in runs:
        if (
            r.info.status == "RUNNING"
            and r.data.tags.get("stage") == "pretrain"
            and pid_tag in r.data.tags
            and r.info.run_id not in skip
        ):
            return r
    return None


def _after_kill_then_rerun(root: Path, dataset: Path, extra: tuple = ()) -> tuple[list, list, str]:
    """The ghosts a kill left, then the same command again; returns (runs before, runs after, its output)."""
    before = _runs(root)
    assert any(r.info.status == "RUNNING" for r in before)  # what the issue saw: ghosts until someone ends them
    out = subprocess.run(
        _grid_cmd(dataset, *extra), env=_env(root), cwd=root, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return before, _runs(root), out.stdout + out.stderr


def _check_one_of_each(after: list, n_cells: int = 4, restarts: str | None = "1") -> None:
    """No run RUNNING, one FINISHED run per cell, one grid run FINISHED (continued ``restarts`` times)."""
    assert not [r.info.run_name for r in after if r.info.status == "RUNNING"]
    grids = [r for r in after if r.data.tags.get("stage") == "grid"]
    assert len(grids) == 1 and grids[0].info.status == "FINISHED", [(g.info.run_id, g.info.status) for g in grids]
    assert grids[0].data.tags.get("grid_restarts") == restarts
    cells = [r for r in after if r.data.tags.get("stage") in ("pretrain", "finetune")]
    finished = [r.data.tags["config_hash"] for r in cells if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == n_cells, sorted(finished)
    for r in cells:
        if r.info.status == "KILLED":
            assert r.data.tags.get("killed_reason"), r.info.run_name
    assert {r.data.tags.get("heartbeat_s") for r in after} == {"1"}  # every run beat, workers at the grid's period


def _kill_group(proc: subprocess.Popen) -> None:
    with_group = os.getpgid(proc.pid)
    os.killpg(with_group, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.slow  # two short grids as processes: about two minutes on 2 busy cores
def test_kill_9_of_the_whole_grid_then_the_same_command_continues_it(tmp_path, dataset):
    proc = subprocess.Popen(
        _grid_cmd(dataset),
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # one cell done and the next one training: kill -9 the grid (its whole process group)
        _wait_for(
            tmp_path,
            proc,
            lambda runs: (
                any(r.info.status == "FINISHED" and r.data.tags.get("stage") == "pretrain" for r in runs)
                and _running_pretrain(runs)
            ),
        )
        _kill_group(proc)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    before, after, out = _after_kill_then_rerun(tmp_path, dataset)
    done_before = {r.info.run_id for r in before if r.info.status == "FINISHED" and r.data.tags.get("stage") != "grid"}
    ghosts = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    _check_one_of_each(after)
    by_id = {r.info.run_id: r for r in after}
    for rid in ghosts:  # the killed grid's run is continued; the killed cell's run ended KILLED with the reason
        run = by_id[rid]
        if run.data.tags.get("stage") == "grid":
            assert run.info.status == "FINISHED"
        else:
            assert run.info.status == "KILLED" and "its process is gone" in run.data.tags["killed_reason"]
    assert done_before <= {r.info.run_id for r in after if r.info.status == "FINISHED"}  # not run again
    assert "continuing grid run" in out and "finished before the restart" in out


@pytest.mark.slow  # two short grids with two worker processes each: about two minutes
def test_kill_9_of_a_jobs_worker_then_of_the_grid_then_the_same_command(tmp_path, dataset):
    extra = ("--jobs", "2", "--max-retries", "1")
    proc = subprocess.Popen(
        _grid_cmd(dataset, *extra),
        env=_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        first = _wait_for(tmp_path, proc, _running_pretrain)
        os.kill(int(first.data.tags["worker_pid"]), signal.SIGKILL)  # a worker dies: the pool reruns its cell
        _wait_for(tmp_path, proc, lambda runs: _running_pretrain(runs, skip=(first.info.run_id,)))
        _kill_group(proc)  # then the grid and its workers
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    _, after, _ = _after_kill_then_rerun(tmp_path, dataset, extra)
    _check_one_of_each(after)
    killed = {r.info.run_id: r for r in after}[first.info.run_id]
    assert killed.info.status == "KILLED" and killed.data.tags["killed_reason"]


@pytest.mark.slow  # a two-node Ray cluster on 127.0.0.1 and two grids: a few minutes
def test_kill_9_of_a_ray_worker_then_of_the_grid_then_the_same_command(tmp_path, dataset):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    from fashion_core.grid.executors import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1, log_dir=tmp_path / "ray") as address:
        extra = ("--ray", address, "--cpus-per-cell", "1", "--max-retries", "2")
        proc = subprocess.Popen(
            _grid_cmd(dataset, *extra),
            env=_env(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            first = _wait_for(tmp_path, proc, _running_pretrain)
            os.kill(int(first.data.tags["worker_pid"]), signal.SIGKILL)  # Ray reruns the cell
            _wait_for(tmp_path, proc, lambda runs: _running_pretrain(runs, skip=(first.info.run_id,)))
            _kill_group(proc)  # the driver: Ray ends the dead driver's tasks
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        _, after, _ = _after_kill_then_rerun(tmp_path, dataset, extra)
    _check_one_of_each(after)
    killed = {r.info.run_id: r for r in after}[first.info.run_id]
    assert killed.info.status == "KILLED" and killed.data.tags["killed_reason"]


@pytest.mark.slow  # two short grids at once: about a minute and a half
def test_two_identical_grids_started_at_once_run_each_cell_once(tmp_path, dataset):
    procs = [
        subprocess.Popen(
            _grid_cmd(dataset),
            env=_env(tmp_path),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    runs = _runs(tmp_path)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    grids = [r for r in runs if r.data.tags.get("stage") == "grid"]
    assert len(grids) == 2 and all(g.info.status == "FINISHED" for g in grids)
    cells = [r for r in runs if r.data.tags.get("stage") in ("pretrain", "finetune")]
    finished = [r.data.tags["config_hash"] for r in cells if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 4, sorted(finished)  # one FINISHED run per cell
    assert all(g.data.metrics["n_finished"] == 4 for g in grids)
    # each grid's table lists the same four runs; together they ran each once
    assert sum(g.data.metrics["n_reused"] for g in grids) == 4


def test_a_grid_that_ended_unfinished_is_continued_or_under_mlflow_run_linked(isolated, dataset, monkeypatch):
    """In-process, with the metadata-only baseline (seconds): a grid run that ended KILLED is continued by the same
    grid; under ``mlflow run`` (its launched run is the parent) the old one is linked and its finished cell reused."""
    from fashion_core.grid.plan import plan_grid
    from fashion_core.grid.scheduler import run_grid

    monkeypatch.setattr("fashion_core.grid.scheduler.code_version", lambda: "c0ffee+beat")
    tasks = plan_grid(EXP, ["pretrain/meta_only"], seeds=[0, 1], profile="smoke", overrides={"data.top_k": 4})
    first = run_grid(tasks, str(dataset), experiment="continue", profile="smoke", seeds=[0, 1], register=False)
    client = _client()
    client.set_terminated(first.parent_run_id, "KILLED")  # as if it had been stopped after its cells
    again = run_grid(tasks, str(dataset), experiment="continue", profile="smoke", seeds=[0, 1], register=False)
    assert again.parent_run_id == first.parent_run_id and not again.runs["reused"].any()
    assert list(again.runs["run_id"]) == list(first.runs["run_id"])  # its own cells, not run again
    parent = client.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["grid_restarts"] == "1"
    assert parent.data.tags["mlflow.note.content"].count("Finished ") == 1  # the note is rebuilt, not appended to
    client.set_terminated(first.parent_run_id, "KILLED")
    launched = client.create_run(first.experiment_id, tags={"mlflow.source.type": "PROJECT"}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launched)
    linked = run_grid(tasks, str(dataset), experiment="continue", profile="smoke", seeds=[0, 1], register=False)
    assert linked.parent_run_id == launched and linked.runs["reused"].all()
    assert list(linked.runs["run_id"]) == list(first.runs["run_id"])
    assert client.get_run(launched).data.tags["continues_grid_run_id"] == first.parent_run_id
    assert client.get_run(first.parent_run_id).data.tags["continued_by"] == launched
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    fresh = run_grid(
        tasks, str(dataset), experiment="continue", profile="smoke", seeds=[0, 1], register=False
    )  # the KILLED one was continued already: a new grid run, every cell reused
    assert fresh.parent_run_id not in (first.parent_run_id, launched) and fresh.runs["reused"].all()
