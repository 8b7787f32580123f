"""Score-level ensembles of two finished runs of one stage, the weight chosen on validation.

A network and the metadata-only baseline (or two networks) see different evidence: the photo, the
catalogue fields. ``run_ensemble`` adds their log-probabilities, ``log p(c) = log p_a(c) + w log p_b(c)``,
with ``w`` from ``WEIGHTS`` chosen by the class-mean Top-1 on the members' VALIDATION split (ties: the
smaller weight; ``w = 0`` is member ``a`` alone), then reads the test split once. The validation figure at
the chosen weight is optimistic (the weight was chosen on it); ``val_top1_mean_crossfit`` is an honest one:
the weight chosen on one half of the validation images (per class, seeded) and scored on the other, both
ways, averaged. So is the members' own validation figure optimistic when a network's epoch was chosen on
it, which pulls ``w`` towards that network; the year-held-out validation (``--val-by year``) shows the
test's year shift, where a random validation share does not.

The members must share the stage, the dataset digest and the split (``data.*``), so that validation holds
no image either member trained on. The run is a run of its stage (tags ``stage``, ``technique`` =
``<a>+<b>``, ``dataset_digest``, ``ensemble_of`` = the two run ids) with the same ``test_*`` metrics and
``eval/`` artifacts as any technique, and ``ensemble/weights.csv`` + ``ensemble/weights.png``; it is a
child of the members' grid run when they share one, so ``compare`` shows it beside them. It logs no
model of its own: its members are the models.

    fashion ensemble <image run id> <meta_only run id> --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np
import pandas as pd

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig
from fashion_core.data.prepared import prepare_data, without_test
from fashion_core.data.stage import build_stage_data
from fashion_core.engine.devices import pick_device
from fashion_core.engine.train import predict_scores
from fashion_core.evaluation.scoring import class_mean_accuracy, topk_predictions
from fashion_core.fusion.metadata_only import class_scores, features
from fashion_core.fusion.modules import FusedNet
from fashion_core.fusion.plan import stage_rows
from fashion_core.runners.metadata_only import load_metadata_baseline
from fashion_core.runners.prepare import log_dataset_input
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.references import load_run_model, resolve_model_uri
from fashion_core.tracking.runs import run_inputs
from fashion_core.tracking.test_reads import deferred_line, log_test, scores_test, selection_tags, test_summary

logger = logging.getLogger(__name__)

ENSEMBLE_TAG = "ensemble_of"  # run tag: the member run ids, comma-separated
WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
FLOOR = -1e4  # log-probability floor: a class a member never saw (-1e30 in the metadata model) stays last
SAME_KEYS = ("stage", "dataset_digest")


def member_config(run_id: str) -> dict:
    import yaml

    with tempfile.TemporaryDirectory() as d:
        try:
            return yaml.safe_load(tracking.download_artifact(run_id, "config.yaml", d).read_text()) or {}
        except Exception as e:
            raise ConfigError(f"run {run_id} has no config.yaml: {e}") from None


def check_members(runs: list) -> None:
    """Refuse members that cannot be combined: not two, not FINISHED, other stage / data / split / classes."""
    if len(runs) != 2:
        raise ConfigError(f"an ensemble takes two runs, got {len(runs)}")
    a, b = runs
    if a.info.run_id == b.info.run_id:
        raise ConfigError(f"an ensemble of run {a.info.run_id} with itself")
    for r in runs:
        t = r.data.tags
        if r.info.status != "FINISHED":
            raise ConfigError(f"run {r.info.run_id} is {r.info.status}, not FINISHED")
        if t.get("stage") not in ("pretrain", "finetune"):
            raise ConfigError(
                f"run {r.info.run_id} is a {t.get('stage', 'untagged')} run, not a pretrain or finetune run"
            )
        if t.get("zero_shot") == "true" or t.get(ENSEMBLE_TAG):
            kind = (
                "a zero-shot run (it scores classes without training images)"
                if t.get("zero_shot") == "true"
                else "itself an ensemble"
            )
            raise ConfigError(
                f"run {r.info.run_id} is {kind}; combine a network with the metadata-only baseline "
                "or with another network"
            )
    for key in SAME_KEYS:
        if a.data.tags.get(key) != b.data.tags.get(key):
            raise ConfigError(
                f"the runs differ in {key}: {a.data.tags.get(key)} ({a.info.run_id[:8]}) vs "
                f"{b.data.tags.get(key)} ({b.info.run_id[:8]})"
            )


def member_scores(run, p, stage: str, sd, splits=("val", "test")) -> dict:
    """Log-probabilities (val, test) of a finished network or metadata-only run over the stage's classes.

    ``sd``: the stage's data, gathered once by the caller; only a fused network gathers it again, with its
    metadata inputs.
    """
    import torch

    run_id = run.info.run_id
    if run.data.tags.get("baseline") == "metadata_only":
        clf, vocab, classes = load_metadata_baseline(run_id)
        out = {}
        for split in splits:
            rows = stage_rows(p, sd.frame.loc[sd.frame["split"] == split, "id"])
            out[split] = class_scores(clf, features(vocab, rows), len(classes))
        return {"classes": list(classes), **out}
    model, meta = load_run_model(run_id)
    vocab = model.vocab if isinstance(model, FusedNet) else None
    if vocab is not None:
        sd = build_stage_data(p, stage, lambda prep, rows, classes: vocab.encode(stage_rows(prep, rows["id"])))
    device = pick_device("auto")
    model.to(device)
    out = {}
    for split in splits:
        logits = torch.from_numpy(predict_scores(model, getattr(sd, split), device))
        out[split] = torch.log_softmax(logits.double(), dim=1).numpy() if len(logits) else np.zeros((0, 0))
    return {"classes": list(meta["classes"]), **out}


def _class_mean(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    ok = labels >= 0
    if not ok.any():
        return float("nan"), float("nan")
    return class_mean_accuracy(labels[ok], topk_predictions(scores[ok]))


def choose_weight(a: np.ndarray, b: np.ndarray, labels: np.ndarray, weights=WEIGHTS) -> tuple[float, pd.DataFrame]:
    """The weight of ``b`` with the best class-mean Top-1 of ``a + w b`` on these rows (ties: the smaller)."""
    rows = []
    for w in weights:
        t1, t5 = _class_mean(labels, a + w * b)
        rows.append({"weight": float(w), "val_top1_mean": t1, "val_top5_mean": t5})
    curve = pd.DataFrame(rows)
    best = curve.loc[curve["val_top1_mean"].fillna(-1).idxmax(), "weight"] if len(curve) else 0.0
    return float(best), curve


def crossfit(a: np.ndarray, b: np.ndarray, labels: np.ndarray, seed: int, weights=WEIGHTS) -> dict[str, float]:
    """Validation class-mean Top-1 with the weight chosen on the other half of the images (per class, seeded).

    Returns the ensemble's figure and, on the very same halves, each member's alone (``a``: w = 0; ``b``: b
    alone): a class with one validation image is in one half only, so the halves' class-means differ from the
    whole validation's, and only figures on the same halves compare.
    """
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        half[idx[: len(idx) // 2]] = True
    out: dict[str, list[float]] = {"ensemble": [], "a": [], "b": []}
    for fit, score in ((half, ~half), (~half, half)):
        if not fit.any() or not score.any():
            continue
        w, _ = choose_weight(a[fit], b[fit], labels[fit], weights)
        out["ensemble"].append(_class_mean(labels[score], a[score] + w * b[score])[0])
        out["a"].append(_class_mean(labels[score], a[score])[0])
        out["b"].append(_class_mean(labels[score], b[score])[0])
    return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


def _weights_figure(curve: pd.DataFrame, chosen: float, names: tuple[str, str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["weight"], curve["val_top1_mean"], marker="o", label="validation Top-1 (class-mean)")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen w = {chosen:g}")
    ax.set_xlabel(f"w: log p({names[0]}) + w log p({names[1]})")
    ax.set_ylabel("class-mean Top-1")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _common_parent(runs: list) -> str | None:
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    return parents.pop() if len(parents) == 1 else None


def run_ensemble(
    members: list[str],
    data: str | None,
    *,
    grid_run: str | None = "auto",
    seed: int | None = None,
    weights=WEIGHTS,
    prepared=None,
) -> str:
    """Combine two finished runs of one stage (weight chosen on validation), score test once, log one run.

    Args:
        members: two run references (run id, ``runs:/``, ``models:/``); the first is the anchor (weight 1).
        data: the dataset (folder or archive) the members were trained on.
        grid_run: the grid run to attach the ensemble to (``auto``: the members' common parent, if any;
            ``none``: a top-level run).
        seed: the run's seed (default: its network member's ``train.seed``, so that the ensembles of three
            seeds of a network are three seeds in ``compare``): the validation halves of ``crossfit`` and the
            bootstrap of the test interval.
        prepared: the prepared data, instead of preparing ``data`` (tests).

    An ensemble of selection runs (``test_reads.scores_test``) is one too: it chooses its weight and scores
    no test; ``fashion evaluate`` does, later, once.

    Returns:
        The run id.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    t_start = time.perf_counter()
    if len(members) != 2:
        raise ConfigError(f"an ensemble takes two runs, got {len(members)}")
    client = MlflowClient()
    runs = []
    for spec in members:
        run_id = resolve_model_uri(spec)
        try:
            runs.append(client.get_run(run_id))
        except Exception:
            raise ConfigError(f"{spec}: no run {run_id}; {tracking.store_hint()}") from None
    check_members(runs)
    configs = [member_config(r.info.run_id) for r in runs]
    if configs[0].get("data") != configs[1].get("data"):
        diff = sorted(
            k
            for k in set(configs[0].get("data", {})) | set(configs[1].get("data", {}))
            if configs[0].get("data", {}).get(k) != configs[1].get("data", {}).get(k)
        )
        raise ConfigError(
            f"the runs were trained on different splits (data.{', data.'.join(diff)} differ): "
            "validation would hold images one of them trained on"
        )
    stage = runs[0].data.tags["stage"]
    if seed is None:  # the network's seed; the metadata-only model is deterministic
        nets = [c for r, c in zip(runs, configs) if r.data.tags.get("baseline") != "metadata_only"] or configs
        seed = int((nets[0].get("train") or {}).get("seed", 0))
    base = ExperimentConfig(stage=stage).replace(**{f"data.{k}": v for k, v in configs[0]["data"].items()})
    p = prepared or prepare_data(data, base.data)
    selection = not scores_test(base, [r.data.tags for r in runs])
    if selection:  # the weight of a selection run is chosen, and the run ends, without a test row in memory
        p_rows = without_test(p)
    else:
        p_rows = p
    if p.digest != runs[0].data.tags.get("dataset_digest"):
        raise ConfigError(
            f"--data gives dataset digest {p.digest}, the runs were trained on "
            f"{runs[0].data.tags.get('dataset_digest')}: give the dataset they were trained on"
        )
    sd = build_stage_data(p_rows, stage)
    scored = []
    for r in runs:
        logger.info(
            f"scoring {r.data.tags.get('technique')} ({r.info.run_id[:8]}) on validation"
            + ("" if selection else " and test")
        )
        s = member_scores(r, p_rows, stage, sd, ("val",) if selection else ("val", "test"))
        if s["classes"] != sd.classes:
            raise ConfigError(
                f"run {r.info.run_id} predicts other classes than the {stage} stage's "
                f"{len(sd.classes)}; was it trained on another split?"
            )
        scored.append({k: np.maximum(v, FLOOR) for k, v in s.items() if k != "classes"})
    names = tuple(r.data.tags.get("technique", r.info.run_id[:8]) for r in runs)
    y_val = sd.val.labels.numpy()
    if len(y_val) == 0:
        raise ConfigError("the members' split has no validation images to choose the weight on")
    w, curve = choose_weight(scored[0]["val"], scored[1]["val"], y_val, weights)
    member_val = [_class_mean(y_val, s["val"])[0] for s in scored]
    val1, val5 = _class_mean(y_val, scored[0]["val"] + w * scored[1]["val"])
    honest = crossfit(scored[0]["val"], scored[1]["val"], y_val, seed, weights)
    logger.info(
        f"ensemble {names[0]} + w {names[1]}: validation class-mean top-1 {val1:.4f} at w={w:g}, alone "
        f"{member_val[0]:.4f} / {member_val[1]:.4f}; cross-fitted halves {honest['ensemble']:.4f}, alone "
        f"{honest['a']:.4f} / {honest['b']:.4f}"
    )
    tracking.set_experiment(client.get_experiment(runs[0].info.experiment_id).name)  # the members' experiment
    parent = _common_parent(runs) if grid_run == "auto" else (None if grid_run in (None, "", "none") else grid_run)
    technique = f"{names[0]}+{names[1]}"
    seen = sorted({x for r in runs for x in run_inputs(r.data.tags).split("+")}, key=("image", "metadata").index)
    tags = {
        ENSEMBLE_TAG: ",".join(r.info.run_id for r in runs),
        "seed": seed,
        "device": "cpu",
        "leaky": str(any(r.data.tags.get("leaky") == "true" for r in runs)).lower(),
        "transfer": ",".join(
            filter(
                None,
                (
                    r.data.tags.get("transfer", "")
                    for r in runs  # the networks' only
                    if r.data.tags.get("baseline") != "metadata_only"
                ),
            )
        ),
        "ensemble_inputs": "+".join(seen),
        "fusion_inputs": ",".join(
            dict.fromkeys(x for r in runs for x in (r.data.tags.get("fusion_inputs") or "image").split(",") if x)
        ),
        **selection_tags(selection),
    }
    config = {
        "stage": stage,
        "technique": technique,
        "data": configs[0]["data"],
        "ensemble": {
            "members": [r.info.run_id for r in runs],
            "techniques": list(names),
            "weights": [float(x) for x in weights],
            "rule": "log p_a + w log p_b, w by val top-1",
        },
    }
    with tracking.start_run(
        stage, technique, p.digest, run_name=f"{technique} · s{seed}", config=config, tags=tags, parent_run_id=parent
    ) as run:
        run_id = run.info.run_id
        log_dataset_input(p, stage)
        tracking.log_metrics(
            {
                "n_classes": len(sd.classes),
                "n_val_images": len(sd.val),
                **({} if selection else {"n_test_images": len(sd.test)}),
                "ensemble_weight": w,
                "val_top1_mean_crossfit": honest["ensemble"],
                "val_top1_mean_crossfit_member_a": honest["a"],
                "val_top1_mean_crossfit_member_b": honest["b"],
                "val_top1_mean_member_a": member_val[0],
                "val_top1_mean_member_b": member_val[1],
            }
        )
        tracking.log_metrics({"val_top1_mean": val1, "val_top5_mean": val5}, step=0)
        tracking.log_frame(curve, "ensemble/weights.csv")
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/weights.png"
            _weights_figure(curve, w, names, path)
            tracking.log_file(path, "ensemble")
        mlflow.log_dict({"classes": sd.classes, "test_only": sd.test_only}, "classes.json")
        if not selection:
            test_metrics = log_test(run_id, sd, scored[0]["test"] + w * scored[1]["test"], seed)
        tracking.log_metrics({"run_seconds": time.perf_counter() - t_start})
        logger.info(
            f"{stage} run {run_id} ({technique}, w={w:g}): "
            + (
                test_summary(stage, technique, test_metrics)
                if not selection
                else deferred_line(stage, technique, run_id, val1)
            )
        )
    return run_id
