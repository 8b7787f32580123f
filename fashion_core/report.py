"""The ``compare`` report: which technique works best, for which classes?

Pulls the pretrain/finetune runs through the MLflow tracking API (the same calls against the
default sqlite store and an ``http://`` tracking server), reads each run's ``eval/`` artifacts,
recomputes every per-class number from ``eval/predictions.csv`` (and counts any disagreement
with ``eval/per_class.csv``), and writes, per stage:

- a summary table: technique x class-mean Top-1/Top-5 (mean over seeds ± std, and a 95 %
  interval of that mean from a bootstrap over seeds and test images), the lowest and highest
  seed, micro accuracy, classes evaluated, seeds, classes won, the model's inputs
  (image / metadata / image+metadata) and the leaky flag; runs of one technique with different
  configurations (e.g. an epochs override) are separate rows, ``technique [key=value]``;
- a per-class table: class x technique Top-1/Top-5 with ``n_train`` and ``n_test``;
- an interactive HTML report (plotly.js embedded, opens offline): per-class heatmap,
  class-mean bars with error bars, accuracy against training examples (the few-shot curve),
  and the classes that were not evaluated and why;

as CSV and Markdown too, into a local folder and as the artifacts of a ``stage=compare`` run.

    fashion compare --out reports/compare
"""
from __future__ import annotations

import html
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import metrics as M
from . import tracking
from .config import ConfigError

STAGES = ("pretrain", "finetune")
PER_CLASS_ARTIFACT = "eval/per_class.csv"
PREDICTIONS_ARTIFACT = "eval/predictions.csv"
N_BOOT = 1000
# Training-set sizes grouped for the few-shot curve: few-shot classes get fine bins.
SHOT_EDGES = (1, 3, 6, 11, 21, 51, 101, 501)
# Generalised zero-shot columns (metrics.gzsl_summary): seen S, unseen U, harmonic H, all classes with test images.
GZSL_COLUMNS = ("top1_seen_mean", "top1_unseen_mean", "top1_harmonic", "top1_mean_all", "top5_unseen_mean",
                "top5_mean_all", "n_classes_unseen")
SECTIONS = ("summary", "class-mean", "heatmap", "few-shot", "per-class", "not-evaluated", "runs")


class CompareError(ConfigError):
    """Nothing to compare, or a filter that names something that does not exist."""


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
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "| " + " | ".join("---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
                               else "---" for c in df.columns) + " |"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, floatfmt).replace("|", "\\|").replace("\n", " ") for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- which runs

@dataclass
class Scope:
    """What a report covers: the experiment, the grid (if any), the runs used and those left out."""

    experiment_id: str
    experiment_name: str
    grid_run_id: str | None
    runs: list = field(default_factory=list)  # mlflow Run objects, FINISHED, one per (stage, technique, config, seed)
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, run_name, stage, technique, seed, reason
    dataset_digest: str = ""
    # run id -> the config's keys that tell it apart from other configs of its technique ('' when it has one)
    configs: dict = field(default_factory=dict)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _seed_of(run) -> int:
    tags, params = run.data.tags, run.data.params
    value = tags.get("seed", params.get("train.seed", "0"))
    try:
        return int(value)
    except ValueError:
        return 0


def _pick_experiment(client, experiment: str | None, grid: str | None):
    """The experiment named, the grid's, else the one holding the newest grid (or stage) run."""
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise CompareError(f"no experiment {experiment!r}; choose one of: {', '.join(names) or 'none'}; "
                               f"{tracking.store_hint()}")
        return exp
    if grid and grid not in ("latest", "none"):
        try:
            return client.get_experiment(client.get_run(grid).info.experiment_id)
        except Exception:
            raise CompareError(f"--grid {grid}: no such run in {tracking_uri()}") from None
    ids = [e.experiment_id for e in client.search_experiments()]
    for flt in ("tags.stage = 'grid'", "tags.stage = 'pretrain'", "tags.stage = 'finetune'"):
        runs = client.search_runs(ids, filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1) \
            if ids else []
        if runs:
            return client.get_experiment(runs[0].info.experiment_id)
    raise CompareError(f"no pretrain or finetune run to compare; {tracking.store_hint()}; "
                       "or run `make run` / `fashion grid` first")


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


# Logged params that do not make another configuration of a technique: the seed (a row holds its seeds)
# and the device (the tag ``device`` says where a run ran).
NOT_CONFIG = ("train.seed", "train.device")


def run_config(run) -> dict[str, str]:
    """A run's logged configuration (its params), less ``NOT_CONFIG``."""
    return {k: v for k, v in run.data.params.items() if k not in NOT_CONFIG}


def same_config(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Two logged configs agree on every key both have (a key added to the code since is not a difference)."""
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def config_groups(runs: Sequence) -> tuple[dict[str, int], dict[tuple, list[dict]]]:
    """Configurations per (stage, technique): run id -> group number (newest config 0), and the groups' configs."""
    groups: dict[tuple, list[dict]] = {}
    of: dict[str, int] = {}
    for r in runs:  # newest first
        key = (r.data.tags.get("stage"), r.data.tags.get("technique"))
        cfg = run_config(r)
        known = groups.setdefault(key, [])
        hit = next((i for i, c in enumerate(known) if same_config(c, cfg)), None)
        if hit is None:
            known.append(cfg)
            hit = len(known) - 1
        of[r.info.run_id] = hit
    return of, groups


def config_label(configs: Sequence[Mapping[str, str]], i: int, max_keys: int = 3) -> str:
    """The keys that tell config ``i`` apart from the others of its technique, e.g. ``train.epochs=20``."""
    if len(configs) < 2:
        return ""
    mine = configs[i]
    keys = sorted(k for k in mine if any(k in c and c[k] != mine[k] for c in configs))
    text = ", ".join(f"{k}={mine[k]}" for k in keys[:max_keys]) + (f", +{len(keys) - max_keys} more"
                                                                  if len(keys) > max_keys else "")
    return text or f"config {i + 1}"


def find_runs(experiment: str | None = None, stages: Sequence[str] = STAGES, grid: str | None = "latest",
              tags: Mapping[str, str] | None = None) -> Scope:
    """Select the runs of a report through the tracking API.

    Args:
        experiment: experiment name (default: the one with the newest grid, else the newest stage run).
        stages: pretrain and/or finetune.
        grid: ``latest`` (the newest grid run of the experiment; every run when there is none),
            a grid run id, or ``none`` (every run of the experiment).
        tags: extra ``tag = value`` filters.

    Returns:
        A :class:`Scope`: FINISHED runs, the newest per (stage, technique, configuration, seed) among
        those of the dataset digest most runs share; every other matching run is in ``left_out`` with
        the reason. A configuration is the logged config less the seed and device (:func:`run_config`;
        the ``config_hash`` tag hashes the seed too, so it cannot group seeds): two configurations of a
        technique (e.g. a 20-epoch override of a 4-epoch run) are two rows, told apart in ``configs``.
    """
    from .grid import grid_run_ids

    for s in stages:
        if s not in STAGES:
            raise CompareError(f"unknown stage {s!r}; choose from: {', '.join(STAGES)}")
    client = _client()
    exp = _pick_experiment(client, experiment, grid)
    grid_id = None
    if grid == "latest":
        latest = client.search_runs([exp.experiment_id], filter_string="tags.stage = 'grid'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        grid_id = latest[0].info.run_id if latest else None
    elif grid and grid != "none":
        try:
            run = client.get_run(grid)
        except Exception:
            raise CompareError(f"--grid {grid}: no such run in {tracking_uri()}; "
                               "use latest, a grid run id, or none") from None
        if run.data.tags.get("stage") != "grid":
            raise CompareError(f"--grid {grid}: a {run.data.tags.get('stage', 'untagged')} run, not a grid run")
        grid_id = grid
    clauses = [f"tags.{k} = '{v}'" for k, v in (tags or {}).items()]
    runs = []
    if grid_id:
        for run_id in grid_run_ids(grid_id):
            run = client.get_run(run_id)
            if run.data.tags.get("stage") in stages and all(run.data.tags.get(k) == v for k, v in (tags or {}).items()):
                runs.append(run)
    else:
        for stage in stages:
            runs += client.search_runs([exp.experiment_id], filter_string=" and ".join([f"tags.stage = '{stage}'"]
                                                                                      + clauses),
                                       order_by=["attributes.start_time DESC"], max_results=5000)
    runs.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    kept, left = [], []
    # Runs on other data (another split or top-k) are not comparable: keep the digest most runs share
    # (the newest run's among equals).
    finished = [r.data.tags.get("dataset_digest", "") for r in runs if r.info.status == "FINISHED"]
    digest = max(dict.fromkeys(finished), key=finished.count) if finished else ""
    seen: dict[tuple, str] = {}
    comparable = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("dataset_digest", "") == digest]
    group_of, groups = config_groups(comparable)
    for r in runs:
        t = r.data.tags
        key = (t.get("stage"), t.get("technique"), group_of.get(r.info.run_id, -1), _seed_of(r))
        reason = ""
        if r.info.status != "FINISHED":
            reason = f"{r.info.status.lower()}" + (f": {t['error'].splitlines()[0]}" if t.get("error") else "")
        elif t.get("dataset_digest", "") != digest:
            reason = f"other dataset digest ({t.get('dataset_digest')} vs {digest})"
        elif key in seen:
            reason = f"superseded by the newer run {seen[key]}"
        if reason:
            left.append({"run_id": r.info.run_id, "run_name": r.info.run_name, "stage": key[0], "technique": key[1],
                         "seed": key[3], "reason": reason})
        else:
            seen[key] = r.info.run_id
            kept.append(r)
    if not kept:
        where = f"grid {grid_id}" if grid_id else f"experiment {exp.name!r}"
        raise CompareError(f"no finished {'/'.join(stages)} run in {where} matches"
                           + (f" the tags {dict(tags)}" if tags else "")
                           + ("; --grid none compares every run of the experiment" if grid_id else ""))
    left_out = pd.DataFrame(left, columns=["run_id", "run_name", "stage", "technique", "seed", "reason"])
    configs = {r.info.run_id: config_label(groups[(r.data.tags.get("stage"), r.data.tags.get("technique"))],
                                           group_of[r.info.run_id]) for r in kept}
    return Scope(exp.experiment_id, exp.name, grid_id, kept, left_out, digest, configs)


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
    # bootstrap replicates of the class-mean top-1 / top-5 over the run's test images (for the seed-mean interval)
    replicates: dict = field(default_factory=dict)


def class_mean_replicates(per_class_classes: Sequence[str], evaluated: np.ndarray, preds: pd.DataFrame,
                          seed: int = 0) -> dict[str, np.ndarray]:
    """Stratified-bootstrap replicates of the class-mean top-1/top-5 from a predictions table."""
    index = {c: i for i, c in enumerate(per_class_classes)}
    labels = np.array([index.get(c, -1) for c in preds["label"].astype(str)], dtype=np.int64)
    top5 = np.array([[index.get(c, -1) for c in row] for row in
                     preds[list(M.PRED_COLUMNS)].fillna("").astype(str).to_numpy()], dtype=np.int64)
    top5 = top5.reshape(len(labels), len(M.PRED_COLUMNS))
    return M.bootstrap_class_mean_replicates(labels, top5, np.flatnonzero(evaluated), n_boot=N_BOOT, seed=seed)


def class_mean_interval(per_class_classes: Sequence[str], evaluated: np.ndarray, preds: pd.DataFrame,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % stratified-bootstrap interval of the class-mean top-1/top-5 from a predictions table."""
    reps = class_mean_replicates(per_class_classes, evaluated, preds, seed)
    return {k: M.percentile_interval(v) for k, v in reps.items()}


def run_inputs(tags: Mapping[str, str]) -> str:
    """What a run's model sees, from its tags: image, metadata (the metadata-only baseline) or image+metadata."""
    if tags.get("baseline") == "metadata_only" or tags.get("fusion") == "metadata_only":
        return "metadata"
    return "image+metadata" if tags.get("fusion") in ("late", "film") else "image"


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
        table = pd.concat([table, pd.DataFrame({"class": extra, "n_train": 0, "n_val": 0,
                                                "n_test": again.loc[extra, "n_test"].to_numpy(),
                                                "top1": again.loc[extra, "top1"].to_numpy(),
                                                "top5": again.loc[extra, "top5"].to_numpy()})], ignore_index=True)
    same = np.ones(len(stated), dtype=bool)
    for col in ("top1", "top5", "n_test"):
        a = stated[col].to_numpy(dtype=float)
        b = table[col].to_numpy(dtype=float)[:len(stated)]
        same &= np.isclose(a, b, equal_nan=True)
    summ = M.summarize(table)
    evaluated = (table["n_test"].to_numpy() > 0) & (table["n_train"].to_numpy() > 0)
    reps = class_mean_replicates(table["class"].tolist(), evaluated, preds)
    ci = {k: M.percentile_interval(v) for k, v in reps.items()}
    summ.update({"top1_lo": ci["top1"][0], "top1_hi": ci["top1"][1], "top5_lo": ci["top5"][0],
                 "top5_hi": ci["top5"][1]})
    summ.update(M.gzsl_summary(table))  # seen / unseen / harmonic / all-class means (generalised zero-shot)
    t = run.data.tags
    technique = t.get("technique", "")
    return RunEval(run_id=run_id, run_name=run.info.run_name, stage=t.get("stage", ""),
                   technique=f"{technique} [{config}]" if config else technique, seed=_seed_of(run),
                   leaky=t.get("leaky", "false") == "true", inputs=run_inputs(t),
                   transfer=t.get("transfer", ""), per_class=table, summary=summ,
                   n_mismatch=int((~same).sum()) + len(extra), zero_shot=t.get("zero_shot") == "true",
                   config=config, replicates=reps)


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


def _not_evaluated_reason(n_train: int, n_test: int) -> str:
    if n_test == 0 and n_train == 0:
        return "no training and no test images"
    if n_test == 0:
        return "no test images (odd years) - nothing to evaluate"
    return "no training images (even years): test-only, the model cannot predict it"


def build_tables(evals: Sequence[RunEval], left_out: pd.DataFrame | None = None) -> Tables:
    """Aggregate run evaluations into the report's tables (seed means; techniques ranked by top-1)."""
    run_rows, long = [], []
    for e in evals:
        s = e.summary
        run_rows.append({"stage": e.stage, "technique": e.technique, "seed": e.seed, "run_id": e.run_id,
                         "run_name": e.run_name, "config": e.config, "transfer": e.transfer, "inputs": e.inputs,
                         "leaky": e.leaky,
                         "top1_mean": s["top1_mean"], "top1_lo": s["top1_lo"], "top1_hi": s["top1_hi"],
                         "top5_mean": s["top5_mean"], "top5_lo": s["top5_lo"], "top5_hi": s["top5_hi"],
                         "top1_micro": s["top1_micro"], "top5_micro": s["top5_micro"],
                         "n_classes_evaluated": s["n_classes_evaluated"], "n_mismatch": e.n_mismatch,
                         **{k: s[k] for k in GZSL_COLUMNS}, "zero_shot": e.zero_shot})
        pc = e.per_class.assign(stage=e.stage, technique=e.technique, seed=e.seed, run_id=e.run_id)
        long.append(pc[["stage", "technique", "seed", "run_id", "class", "n_train", "n_val", "n_test", "top1", "top5"]])
    runs = pd.DataFrame(run_rows).sort_values(["stage", "technique", "seed"], kind="stable").reset_index(drop=True)
    per_class_runs = pd.concat(long, ignore_index=True)
    summary, per_class, not_eval = {}, {}, []
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
        summ = r.groupby("technique", sort=False).agg(
            transfer=("transfer", "first"),
            seeds=("seed", lambda x: ",".join(str(v) for v in sorted(x))),
            n_seeds=("seed", "size"),
            top1_mean=("top1_mean", "mean"), top1_std=("top1_mean", "std"),
            top1_min=("top1_mean", "min"), top1_max=("top1_mean", "max"),
            top5_mean=("top5_mean", "mean"), top5_std=("top5_mean", "std"),
            top5_min=("top5_mean", "min"), top5_max=("top5_mean", "max"),
            top1_micro=("top1_micro", "mean"), top5_micro=("top5_micro", "mean"),
            n_classes_evaluated=("n_classes_evaluated", "max"),
            inputs=("inputs", "first"),
            leaky=("leaky", "any"),
            **{k: (k, "mean") for k in GZSL_COLUMNS}, zero_shot=("zero_shot", "any"),
        ).reset_index()
        # The interval of the seed mean: seeds and, within each, test images resampled (not the mean of bounds).
        reps = {}
        for e in evals:
            if e.stage == stage:
                reps.setdefault(e.technique, []).append(e.replicates)
        for metric in ("top1", "top5"):
            ci = [M.bootstrap_seed_mean([r.get(metric, np.zeros(0)) for r in reps[t]], n_boot=N_BOOT)
                  for t in summ["technique"]]
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
        wide["best top1"] = [", ".join(sorted(best.columns[best.loc[c].eq(best.loc[c].max())]))
                             if c in best.index and best.loc[c].notna().any() else "" for c in wide.index]
        wide = wide.reset_index().sort_values(["n_train", "class"], ascending=[False, True], kind="stable")
        per_class[stage] = wide.reset_index(drop=True)
        # A class without training images that a zero-shot run predicts is evaluated (its Top-1 is in the tables).
        zs_runs = runs.loc[(runs["stage"] == stage) & runs["zero_shot"], "run_id"]
        zs_classes = pcr.loc[pcr["run_id"].isin(zs_runs) & (pcr["n_test"] > 0), "class"]
        missing = counts[~counts.index.isin(evaluated) & ~counts.index.isin(zs_classes)]
        for c, row in missing.iterrows():
            not_eval.append({"stage": stage, "class": c, "n_train": int(row["n_train"]), "n_test": int(row["n_test"]),
                             "reason": _not_evaluated_reason(int(row["n_train"]), int(row["n_test"]))})
    not_evaluated = pd.DataFrame(not_eval, columns=["stage", "class", "n_train", "n_test", "reason"])
    return Tables(runs=runs, per_class_runs=per_class_runs, summary=summary, per_class=per_class,
                  not_evaluated=not_evaluated, left_out=left_out if left_out is not None else pd.DataFrame())


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
    out["Top-1 seeds min-max"] = [f"{lo:.3f}-{hi:.3f}" if n > 1 else ""
                                  for lo, hi, n in summ[["top1_min", "top1_max", "n_seeds"]].to_numpy()]
    out["Top-5 class-mean"] = [cell(*v) for v in summ[["top5_mean", "top5_std", "top5_lo", "top5_hi"]].to_numpy()]
    out["Top-1 micro"] = summ["top1_micro"].map(lambda v: f"{v:.3f}")
    out["Top-5 micro"] = summ["top5_micro"].map(lambda v: f"{v:.3f}")
    if "zero_shot" in summ and summ["zero_shot"].any():  # generalised zero-shot: S is the class-mean above
        out["Top-1 unseen (U)"] = summ["top1_unseen_mean"].map(lambda v: f"{v:.3f}")
        out["H"] = summ["top1_harmonic"].map(lambda v: f"{v:.3f}")
        out["Top-1 all classes"] = summ["top1_mean_all"].map(lambda v: f"{v:.3f}")
    out["classes evaluated"] = summ["n_classes_evaluated"]
    out["classes won"] = summ["classes_won"]
    out["seeds"] = summ["seeds"]
    out["leaky"] = summ["leaky"].map(lambda v: "LEAKY" if v else "")
    return out


# ---------------------------------------------------------------- figures

def heatmap_figure(wide: pd.DataFrame, techniques: Sequence[str], stage: str):
    """Per-class top-1 heatmap: evaluated classes (most training images first) x techniques."""
    import plotly.graph_objects as go

    rows = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)]
    z = rows[[f"{t} top1" for t in techniques]].to_numpy(dtype=float)
    z5 = rows[[f"{t} top5" for t in techniques]].to_numpy(dtype=float)
    labels = [f"{c} ({a}/{b})" for c, a, b in zip(rows["class"], rows["n_train"], rows["n_test"])]
    custom = np.dstack([z5, np.repeat(rows[["n_train"]].to_numpy(), len(techniques), axis=1),
                        np.repeat(rows[["n_test"]].to_numpy(), len(techniques), axis=1)])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(techniques), y=labels, customdata=custom, colorscale="Viridis", zmin=0, zmax=1,
        colorbar=dict(title="Top-1"),
        hovertemplate="%{y}<br>%{x}<br>Top-1 %{z:.3f}<br>Top-5 %{customdata[0]:.3f}<br>"
                      "train %{customdata[1]} / test %{customdata[2]}<extra></extra>"))
    fig.update_layout(title=f"{stage}: per-class Top-1 (class (n_train/n_test), most training images first)",
                      height=max(400, 16 * len(rows) + 200), width=max(600, 110 * len(techniques) + 400),
                      yaxis=dict(autorange="reversed", type="category"), xaxis=dict(type="category", side="top"),
                      margin=dict(l=260))
    return fig


def class_mean_figure(summ: pd.DataFrame, runs: pd.DataFrame, stage: str):
    """Class-mean Top-1 and Top-5 per technique: bars with the bootstrap interval, seeds as dots."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order = list(summ["technique"])
    for metric, colour in (("top1", "#1f77b4"), ("top5", "#ff7f0e")):
        fig.add_bar(name=f"{metric.replace('top', 'Top-')} class-mean", x=order, y=summ[f"{metric}_mean"],
                    marker_color=colour, offsetgroup=metric,
                    error_y=dict(type="data", array=(summ[f"{metric}_hi"] - summ[f"{metric}_mean"]).clip(lower=0),
                                 arrayminus=(summ[f"{metric}_mean"] - summ[f"{metric}_lo"]).clip(lower=0)),
                    customdata=np.stack([summ[f"{metric}_lo"], summ[f"{metric}_hi"], summ[f"{metric}_std"].fillna(0),
                                         summ["n_seeds"]], axis=1),
                    hovertemplate="%{x}<br>%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                  "<br>std over %{customdata[3]} seed(s): %{customdata[2]:.3f}<extra></extra>")
        r = runs[runs["stage"] == stage]
        fig.add_scatter(name=f"{metric.replace('top', 'Top-')} per seed", x=r["technique"], y=r[f"{metric}_mean"],
                        mode="markers", marker=dict(color="black", size=6, symbol="circle-open"),
                        offsetgroup=metric, text=[f"seed {s}" for s in r["seed"]],
                        hovertemplate="%{x} %{text}: %{y:.3f}<extra></extra>")
    fig.update_layout(title=f"{stage}: class-mean accuracy per technique (error bars: 95% bootstrap interval "
                            "of the seed mean; dots: seeds)", barmode="group", scattermode="group",
                      yaxis=dict(range=[0, 1.05]),
                      xaxis=dict(type="category", categoryorder="array", categoryarray=order), height=480)
    return fig


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
    for (lo, b), g in rows.groupby(["bin_lo", "bin"], sort=True):
        for t in techniques:
            out.append({"bin": b, "n_train_median": float(g["n_train"].median()), "n_classes": len(g),
                        "technique": t, "top1": g[f"{t} top1"].mean(), "top5": g[f"{t} top5"].mean()})
    return pd.DataFrame(out, columns=["bin", "n_train_median", "n_classes", "technique", "top1", "top5"])


def few_shot_figure(wide: pd.DataFrame, techniques: Sequence[str], stage: str):
    """Top-1 against the number of training images: per-technique bin means (lines) and classes (dots)."""
    import plotly.express as px
    import plotly.graph_objects as go

    rows = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)]
    bins = few_shot_table(wide, techniques)
    colours = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    fig = go.Figure()
    for i, t in enumerate(techniques):
        colour = colours[i % len(colours)]
        b = bins[bins["technique"] == t]
        fig.add_scatter(name=t, x=b["n_train_median"], y=b["top1"], mode="lines+markers", legendgroup=t,
                        line=dict(color=colour), customdata=np.stack([b["bin"], b["n_classes"]], axis=1),
                        hovertemplate=f"{t}<br>n_train %{{customdata[0]}} (%{{customdata[1]}} classes)"
                                      "<br>mean Top-1 %{y:.3f}<extra></extra>")
        fig.add_scatter(name=f"{t} (classes)", x=rows["n_train"], y=rows[f"{t} top1"], mode="markers",
                        legendgroup=t, showlegend=False, marker=dict(color=colour, size=5, opacity=0.35),
                        text=rows["class"], hovertemplate=f"{t}<br>%{{text}}: n_train %{{x}}, Top-1 %{{y:.3f}}"
                                                          "<extra></extra>")
    fig.update_layout(title=f"{stage}: Top-1 against training images per class (lines: mean per bin "
                            f"{', '.join(dict.fromkeys(bins['bin']))}; dots: classes)",
                      xaxis=dict(type="log", title="training images of the class (log)"),
                      yaxis=dict(title="Top-1", range=[-0.02, 1.02]), height=520)
    return fig


# ---------------------------------------------------------------- HTML

def _html_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    return df.to_html(index=False, na_rep="", border=0, classes="tbl", escape=True,
                      float_format=lambda v: format(v, floatfmt))


def report_html(tables: Tables, scope_text: str, title: str = "fashion-grid: technique comparison") -> str:
    """One self-contained HTML page (plotly.js inlined once): every section of the report."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    def fig_html(fig, div_id):
        return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True})

    stages = list(tables.summary)
    parts = {k: [] for k in SECTIONS}
    for stage in stages:
        summ, wide = tables.summary[stage], tables.per_class[stage]
        order = list(summ["technique"])
        parts["summary"].append(f"<h3>{stage}</h3>" + _html_table(display_summary(summ)))
        parts["class-mean"].append(fig_html(class_mean_figure(summ, tables.runs, stage), f"class-mean-{stage}"))
        parts["heatmap"].append(fig_html(heatmap_figure(wide, order, stage), f"heatmap-{stage}"))
        parts["few-shot"].append(fig_html(few_shot_figure(wide, order, stage), f"few-shot-{stage}")
                                 + "<details><summary>table</summary>"
                                 + _html_table(few_shot_table(wide, order)) + "</details>")
        parts["per-class"].append(f"<details><summary>{stage}: {len(wide)} classes x {len(order)} techniques"
                                  "</summary>" + _html_table(wide) + "</details>")
        ne = tables.not_evaluated[tables.not_evaluated["stage"] == stage]
        parts["not-evaluated"].append(f"<h3>{stage}: {len(ne)} classes not evaluated</h3>"
                                      + (_html_table(ne.drop(columns=["stage"])) if len(ne) else "<p>none</p>"))
    runs_cols = ["stage", "technique", "seed", "run_name", "run_id", "config", "top1_mean", "top5_mean", "top1_micro",
                 "n_classes_evaluated", "n_mismatch"]
    parts["runs"].append(_html_table(tables.runs[runs_cols]))
    if len(tables.left_out):
        parts["runs"].append(f"<h3>{len(tables.left_out)} runs left out</h3>" + _html_table(tables.left_out))
    headings = {
        "summary": ("Summary", "Class-mean = mean of the per-class accuracies over the evaluated classes (every class "
                               "weighs the same); ± = std across seeds; [lo, hi] = 95% interval of the seed mean "
                               "(a bootstrap over the seeds and, within each, stratified over its test images; one "
                               "seed: its own interval); seeds min-max = the lowest and highest seed; micro = over "
                               "all test images of evaluated "
                               "classes; classes won = classes where the technique has the best Top-1 (ties count "
                               "for each); LEAKY = uses masterCategory/subCategory as inputs. With a generalised "
                               "zero-shot run in the stage: Top-1 unseen (U) = class-mean over the classes without "
                               "training images (0 for a technique that cannot output them), H = harmonic mean of the "
                               "Top-1 class-mean (seen classes) and U, Top-1 all classes = class-mean over every class "
                               "with test images."),
        "class-mean": ("Class-mean accuracy", ""),
        "heatmap": ("Per-class Top-1", "Hover for Top-5 and counts."),
        "few-shot": ("Few-shot curve", "Accuracy against the number of training images of the class."),
        "per-class": ("Per-class table", "Top-1 and Top-5 per class and technique (mean over seeds)."),
        "not-evaluated": ("Classes not evaluated", "Left out of the class-mean and micro numbers, with the reason; "
                                                   "a class without training images that a zero-shot run predicts is "
                                                   "evaluated (in U) and not listed."),
        "runs": ("Runs", "The MLflow runs behind the numbers; n_mismatch = classes whose eval/per_class.csv "
                         "differs from the numbers recomputed from eval/predictions.csv (0 expected)."),
    }
    body = "".join(f'<section id="{k}"><h2>{headings[k][0]}</h2><p class="note">{html.escape(headings[k][1])}</p>'
                   + "".join(parts[k]) + "</section>" for k in SECTIONS)
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222} .tbl{border-collapse:collapse;font-size:13px}"
             " .tbl td,.tbl th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             " .tbl td:first-child,.tbl th:first-child{text-align:left} .note{color:#555;max-width:70em}"
             " section{margin-bottom:2.5em} nav a{margin-right:1em}")
    nav = "".join(f'<a href="#{k}">{headings[k][0]}</a>' for k in SECTIONS)
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style><script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(scope_text)}</p><nav>{nav}</nav>{body}</body></html>")


def report_markdown(tables: Tables, scope_text: str, full: bool = True) -> str:
    """The report as Markdown: summaries (and, with ``full``, per-class tables, exclusions and runs)."""
    out = [f"# Technique comparison\n\n{scope_text}\n"]
    for stage, summ in tables.summary.items():
        out.append(f"## {stage}\n\n" + markdown_table(display_summary(summ)) + "\n")
    if full:
        for stage, wide in tables.per_class.items():
            out.append(f"## {stage}: per class\n\n" + markdown_table(wide, ".3f") + "\n")
        out.append("## Classes not evaluated\n\n" + (markdown_table(tables.not_evaluated) if len(tables.not_evaluated)
                                                    else "none") + "\n")
        out.append("## Runs\n\n" + markdown_table(tables.runs[["stage", "technique", "seed", "run_id", "top1_mean",
                                                               "top5_mean", "n_mismatch"]]) + "\n")
        if len(tables.left_out):
            out.append("## Runs left out\n\n" + markdown_table(tables.left_out) + "\n")
    return "\n".join(out)


def write_report(tables: Tables, out: str | Path, scope_text: str) -> list[Path]:
    """Write the HTML, CSV and Markdown files into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.html": report_html(tables, scope_text), "report.md": report_markdown(tables, scope_text),
             "summary.md": report_markdown(tables, scope_text, full=False)}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    frames = {"runs.csv": tables.runs, "per_class_runs.csv": tables.per_class_runs,
              "not_evaluated.csv": tables.not_evaluated, "left_out.csv": tables.left_out}
    for stage in tables.summary:
        frames[f"summary_{stage}.csv"] = tables.summary[stage]
        frames[f"per_class_{stage}.csv"] = tables.per_class[stage]
        frames[f"few_shot_{stage}.csv"] = few_shot_table(tables.per_class[stage], list(tables.summary[stage]["technique"]))
    for name, df in frames.items():
        df.to_csv(out / name, index=False)
    return sorted(out / n for n in list(files) + list(frames))


# ---------------------------------------------------------------- the command

@dataclass
class CompareResult:
    """A finished comparison: the tables, the local folder, the ``stage=compare`` run."""

    tables: Tables
    out: Path
    files: list[Path]
    run_id: str | None
    scope: Scope


def run_compare(experiment: str | None = None, stages: Sequence[str] = STAGES, grid: str | None = "latest",
                tags: Mapping[str, str] | None = None, out: str | Path = "reports/compare", log_run: bool = True,
                log=print) -> CompareResult:
    """Build the report of the selected runs, write it to ``out`` and log it as a ``stage=compare`` run.

    Args:
        experiment, stages, grid, tags: the run filters of :func:`find_runs`.
        out: local folder for report.html, the CSV and Markdown files.
        log_run: also log the files as artifacts (``report/``) of a ``stage=compare`` run.

    Returns:
        A :class:`CompareResult`.
    """
    t0 = time.perf_counter()
    tracking._quiet_mlflow()  # no progress bar per downloaded artifact
    scope = find_runs(experiment, stages, grid, tags)
    log(f"comparing {len(scope.runs)} runs of experiment {scope.experiment_name!r}"
        + (f", grid {scope.grid_run_id}" if scope.grid_run_id else "")
        + (f" ({len(scope.left_out)} left out)" if len(scope.left_out) else ""))
    with tempfile.TemporaryDirectory() as d:
        evals = [evaluate_run(r, d, scope.configs.get(r.info.run_id, "")) for r in scope.runs]
    bad = [e for e in evals if e.n_mismatch]
    for e in bad:
        log(f"warning: run {e.run_id} ({e.run_name}): {e.n_mismatch} classes of eval/per_class.csv differ from "
            "eval/predictions.csv; the report uses the predictions")
    tables = build_tables(evals, scope.left_out)
    scope_text = (f"Experiment {scope.experiment_name!r} ({tracking_uri()}), "
                  + (f"grid run {scope.grid_run_id}, " if scope.grid_run_id else "all runs, ")
                  + f"dataset digest {scope.dataset_digest}, {len(evals)} runs"
                  + (f", filtered by tags {dict(tags)}" if tags else "")
                  + f"; built {time.strftime('%Y-%m-%d %H:%M:%S')}.")
    files = write_report(tables, out, scope_text)
    run_id = None
    if log_run:
        tracking.set_experiment(scope.experiment_name)
        name = f"compare/{'grid-' + scope.grid_run_id[:8] if scope.grid_run_id else 'all'}"
        with tracking.start_run("compare", "compare", scope.dataset_digest, run_name=name,
                                tags={"grid_run_id": scope.grid_run_id or "", "n_runs": len(evals)},
                                description=report_markdown(tables, scope_text, full=False)) as run:
            run_id = run.info.run_id
            for f in files:
                tracking.log_file(f, "report")
            tracking.log_metrics({"n_runs": len(evals), "n_left_out": len(scope.left_out),
                                  "n_mismatch": sum(e.n_mismatch for e in evals),
                                  "compare_seconds": time.perf_counter() - t0})
    log(f"report: {Path(out) / 'report.html'}" + (f" (compare run {run_id})" if run_id else ""))
    for stage, summ in tables.summary.items():
        log(f"\n{stage}:\n" + markdown_table(display_summary(summ)))
    return CompareResult(tables=tables, out=Path(out), files=files, run_id=run_id, scope=scope)
