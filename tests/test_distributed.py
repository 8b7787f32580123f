"""DDP over several processes: disjoint shards, the same per-epoch losses as one process, rank 0 alone logs.

The multi-process tests run 2 gloo processes on the CPU (torch.multiprocessing spawn, or torchrun
through ``fashion pretrain --gpus 2``). The two that start MLflow in every process are marked slow
(a minute or two on 2 cores): ``pytest -m slow tests/test_distributed.py``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fashion_core.config.schema import AugmentConfig, TrainConfig
from fashion_core.data.loader import batches
from fashion_core.engine.distributed import (
    DistEnv,
    init_from_env,
    shard_batches,
    shard_indices,
    torchrun_command,
)
from tests.helpers.train import TinyNet, toy_data

PROJECT = Path(__file__).resolve().parents[1]
NO_AUG = AugmentConfig(crop_scale_min=1.0, hflip=False, jitter=0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fit(env: DistEnv | None, epochs: int = 4) -> list[dict]:
    """A seeded fit of TinyNet on toy data; the history of per-epoch metrics."""
    from fashion_core.engine.train import fit
    from fashion_core.losses import Criterion

    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(
        epochs=epochs, batch_size=16, lr=0.01, warmup_epochs=0.0, patience=0, device="cpu", augment=NO_AUG
    )
    res = fit(
        model,
        toy_data(100, 1),
        toy_data(40, 2),
        Criterion(nn.CrossEntropyLoss()),
        [{"params": list(model.parameters())}],
        cfg,
        torch.device("cpu"),
        dist=env,
    )
    return res.history


def _set_rank_env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )


def _join(rank: int, world: int, port: int, **env: str) -> DistEnv:
    """Join the process group as a torchrun child does (torchrun's environment variables, then init_from_env)."""
    torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            **env,
        }
    )
    return init_from_env("cpu")


def _fit_worker(rank: int, world: int, port: int, out: str) -> None:
    """One spawned rank: the toy fit; writes its history."""
    env = _join(rank, world, port)
    Path(out, f"fit{rank}.json").write_text(
        json.dumps({"env": [env.rank, env.world_size, env.backend], "history": run_fit(env)})
    )


SHARED_KEYS = ("train_loss", "train_top1", "lr", "val_top1_mean", "val_loss", "best_val_top1_mean")


def _stage_worker(rank: int, world: int, port: int, out: str, data: str, tracking_uri: str, cache: str) -> None:
    """One spawned rank running a whole pretrain stage (run_stage); writes the run id it returned and what its
    ``fit`` was given and gave back (the rank-independent metrics, a checksum of each trained parameter)."""
    from unittest import mock

    _join(rank, world, port, MLFLOW_TRACKING_URI=tracking_uri, FASHION_CACHE=cache)
    from fashion_core.config.schema import load_experiment
    from fashion_core.runners import network
    from fashion_core.runners.stage import run_stage

    fits: list[dict] = []

    def recording_fit(model, *args, **kwargs):
        result = real_fit(model, *args, **kwargs)
        fits.append(
            {
                "history": [{k: h[k] for k in SHARED_KEYS if k in h} for h in result.history],
                "params": [float(p.detach().double().sum()) for p in model.parameters()],
                "checkpoint": kwargs.get("checkpoint_path") is not None,
                "on_epoch": kwargs.get("on_epoch") is not None,
            }
        )
        return result

    real_fit = network.fit
    cfg = load_experiment(None, profile="smoke", stage="pretrain").replace(
        **{"data.top_k": 4, "train.device": "cpu", "train.epochs": 2}
    )
    said: list[str] = []  # the package's messages in this rank

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    package = logging.getLogger("fashion_core")
    package.addHandler(Said())
    package.setLevel(logging.INFO)
    with mock.patch.object(network, "fit", recording_fit):
        run_id = run_stage(cfg, data, register=False)
    Path(out, f"stage{rank}.json").write_text(json.dumps({"run_id": run_id, "fits": fits, "said": said}))


def test_shard_indices_equal_disjoint_covering():
    for n, world in [(16, 2), (17, 2), (5, 4), (1, 2), (30, 3)]:
        idx = torch.arange(100, 100 + n)
        parts = [shard_indices(idx, r, world) for r in range(world)]
        assert len({len(p) for p in parts}) == 1, "every rank must take the same number of items"
        allv = torch.cat(parts)
        assert set(allv.tolist()) == set(idx.tolist())
        assert len(allv) - n < world  # padding only to the next multiple of world
        assert (len(allv) == n) == (n % world == 0)  # padded exactly when n is not a multiple of world
        assert len(allv) - len(set(allv.tolist())) == len(allv) - n  # disjoint: the only repeats are the padding


def test_shard_batches_split_the_single_process_batches():
    data = toy_data(50, 0)
    single = [
        b["label"] for b in batches(data, 8, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True)
    ]
    per_rank = [
        [
            b["label"]
            for b in shard_batches(
                data, 8, DistEnv(rank=r, world_size=2), generator=torch.Generator().manual_seed(3), drop_last=True
            )
        ]
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == 6
    for k, full in enumerate(single):
        assert torch.equal(torch.cat([per_rank[0][k], per_rank[1][k]]), full)


def test_single_process_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    env = init_from_env("cpu")
    assert env == DistEnv() and env.is_main and not env.active
    assert env.broadcast_object({"a": 1}) == {"a": 1} and env.all_reduce_sums(1, 2.5) == (1.0, 2.5)
    assert env.device_for(torch.device("cpu")) == torch.device("cpu")
    model = TinyNet()
    assert env.wrap(model, torch.device("cpu")) is model


def test_torchrun_command_drops_gpus():
    cmd = torchrun_command(2, ["pretrain", "--gpus", "2", "--profile", "quick", "--gpus=3"])
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "fashion_core.cli.commands", "pretrain", "--profile", "quick"]


@pytest.mark.integration  # two spawned gloo ranks
def test_ddp_fit_on_two_gloo_processes_matches_one_process(tmp_path):
    one = run_fit(None)
    torch.multiprocessing.spawn(_fit_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"fit{r}.json").read_text()) for r in range(2)]
    assert [r["env"] for r in ranks] == [[0, 2, "gloo"], [1, 2, "gloo"]]
    two = ranks[0]["history"]
    loss1 = [h["train_loss"] for h in one]
    loss2 = [h["train_loss"] for h in two]
    print(
        f"per-epoch train_loss, 1 process: {np.round(loss1, 5).tolist()}; 2 gloo processes: {np.round(loss2, 5).tolist()}"
    )
    assert loss1[-1] < 0.7 * loss1[0] and min(loss1) > 0.1, "the toy problem must be learned, gradually"
    # Same global batches, gradients averaged over equal halves: the same optimisation as one process.
    np.testing.assert_allclose(loss2, loss1, rtol=1e-4)
    np.testing.assert_allclose([h["val_top1_mean"] for h in two], [h["val_top1_mean"] for h in one], rtol=1e-6)
    # every rank holds the same (reduced / broadcast) numbers, so early stopping agrees everywhere
    for key in ("train_loss", "train_top1", "val_loss", "best_val_top1_mean"):
        assert [h[key] for h in ranks[1]["history"]] == [h[key] for h in two]


@pytest.mark.integration  # two spawned gloo ranks
@pytest.mark.slow
def test_run_stage_on_two_ranks_logs_one_run(tmp_path, monkeypatch):
    """A pretrain stage on 2 gloo ranks: both ranks go through the same ``fit`` and train identically; one MLflow run
    (rank 0's) tagged with the world size; rank 1 logs nothing, prints nothing and writes no checkpoint."""
    import mlflow

    from tests.helpers.data import make_dataset

    data = make_dataset(tmp_path / "mini", per_class=(30, 30, 24, 24), n_classes=4, odd_rows=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # the ranks start here: the store's artifacts (./mlruns) stay out of the checkout
    torch.multiprocessing.spawn(
        _stage_worker,
        nprocs=2,
        join=True,
        args=(2, free_port(), str(tmp_path), str(data), uri, str(tmp_path / "cache")),
    )
    ranks = [json.loads((tmp_path / f"stage{r}.json").read_text()) for r in range(2)]
    ids = [r["run_id"] for r in ranks]
    assert ids[0] and ids[1] == ""
    said = [r["said"] for r in ranks]  # one process prints: rank 0 its run's lines, rank 1 nothing
    assert any(m.startswith("epoch 2/2") for m in said[0]) and any(f"run {ids[0]}" in m for m in said[0])
    assert said[1] == []
    fits = [r["fits"] for r in ranks]
    assert len(fits[0]) == len(fits[1]) == 1, "every rank trains once, through the same fit"
    main, other = fits[0][0], fits[1][0]
    assert (main["checkpoint"], main["on_epoch"]) == (True, True)  # rank 0 writes the checkpoint and logs epochs
    assert (other["checkpoint"], other["on_epoch"]) == (False, False)  # rank 1 neither
    assert len(main["history"]) == 2 and main["history"] == other["history"]
    # DDP averages the same gradients on both ranks: the trained parameters agree
    assert main["params"] and len(main["params"]) == len(other["params"])
    np.testing.assert_allclose(other["params"], main["params"], rtol=1e-6, atol=1e-6)
    assert not list((tmp_path / "cache" / "checkpoints").glob("*.pt"))  # rank 0 logged its checkpoint and removed it
    client = mlflow.MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.run_id for r in runs] == [ids[0]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["ddp_backend"] == "gloo"
    assert len(client.get_metric_history(ids[0], "train_loss")) == 2
    assert "test_top1_mean" in run.data.metrics


def _train_losses(uri: str) -> tuple[list[float], dict]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, f"expected exactly one run in {uri}, found {len(runs)}"
    hist = sorted(client.get_metric_history(runs[0].info.run_id, "train_loss"), key=lambda m: m.step)
    return [m.value for m in hist], runs[0].data.tags


@pytest.mark.integration  # `fashion pretrain --gpus 2` through torchrun
@pytest.mark.slow
def test_cli_gpus_two_cpu_processes_same_trend_as_one(tmp_path):
    """`fashion pretrain --gpus 2` on the CPU: torchrun, 2 gloo ranks, one run, the same loss trend as 1 process."""
    from tests.helpers.data import make_dataset

    data = make_dataset(tmp_path / "mini", n_classes=4, per_class=(90, 90, 90, 90), odd_rows=False)
    losses = {}
    for n in (1, 2):
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / f'mlflow{n}.db'}",
            "FASHION_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1",
        }
        env.pop("WORLD_SIZE", None)
        cmd = [
            str(Path(sys.executable).parent / "fashion"),
            "pretrain",
            "--data",
            str(data),
            "--profile",
            "smoke",
            "--device",
            "cpu",
            "--epochs",
            "5",
            "--top-k",
            "4",
            "--no-register",
            "-o",
            "train.batch_size=32",
            "--experiments-dir",
            str(PROJECT / "experiments"),
            "--gpus",
            str(n),
        ]
        out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        losses[n], tags = _train_losses(env["MLFLOW_TRACKING_URI"])
        assert tags.get("world_size") == (None if n == 1 else "2")
    one, two = np.array(losses[1]), np.array(losses[2])
    print(
        f"per-epoch train_loss, 1 process: {np.round(one, 4).tolist()}; 2 gloo processes: {np.round(two, 4).tolist()}"
    )
    assert len(one) == len(two) == 5
    assert one[-1] < 0.8 * one[0] and two[-1] < 0.8 * two[0]  # both learn
    # BatchNorm sees 16 images per rank instead of 32 and augmentation draws differ: close, not equal.
    np.testing.assert_allclose(two, one, rtol=0.25)
