"""The generalised zero-shot run: fit on seen classes, calibrate on validation, score test once, log to MLflow."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from fashion_core.config.checks import LOGREG_C_GRID, ConfigError
from fashion_core.config.schema import ExperimentConfig, to_dict
from fashion_core.data.stage import build_stage_data
from fashion_core.evaluation import metrics as M
from fashion_core.evaluation.scoring import class_mean_accuracy
from fashion_core.evaluation.scoring import topk_predictions as top5_of
from fashion_core.fusion.encoders import TEXT_FIELD, MetaVocab
from fashion_core.fusion.metadata_only import class_scores, features, fit_logreg
from fashion_core.fusion.plan import stage_rows
from fashion_core.runners.metadata_only import BASELINE_TAG, log_metadata_model
from fashion_core.serving.predict import registered_name
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import run_name
from fashion_core.tracking.test_reads import deferred_line, log_test, scores_test, selection_tags
from fashion_core.zeroshot.calibration import calibrate, class_groups, fit_models, model_scores
from fashion_core.zeroshot.head import HEAD_FILE, ZeroShotHead
from fashion_core.zeroshot.holdout import HOLDOUT_TAG, held_out_summary, holdout_of
from fashion_core.zeroshot.names import FEATURES, NameMatcher, candidate_classes
from fashion_core.zeroshot.ranker import MIXES
from fashion_core.zeroshot.semantic import TEXT_FEATURE, text_inputs, with_text

logger = logging.getLogger(__name__)

ZERO_SHOT_TAG = "zero_shot"  # run tag: "true" on a run that predicts classes without training images
STATE_ARTIFACT = f"checkpoint/{HEAD_FILE}"


# ---------------------------------------------------------------- the run


def gzsl_extra(matcher: NameMatcher, seen: np.ndarray, test_rows: pd.DataFrame, label_names, held=()):
    """The zero-shot run's test metrics beyond the stage's (``log_test``'s ``extra``): S / U / H, the unseen
    test products whose name shares no word with their class, and with a hold-out (``held``, class names) U / H
    over the held-out classes alone and U over the stage's own unseen ones."""

    def extra(table, labels, top5) -> dict:
        out = {f"test_{k}": v for k, v in M.gzsl_summary(table).items()}
        out.update({f"test_{k}": v for k, v in held_out_summary(table, held).items()})
        no_word = (
            matcher.no_shared_word(test_rows[TEXT_FIELD], label_names)
            if TEXT_FIELD in test_rows.columns
            else np.ones(len(labels), dtype=bool)
        )
        is_unseen = ~seen[labels] if len(labels) else np.zeros(0, dtype=bool)
        if is_unseen.any():
            slice_ = is_unseen & no_word
            out["test_unseen_share_no_class_word"] = float(slice_.sum() / is_unseen.sum())
            if slice_.any():
                out["test_top1_unseen_no_class_word_micro"] = float((top5[slice_, 0] == labels[slice_]).mean())
        return out

    return extra


def _split_rows(p, sd, name: str) -> pd.DataFrame:
    return stage_rows(p, sd.frame.loc[sd.frame["split"] == name, "id"])


def run_zeroshot(
    cfg: ExperimentConfig,
    p,
    *,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    register: bool = True,
    **_network_only,
) -> str:
    """Fit (on seen classes' training rows), calibrate (on validation), evaluate (on test) and log one GZSL run.

    Args:
        cfg: a metadata-only config with ``zeroshot.enabled`` (validated by ``config.validate``).
        p: the prepared data; the MLflow experiment is already selected.
        parent_run_id: makes this a child run (grid).
        tags: extra run tags.
        register: register the model (metadata model + zero-shot head, a pyfunc) as a version of
            ``fashion-<stage>-zeroshot`` (@best follows the pseudo-unseen validation H).

    Returns:
        The run id.
    """
    import mlflow

    if cfg.fusion.mode != "metadata_only" or not cfg.zeroshot.enabled:
        raise ConfigError("run_zeroshot needs fusion.mode=metadata_only and zeroshot.enabled=true")
    t_start = time.perf_counter()
    # a benchmark no design has seen: classes with training images held out as unseen (zeroshot/holdout.py)
    p, held = holdout_of(p, to_dict(cfg.zeroshot), cfg.stage)
    if held:
        logger.info(f"zero-shot hold-out: {len(held)} classes with training images scored as unseen: {', '.join(held)}")
    classes = candidate_classes(p.splits, cfg.stage)
    sd = build_stage_data(p, cfg.stage, classes=classes)  # unseen classes are labels too, with no training row
    if len(np.unique(sd.train.labels.numpy())) < 2:
        raise ConfigError(f"the {cfg.stage} stage has fewer than two classes with training images")
    rows = {s: _split_rows(p, sd, s) for s in ("train", "val", "test")}
    vocab = MetaVocab.fit(rows["train"], cfg.fusion)
    x = {s: features(vocab, r) for s, r in rows.items()}
    matcher = NameMatcher.build(classes, rows["train"][TEXT_FIELD] if TEXT_FIELD in rows["train"].columns else ())
    phi = {
        s: matcher.features(r[TEXT_FIELD])
        if TEXT_FIELD in r.columns
        else np.zeros((len(r), len(classes), len(FEATURES)), dtype=np.float32)
        for s, r in rows.items()
    }
    y_train, y_val = sd.train.labels.numpy(), sd.val.labels.numpy()
    n = len(classes)
    class_weight = "balanced" if cfg.loss.weights == "inverse" else None
    # word meanings (zeroshot.text): sentence embeddings of the names; the map, if any, is refitted in each fold
    text = text_inputs(cfg.zeroshot, p, cfg.stage, classes, {s: r.index for s, r in rows.items()})
    # The metadata model's C as the metadata-only baseline picks it: validation class-mean over seen classes.
    grid = [cfg.metadata.logreg_c] if cfg.metadata.logreg_c > 0 else list(LOGREG_C_GRID)
    if len(y_val) == 0:
        grid = grid[:1] if cfg.metadata.logreg_c > 0 else [1.0]
    best = None
    for c in grid:
        clf, _ = fit_logreg(x["train"], y_train, c, class_weight, cfg.train.seed)
        v1 = class_mean_accuracy(y_val, top5_of(class_scores(clf, x["val"], n)))[0] if len(y_val) else float("nan")
        logger.info(f"metadata model C={c:g}: val class-mean top-1 (seen classes only) {v1:.4f}")
        if best is None or v1 > best[1]:
            best = (c, v1, clf)
    assert best is not None  # the grid holds at least one C
    c_best = best[0]
    groups = class_groups(rows["train"], y_train, cfg.zeroshot.fold_by)  # whole groups held out together, if set
    gamma, beta, mix, curve = (
        calibrate(
            x["train"],
            phi["train"],
            y_train,
            x["val"],
            phi["val"],
            y_val,
            n,
            c_best,
            class_weight,
            cfg.train.seed,
            text=text,
            groups=groups,
        )
        if len(y_val)
        else (0.0, 0.0, MIXES[0], pd.DataFrame())
    )
    evidence = text.evidence(None, y_train, class_weight == "balanced") if text is not None else None
    if evidence is not None:
        assert text is not None  # the evidence is fitted from text
        phi = {s: with_text(f, evidence, text.emb[s]) for s, f in phi.items()}
    features_used = FEATURES + ((TEXT_FEATURE,) if evidence is not None else ())
    models = fit_models(x["train"], phi["train"], y_train, n, c_best, class_weight, cfg.train.seed, clf=best[2])
    val_scores = model_scores(models, x["val"], phi["val"], gamma, mix, beta)
    val1, val5 = class_mean_accuracy(y_val, top5_of(val_scores)) if len(y_val) else (np.nan, np.nan)
    selection = not scores_test(cfg)  # a selection run scores no test row: `fashion evaluate` does, later, once
    unseen = [classes[i] for i in np.flatnonzero(~models.seen)]
    inputs = vocab.fields + ([TEXT_FIELD] if vocab.text else []) + ["class names"]
    all_tags = {
        "leaky": str(cfg.fusion.leaky).lower(),
        "seed": cfg.train.seed,
        "device": "cpu",
        "transfer": cfg.transfer.method if cfg.stage == "finetune" else "",
        "baseline": BASELINE_TAG,
        "fusion": cfg.fusion.mode,
        "fusion_inputs": ",".join(inputs),
        ZERO_SHOT_TAG: "true",
        **({HOLDOUT_TAG: ",".join(held)} if held else {}),
        **selection_tags(selection),
        **(tags or {}),
    }
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
        logger.info(
            f"{cfg.stage} run {run_id} ({run_name(cfg)}): generalised zero-shot over {n} candidate classes "
            f"({int(models.seen.sum())} seen, {len(unseen)} without training images); C={c_best:g}, mix {mix}, "
            f"gamma={gamma:g}, beta={beta:g}"
        )
        tracking.log_metrics(
            {
                "n_classes": n,
                "n_classes_seen": int(models.seen.sum()),
                "n_train_images": len(sd.train),
                "n_val_images": len(sd.val),
                **({} if selection else {"n_test_images": len(sd.test)}),
                "logreg_c": c_best,
                "zs_gamma": gamma,
                "zs_beta": beta,
                "zs_mix_product": float(mix == "product"),
                **{f"zs_w_{f}": float(v) for f, v in zip(features_used, models.w)},
            }
        )
        if evidence is not None:  # where the sentence encoder came from, like init_* for packaged image weights
            mlflow.set_tags({f"text_encoder_{k}": v for k, v in evidence.source.items()})
            logger.info(
                f"text encoder: {evidence.source.get('package')} {evidence.source.get('version')} "
                f"({evidence.source.get('file')}, sha256 {str(evidence.source.get('sha256'))[:12]}), "
                f"zeroshot.text {cfg.zeroshot.text}, class texts: {cfg.zeroshot.class_template!r}"
            )
            assert text is not None  # the evidence is fitted from text
            mlflow.log_dict(dict(zip(classes, text.texts)), "zeroshot/class_texts.json")
        tracking.log_metrics({"val_top1_mean": val1, "val_top5_mean": val5}, step=0)
        if len(curve):
            at = curve[(curve["gamma"] == gamma) & (curve["beta"] == beta) & (curve["mix"] == mix)]
            at = at[["val_seen", "val_unseen", "val_harmonic"]].mean()
            tracking.log_metrics(
                {
                    "val_pseudo_seen_mean": at["val_seen"],
                    "val_pseudo_unseen_mean": at["val_unseen"],
                    "val_pseudo_harmonic": at["val_harmonic"],
                }
            )
            tracking.log_frame(curve, "zeroshot/calibration.csv")
        mlflow.log_dict({"classes": classes, "unseen": unseen, "test_only": {}}, "classes.json")
        if not selection:
            test_scores = model_scores(models, x["test"], phi["test"], gamma, mix, beta)
            test_metrics = log_test(
                run_id,
                sd,
                test_scores,
                cfg.train.seed,
                gzsl_extra(matcher, models.seen, rows["test"], sd.test_label_names, held),
            )
        # The metadata model's files and the zero-shot head (checkpoint/zeroshot.json), served together as a pyfunc.
        head = ZeroShotHead(matcher, models.w, models.seen, gamma, beta, mix, evidence)
        val_h = float(at["val_harmonic"]) if len(curve) else -1.0
        log_metadata_model(
            models.clf,
            vocab,
            c_best,
            classes,
            registered_name(cfg.stage, "zeroshot") if register else None,
            val_h if val_h == val_h else -1.0,
            extra={HEAD_FILE: head.to_dict(features_used)},
        )
        tracking.log_metrics({"run_seconds": time.perf_counter() - t_start})
        if selection:
            logger.info(deferred_line(cfg.stage, cfg.technique, run_id, val1))
            return run_id
        logger.info(
            f"{cfg.stage} {cfg.technique}: test Top-1 seen S {test_metrics['test_top1_seen_mean']:.4f}  "
            f"unseen U {test_metrics['test_top1_unseen_mean']:.4f}  H {test_metrics['test_top1_harmonic']:.4f}  "
            f"all {test_metrics['test_n_classes_all']} classes {test_metrics['test_top1_mean_all']:.4f}  "
            f"(seen class-mean [{test_metrics['test_top1_mean_lo']:.4f}, {test_metrics['test_top1_mean_hi']:.4f}], "
            f"{test_metrics['test_n_classes_evaluated']} seen classes, {test_metrics['test_n_classes_unseen']} unseen)"
        )
        if held:
            logger.info(
                f"{cfg.stage} {cfg.technique}: the {len(held)} held-out classes U "
                f"{test_metrics['test_top1_unseen_heldout_mean']:.4f}  H {test_metrics['test_top1_harmonic_heldout']:.4f}"
                + (
                    f"; the stage's own unseen classes U {test_metrics['test_top1_unseen_native_mean']:.4f}"
                    if "test_top1_unseen_native_mean" in test_metrics
                    else ""
                )
            )
    return run_id
