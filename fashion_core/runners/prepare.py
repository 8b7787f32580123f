"""The ``prepare`` stage: ingest, validate, split and cache the dataset, and log it as one MLflow run.

fashion prepare --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from fashion_core.config.schema import DataConfig, to_dict
from fashion_core.data.catalog import reason_counts
from fashion_core.data.prepared import Prepared, prepare_data
from fashion_core.tracking import runs as tracking

logger = logging.getLogger(__name__)


def class_frequency_figure(counts: pd.DataFrame, top: list[str]):
    """Plotly bar chart: products per class, train (+val) vs test, log scale."""
    import plotly.graph_objects as go

    c = counts.assign(n_trainval=counts["n_train"] + counts["n_val"])
    c = c.sort_values("n_trainval", ascending=False)
    fig = go.Figure()
    fig.add_bar(name="train + val (even years)", x=c.index, y=c["n_trainval"], marker_color="#1f77b4")
    fig.add_bar(name="test (odd years)", x=c.index, y=c["n_test"], marker_color="#ff7f0e")
    fig.update_layout(
        barmode="group",
        yaxis_type="log",
        height=600,
        title=f"Products per articleType — the top {len(top)} by training frequency form the pretrain subset",
        xaxis_tickangle=-60,
        yaxis_title="products (log scale)",
    )
    return fig


def validation_text(cfg: DataConfig) -> str:
    """How validation was drawn, in words."""
    if cfg.val_by == "year":
        return "the even years " + ", ".join(str(y) for y in cfg.val_years) + " held out"
    return f"a random {cfg.val_fraction:.0%} of each class, seed {cfg.split_seed}"


def summary_text(p: Prepared) -> str:
    """The printed summary of a prepare run."""
    cat, sp = p.catalog, p.splits
    n = sp["split"].value_counts()
    lines = [
        f"dataset: {p.root}",
        f"rows {len(cat):,}  valid {int(cat['valid'].sum()):,}  excluded {int((~cat['valid']).sum()):,} "
        + str({k: v for k, v in reason_counts(cat).items() if v}),
        f"train {n.get('train', 0):,}  val {n.get('val', 0):,}  (even years {n.get('train', 0) + n.get('val', 0):,}; "
        f"validation: {validation_text(p.cfg)})  test {n.get('test', 0):,} (odd years)",
        f"top {len(p.top)} classes by {'training' if p.cfg.rank_on == 'train' else 'whole-table'} frequency: "
        + ", ".join(p.top),
    ]
    for sub in ("pretrain", "finetune"):
        c = p.summary.counts[p.summary.counts["subset"] == sub]
        lines.append(
            f"{sub}: {len(c)} classes, {int(c['n_train'].sum()):,} train / {int(c['n_val'].sum()):,} val / "
            f"{int(c['n_test'].sum()):,} test images; {int((c['n_val'] > 0).sum())} classes with "
            "validation images"
        )
        if p.summary.no_test[sub]:
            lines.append(f"  no test images (not evaluated): {', '.join(p.summary.no_test[sub])}")
        if p.summary.test_only[sub]:
            lines.append(f"  test only, cannot be learned: {', '.join(p.summary.test_only[sub])}")
    lines.append(
        f"image cache: {p.cache.folder} ({p.cache.nbytes_on_disk / 1e6:.0f} MB, built in "
        f"{p.cache.meta.get('seconds', 0):.1f}s)"
    )
    lines.append(f"dataset digest: {p.digest}")
    return "\n".join(lines)


def prepare_metrics(p: Prepared) -> dict[str, float]:
    """The metrics of a prepare run (docs/ARCHITECTURE.md, "Contracts")."""
    n = p.splits["split"].value_counts()
    counts = p.summary.counts
    m = {
        "n_rows": len(p.catalog),
        "n_valid": int(p.catalog["valid"].sum()),
        "n_train": int(n.get("train", 0)),
        "n_val": int(n.get("val", 0)),
        "n_test": int(n.get("test", 0)),
        "n_classes_pretrain": int((counts["subset"] == "pretrain").sum()),
        "n_classes_finetune": int((counts["subset"] == "finetune").sum()),
        "n_val_classes_pretrain": int(((counts["subset"] == "pretrain") & (counts["n_val"] > 0)).sum()),
        "n_val_classes_finetune": int(((counts["subset"] == "finetune") & (counts["n_val"] > 0)).sum()),
        "cache_build_seconds": float(p.cache.meta.get("seconds", 0.0)),
        "cache_megabytes": p.cache.nbytes_on_disk / 1e6,
    }
    m.update({f"invalid_{k}": v for k, v in reason_counts(p.catalog).items()})
    return m


def split_table(p: Prepared) -> pd.DataFrame:
    """The ``splits/splits.parquet`` table: ``id,label,year,split,subset``."""
    table = p.splits[["id", "label", "year", "split", "subset"]].copy()
    table["year"] = table["year"].astype("Int64")
    return table


def log_dataset_input(p: Prepared, context: str, table: pd.DataFrame | None = None) -> None:
    """The prepared dataset as the active run's input (same name, source and digest on every stage's run)."""
    tracking.log_dataset(split_table(p) if table is None else table, str(p.root), p.root.name, p.digest, context)


def run_prepare(
    data: str | None, cfg: DataConfig, workers: int | None = None, experiment: str | None = None
) -> tuple[Prepared, str]:
    """Prepare the data and log the ``stage=prepare`` run. Returns (prepared, run_id)."""
    import mlflow

    t0 = time.perf_counter()
    p = prepare_data(data, cfg, workers=workers)
    tracking.set_experiment(experiment or tracking.experiment_name_for(p.root))
    with tracking.start_run(
        "prepare",
        "prepare",
        p.digest,
        run_name="prepare",
        config={"data": to_dict(cfg)},
        description="Catalogue validation, master split (even/odd year), "
        "pretrain/finetune subsets, validation carve-out, image cache.",
    ) as run:
        metrics = prepare_metrics(p)
        metrics["prepare_seconds"] = time.perf_counter() - t0
        tracking.log_metrics(metrics)
        mlflow.set_tags(
            {"top_classes": ", ".join(p.top), "dataset_root": str(p.root), "cache_folder": str(p.cache.folder)}
        )
        table = split_table(p)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "splits.parquet"
            table.to_parquet(path, index=False)
            tracking.log_file(path, "splits")
        counts = p.summary.counts.reset_index()
        mlflow.log_table(data=counts, artifact_file="splits/class_counts.json")
        tracking.log_frame(counts, "splits/class_counts.csv")
        excluded = p.catalog.loc[~p.catalog["valid"], ["id", "articleType", "year", "reason"]]
        tracking.log_frame(excluded, "splits/excluded.csv")
        tracking.log_figure_html(class_frequency_figure(p.summary.counts, p.top), "splits/class_frequency.html")
        text = summary_text(p)
        mlflow.log_text(text, "summary.txt")
        log_dataset_input(p, "prepare", table)
        logger.info(text)
        logger.info(f"prepare run: {run.info.run_id}")
        return p, run.info.run_id
