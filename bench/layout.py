"""Memory layout of the convolutions on this machine: a training step in NCHW against channels-last.

PyTorch's CPU convolutions (oneDNN) prefer channels-last; `fit`, `predict_scores` and `embed` use it
on CPUs and CUDA (``fashion_core.engine.devices.channels_last_on``). This measures why: images/s of one
training step (forward, loss, backward, AdamW) of each backbone at 80x60, the two layouts alternating
for ``--rounds`` rounds (reverse order every other round), best step of each round, median over rounds.

    PYTHONPATH=. .venv/bin/python bench/layout.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.common import machine_line, table

BACKBONES = {  # name -> ModelConfig fields (the profiles' image models)
    "efficientnet_lite0 (quick/cpu/default)": {"backbone": "efficientnet_lite0", "width_mult": 1.0, "stem": "imagenet"},
    "resnet18 x0.5 (quick_scratch/cpu_scratch)": {"backbone": "resnet18", "width_mult": 0.5, "stem": "imagenet"},
}


def step_rate(model, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Images/s of the fastest of ``steps`` training steps."""
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def measure(name: str, fields: dict, batch: int, rounds: int, steps: int, height: int, width: int) -> dict:
    from fashion_core.config.schema import ModelConfig
    from fashion_core.models.network import build_model

    torch.manual_seed(0)
    x = torch.randn(batch, 3, height, width)
    y = torch.randint(0, 20, (batch,))
    models = {
        "nchw": build_model(ModelConfig(init="scratch", **fields), 20).train(),
        "channels_last": build_model(ModelConfig(init="scratch", **fields), 20).train(),
    }
    models["channels_last"].to(memory_format=torch.channels_last)
    inputs = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}
    rates: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for r in range(rounds + 1):  # round 0 warms the allocator and oneDNN's kernels up
        order = ["nchw", "channels_last"] if r % 2 == 0 else ["channels_last", "nchw"]
        for k in order:
            rate = step_rate(models[k], inputs[k], y, steps)
            if r:
                rates[k].append(rate)
    a, b = statistics.median(rates["nchw"]), statistics.median(rates["channels_last"])
    return {"model": name, "NCHW img/s": a, "channels-last img/s": b, "speed-up": b / a}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="training steps per round and layout (the fastest counts)")
    ap.add_argument("--height", type=int, default=80)
    ap.add_argument("--width", type=int, default=60)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(n, f, args.batch, args.rounds, args.steps, args.height, args.width) for n, f in BACKBONES.items()]
    print(machine_line())
    print(f"training step, batch {args.batch}, {args.height}x{args.width}, median of {args.rounds} rounds\n")
    print(table(rows))


if __name__ == "__main__":
    main()
