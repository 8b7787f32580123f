"""A stage's data and its test scoring, shared by every runner of a stage (network, metadata baseline, tuning).

``build_stage_data`` gathers a stage's images, labels and counts from the cache; ``score_test_split``
turns any model's test scores into the ``eval/`` tables and ``test_*`` metrics, and
``log_evaluation`` logs them. The runners (``experiment``, ``metadata_baseline``, ``tuning``) sit above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from fashion_core.evaluation import metrics as M
from fashion_core.evaluation.scoring import topk_predictions
from fashion_core.tracking import runs as tracking
from fashion_core.config.schema import ExperimentConfig
from fashion_core.data.prepared import Prepared
from fashion_core.data.loader import TensorData
from fashion_core.data.splits import stage_classes
from fashion_core.models.network import FashionNet
from fashion_core.engine.train import predict_scores


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


def build_stage_data(p: Prepared, stage: str, extras_fn: ExtrasFn | None = None,
                     classes: list[str] | None = None) -> StageData:
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
    return StageData(classes=classes, train=train, val=val, test=test,
                     test_ids=test_rows["id"].to_numpy(), test_label_names=test_rows["label"].to_numpy(),
                     n_train=np.bincount(train.labels.numpy(), minlength=c),
                     n_val=np.bincount(val.labels.numpy(), minlength=c), test_only=test_only, frame=sp)


def run_name(cfg: ExperimentConfig) -> str:
    """The technique first and short (the UI cuts long names); the stage is the run's ``stage`` tag."""
    return f"{cfg.technique} · s{cfg.train.seed}"


def evaluate_test(model: FashionNet, sd: StageData, device: torch.device, seed: int):
    """Test-split evaluation: (per-class table, predictions, summary metrics with intervals, (labels, top5))."""
    return score_test_split(sd, predict_scores(model, sd.test, device), seed)


def score_test_split(sd: StageData, scores: np.ndarray, seed: int):
    """What ``evaluate_test`` returns, from test scores (N_test, C) over ``sd.classes`` of any model."""
    all_labels = sd.test.labels.numpy()
    top5_all = topk_predictions(scores) if len(all_labels) else np.zeros((0, 5), dtype=np.int64)
    # predictions.csv lists every test image, those of unlearnable classes too (always wrong).
    preds = M.predictions_frame(sd.test_ids, sd.test_label_names, top5_all, sd.classes)
    ok = all_labels >= 0
    labels, top5 = all_labels[ok], top5_all[ok]
    table = M.per_class_table(labels, top5, sd.classes, sd.n_train, sd.n_val, extra_classes=sd.test_only)
    summ = M.summarize(table)
    evaluated = np.flatnonzero((table["n_test"].to_numpy()[:len(sd.classes)] > 0) & (sd.n_train > 0))
    boot = M.bootstrap_class_mean(labels, top5, evaluated, n_boot=1000, seed=seed)
    out = {f"test_{k}": v for k, v in summ.items()}
    out.update({"test_top1_mean_lo": boot["top1"][0], "test_top1_mean_hi": boot["top1"][1],
                "test_top5_mean_lo": boot["top5"][0], "test_top5_mean_hi": boot["top5"][1]})
    return table, preds, out, (labels, top5)


def log_evaluation(sd: StageData, table: pd.DataFrame, preds: pd.DataFrame, test_metrics: dict,
                   labels: np.ndarray, top5: np.ndarray) -> None:
    """The test metrics and the ``eval/`` artifacts (docs/ARCHITECTURE.md, "Contracts"), for any model of a stage.

    The per-class table goes out twice: ``eval/per_class.csv`` (the contract in docs/ARCHITECTURE.md; ``compare`` reads
    it, from older runs too) and ``eval/per_class.json`` (``mlflow.log_table``: shown in MLflow's UI).
    """
    tracking.log_metrics(test_metrics)
    tracking.log_frame(table, "eval/per_class.csv")
    tracking.log_table(table, "eval/per_class.json")
    tracking.log_frame(preds, "eval/predictions.csv")
    tracking.log_frame(M.with_wilson(table), "eval/per_class_intervals.csv")
    if len(labels):
        tracking.log_figure_html(M.confusion_matrix_figure(labels, top5[:, 0], sd.classes), "eval/confusion.html")
