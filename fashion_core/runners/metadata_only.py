"""The metadata-only baseline: a scikit-learn logistic regression on the fused networks' metadata features.

A technique with ``fusion.mode: metadata_only`` runs here instead of training a network
(``run_stage`` dispatches). It sees exactly what a fused network's metadata encoder sees: the
same stage rows and classes, one-hot codes of ``fusion.fields`` (vocabularies fitted on the stage's
TRAIN split, with the unknown and missing buckets of ``fusion.CategoryVocab``) and the same hashed
word n-grams of ``productDisplayName``. The inverse regularisation ``C`` is ``metadata.logreg_c``, or
the best of ``config.LOGREG_C_GRID`` on VALIDATION class-mean top-1; the model is fitted on the
training rows only, as the networks are.

The run is a run of its stage (tags ``stage``, ``technique``, ``dataset_digest``, ``leaky``, plus
``baseline=metadata_only``) with the same ``test_*`` metrics and ``eval/`` artifacts as a network,
so ``compare`` shows it beside them. It has no network: ``finetune --from`` refuses it. Honoured
keys: ``data.*``, ``fusion.fields``, ``fusion.leaky_fields``, ``fusion.text_buckets``,
``fusion.text_ngrams``, ``metadata.logreg_c``, ``loss.weights`` (none, or inverse = scikit-learn's
"balanced"), ``train.seed``; the model, train and transfer keys do not apply.

    fashion pretrain --technique meta_only --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.config.checks import LOGREG_C_GRID, ConfigError
from fashion_core.config.schema import ExperimentConfig, to_dict
from fashion_core.data.prepared import without_test
from fashion_core.data.stage import build_stage_data
from fashion_core.evaluation.scoring import class_mean_accuracy, topk_predictions
from fashion_core.fusion.encoders import TEXT_FIELD, MetaVocab
from fashion_core.fusion.metadata_only import (
    STATE_ARTIFACT,
    WEIGHTS_ARTIFACT,
    baseline_from_folder,
    class_scores,
    features,
    fit_logreg,
)
from fashion_core.fusion.plan import stage_rows
from fashion_core.runners.prepare import log_dataset_input
from fashion_core.serving.predict import log_product_model, registered_name
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import run_name
from fashion_core.tracking.test_reads import deferred_line, log_test, scores_test, selection_tags, test_summary

logger = logging.getLogger(__name__)

BASELINE_TAG = "metadata_only"  # value of the ``baseline`` tag


def _split_rows(p, sd, name: str) -> pd.DataFrame:
    """Catalogue rows of one split of the stage, in the order of ``sd.<split>``."""
    return stage_rows(p, sd.frame.loc[sd.frame["split"] == name, "id"])


def run_metadata_baseline(
    cfg: ExperimentConfig,
    p,
    *,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    register: bool = True,
    **_network_only,
) -> str:
    """Fit, select (on validation), evaluate (on test) and log the metadata-only baseline as one run.

    Args:
        cfg: a config with ``fusion.mode == "metadata_only"`` (validated by ``config.validate``).
        p: the prepared data (``data.prepare_data``); the MLflow experiment is already selected.
        parent_run_id: makes this a child run (grid).
        tags: extra run tags (grid: ``config_hash``, ``grid_run_id``).
        register: register the model as a version of ``fashion-<stage>-metadata`` (@best follows validation).

    Returns:
        The run id.
    """
    import mlflow

    if cfg.fusion.mode != "metadata_only":
        raise ConfigError(f"run_metadata_baseline needs fusion.mode=metadata_only, got {cfg.fusion.mode}")
    t_start = time.perf_counter()
    selection = not scores_test(cfg)
    if selection:  # a selection run never gathers a test row: `fashion evaluate` scores it later, once
        p_rows = without_test(p)
    else:
        p_rows = p
    sd = build_stage_data(p_rows, cfg.stage)  # the networks' rows, classes and labels, so the tables line up
    if len(sd.train) == 0:
        raise ConfigError(f"the {cfg.stage} stage has no training images with these split settings")
    train_rows = _split_rows(p, sd, "train")
    vocab = MetaVocab.fit(train_rows, cfg.fusion)
    x_train, y_train = features(vocab, train_rows), sd.train.labels.numpy()
    x_val, y_val = features(vocab, _split_rows(p, sd, "val")), sd.val.labels.numpy()
    if len(np.unique(y_train)) < 2:
        raise ConfigError(f"the {cfg.stage} stage has fewer than two classes with training images")
    n = len(sd.classes)
    class_weight = "balanced" if cfg.loss.weights == "inverse" else None
    grid = [cfg.metadata.logreg_c] if cfg.metadata.logreg_c > 0 else list(LOGREG_C_GRID)
    if len(y_val) == 0 and len(grid) > 1:
        grid = [1.0]  # nothing to select on: scikit-learn's default
        logger.info("no validation rows: logreg C = 1.0 (scikit-learn's default)")
    search: list[dict] = []
    best: tuple[Any, float, float, float, bool] | None = None  # (model, val top-1, val top-5, C, converged)
    for c in grid:
        clf, converged = fit_logreg(x_train, y_train, c, class_weight, cfg.train.seed)
        v1, v5 = (
            class_mean_accuracy(y_val, topk_predictions(class_scores(clf, x_val, n)))
            if len(y_val)
            else (np.nan, np.nan)
        )
        search.append({"C": c, "val_top1_mean": v1, "val_top5_mean": v5, "converged": converged})
        logger.info(
            f"logreg C={c:g}: val class-mean top-1 {v1:.4f}  top-5 {v5:.4f}"
            + ("" if converged else "  (not converged)")
        )
        if best is None or v1 > best[1]:
            best = (clf, v1, v5, c, converged)
    assert best is not None  # the grid holds at least one C
    clf, val1, val5, c_best, converged = best
    inputs = vocab.fields + ([TEXT_FIELD] if vocab.text else [])
    all_tags = {
        "leaky": str(cfg.fusion.leaky).lower(),
        "seed": cfg.train.seed,
        "device": "cpu",
        "transfer": cfg.transfer.method if cfg.stage == "finetune" else "",
        "baseline": BASELINE_TAG,
        "fusion": cfg.fusion.mode,
        "fusion_inputs": ",".join(inputs),
        **selection_tags(selection),
        **(tags or {}),
    }
    if cfg.fusion.leaky:
        logger.warning(f"LEAKY: {', '.join(cfg.fusion.leaky_fields)} are model inputs; the run is tagged leaky=true")
    with tracking.start_run(
        cfg.stage,
        cfg.technique,
        p.digest,
        run_name=run_name(cfg),
        config=to_dict(cfg),
        tags=all_tags,
        description=cfg.description or None,
        parent_run_id=parent_run_id,
    ) as run:
        run_id = run.info.run_id
        log_dataset_input(p, cfg.stage)
        logger.info(
            f"{cfg.stage} run {run_id} ({run_name(cfg)}): metadata-only logistic regression on {', '.join(inputs)}; "
            f"{n} classes, {len(sd.train)} train / {len(sd.val)} val / {len(sd.test)} test rows, "
            f"{x_train.shape[1]} features, C={c_best:g}"
        )
        tracking.log_metrics(
            {
                "n_classes": n,
                "n_train_images": len(sd.train),
                "n_val_images": len(sd.val),
                **({} if selection else {"n_test_images_learnable": len(sd.test)}),
                "n_features": x_train.shape[1],
                "n_params": int(clf.coef_.size + clf.intercept_.size),
                "logreg_c": c_best,
                "logreg_converged": float(converged),
            }
        )
        tracking.log_metrics({"val_top1_mean": val1, "val_top5_mean": val5}, step=0)
        mlflow.log_dict({"classes": sd.classes, "test_only": sd.test_only}, "classes.json")
        tracking.log_frame(pd.DataFrame(search), "baseline/c_search.csv")
        if not selection:
            x_test = features(vocab, _split_rows(p, sd, "test"))
            test_metrics = log_test(run_id, sd, class_scores(clf, x_test, n), cfg.train.seed)
        log_metadata_model(
            clf,
            vocab,
            c_best,
            sd.classes,
            registered_name(cfg.stage, "metadata") if register else None,
            val1 if val1 == val1 else -1.0,
        )
        tracking.log_metrics({"run_seconds": time.perf_counter() - t_start})
        logger.info(
            (
                test_summary(cfg.stage, cfg.technique, test_metrics)
                if not selection
                else deferred_line(cfg.stage, cfg.technique, run_id, val1)
            )
            + ("  LEAKY" if cfg.fusion.leaky else "")
        )
    return run_id


def log_metadata_model(
    clf,
    vocab: MetaVocab,
    c: float,
    classes: list[str],
    register: str | None = None,
    val_score: float = -1.0,
    extra: dict[str, dict] | None = None,
) -> None:
    """The fitted model without pickles (vocabularies and settings as JSON, coefficients as ``.npz``), and the same
    files as an MLflow pyfunc model (catalogue fields in), registered as ``register`` when given. ``extra``: more
    JSON files of the checkpoint folder by file name (the zero-shot head).

    Not ``mlflow.sklearn.log_model``: it pickles (or skops-dumps) the estimator, and loading a pickle
    runs code from the artifact store; JSON and ``np.load(allow_pickle=False)`` cannot.
    """
    import mlflow

    state = {
        "kind": "logistic_regression",
        "C": c,
        "classes": classes,
        "vocab": vocab.to_dict(),
        "model_classes": [int(k) for k in clf.classes_],
    }
    with tempfile.TemporaryDirectory() as d:
        Path(d, Path(STATE_ARTIFACT).name).write_text(json.dumps(state))
        np.savez_compressed(Path(d, Path(WEIGHTS_ARTIFACT).name), coef=clf.coef_, intercept=clf.intercept_)
        for name, content in (extra or {}).items():
            Path(d, name).write_text(json.dumps(content))
        mlflow.log_artifacts(d, str(Path(STATE_ARTIFACT).parent))
        log_product_model(d, register, val_score)


def load_metadata_baseline(run_id: str):
    """The logged baseline of a run: (scikit-learn model, vocabularies, class names); no unpickling.

    Predict with ``class_scores(model, features(vocab, rows), len(classes))``.
    """
    with tempfile.TemporaryDirectory() as d:
        try:
            folder = tracking.download_artifact(run_id, STATE_ARTIFACT, d).parent
            tracking.download_artifact(run_id, WEIGHTS_ARTIFACT, d)
        except Exception as e:
            raise ConfigError(
                f"run {run_id} has no metadata baseline ({STATE_ARTIFACT}, {WEIGHTS_ARTIFACT}): {e}"
            ) from None
        return baseline_from_folder(folder)
