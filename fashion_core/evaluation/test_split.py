"""The test split of a stage scored: any model's test scores -> the ``eval/`` tables and the ``test_*`` metrics."""

from __future__ import annotations

import numpy as np

from fashion_core.data.stage import StageData
from fashion_core.evaluation import metrics as M
from fashion_core.evaluation.scoring import topk_predictions


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
    evaluated = np.flatnonzero((table["n_test"].to_numpy()[: len(sd.classes)] > 0) & (sd.n_train > 0))
    boot = M.bootstrap_class_mean(labels, top5, evaluated, n_boot=1000, seed=seed)
    out = {f"test_{k}": v for k, v in summ.items()}
    out.update(
        {
            "test_top1_mean_lo": boot["top1"][0],
            "test_top1_mean_hi": boot["top1"][1],
            "test_top5_mean_lo": boot["top5"][0],
            "test_top5_mean_hi": boot["top5"][1],
        }
    )
    return table, preds, out, (labels, top5)
