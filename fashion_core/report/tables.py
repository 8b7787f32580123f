"""One run's evaluation (recomputed from its predictions) and the report's tables: summary, per class, few-shot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.evaluation import metrics as M
from fashion_core.report.analysis import (
    class_view,
    confusions,
    paired_comparisons,
    paired_words,
    protocol_table,
    stage_rows,
    stage_sample,
)
from fashion_core.report.marks import is_test_informed
from fashion_core.report.runs import PER_CLASS_ARTIFACT, PREDICTIONS_ARTIFACT, STAGES, seed_of
from fashion_core.report.stats import seed_mean_interval
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import run_inputs
from fashion_core.zeroshot.holdout import HOLDOUT_TAG, held_out_summary

N_BOOT = 1000
# Training-set sizes grouped for the few-shot curve: few-shot classes get fine bins.
SHOT_EDGES = (1, 3, 6, 11, 21, 51, 101, 501)
# Generalised zero-shot columns (metrics.gzsl_summary): seen S, unseen U, harmonic H, all classes with test images.
GZSL_COLUMNS = (
    "top1_seen_mean",
    "top1_unseen_mean",
    "top1_harmonic",
    "top1_mean_all",
    "top5_unseen_mean",
    "top5_mean_all",
    "n_classes_unseen",
    # with zeroshot.holdout_*: U and H over the held-out classes alone, U over the stage's own unseen ones
    "top1_unseen_heldout_mean",
    "top1_harmonic_heldout",
    "top1_unseen_native_mean",
)


# ---------------------------------------------------------------- formatting


def _fmt(v: Any, floatfmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return format(float(v), floatfmt)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    return str(v)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A DataFrame as a GitHub Markdown table (floats formatted, NaN empty, pipes escaped)."""
    cols = [str(c) for c in df.columns]
    lines = [
        "| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
        "| "
        + " | ".join(
            "---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "---"
            for c in df.columns
        )
        + " |",
    ]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, floatfmt).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- one run's evaluation


@dataclass
class RunEval:
    """A run's per-class numbers, recomputed from its predictions, and its summary."""

    run_id: str
    run_name: str
    stage: str
    technique: str
    seed: int
    leaky: bool
    inputs: str  # image | metadata | image+metadata (what the model sees)
    transfer: str
    per_class: pd.DataFrame  # class,n_train,n_val,n_test,top1,top5 (top1/top5/n_test from predictions.csv)
    summary: dict
    n_mismatch: int  # classes whose per_class.csv numbers differ from the predictions
    zero_shot: bool = False  # the run also predicts the classes without training images (tag zero_shot=true)
    config: str = ""  # what tells this run's config apart from other configs of its technique ('' if none)
    # bootstrap replicates of the class-mean top-1 / top-5 on the stage's shared image resamples (build_tables)
    replicates: dict = field(default_factory=dict)
    preds: pd.DataFrame | None = None  # eval/predictions.csv (paired statistics, confusions)
    configs_read_on_test: int | None = None  # the run's tag: configurations of its technique read on test before
    test_informed: bool = False  # tag test_informed=true, or the technique is listed in marks.TEST_INFORMED
    experiment_id: str = ""


def class_mean_replicates(
    per_class_classes: Sequence[str], evaluated: np.ndarray, preds: pd.DataFrame, seed: int = 0
) -> dict[str, np.ndarray]:
    """Stratified-bootstrap replicates of the class-mean top-1/top-5 from a predictions table."""
    index = {c: i for i, c in enumerate(per_class_classes)}
    labels = np.array([index.get(c, -1) for c in preds["label"].astype(str)], dtype=np.int64)
    top5 = np.array(
        [[index.get(c, -1) for c in row] for row in preds[list(M.PRED_COLUMNS)].fillna("").astype(str).to_numpy()],
        dtype=np.int64,
    )
    top5 = top5.reshape(len(labels), len(M.PRED_COLUMNS))
    return M.bootstrap_class_mean_replicates(labels, top5, np.flatnonzero(evaluated), n_boot=N_BOOT, seed=seed)


def evaluate_run(run, folder: str | Path, config: str = "") -> RunEval:
    """Download a run's ``eval/`` tables and recompute its per-class numbers from ``predictions.csv``."""
    run_id = run.info.run_id
    folder = Path(folder) / run_id
    stated = M.read_per_class(tracking.download_artifact(run_id, PER_CLASS_ARTIFACT, folder))
    preds = M.read_predictions(tracking.download_artifact(run_id, PREDICTIONS_ARTIFACT, folder))
    classes = stated["class"].tolist()
    again = M.per_class_from_predictions(preds, classes).set_index("class")
    extra = [c for c in again.index if c not in set(classes)]  # labels per_class.csv does not list
    table = stated[["class", "n_train", "n_val"]].copy()
    table["n_test"] = again.loc[classes, "n_test"].to_numpy()
    table["top1"] = again.loc[classes, "top1"].to_numpy()
    table["top5"] = again.loc[classes, "top5"].to_numpy()
    if extra:
        table = pd.concat(
            [
                table,
                pd.DataFrame(
                    {
                        "class": extra,
                        "n_train": 0,
                        "n_val": 0,
                        "n_test": again.loc[extra, "n_test"].to_numpy(),
                        "top1": again.loc[extra, "top1"].to_numpy(),
                        "top5": again.loc[extra, "top5"].to_numpy(),
                    }
                ),
            ],
            ignore_index=True,
        )
    same = np.ones(len(stated), dtype=bool)
    for col in ("top1", "top5", "n_test"):
        a = stated[col].to_numpy(dtype=float)
        b = table[col].to_numpy(dtype=float)[: len(stated)]
        same &= np.isclose(a, b, equal_nan=True)
    summ = M.summarize(table)
    # The intervals come later, in build_tables: every run of a stage is resampled on the same test images.
    summ.update({"top1_lo": np.nan, "top1_hi": np.nan, "top5_lo": np.nan, "top5_hi": np.nan})
    summ.update(M.gzsl_summary(table))  # seen / unseen / harmonic / all-class means (generalised zero-shot)
    held = [c for c in run.data.tags.get(HOLDOUT_TAG, "").split(",") if c]
    summ.update({k: np.nan for k in GZSL_COLUMNS if k not in summ})
    summ.update(held_out_summary(table, held))  # a zero-shot benchmark's held-out classes, if any
    t = run.data.tags
    technique = t.get("technique", "")
    try:
        read = int(t["configs_read_on_test"]) if t.get("configs_read_on_test", "") != "" else None
    except ValueError:
        read = None
    return RunEval(
        run_id=run_id,
        run_name=run.info.run_name,
        stage=t.get("stage", ""),
        technique=f"{technique} [{config}]" if config else technique,
        seed=seed_of(run),
        leaky=t.get("leaky", "false") == "true",
        inputs=run_inputs(t),
        transfer=t.get("transfer", ""),
        per_class=table,
        summary=summ,
        n_mismatch=int((~same).sum()) + len(extra),
        zero_shot=t.get("zero_shot") == "true",
        config=config,
        preds=preds,
        configs_read_on_test=read,
        test_informed=is_test_informed(t.get("stage", ""), technique, t),
        experiment_id=run.info.experiment_id,
    )


# ---------------------------------------------------------------- tables


@dataclass
class Tables:
    """Everything the report shows, as DataFrames."""

    runs: pd.DataFrame  # one row per run: stage, technique, seed, run_id, class-mean numbers
    per_class_runs: pd.DataFrame  # long: stage, technique, seed, run_id, class, n_train, n_val, n_test, top1, top5
    summary: dict[str, pd.DataFrame]  # stage -> technique rows
    per_class: dict[str, pd.DataFrame]  # stage -> class rows x technique columns (seed means)
    not_evaluated: pd.DataFrame  # stage, class, n_train, n_test, reason
    left_out: pd.DataFrame
    paired: dict = field(default_factory=dict)  # stage -> pairs (each row against the best, requested pairs)
    paired_classes: dict = field(default_factory=dict)  # stage -> per class of every pair: McNemar, Holm
    paired_text: dict = field(default_factory=dict)  # stage -> the comparison in words
    protocols: dict = field(default_factory=dict)  # stage -> class-mean under the peers' protocols
    confusions: dict = field(default_factory=dict)  # stage -> most frequent true -> predicted pairs per row
    class_view: dict = field(default_factory=dict)  # stage -> class x technique with Wilson intervals
    thumbnails: dict = field(default_factory=dict)  # product id -> JPEG data URI (filled by compare, may be empty)
    images_note: str = ""  # where the thumbnails came from, or why there are none


def _not_evaluated_reason(n_train: int, n_test: int) -> str:
    if n_test == 0 and n_train == 0:
        return "no training and no test images"
    if n_test == 0:
        return "no test images (odd years) - nothing to evaluate"
    return "no training images (even years): test-only, the model cannot predict it"


def build_tables(
    evals: Sequence[RunEval], left_out: pd.DataFrame | None = None, pairs: Sequence[tuple[str, str]] = ()
) -> Tables:
    """Aggregate run evaluations into the report's tables (seed means; techniques ranked by top-1).

    Every interval of a stage comes from one set of bootstrap resamples of its test images shared by
    all its runs (``stats.StageSample``): paired across seeds and across techniques. ``pairs`` adds
    paired comparisons of two rows each to those of every row against the stage's best.
    """
    samples = {}
    for stage in dict.fromkeys(e.stage for e in evals):
        es = [e for e in evals if e.stage == stage]
        sample = samples[stage] = stage_sample(es, N_BOOT)
        for e in es:
            ev = np.array(
                [
                    c in set(e.per_class.loc[(e.per_class["n_train"] > 0) & (e.per_class["n_test"] > 0), "class"])
                    for c in sample.classes
                ],
                dtype=bool,
            )
            h1, h5 = sample.hits(e.preds)
            e.replicates = {
                k: sample.per_class_replicates(h)[:, ev].mean(axis=1) if ev.any() else np.zeros(0)
                for k, h in (("top1", h1), ("top5", h5))
            }
            for k in ("top1", "top5"):
                e.summary[f"{k}_lo"], e.summary[f"{k}_hi"] = M.percentile_interval(e.replicates[k])
    run_rows, long = [], []
    for e in evals:
        s = e.summary
        run_rows.append(
            {
                "stage": e.stage,
                "technique": e.technique,
                "seed": e.seed,
                "run_id": e.run_id,
                "run_name": e.run_name,
                "config": e.config,
                "transfer": e.transfer,
                "inputs": e.inputs,
                "leaky": e.leaky,
                "top1_mean": s["top1_mean"],
                "top1_lo": s["top1_lo"],
                "top1_hi": s["top1_hi"],
                "top5_mean": s["top5_mean"],
                "top5_lo": s["top5_lo"],
                "top5_hi": s["top5_hi"],
                "top1_micro": s["top1_micro"],
                "top5_micro": s["top5_micro"],
                "n_classes_evaluated": s["n_classes_evaluated"],
                "n_mismatch": e.n_mismatch,
                **{k: s[k] for k in GZSL_COLUMNS},
                "zero_shot": e.zero_shot,
                "configs_read_on_test": e.configs_read_on_test if e.configs_read_on_test is not None else np.nan,
                "test_informed": e.test_informed,
                "experiment_id": e.experiment_id,
            }
        )
        pc = e.per_class.assign(stage=e.stage, technique=e.technique, seed=e.seed, run_id=e.run_id)
        long.append(pc[["stage", "technique", "seed", "run_id", "class", "n_train", "n_val", "n_test", "top1", "top5"]])
    runs = pd.DataFrame(run_rows).sort_values(["stage", "technique", "seed"], kind="stable").reset_index(drop=True)
    per_class_runs = pd.concat(long, ignore_index=True)
    summary, per_class, not_eval = {}, {}, []
    extra: dict[str, dict] = {
        k: {} for k in ("paired", "paired_classes", "paired_text", "protocols", "confusions", "class_view")
    }
    for stage in [s for s in STAGES if s in set(runs["stage"])]:
        pcr = per_class_runs[per_class_runs["stage"] == stage]
        # Per class and technique: the mean over seeds (the split, hence the classes, is shared).
        wide_src = pcr.groupby(["class", "technique"], sort=False)[["top1", "top5"]].mean().reset_index()
        counts = pcr.groupby("class", sort=False)[["n_train", "n_test"]].max()
        evaluated = counts[(counts["n_train"] > 0) & (counts["n_test"] > 0)].index
        top1 = wide_src.pivot(index="class", columns="technique", values="top1")
        best = top1.loc[top1.index.intersection(evaluated)]
        wins = (best.eq(best.max(axis=1), axis=0) & best.notna()).sum() if len(best) else pd.Series(dtype=int)
        r = runs[runs["stage"] == stage]
        summ = (
            r.groupby("technique", sort=False)
            .agg(
                transfer=("transfer", "first"),
                seeds=("seed", lambda x: ",".join(str(v) for v in sorted(x))),
                n_seeds=("seed", "size"),
                top1_mean=("top1_mean", "mean"),
                top1_std=("top1_mean", "std"),
                top1_min=("top1_mean", "min"),
                top1_max=("top1_mean", "max"),
                top5_mean=("top5_mean", "mean"),
                top5_std=("top5_mean", "std"),
                top5_min=("top5_mean", "min"),
                top5_max=("top5_mean", "max"),
                top1_micro=("top1_micro", "mean"),
                top5_micro=("top5_micro", "mean"),
                n_classes_evaluated=("n_classes_evaluated", "max"),
                inputs=("inputs", "first"),
                leaky=("leaky", "any"),
                **{k: (k, "mean") for k in GZSL_COLUMNS},
                zero_shot=("zero_shot", "any"),
                configs_read_on_test=("configs_read_on_test", "max"),
                test_informed=("test_informed", "any"),
            )
            .reset_index()
        )
        # The interval of the seed mean: seeds resampled and, in the same replicate, the stage's test images
        # resampled once for every seed (they share one test set), not the mean of per-seed bounds.
        reps: dict[str, list[dict]] = {}
        for e in sorted((e for e in evals if e.stage == stage), key=lambda e: e.seed):
            reps.setdefault(e.technique, []).append(e.replicates)
        for metric in ("top1", "top5"):
            ci = [
                seed_mean_interval(np.stack([r[metric] for r in reps[t]], axis=1))
                if all(len(r[metric]) for r in reps[t])
                else (np.nan, np.nan)
                for t in summ["technique"]
            ]
            pos = summ.columns.get_loc(f"{metric}_max") + 1
            summ.insert(pos, f"{metric}_lo", [c[0] for c in ci])
            summ.insert(pos + 1, f"{metric}_hi", [c[1] for c in ci])
        summ["classes_won"] = [int(wins.get(t, 0)) for t in summ["technique"]]
        if stage == "pretrain":
            summ = summ.drop(columns=["transfer"])
        summ = summ.sort_values(["top1_mean", "top5_mean"], ascending=False, kind="stable").reset_index(drop=True)
        summ.insert(0, "rank", np.arange(1, len(summ) + 1))
        summary[stage] = summ
        order = list(summ["technique"])
        wide = counts.copy()
        for col in ("top1", "top5"):
            piv = wide_src.pivot(index="class", columns="technique", values=col)
            for t in order:
                wide[f"{t} {col}"] = piv[t].reindex(wide.index)
        wide["best top1"] = [
            ", ".join(sorted(best.columns[best.loc[c].eq(best.loc[c].max())]))
            if c in best.index and best.loc[c].notna().any()
            else ""
            for c in wide.index
        ]
        wide = wide.reset_index().sort_values(["n_train", "class"], ascending=[False, True], kind="stable")
        per_class[stage] = wide.reset_index(drop=True)
        es = [e for e in evals if e.stage == stage]
        rows, _ = stage_rows(es, samples[stage])
        extra["paired"][stage], extra["paired_classes"][stage] = paired_comparisons(
            samples[stage], rows, summ, pairs, stage
        )
        extra["paired_text"][stage] = paired_words(stage, extra["paired"][stage], summ)
        extra["protocols"][stage] = protocol_table(es, order)
        extra["confusions"][stage] = confusions(es, order)
        extra["class_view"][stage] = class_view(per_class[stage], order, es)
        # A class without training images that a zero-shot run predicts is evaluated (its Top-1 is in the tables).
        zs_runs = runs.loc[(runs["stage"] == stage) & runs["zero_shot"], "run_id"]
        zs_classes = pcr.loc[pcr["run_id"].isin(zs_runs) & (pcr["n_test"] > 0), "class"]
        missing = counts[~counts.index.isin(evaluated) & ~counts.index.isin(zs_classes)]
        for c, row in missing.iterrows():
            not_eval.append(
                {
                    "stage": stage,
                    "class": c,
                    "n_train": int(row["n_train"]),
                    "n_test": int(row["n_test"]),
                    "reason": _not_evaluated_reason(int(row["n_train"]), int(row["n_test"])),
                }
            )
    not_evaluated = pd.DataFrame(not_eval, columns=["stage", "class", "n_train", "n_test", "reason"])
    return Tables(
        runs=runs,
        per_class_runs=per_class_runs,
        summary=summary,
        per_class=per_class,
        not_evaluated=not_evaluated,
        left_out=left_out if left_out is not None else pd.DataFrame(),
        paired=extra["paired"],
        paired_classes=extra["paired_classes"],
        paired_text=extra["paired_text"],
        protocols=extra["protocols"],
        confusions=extra["confusions"],
        class_view=extra["class_view"],
    )


def display_summary(summ: pd.DataFrame) -> pd.DataFrame:
    """The summary table as people read it: 'mean ± std [lo, hi]' strings, rounded to 3 decimals."""

    def cell(m, s, lo, hi):
        out = f"{m:.3f}" if m == m else ""
        if s == s and s is not None:
            out += f" ± {s:.3f}"
        if lo == lo and hi == hi:
            out += f" [{lo:.3f}, {hi:.3f}]"
        return out

    out = pd.DataFrame({"rank": summ["rank"], "technique": summ["technique"]})
    if "transfer" in summ:
        out["transfer"] = summ["transfer"]
    out["inputs"] = summ["inputs"]
    out["Top-1 class-mean"] = [cell(*v) for v in summ[["top1_mean", "top1_std", "top1_lo", "top1_hi"]].to_numpy()]
    out["Top-1 seeds min-max"] = [
        f"{lo:.3f}-{hi:.3f}" if n > 1 else "" for lo, hi, n in summ[["top1_min", "top1_max", "n_seeds"]].to_numpy()
    ]
    out["Top-5 class-mean"] = [cell(*v) for v in summ[["top5_mean", "top5_std", "top5_lo", "top5_hi"]].to_numpy()]
    out["Top-1 micro"] = summ["top1_micro"].map(lambda v: f"{v:.3f}")
    out["Top-5 micro"] = summ["top5_micro"].map(lambda v: f"{v:.3f}")
    if "zero_shot" in summ and summ["zero_shot"].any():  # generalised zero-shot: S is the class-mean above
        out["Top-1 unseen (U)"] = summ["top1_unseen_mean"].map(lambda v: f"{v:.3f}")
        out["H"] = summ["top1_harmonic"].map(lambda v: f"{v:.3f}")
        out["Top-1 all classes"] = summ["top1_mean_all"].map(lambda v: f"{v:.3f}")
        if summ["top1_unseen_heldout_mean"].notna().any():  # a held-out benchmark: its own U and H, and the stage's U
            out["U held out"] = summ["top1_unseen_heldout_mean"].map(lambda v: "" if v != v else f"{v:.3f}")
            out["H held out"] = summ["top1_harmonic_heldout"].map(lambda v: "" if v != v else f"{v:.3f}")
            out["U stage's own"] = summ["top1_unseen_native_mean"].map(lambda v: "" if v != v else f"{v:.3f}")
    out["classes evaluated"] = summ["n_classes_evaluated"]
    out["classes won"] = summ["classes_won"]
    out["seeds"] = summ["seeds"]
    out["leaky"] = summ["leaky"].map(lambda v: "LEAKY" if v else "")
    # How many configurations of the technique had been read on test when the row's runs were (the runs' tag).
    read = summ["configs_read_on_test"] if "configs_read_on_test" in summ else pd.Series(np.nan, index=summ.index)
    out["configurations read on test"] = read.map(lambda v: "\u2014" if v != v or v is None else str(int(v)))
    flags = summ["test_informed"] if "test_informed" in summ else pd.Series(False, index=summ.index)
    out["test-informed"] = flags.map(lambda v: "test-informed" if v else "")
    return out


def shot_bin(n: int) -> str:
    """The few-shot bin of a training count, e.g. ``3-5`` or ``501+``."""
    edges = SHOT_EDGES
    for lo, hi in zip(edges, edges[1:]):
        if lo <= n < hi:
            return f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}"
    return f"{edges[-1]}+"


def few_shot_table(wide: pd.DataFrame, techniques: Sequence[str]) -> pd.DataFrame:
    """Mean per-class Top-1/Top-5 by training-count bin and technique (evaluated classes only)."""
    rows = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)].copy()
    rows["bin"] = rows["n_train"].map(shot_bin)
    rows["bin_lo"] = rows["n_train"].map(lambda n: max([e for e in SHOT_EDGES if e <= n]))
    out = []
    for (_lo, b), g in rows.groupby(["bin_lo", "bin"], sort=True):
        for t in techniques:
            out.append(
                {
                    "bin": b,
                    "n_train_median": float(g["n_train"].median()),
                    "n_classes": len(g),
                    "technique": t,
                    "top1": g[f"{t} top1"].mean(),
                    "top5": g[f"{t} top5"].mean(),
                }
            )
    return pd.DataFrame(out, columns=["bin", "n_train_median", "n_classes", "technique", "top1", "top5"])
