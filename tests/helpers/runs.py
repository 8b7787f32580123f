"""Read a logged run back: its data, an artifact table, and per-class scores recomputed from its predictions."""

from __future__ import annotations

import pandas as pd

from fashion_core.evaluation import metrics as M
from fashion_core.tracking import runs as tracking


def recompute(run_id, folder) -> pd.DataFrame:
    """Per-class top-1/top-5 from a run's predictions.csv, computed here with plain pandas."""
    preds = pd.read_csv(
        tracking.download_artifact(run_id, "eval/predictions.csv", folder), dtype=str, keep_default_na=False
    )
    hit1 = preds["label"] == preds["pred1"]
    hit5 = pd.concat([preds["label"] == preds[f"pred{k}"] for k in range(1, 6)], axis=1).any(axis=1)
    return pd.DataFrame(
        {
            "top1": hit1.groupby(preds["label"]).mean(),
            "top5": hit5.groupby(preds["label"]).mean(),
            "n_test": hit1.groupby(preds["label"]).size(),
        }
    )


def run_data(run_id):
    """The run's logged data (metrics, params, tags)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data


def run_table(run_id, folder, name="eval/per_class.csv"):
    """An artifact table of the run: a per-class table read as the report reads it, else a plain CSV."""
    path = tracking.download_artifact(run_id, name, folder)
    return M.read_per_class(path) if name.endswith("per_class.csv") else pd.read_csv(path, keep_default_na=False)
