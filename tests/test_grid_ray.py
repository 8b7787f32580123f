"""``fashion grid --ray``: cells as Ray tasks on a two-node cluster on 127.0.0.1 (one CPU each).

The cluster is started here (``executors.local_cluster``: ``ray start --head --block`` and
``ray start --address ... --block``, each stopped by its own process id at the end). One smoke grid of 4 cells covers the issue's
checks: every cell FINISHED exactly once, cells on both nodes, the numbers of the sequential grid,
and a worker killed in the middle of a cell: Ray reruns the cell, the dead attempt's run ends
KILLED, the grid completes; the status never shows more cells running than the cluster's 2 slots,
and each line a worker prints reaches this process once, prefixed by its cell.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_core.grid.plan import plan_grid
from fashion_core.grid.scheduler import run_grid
from tests.helpers.grid import EXP, TINY, cell_numbers, record_status, run_grid_killing_one_cell
from tests.helpers.store import module_store

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node on 127.0.0.1, one CPU each; yields the address."""
    from fashion_core.grid.executors import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1, log_dir=tmp_path_factory.mktemp("ray")) as address:
        yield address


@pytest.fixture(scope="module")
def store(tmp_path_factory, dataset):
    with module_store(tmp_path_factory, "grid-ray") as (root, mp):
        mp.setattr("fashion_core.grid.scheduler.code_version", lambda: "c0ffee+ray")
        mp.setenv("FASHION_PROGRESS", "0")
        yield root


@pytest.mark.integration  # a two-node Ray cluster on 127.0.0.1
def test_ray_grid_on_two_nodes_survives_a_killed_worker(cluster, store, dataset, capfd, monkeypatch):
    import torch
    from mlflow.tracking import MlflowClient

    seen = record_status(monkeypatch)
    tasks = plan_grid(EXP, ["pretrain/baseline", "finetune/ncm"], seeds=[0, 1], profile="smoke", overrides=TINY)
    res, _ = run_grid_killing_one_cell(
        tasks, dataset, experiment="ray", ray=cluster, cpus_per_cell=1, max_retries=2, show_status=True, profile="smoke"
    )
    out = capfd.readouterr()
    lines = (out.out + out.err).splitlines()
    for r in res.runs[res.runs["stage"] == "pretrain"].itertuples():  # printed when the cell's run starts
        said = [line for line in lines if f"pretrain run {r.run_id}" in line]
        assert len(said) == 1 and f"[pretrain/baseline/seed{r.seed}]" in said[0], said
    assert not [line for line in lines if "/seed" in line and "repeated" in line]  # no cell line folded by Ray
    assert 1 <= max(c["running"] for c in seen) <= 2 and seen[-1]["finished"] == len(tasks), seen
    nodes = {w.split()[1] for w in res.runs["worker"]}
    assert len(nodes) == 2, res.runs["worker"].tolist()  # cells ran on both nodes
    plan = MlflowClient().download_artifacts(res.parent_run_id, "grid/plan.json")
    assert '"cpus_per_cell": 1' in Path(plan).read_text() and res.runs["host"].all()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray cell has (cpus_per_cell=1)
    try:
        seq = run_grid(tasks, str(dataset), experiment="ray-seq", register=False)
    finally:
        torch.set_num_threads(before)
    assert cell_numbers(res) == cell_numbers(seq)


def test_the_driver_keeps_every_cells_lines_that_ray_would_fold_as_repeated(monkeypatch):
    """Ray folds lines that differ only in words with digits, from several workers within 5 s, into the latest one
    "[repeated Nx across cluster]": three cells' start lines would show as one. The grid lets cell lines through."""
    from ray._private import ray_constants, ray_logging

    from fashion_core.grid.executors import keep_cell_lines

    def batch(pid: int, line: str) -> dict:
        return {"ip": "127.0.0.1", "pid": pid, "job": "01", "is_err": False, "lines": [line]}

    def printed(dedup) -> list[str]:
        out = [line for pid in (1, 2, 3) for b in dedup.deduplicate(batch(pid, cell_line(pid))) for line in b["lines"]]
        out += [
            line
            for pid in (1, 2, 3)
            for b in dedup.deduplicate(batch(pid, "UserWarning: shape 0/1 specialized"))
            for line in b["lines"]
        ]
        return out + [line for b in dedup.flush() for line in b["lines"]]

    def cell_line(seed: int) -> str:
        return f"[pretrain/baseline/seed{seed}] pretrain run {seed}a0b{seed} (pretrain/baseline/seed{seed}): 4 classes"

    clock = lambda: 100.0  # noqa: E731 - every line within the 5 s window
    if ray_constants.RAY_DEDUP_LOGS:  # what Ray does on its own: seed 3's line stands for seeds 2 and 3
        plain = printed(ray_logging.LogDeduplicator(5, None, None, _timesource=clock))
        assert not any("seed2]" in line for line in plain), plain
    monkeypatch.delenv("RAY_DEDUP_LOGS_ALLOW_REGEX", raising=False)
    for name in ("stdout_deduplicator", "stderr_deduplicator"):
        monkeypatch.setattr(getattr(ray_logging, name), "allow_re", getattr(ray_logging, name).allow_re)
    assert keep_cell_lines()
    told = ray_logging.LogDeduplicator(5, None, None, _timesource=clock)
    told.allow_re = ray_logging.stdout_deduplicator.allow_re
    lines = printed(told)
    assert [line for line in lines if line.startswith("[pretrain")] == [cell_line(s) for s in (1, 2, 3)]
    # other lines are still folded: the warning once, then once more as "repeated 2x"
    assert len([line for line in lines if "UserWarning" in line]) == 2, lines
