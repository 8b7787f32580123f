"""The GPU path in one short run: CUDA checks, then the pipeline and throughput benchmarks, as one markdown report.

Made for a lent GPU machine that has PyTorch but not the tracking stack (no mlflow, optuna,
plotly) and no internet: it needs only torch, torchvision, numpy, pandas and pillow, generates
its images unless ``--data`` names a dataset, and stays within ``--budget`` seconds (the
benchmarks still to come are skipped, and say so, once the budget is spent).

1. preflight: versions, the device, and proof that the training core imported no tracking module;
2. checks: augment/to_float on the device equal the CPU result for the same seed, batches from
   device-resident data, ``fit`` with bf16 autocast + channels-last (and ``torch.compile``),
   then ``tests/test_loader.py`` (its CUDA tests included) when pytest is installed;
3. benchmarks: the input pipeline (bench/pipeline.py) and the training throughput of every
   backbone (bench/throughput.py), data resident on the device; one row with the data on the host;
4. one table of what a user waits for: images/s of a ``default``-profile pretrain (``fit`` with the
   default model and training config on 15,767 images of 80x60, the real pretrain split's size,
   placed on the device by ``fit``), the same cells run as a ``--jobs`` grid on every GPU (one cell
   per GPU in worker processes, ``executors.local_pool``: the grid's own pool), and the image cache
   build (``bench/cache_build.py``'s child, on ``--data`` or generated JPEGs).

On a GPU machine (from the repository root):

    PYTHONPATH=. python bench/gpu_check.py --out "$OUT/gpu_check.md"

Here, to check the script without a GPU (``--simulate-bare`` blocks every module a bare
PyTorch machine may lack, so a stray import fails here first):

    PYTHONPATH=. .venv/bin/python bench/gpu_check.py --device cpu --smoke --simulate-bare
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import time
import traceback
import types
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NEEDED = ("torch", "torchvision", "numpy", "pandas", "PIL")
TRACKING = ("mlflow", "optuna", "plotly")
# What a machine with only PyTorch may lack: --simulate-bare makes these unimportable.
NOT_ON_A_BARE_MACHINE = TRACKING + (
    "yaml",
    "sklearn",
    "click",
    "tqdm",
    "pyarrow",
    "pytest",
    "optuna_dashboard",
    "kagglehub",
    "psycopg2",
)


def _block(names: tuple[str, ...]) -> None:
    """Make top-level packages look absent: ``import`` raises ModuleNotFoundError and ``find_spec`` returns None."""
    for name in names:
        sys.modules[name] = None  # the import system's own "not importable" marker


def _yaml_stand_in() -> str | None:
    """A placeholder ``yaml`` module when PyYAML is missing: fashion_core.config.schema imports it at module level,
    though only experiment files and -o overrides need it, and this script reads neither."""
    try:
        import yaml  # noqa: F401

        return None
    except ImportError:
        mod = types.ModuleType("yaml")

        def missing(*args, **kwargs):
            raise ImportError("PyYAML is not installed; gpu_check reads no YAML")

        mod.safe_load = mod.safe_dump = mod.dump = mod.load = missing
        mod.YAMLError = type("YAMLError", (Exception,), {})
        sys.modules["yaml"] = mod
        return (
            "PyYAML is missing: a placeholder module lets fashion_core.config.schema import (nothing here reads YAML)"
        )


class Report:
    """Collects markdown sections, prints them as they come and writes them to ``out``."""

    def __init__(self, out: str | None):
        self.out = Path(out) if out else None
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        print(text, flush=True)
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("\n\n".join(self.parts) + "\n")


def preflight(dev_name: str, notes: list[str]) -> tuple[list[dict], bool]:
    """Versions of what the script needs and proof the training core loads no tracking module."""
    rows, ok = [], True
    for name in NEEDED + ("pyarrow", "yaml", "pytest"):
        try:
            mod = importlib.import_module(name)
            rows.append(
                {
                    "module": name,
                    "version": getattr(mod, "__version__", "placeholder"),
                    "needed": "yes" if name in NEEDED else "no",
                }
            )
        except ImportError:
            rows.append({"module": name, "version": "missing", "needed": "yes" if name in NEEDED else "no"})
            ok = ok and name not in NEEDED
    # The training core: what this script (and a training process) imports.

    loaded = sorted(m for m in TRACKING if sys.modules.get(m) is not None)
    rows.append(
        {
            "module": "tracking modules loaded by fashion_core.engine.train/models/losses/data.loader",
            "version": ", ".join(loaded) or "none",
            "needed": "must be none",
        }
    )
    ok = ok and not loaded
    import torch

    if dev_name == "cuda":
        p = torch.cuda.get_device_properties(0)
        notes.append(
            f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, bf16 {torch.cuda.is_bf16_supported()}"
        )
    return rows, ok


def check_augment_matches_cpu(dev) -> str:
    """augment and to_float on the device equal the CPU result for the same seed."""
    import torch

    from fashion_core.config.schema import AugmentConfig
    from fashion_core.data.loader import augment, to_float

    x = torch.randint(0, 256, (64, 80, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(jitter=0.2)
    cpu = augment(x, cfg, torch.Generator().manual_seed(5))
    out = augment(x.to(dev), cfg, torch.Generator().manual_seed(5), channels_last=True)
    assert out.device.type == dev.type and out.is_contiguous(memory_format=torch.channels_last)
    err = (out.cpu() - cpu).abs().max().item()
    assert err < 1e-3, f"augment differs from CPU by {err}"
    err2 = (to_float(x.to(dev), True).cpu() - to_float(x)).abs().max().item()
    assert err2 < 1e-4, f"to_float differs from CPU by {err2}"
    return f"largest difference from CPU: augment {err:.1e}, to_float {err2:.1e}"


def check_resident_batches(dev) -> str:
    """batches() from device-resident data yields device tensors covering every item once."""
    import torch

    from fashion_core.data.loader import TensorData, batches

    data = TensorData(torch.zeros(100, 8, 6, 3, dtype=torch.uint8), torch.arange(100), {"m": torch.arange(100)}).to(dev)
    got = list(batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(b["image"].device.type == dev.type and torch.equal(b["m"], b["label"]) for b in got)
    assert sorted(torch.cat([b["label"] for b in got]).tolist()) == list(range(100))
    return f"{len(got)} batches, all on {dev.type}"


def check_fit(dev, compile: bool) -> str:
    """fit trains on the device (bf16 autocast + channels-last on CUDA) and evaluate reads the result."""
    import torch

    from bench.throughput import synthetic_data
    from fashion_core.config.schema import ModelConfig, TrainConfig
    from fashion_core.engine.train import evaluate, fit
    from fashion_core.losses import Criterion
    from fashion_core.models.network import build_model, param_groups

    model = build_model(ModelConfig(backbone="resnet18", width_mult=0.25), 5)
    train, val = synthetic_data(64, 80, 60, 5).to(dev), synthetic_data(32, 80, 60, 5, seed=1).to(dev)
    cfg = TrainConfig(epochs=2, batch_size=16, patience=0, warmup_epochs=0.0, compile=compile, device=dev.type)
    crit = Criterion(torch.nn.CrossEntropyLoss())
    t0 = time.perf_counter()
    res = fit(model, train, val, crit, param_groups(model, cfg.lr, 1.0, cfg.weight_decay), cfg, dev)
    seconds = time.perf_counter() - t0
    assert len(res.history) == 2 and all(h["train_loss"] == h["train_loss"] for h in res.history), res.history
    if dev.type == "cuda":
        w = model.backbone.conv1.weight
        assert w.is_cuda and w.is_contiguous(memory_format=torch.channels_last), "model is not channels-last on CUDA"
    v = evaluate(model, val, dev, crit)
    assert 0 <= v["top1_mean"] <= 1
    return (
        f"2 epochs in {seconds:.1f}s, loss {res.history[0]['train_loss']:.3f} -> {res.history[-1]['train_loss']:.3f}, "
        f"val top-1 {v['top1_mean']:.2f}"
    )


def run_pytest(timeout: float) -> str:
    """tests/test_loader.py (with its CUDA tests) in a child process."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_loader.py"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    tail = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else res.stderr[-300:]
    assert res.returncode == 0, f"pytest failed:\n{res.stdout[-3000:]}\n{res.stderr[-1000:]}"
    return tail


def _default_pretrain(n: int, epochs: int, max_batches: int, seed: int = 0) -> dict:
    """A ``default``-profile pretrain on synthetic data on this process's GPU: images/s of its last epoch."""
    import torch

    from bench.throughput import synthetic_data
    from fashion_core.config.schema import ExperimentConfig
    from fashion_core.engine.devices import pick_device
    from fashion_core.engine.train import fit
    from fashion_core.losses import Criterion
    from fashion_core.models.network import build_model, param_groups

    dev = pick_device("auto")
    cfg = ExperimentConfig()  # the default profile: no overrides
    train_cfg = dataclasses.replace(cfg.train, epochs=epochs, patience=0, max_batches_per_epoch=max_batches, seed=seed)
    model = build_model(cfg.model, 20)
    train, empty = synthetic_data(n, cfg.data.height, cfg.data.width, 20, seed), synthetic_data(0, 80, 60, 20)
    t0 = time.perf_counter()
    res = fit(
        model,
        train,
        empty,
        Criterion(torch.nn.CrossEntropyLoss()),
        param_groups(model, train_cfg.lr, 1.0, train_cfg.weight_decay),
        train_cfg,
        dev,
        progress=False,
    )
    return {
        "images/s": res.history[-1]["train_images_per_second"],
        "seconds": time.perf_counter() - t0,
        "images per epoch": min(n, (max_batches or n) * train_cfg.batch_size),
        "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "model": f"{cfg.model.backbone} width {cfg.model.width_mult}, batch {train_cfg.batch_size}",
    }


def _cell_in_worker(args: tuple) -> dict:
    """One grid cell in a pool worker (the pool set CUDA_VISIBLE_DEVICES to its GPU)."""
    return _default_pretrain(*args)


def user_table(dev, data: str | None, smoke: bool, left) -> list[dict]:
    """Images/s of a default-profile pretrain, a --jobs grid on all GPUs, and the cache build: one table."""
    import tempfile

    import torch

    rows = []
    n, epochs, max_batches = (256, 2, 2) if smoke else (15767, 2, 40)
    one = _default_pretrain(n, epochs, max_batches)
    rows.append(
        {
            "measure": f"default-profile pretrain on 1 {dev.type.upper()} ({one['model']}"
            + (", bf16 + channels-last)" if dev.type == "cuda" else ")"),
            "images/s": one["images/s"],
            "seconds": one["seconds"],
            "detail": f"{one['images per epoch']} images per epoch, last of {epochs}",
        }
    )
    n_gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n_gpus and left() > 60:
        from fashion_core.grid.executors import local_pool

        pool, info = local_pool(n_gpus, gpus_per_cell=1.0)
        t0 = time.perf_counter()
        with pool:
            cells = list(pool.map(_cell_in_worker, [(n, epochs, max_batches, s) for s in range(n_gpus)]))
        wall = time.perf_counter() - t0
        total = sum(c["images/s"] for c in cells)
        rows.append(
            {
                "measure": f"--jobs {n_gpus} grid: {n_gpus} default pretrain cells, one per GPU",
                "images/s": total,
                "seconds": wall,
                "detail": f"{total / max(one['images/s'], 1e-9):.2f}x one GPU; wall includes worker start; "
                f"GPUs {', '.join(c['gpu'] for c in cells)}",
            }
        )
    elif not n_gpus:
        rows.append({"measure": "--jobs grid on all GPUs", "detail": "skipped: no GPU"})
    else:
        rows.append({"measure": "--jobs grid on all GPUs", "detail": "skipped: budget spent"})
    if left() > 30:
        from bench import cache_build

        with tempfile.TemporaryDirectory(prefix="gpu-check-data-") as tmp:
            root = data or _generated_dataset(Path(tmp) / "data", 512 if smoke else 8192)
            built = cache_build.run(root, [os.cpu_count() or 1], log=lambda m: print(m, file=sys.stderr))
        step = next(r for r in built if r["step"].startswith("decode"))
        rows.append(
            {
                "measure": f"image cache build ({step['images']} images, {step['workers']} processes)",
                "images/s": step["images/s"],
                "seconds": step["seconds"],
                "detail": "the real dataset" if data else "generated 60x80 JPEGs",
            }
        )
    else:
        rows.append({"measure": "image cache build", "detail": "skipped: budget spent"})
    return rows


def _generated_dataset(root: Path, n: int) -> str:
    """A small-layout dataset (styles.csv + images/) of ``n`` generated JPEGs in 8 classes."""
    from bench.pipeline import synthetic_jpegs

    paths = synthetic_jpegs(root / "images", n)
    lines = ["id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"]
    for i, _ in enumerate(paths):
        lines.append(f"{i},Men,Apparel,Topwear,C{i % 8},Blue,Summer,{2012 + i % 2},Casual,Shirt {i}")
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return str(root)


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one branch per check of the GPU script
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument(
        "--data", default=None, help="dataset folder or archive for the pipeline benchmark (default: generated JPEGs)"
    )
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT") and str(Path(os.environ["OUT"]) / "gpu_check.md"),
        help="markdown file to write the report to (default: $OUT/gpu_check.md when $OUT is set)",
    )
    ap.add_argument(
        "--budget", type=float, default=420.0, help="seconds; benchmarks still to come are skipped after it"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: check the script, not the machine")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile check and row")
    ap.add_argument("--simulate-bare", action="store_true", help="block the modules a bare PyTorch machine may lack")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.simulate_bare:
        _block(NOT_ON_A_BARE_MACHINE)
    notes = [n for n in [_yaml_stand_in()] if n]
    import torch

    from bench.common import machine_line, table

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: use --device cpu (with --smoke) to check the script", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    report = Report(args.out)
    report.add(
        f"## GPU check ({'smoke, ' if args.smoke else ''}{dev.type})\n\n{machine_line()}"
        + ("\n\nimports blocked: " + ", ".join(NOT_ON_A_BARE_MACHINE) if args.simulate_bare else "")
    )
    rows, ok = preflight(dev.type, notes)
    report.add("### Preflight\n\n" + table(rows) + "".join(f"\n\n- {n}" for n in notes))
    if not ok:
        report.add("**preflight failed**: a needed module is missing or the training core imported a tracking module")
        return 1

    compile = not args.no_compile and dev.type == "cuda"  # inductor on CPU needs a compiler; not this script's job
    checks = [
        ("augment/to_float on the device == CPU", lambda: check_augment_matches_cpu(dev)),
        ("batches from device-resident data", lambda: check_resident_batches(dev)),
        (
            "fit + evaluate" + (" (bf16 autocast, channels-last)" if dev.type == "cuda" else ""),
            lambda: check_fit(dev, False),
        ),
    ]
    if compile:
        checks.append(("fit with torch.compile", lambda: check_fit(dev, True)))
    if importlib.util.find_spec("pytest") is not None and not args.simulate_bare:
        checks.append(("pytest tests/test_loader.py", lambda: run_pytest(timeout=300)))
    results, failed = [], 0
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            detail, status = fn(), "pass"
        except Exception as e:  # every check reports; one failure does not hide the others
            detail, status = f"{type(e).__name__}: {e}".replace("\n", " ")[:300], "FAIL"
            traceback.print_exc()
            failed += 1
        results.append({"check": name, "result": status, "detail": detail, "seconds": time.perf_counter() - t0})
    report.add("### Checks\n\n" + table(results))

    from bench import pipeline, throughput
    from fashion_core.config.checks import BACKBONES

    def left() -> float:
        return args.budget - (time.perf_counter() - t_start)

    cores = os.cpu_count() or 1
    if left() > 0:
        n = 512 if args.smoke else 16384
        t0 = time.perf_counter()
        prow = pipeline.run(
            args.data,
            n=n,
            batch_size=128,
            workers=cores,
            rounds=1 if args.smoke else 2,
            device=dev.type,
            min_seconds=0.3 if args.smoke else 1.0,
            serial=False,
            log=lambda m: print(m, file=sys.stderr),
        )
        report.add(f"### Input pipeline ({n} images, batch 128, {time.perf_counter() - t0:.0f}s)\n\n" + table(prow))
    else:
        report.add("### Input pipeline\n\nskipped: budget spent")

    bbs = ["resnet18", "mobilenet_v3_small"] if args.smoke else list(BACKBONES)
    kw = dict(batch_size=16, steps=2, rounds=1) if args.smoke else dict(batch_size=128, steps=20, rounds=2)
    plan = [dict(backbone=b) for b in bbs]
    if dev.type == "cuda":
        plan.append(dict(backbone="resnet18", resident=False))
        if compile:
            plan.append(dict(backbone="resnet18", compile=True))
    trows, skipped = [], []
    t0 = time.perf_counter()
    for p in plan:
        if left() <= 0:
            skipped.append(", ".join(f"{k}={v}" for k, v in p.items()))
            continue
        try:
            trows.append(throughput.measure(device=dev.type, **kw, **p))
        except Exception as e:  # a backbone that fails is a finding, not the end of the report
            trows.append({"backbone": p["backbone"], "device": f"FAILED: {type(e).__name__}: {e}"[:200]})
            failed += 1
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  {trows[-1]}", file=sys.stderr)
    report.add(
        f"### Training throughput (batch {kw['batch_size']}, 80x60, {kw['steps']} steps x {kw['rounds']} rounds, "
        f"{time.perf_counter() - t0:.0f}s)\n\n"
        + table(trows)
        + (f"\n\nskipped (budget spent): {'; '.join(skipped)}" if skipped else "")
    )
    if left() > 0:
        t0 = time.perf_counter()
        try:
            urows = user_table(dev, args.data, args.smoke, left)
        except Exception as e:  # a failure here is a finding, not the end of the report
            traceback.print_exc()
            urows = [{"measure": "user table", "detail": f"FAILED: {type(e).__name__}: {e}"[:300]}]
            failed += 1
        report.add(
            f"### What a user waits for ({time.perf_counter() - t0:.0f}s)\n\n"
            + table(urows, ["measure", "images/s", "seconds", "detail"])
        )
    else:
        report.add("### What a user waits for\n\nskipped: budget spent")
    loaded = sorted(m for m in TRACKING if sys.modules.get(m) is not None)
    report.add(
        f"total {time.perf_counter() - t_start:.0f}s; {failed} failure(s); tracking modules loaded: "
        f"{', '.join(loaded) or 'none'}"
    )
    return 1 if failed or loaded else 0


if __name__ == "__main__":
    sys.exit(main())
