"""Training and evaluation: plain functions that return numbers and log nothing themselves.

As in torchvision's classification references: ``train_one_epoch`` (augment on the device, step,
schedule, weight average; the loss and hits summed on the device and read back once per epoch)
and ``evaluate`` (class-mean top-1/top-5 on a split), and ``fit``, a short loop that calls them and
keeps the rest: resume, DDP sharding, early stopping and best-state selection on VALIDATION
class-mean top-1 (the test split never selects anything), a resumable checkpoint after every
epoch, and a progress bar per epoch (``progress``). ``place_data`` puts a stage's uint8 images
on the device once when they fit. The caller gets one ``on_epoch(epoch, metrics)`` call per
epoch to log or prune.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from fashion_core.config.schema import TrainConfig
from fashion_core.data.loader import TensorData, augment, batches, num_batches, to_float
from fashion_core.engine.devices import autocast_for, channels_last_on, grad_scaler_for, place_data, to_preferred_layout
from fashion_core.engine.distributed import DistEnv
from fashion_core.engine.distributed import shard_batches as dist_shard_batches
from fashion_core.engine.progress import EpochProgress
from fashion_core.evaluation.scoring import class_mean_accuracy
from fashion_core.evaluation.scoring import topk_predictions as top5_of

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch/numpy/random; return a CPU generator for shuffling and augmentation."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def build_optimizer(param_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine decay to 0."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


@torch.no_grad()
def predict_scores(model: nn.Module, data: TensorData, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Softmax-free scores (logits, float32) for every item, in order: (N, C).

    The model and its inputs go channels-last where the device prefers it (a layout change only).
    """
    model.eval()
    channels_last = to_preferred_layout(model, device)
    out = []
    for batch in batches(data, batch_size, shuffle=False, device=device):
        x = to_float(batch["image"], channels_last)
        with autocast_for(device):
            logits = model(x, batch)["logits"]
        out.append(logits.float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def evaluate(
    model: nn.Module, data: TensorData, device: torch.device, criterion: nn.Module | None = None, batch_size: int = 512
) -> dict[str, float]:
    """Class-mean top-1/top-5 (and loss when a criterion is given) on a labelled split."""
    scores = predict_scores(model, data, device, batch_size)
    labels = data.labels.cpu().numpy()
    if len(labels) == 0:
        return {"top1_mean": float("nan"), "top5_mean": float("nan")}
    top5 = top5_of(scores)
    t1, t5 = class_mean_accuracy(labels, top5)
    res = {"top1_mean": t1, "top5_mean": t5, "top1_micro": float((top5[:, 0] == labels).mean())}
    if criterion is not None:
        ok = labels >= 0
        if ok.any():
            s = torch.from_numpy(scores[ok])
            b = {"label": torch.from_numpy(labels[ok])}
            res["loss"] = float(criterion({"logits": s}, b).item())
    return res


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step on a ready input batch (autocast as on ``device``); returns (loss, output).

    The output is ``model(x, batch)`` (``{"logits", ...}``), scored by ``criterion(output, batch)``.
    ``scaler``: fp16's gradient scaler (``grad_scaler_for``); when enabled it reads one flag from the
    device per step (only on GPUs without bf16).
    """
    with autocast_for(device):
        out = model(x, batch)
    loss = criterion(out, batch)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, out


class WeightEMA:
    """An exponential moving average of a model's state (parameters and BatchNorm statistics).

    After step t the average moves towards the live weights by ``1 - d`` with
    ``d = min(decay, (1 + t) / (10 + t))``, so early averages are not dominated by the initialisation.
    Integer buffers (BatchNorm's batch counter) are copied. ``module`` is a model to evaluate.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        # state_dict tensors share storage with the modules: the pairs stay live as training updates in place
        live, avg = model.state_dict(keep_vars=False), self.module.state_dict(keep_vars=False)
        self._float = (
            [avg[k] for k in avg if avg[k].is_floating_point()],
            [live[k] for k in avg if avg[k].is_floating_point()],
        )
        self._other = [(avg[k], live[k]) for k in avg if not avg[k].is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._float[0], self._float[1], 1.0 - d)
        for a, b in self._other:
            a.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.module.load_state_dict(d["state"])
        self.updates = int(d["updates"])


SELECT_VAL = "val_top1_mean"  # FitResult.selection: the epoch with the best validation class-mean top-1
SELECT_LAST = "last_epoch"  # no validation images: the weights after the last configured epoch


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val: float  # NaN when there was no validation (selection == SELECT_LAST)
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    selection: str = SELECT_VAL


def _epoch_batches(
    train: TensorData, cfg: TrainConfig, gen: torch.Generator, device: torch.device, epoch: int, dist: DistEnv | None
):
    """One epoch's shuffled batches and augmentation generator (under DDP: this rank's slice, own draws)."""
    drop_last = len(train) > cfg.batch_size
    if dist is not None and dist.active:  # same permutation on every rank (gen), own augmentation draws
        return (
            dist_shard_batches(
                train,
                cfg.batch_size,
                dist,
                generator=gen,
                device=device,
                drop_last=drop_last,
                max_batches=cfg.max_batches_per_epoch,
            ),
            dist.augment_generator(cfg.seed, epoch),
        )
    return (
        batches(
            train,
            cfg.batch_size,
            shuffle=True,
            generator=gen,
            device=device,
            drop_last=drop_last,
            max_batches=cfg.max_batches_per_epoch,
        ),
        gen,
    )


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch_batches,
    device: torch.device,
    cfg: TrainConfig,
    aug_gen: torch.Generator,
    *,
    ema: WeightEMA | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress=None,
) -> tuple[float, int, int]:
    """One pass over ``epoch_batches``: augment, step, schedule, average; returns (loss sum, hits, images).

    The loss and hit sums stay on the device and are read back once, at the end: a read per
    step would make the host wait for the GPU at every step. ``progress`` (``EpochProgress``)
    counts images without reading anything from the device.
    """
    model.train()
    channels_last = channels_last_on(device)
    # float64 like the Python floats this replaces (same sums); MPS has no float64.
    loss_sum = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    hit_sum = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for batch in epoch_batches:
        x = augment(batch["image"], cfg.augment, aug_gen, channels_last)
        loss, out = train_step(model, criterion, optimizer, x, batch, device, scaler)
        scheduler.step()
        if ema is not None:
            ema.update()
        bs = batch["label"].shape[0]
        loss_sum += loss.detach().to(loss_sum.dtype) * bs
        hit_sum += (out["logits"].argmax(1) == batch["label"]).sum()
        seen += bs
        if progress is not None:
            progress.update(bs)
    return float(loss_sum), int(hit_sum), seen


@dataclass
class _Selection:
    """Best-epoch bookkeeping on validation class-mean top-1 (no validation: the last epoch's weights, best_val NaN)."""

    best_state: dict[str, torch.Tensor]
    best_epoch: int = 0
    best_val: float = -1.0
    bad_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, epoch: int, metrics: dict[str, float], selected: nn.Module, has_val: bool) -> None:
        if not has_val:  # nothing to select on: keep the newest weights
            self.best_val, self.best_epoch = float("nan"), epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in selected.state_dict().items()}
        elif metrics["val_top1_mean"] > self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = metrics["val_top1_mean"], epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in selected.state_dict().items()}
        else:
            self.bad_epochs += 1
        metrics["best_val_top1_mean"] = self.best_val if has_val else float("nan")
        self.history.append({"epoch": epoch, **metrics})


def _checkpoint(
    model, optimizer, scheduler, epoch: int, sel: _Selection, gen: torch.Generator, ema: WeightEMA | None = None
) -> dict:
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "best_state": sel.best_state,
        "best_epoch": sel.best_epoch,
        "best_val": sel.best_val,
        "history": sel.history,
        "bad_epochs": sel.bad_epochs,
        "rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if ema is not None:
        ckpt["ema"] = ema.state_dict()
    return ckpt


def _save(ckpt: dict, path: str | Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint."""
    tmp = Path(str(path) + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def _resume(
    resume: dict, model, optimizer, scheduler, ema: WeightEMA | None, gen: torch.Generator
) -> tuple[int, _Selection]:
    """Load a checkpoint written by ``fit``; returns (first epoch to run, the selection so far)."""
    model.load_state_dict(resume["model"])
    if ema is not None:
        if "ema" not in resume:
            raise ValueError("the checkpoint has no weight average (it was written with train.ema_decay=0)")
        ema.load_state_dict(resume["ema"])
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["lr_scheduler"])
    gen.set_state(resume["rng"])
    torch.set_rng_state(resume["torch_rng"])
    sel = _Selection(
        resume["best_state"],
        int(resume["best_epoch"]),
        float(resume["best_val"]),
        int(resume["bad_epochs"]),
        list(resume["history"]),
    )
    return int(resume["epoch"]) + 1, sel


def fit(
    model: nn.Module,
    train: TensorData,
    val: TensorData,
    criterion: nn.Module,
    param_groups: list[dict],
    cfg: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint_path: str | Path | None = None,
    resume: dict | None = None,
    dist: DistEnv | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on ``train``; select the best epoch on ``val`` class-mean top-1.

    Without validation images (``len(val) == 0``) every configured epoch runs (no early stopping)
    and the last epoch's weights are kept (``FitResult.selection == "last_epoch"``). With ``cfg.ema_decay > 0`` the weight average (``WeightEMA``) is what is validated, selected and
    returned as ``best_state``; the live weights only train.

    Args:
        criterion: ``(output, batch) -> loss`` (``losses.Criterion``).
        param_groups: optimizer groups (frozen parameters left out).
        on_epoch: called after each epoch with ``train_*``/``val_*`` metrics; may raise to stop (pruning).
        checkpoint_path: written after every epoch (a checkpoint dict loadable with weights_only=True).
        resume: a checkpoint dict from an interrupted fit with the same settings.
        dist: this process's place in a torchrun job (see ``distributed``): DDP, a disjoint slice of
            every global batch, metrics summed over ranks, validation on rank 0 broadcast to all.
            None or one process: plain single-process training.
        progress: a bar per epoch on stderr (``progress.EpochProgress``; rank 0 only).
    Returns:
        FitResult with the best state (on CPU) and the per-epoch history.
    """
    gen = seed_everything(cfg.seed)
    model.to(device)
    to_preferred_layout(model, device)
    train, val = place_data(train, device), place_data(val, device)
    ddp = dist if dist is not None and dist.active else None  # the torchrun job this process trains in, if any
    net = ddp.wrap(model, device) if ddp is not None else model
    # torch.compile of a Module returns a Module (OptimizedModule); its stub only says a callable
    fwd = cast(nn.Module, torch.compile(net)) if cfg.compile else net
    optimizer = build_optimizer(param_groups, cfg)
    scaler = grad_scaler_for(device)
    steps_per_epoch = num_batches(
        len(train), cfg.batch_size, drop_last=len(train) > cfg.batch_size, max_batches=cfg.max_batches_per_epoch
    )
    total = max(1, steps_per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    )
    ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    selected = ema.module if ema is not None else model  # the weights that are validated, selected and kept
    start_epoch, sel = 1, _Selection({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    if resume is not None:
        start_epoch, sel = _resume(resume, model, optimizer, scheduler, ema, gen)
        logger.info(f"resuming at epoch {start_epoch} (best val top-1 {sel.best_val:.4f} at epoch {sel.best_epoch})")
    epoch_images = min(len(train), steps_per_epoch * cfg.batch_size)
    show = progress and (ddp is None or ddp.is_main)
    stopped = False
    loss_sum: float
    hit_sum: float  # hit_sum and seen are counts, floats once summed over ranks
    seen: float
    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.perf_counter()
        epoch_batches, aug_gen = _epoch_batches(train, cfg, gen, device, epoch, dist)
        bar = EpochProgress(epoch_images, f"epoch {epoch}/{cfg.epochs}") if show else None
        try:
            loss_sum, hit_sum, seen = train_one_epoch(
                fwd,
                criterion,
                optimizer,
                scheduler,
                epoch_batches,
                device,
                cfg,
                aug_gen,
                ema=ema,
                scaler=scaler,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        if ddp is not None:
            loss_sum, hit_sum, seen = ddp.all_reduce_sums(loss_sum, hit_sum, seen)
        train_seconds = time.perf_counter() - t0
        metrics = {
            "train_loss": loss_sum / max(1, seen),
            "train_top1": hit_sum / max(1, seen),
            "lr": optimizer.param_groups[-1]["lr"],
            "epoch_seconds": train_seconds,
            "train_images_per_second": seen / max(train_seconds, 1e-9),
        }
        if len(val):
            # Under DDP rank 0 alone evaluates; every rank gets its numbers, so early stopping agrees.
            v = evaluate(selected, val, device, criterion) if ddp is None or ddp.is_main else None
            v = ddp.broadcast_object(v) if ddp is not None else v
            assert v is not None  # rank 0 evaluated; every other rank holds its broadcast
            metrics.update({f"val_{k}": x for k, x in v.items()})
        sel.update(epoch, metrics, selected, bool(len(val)))
        if checkpoint_path is not None:  # before the epoch line: once it is printed, the epoch is resumable
            _save(_checkpoint(model, optimizer, scheduler, epoch, sel, gen, ema), checkpoint_path)
        logger.info(
            f"epoch {epoch}/{cfg.epochs}  loss {metrics['train_loss']:.4f}  train top-1 {metrics['train_top1']:.3f}  "
            + (
                f"val top-1 {metrics['val_top1_mean']:.4f}  val top-5 {metrics['val_top5_mean']:.4f}  "
                if len(val)
                else ""
            )
            + f"{seen / max(train_seconds, 1e-9):.0f} img/s  {train_seconds:.0f}s"
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if cfg.patience and sel.bad_epochs >= cfg.patience and len(val):
            logger.info(f"early stop: no validation gain for {cfg.patience} epochs (best epoch {sel.best_epoch})")
            stopped = True
            break
    return FitResult(
        best_state=sel.best_state,
        best_epoch=sel.best_epoch,
        best_val=sel.best_val,
        history=sel.history,
        stopped_early=stopped,
        selection=SELECT_VAL if len(val) else SELECT_LAST,
    )


def load_error(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (torch's own text is a page)."""
    import re

    m = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if m:
        return (
            f"it holds a pickled Python object ({m.group(1)}), not only tensors; refused, since loading it "
            "could run code"
        )
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by ``fit``; loaded with weights_only=True (no arbitrary unpickling)."""
    return torch.load(path, map_location="cpu", weights_only=True)
