"""Training throughput and peak memory per backbone: the real training loop against compute alone.

For each backbone (default resolution 80x60, the model defaults of ``ModelConfig``) two rates:

- loop: ``fashion_core.engine.train.fit`` itself (one epoch of ``--steps`` batches): gather by index from
  the uint8 tensor, ``augment`` on the device, forward, loss, backward, AdamW step, LR schedule
  and the per-step loss/accuracy bookkeeping. The data are resident on the device.
- compute: forward + backward + AdamW step of the same model on batches already augmented
  and in memory (nothing else in the loop).

``loop / compute`` near 1 means training is not input-bound. Since a loaded machine makes both
rates noisy, the input side is also timed alone (the same gather + augment, no model): its
share of a loop step (``input % of step``) bounds what the input can cost. Rounds alternate
between the three, in reverse order every other round, and the table shows medians. Each backbone runs in its own process, so its peak memory is its
own: peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Images are generated
(throughput does not depend on their content).

    PYTHONPATH=. .venv/bin/python bench/throughput.py --backbones resnet18,mobilenet_v3_small --steps 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import bench_env, child_json, machine_line, peak_rss_mb, table


def synthetic_data(n: int, height: int, width: int, classes: int, seed: int = 0):
    """A TensorData of ``n`` random uint8 images and labels."""
    from fashion_core.data.loader import TensorData

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=g)
    return TensorData(images, torch.randint(0, classes, (n,), generator=g), {})


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compute_rate(model, xs: list, ys: list, dev: torch.device, compile: bool, lr: float = 1e-3) -> float:
    """Images/s of forward + backward + AdamW step on ready batches (same autocast as fit)."""
    from fashion_core.engine.train import train_step
    from fashion_core.losses import Criterion
    from fashion_core.models.network import param_groups

    fwd = torch.compile(model) if compile else model
    criterion = Criterion(torch.nn.CrossEntropyLoss())
    opt = torch.optim.AdamW(param_groups(model, lr, 1.0, 0.05), lr=lr)
    model.train()
    _sync(dev)
    t0 = time.perf_counter()
    for x, y in zip(xs, ys):
        train_step(fwd, criterion, opt, x, {"label": y}, dev)
    _sync(dev)
    return sum(x.shape[0] for x in xs) / (time.perf_counter() - t0)


def input_ms(data, batch_size: int, steps: int, cfg, dev: torch.device, channels_last: bool) -> float:
    """Milliseconds per batch of what fit does before the model: gather by index + augment."""
    from fashion_core.data.loader import augment, batches

    gen = torch.Generator().manual_seed(2)
    _sync(dev)
    t0, n = time.perf_counter(), 0
    for b in batches(data, batch_size, shuffle=True, generator=gen, drop_last=True, device=dev, max_batches=steps):
        augment(b["image"], cfg, gen, channels_last)
        n += 1
    _sync(dev)
    return 1000 * (time.perf_counter() - t0) / max(n, 1)


def measure(
    backbone: str,
    device: str = "cpu",
    batch_size: int = 128,
    steps: int = 2,
    rounds: int = 2,
    height: int = 80,
    width: int = 60,
    stem: str | None = None,
    width_mult: float | None = None,
    compile: bool = False,
    resident: bool = True,
    classes: int = 20,
) -> dict:
    """Loop and compute images/s (medians over alternating rounds) and peak memory of one backbone.

    Args:
        backbone: a name from ``config.BACKBONES``.
        device: "cpu" or "cuda".
        steps: batches per measurement; rounds: alternating loop/compute measurements.
        stem, width_mult: None = the ``ModelConfig`` defaults.
        compile: ``torch.compile`` the model (``train.compile``) in both measurements.
        resident: keep the uint8 images on the device (False: gather on the host and copy each batch).
    Returns:
        A row: backbone, device, loop and compute images/s, their ratio and peak memory in MB.
    """
    from dataclasses import replace

    from fashion_core.config.schema import ModelConfig, TrainConfig
    from fashion_core.data.loader import TensorData, augment, batches
    from fashion_core.engine.devices import channels_last_on
    from fashion_core.engine.train import fit
    from fashion_core.losses import Criterion
    from fashion_core.models.network import build_model, param_groups

    dev = torch.device(device)
    mcfg = ModelConfig(backbone=backbone)
    mcfg = replace(mcfg, stem=stem or mcfg.stem, width_mult=width_mult or mcfg.width_mult)
    model = build_model(mcfg, classes)
    params = sum(p.numel() for p in model.parameters())
    data = synthetic_data(batch_size * steps, height, width, classes)
    data = data.to(dev) if resident else data
    empty = TensorData(data.images[:0], data.labels[:0], {})
    tcfg = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        max_batches_per_epoch=steps,
        patience=0,
        warmup_epochs=0.0,
        compile=compile,
        device=device,
    )
    criterion = Criterion(torch.nn.CrossEntropyLoss())
    channels_last = channels_last_on(dev)  # as fit does

    def loop_rate(cfg) -> float:
        res = fit(
            model,
            data,
            empty,
            criterion,
            param_groups(model, cfg.lr, 1.0, cfg.weight_decay),
            cfg,
            dev,
        )
        return res.history[-1]["train_images_per_second"]

    gen = torch.Generator().manual_seed(1)
    xs, ys = [], []
    for b in batches(data, batch_size, shuffle=True, generator=gen, drop_last=True, device=dev):
        xs.append(augment(b["image"], tcfg.augment, gen, channels_last))
        ys.append(b["label"])
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    loop_rate(replace(tcfg, max_batches_per_epoch=1))  # warm-up: allocator, cuDNN autotune, compilation
    compute_rate(model, xs[:1], ys[:1], dev, compile)
    warmup = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loop, compute, inp = [], [], []
    measurements = [
        lambda: loop.append(loop_rate(tcfg)),
        lambda: compute.append(compute_rate(model, xs, ys, dev, compile)),
        lambda: inp.append(input_ms(data, batch_size, steps, tcfg.augment, dev, channels_last)),
    ]
    for r in range(rounds):
        # ABBA order: a load that rises or falls during the run favours neither side.
        for m in measurements if r % 2 == 0 else measurements[::-1]:
            m()
    loop_m, compute_m, input_m = statistics.median(loop), statistics.median(compute), statistics.median(inp)
    step_ms = 1000 * batch_size / loop_m
    row = {
        "backbone": backbone,
        "stem": mcfg.stem,
        "width": mcfg.width_mult,
        "params (M)": params / 1e6,
        "device": dev.type
        + (" +compile" if compile else "")
        + ("" if resident or dev.type == "cpu" else ", data on host"),
        "loop img/s": loop_m,
        "compute img/s": compute_m,
        "loop / compute": loop_m / compute_m,
        "loop ms/step": step_ms,
        "input ms/step": input_m,
        "input % of step": 100 * input_m / step_ms,
        "warm-up s": warmup,
    }
    if dev.type == "cuda":
        row["peak MB"] = torch.cuda.max_memory_allocated(dev) / 2**20  # the GPU's own, what limits batch size
    else:
        row["peak MB"] = peak_rss_mb()
    row["RSS at start MB"] = rss_before  # interpreter, libraries, model and data before the first step
    return row


def run(
    backbones: list[str], devices: list[str], threads: int | None = None, compile: bool = False, log=print, **kw
) -> list[dict]:
    """One child process per (backbone, device); returns their rows.

    Args:
        threads: torch CPU threads in the children (None = torch's default, all cores).
        compile: add a ``torch.compile`` row per backbone on CUDA.
        kw: passed to ``measure`` (batch_size, steps, rounds, height, width, stem, width_mult).
    """
    rows = []
    for dev in devices:
        for bb in backbones:
            for comp in [False, True] if compile and dev == "cuda" else [False]:
                args = {"backbone": bb, "device": dev, "compile": comp, **kw}
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(args)]
                if threads:
                    cmd += ["--threads", str(threads)]
                t0 = time.perf_counter()
                row = child_json(cmd, env=bench_env())
                log(
                    f"  {bb} on {dev}{' +compile' if comp else ''}: loop {row['loop img/s']:.1f} img/s, "
                    f"compute {row['compute img/s']:.1f} img/s ({time.perf_counter() - t0:.0f}s)"
                )
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    from fashion_core.config.checks import BACKBONES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default=",".join(BACKBONES), help=f"comma-separated, from {', '.join(BACKBONES)}")
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="all = CPU, and CUDA where present")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=None, help="batches per measurement (default: 2 on CPU, 20 on CUDA)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--height", type=int, default=80)
    ap.add_argument("--width", type=int, default=60)
    ap.add_argument("--stem", default=None, help="model.stem (default: ModelConfig's)")
    ap.add_argument("--width-mult", type=float, default=None, help="model.width_mult (default: ModelConfig's)")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return
    devices = {"all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here; choose cpu or all")
    rows = []
    for dev in devices:
        steps = args.steps or (20 if dev == "cuda" else 2)
        rows += run(
            args.backbones.split(","),
            [dev],
            args.threads,
            args.compile,
            log=lambda m: print(m, file=sys.stderr),
            batch_size=args.batch_size,
            steps=steps,
            rounds=args.rounds,
            height=args.height,
            width=args.width,
            stem=args.stem,
            width_mult=args.width_mult,
        )
    print(
        f"\nTraining throughput, batch {args.batch_size}, {args.height}x{args.width}, {machine_line()}"
        + (f", {args.threads} torch threads" if args.threads else "")
        + "\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
