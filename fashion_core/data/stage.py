"""A stage's data: its images, labels and counts gathered from the image cache, shared by every runner of a stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from fashion_core.data.loader import TensorData
from fashion_core.data.prepared import Prepared
from fashion_core.data.splits import stage_classes


@dataclass
class StageData:
    """The tensors and counts of one stage."""

    classes: list[str]
    train: TensorData
    val: TensorData
    test: TensorData
    test_ids: np.ndarray
    test_label_names: np.ndarray
    n_train: np.ndarray
    n_val: np.ndarray
    test_only: dict[str, int]  # classes with test images but nothing to learn from (label -1 in ``test``)
    frame: pd.DataFrame  # id, label, split of the stage's rows (for extras builders)


ExtrasFn = Callable[[Prepared, pd.DataFrame, list[str]], dict[str, torch.Tensor]]


def build_stage_data(
    p: Prepared, stage: str, extras_fn: ExtrasFn | None = None, classes: list[str] | None = None
) -> StageData:
    """Gather a stage's images from the cache and index its labels.

    Args:
        p: the prepared data.
        stage: pretrain | finetune (the split's ``subset``).
        extras_fn: ``(prepared, rows, classes) -> {name: tensor}`` adds per-item inputs
            (metadata codes for fusion) aligned with ``rows``.
        classes: the class list (default: the stage's learnable classes, sorted).
    """
    classes = classes or stage_classes(p.splits, stage)
    index = {c: i for i, c in enumerate(classes)}
    sp = p.splits[(p.splits["subset"] == stage) & (p.splits["split"].isin(["train", "val", "test"]))]
    sp = sp.sort_values("id", kind="stable").reset_index(drop=True)
    learnable = sp["label"].isin(index)
    test_only = sp.loc[(sp["split"] == "test") & ~learnable, "label"].value_counts().sort_index()
    test_only = {str(k): int(v) for k, v in test_only.items()}
    # Only test rows may belong to a class the model cannot output: they get label -1.
    sp = sp[learnable | (sp["split"] == "test")].reset_index(drop=True)
    labels = torch.tensor([index.get(c, -1) for c in sp["label"]], dtype=torch.int64)
    extras = extras_fn(p, sp, classes) if extras_fn else {}

    def part(name: str) -> TensorData:
        rows = np.flatnonzero(sp["split"].to_numpy() == name)
        idx = torch.from_numpy(rows)
        # Each split straight from the cache: the stage's images are in memory once, not twice
        # (gigabytes for the pretrain stage at full resolution: docs/full-resolution.md).
        images = torch.from_numpy(p.cache.take(sp["id"].to_numpy()[rows]))
        return TensorData(images, labels[idx], {k: v[idx] for k, v in extras.items()})

    train, val, test = part("train"), part("val"), part("test")
    c = len(classes)
    test_rows = sp[sp["split"] == "test"]
    return StageData(
        classes=classes,
        train=train,
        val=val,
        test=test,
        test_ids=test_rows["id"].to_numpy(),
        test_label_names=test_rows["label"].to_numpy(),
        n_train=np.bincount(train.labels.numpy(), minlength=c),
        n_val=np.bincount(val.labels.numpy(), minlength=c),
        test_only=test_only,
        frame=sp,
    )
