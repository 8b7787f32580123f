"""One training run over several processes (GPUs) with PyTorch DDP, launched by ``torchrun``.

``init_from_env`` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins the
process group (nccl on CUDA, gloo on CPU); outside torchrun it returns a one-process
``DistEnv`` and nothing changes. In ``fit``:

- ``train.batch_size`` stays the GLOBAL batch: every rank draws the same epoch permutation
  (same seed) and takes its own disjoint slice of each global batch (``shard_indices``), so
  N processes take the same optimisation steps as one (same steps per epoch, same lr schedule);
- DDP all-reduces (averages) the gradients; per-epoch train metrics are summed over ranks;
- rank 0 alone evaluates validation and broadcasts the numbers, so early stopping agrees;
- rank 0 alone talks to MLflow, writes checkpoints and evaluates test (``runners.network.run_network``).

BatchNorm statistics stay per process (batch_size / N images each, as in torchvision's
references without --sync-bn). One torchrun job runs one ``pretrain`` or ``finetune`` stage;
``tune`` and ``grid`` drive many runs from one process and are not meant for torchrun.

    torchrun --standalone --nproc_per_node 2 -m fashion_core.cli.commands pretrain --profile quick --data DATA
    fashion pretrain --gpus 2 --profile quick --data DATA      # the same, torchrun launched for you
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn, TypeVar

import torch
import torch.nn as nn

from fashion_core.data.loader import batches

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank``, ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, evaluates and writes."""
        return self.rank == 0

    def device_for(self, device: torch.device) -> torch.device:
        """This rank's own GPU when training on CUDA; the device unchanged otherwise."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sums(self, *values: float) -> tuple[float, ...]:
        """The sums over ranks of a few numbers (float64, on the CPU for gloo or the rank's GPU for nccl)."""
        if not self.active:
            return tuple(float(v) for v in values)
        device = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return tuple(float(v) for v in t.cpu())

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (e.g. build the image cache once, then reuse it)."""
        if not self.active:
            return fn()
        if self.is_main:
            out = fn()
            self.barrier()
            return out
        self.barrier()
        return fn()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (gradient all-reduce); unchanged for one process."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, output_device=ids[0] if ids else None)

    def augment_generator(self, seed: int, epoch: int) -> torch.Generator:
        """A per-rank, per-epoch generator for augmentation: ranks draw different crops, a resume redraws the same."""
        g = torch.Generator()
        g.manual_seed((seed * 1_000_003 + epoch * 1009 + self.rank) % (2**63))
        return g


def init_from_env(device: str = "auto", timeout_minutes: float = 60) -> DistEnv:
    """Join torchrun's process group (once); a one-process DistEnv outside torchrun.

    Args:
        device: ``train.device``; nccl is used when it means CUDA (``auto`` with a GPU, or ``cuda``).
        timeout_minutes: how long a rank waits at a collective (rank 0 may build the image cache first).
    Returns:
        This process's DistEnv.
    Raises:
        RuntimeError: more processes per node than GPUs when training on CUDA.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dist = torch.distributed
    if dist.is_initialized():
        return DistEnv(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            backend=str(dist.get_backend()),
        )
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): "
                "use --nproc_per_node <= the number of GPUs, or train.device=cpu"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(minutes=timeout_minutes)
    )
    atexit.register(shutdown)  # leave the group cleanly when the command ends
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown() -> None:
    """Leave the process group (end of a torchrun job).

    Collects garbage first: a finished DDP model can linger in a reference cycle holding the group; left for the
    interpreter's finalization, its gloo threads are torn down unjoined and the process aborts (SIGABRT,
    "terminate called without an active exception") after its work is done, about one exit in three on CPU."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import gc

        gc.collect()
        torch.distributed.destroy_process_group()


def shard_indices(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of one global batch of indices.

    The batch is padded by wrapping around to a multiple of ``world`` (only when it is not
    one already), then cut into ``world`` equal contiguous parts: the parts are disjoint up
    to the padding, cover the batch, and every rank gets the same number of items, which
    DDP and BatchNorm need.
    """
    n = int(idx.shape[0])
    per = -(-n // world)
    if per * world != n:
        idx = idx[torch.arange(per * world, device=idx.device) % n]
    return idx[rank * per : (rank + 1) * per]


def shard_batches(
    data,
    batch_size: int,
    env: DistEnv,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | None = None,
    max_batches: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """``loader.batches`` for one rank: the same global batches (same permutation), this rank's slice of each.

    Args:
        data: a ``TensorData``.
        batch_size: the GLOBAL batch size.
        generator: seeded identically on every rank, so every rank draws the same permutation.
    """
    return batches(
        data,
        batch_size,
        shuffle=True,
        generator=generator,
        drop_last=drop_last,
        device=device,
        max_batches=max_batches,
        shard=lambda idx: shard_indices(idx, env.rank, env.world_size),
    )


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The torchrun command line that runs ``fashion <argv>`` (``--gpus`` removed) in ``nproc`` processes."""
    rest: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--gpus":
            skip = True
            continue
        if a.startswith("--gpus="):
            continue
        rest.append(a)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "fashion_core.cli.commands",
        *rest,
    ]


def launch_with_torchrun(nproc: int, argv: list[str]) -> NoReturn:
    """Replace this process by ``torchrun --nproc_per_node nproc -m fashion_core.cli.commands <argv>`` (never returns)."""
    cmd = torchrun_command(nproc, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
