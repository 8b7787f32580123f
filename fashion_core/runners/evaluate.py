"""``fashion evaluate RUN``: test scoring as its own step, for a run that deferred it (a selection run,
``test_reads.scores_test``).

``test_reads.log_test`` is the one place a run's test split becomes ``test_*`` metrics, ``eval/`` tables and
the ``configs_read_on_test`` count; every runner calls it at its end, and ``evaluate_run`` calls it later for a
finished run, from the run's logged model (a network's state dict, the metadata model, the zero-shot head, an
ensemble's members and weight). The metrics and tables go to that same run, so ``compare`` reads them as any
other; the tags ``test_scored_by=evaluate`` and ``test_evaluated_commit`` say when and by which code. A run
is evaluated once: a second ``fashion evaluate`` of it is refused.

    fashion evaluate <run id> --data ../shared/data/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import tempfile

import numpy as np

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig
from fashion_core.data.prepared import prepare_data
from fashion_core.data.stage import build_stage_data
from fashion_core.engine.devices import pick_device
from fashion_core.engine.train import predict_scores
from fashion_core.fusion.encoders import TEXT_FIELD
from fashion_core.fusion.metadata_only import class_scores, features
from fashion_core.fusion.modules import FusedNet
from fashion_core.fusion.plan import stage_rows
from fashion_core.runners.ensemble import ENSEMBLE_TAG, FLOOR, member_config, member_scores
from fashion_core.runners.metadata_only import load_metadata_baseline
from fashion_core.runners.zeroshot import STATE_ARTIFACT, ZERO_SHOT_TAG, gzsl_extra
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.references import load_run_model, resolve_model_uri
from fashion_core.tracking.test_reads import SCORED_BY_TAG, already_read, log_test, test_summary
from fashion_core.tracking.versions import git_commit
from fashion_core.zeroshot.head import ZeroShotHead
from fashion_core.zeroshot.holdout import holdout_of
from fashion_core.zeroshot.names import candidate_classes

logger = logging.getLogger(__name__)

EVALUATED_COMMIT_TAG = "test_evaluated_commit"


# ---------------------------------------------------------------- fashion evaluate


def _scores_network(run, p, stage: str, device: str):
    """(stage data, test scores) of a network run, from its logged state dict."""
    import torch

    model, meta = load_run_model(run.info.run_id)
    vocab = model.vocab if isinstance(model, FusedNet) else None
    extras = (lambda prep, rows, classes: vocab.encode(stage_rows(prep, rows["id"]))) if vocab is not None else None
    sd = build_stage_data(p, stage, extras)
    _same_classes(run, sd.classes, meta["classes"])
    dev = pick_device(device)
    model.to(dev)
    torch.manual_seed(0)
    return sd, predict_scores(model, sd.test, dev)


def _scores_metadata(run, p, stage: str):
    clf, vocab, classes = load_metadata_baseline(run.info.run_id)
    sd = build_stage_data(p, stage)
    _same_classes(run, sd.classes, list(classes))
    rows = stage_rows(p, sd.frame.loc[sd.frame["split"] == "test", "id"])
    return sd, class_scores(clf, features(vocab, rows), len(classes))


def _scores_zeroshot(run, p, stage: str, zeroshot: dict):
    """(stage data, test scores, extra-metrics function) of a zero-shot run, from its metadata model and head;
    ``zeroshot`` is its config section (the same classes held out as in its training)."""
    import json

    clf, vocab, classes = load_metadata_baseline(run.info.run_id)
    with tempfile.TemporaryDirectory() as d:
        head = ZeroShotHead.from_dict(
            json.loads(tracking.download_artifact(run.info.run_id, STATE_ARTIFACT, d).read_text())
        )
    p, held = holdout_of(p, zeroshot, stage)
    cands = candidate_classes(p.splits, stage)
    sd = build_stage_data(p, stage, classes=cands)
    _same_classes(run, cands, list(classes))
    rows = stage_rows(p, sd.frame.loc[sd.frame["split"] == "test", "id"])
    names = rows[TEXT_FIELD] if TEXT_FIELD in rows.columns else [""] * len(rows)
    scores = head.scores(class_scores(clf, features(vocab, rows), len(classes)), names)
    return sd, scores, gzsl_extra(head.matcher, head.seen, rows, sd.test_label_names, held)


def _scores_ensemble(run, p, stage: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    members = [client.get_run(i) for i in run.data.tags[ENSEMBLE_TAG].split(",")]
    w = run.data.metrics["ensemble_weight"]
    sd = build_stage_data(p, stage)
    scored = []
    for m in members:
        s = member_scores(m, p, stage, sd, ("test",))
        _same_classes(m, sd.classes, s["classes"])
        scored.append(np.maximum(s["test"], FLOOR))
    return sd, scored[0] + w * scored[1]


def _same_classes(run, expected: list[str], got: list[str]) -> None:
    if list(got) != list(expected):
        raise ConfigError(
            f"run {run.info.run_id} predicts other classes than its stage's {len(expected)} on this "
            "data; was it trained on another split?"
        )


def evaluate_run(spec: str, data: str | None, *, device: str = "auto") -> dict:
    """Score a finished run's test split once, from its logged model, and log it to that run.

    Args:
        spec: the run (run id, ``runs:/``, ``models:/``).
        data: the dataset it was trained on (its digest must match the run's ``dataset_digest``).
        device: where a network predicts.

    Returns:
        The test metrics (with ``configs_read_on_test``).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking.ensure_store()
    run_id = resolve_model_uri(spec)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"{spec}: no run {run_id}; {tracking.store_hint()}") from None
    t = run.data.tags
    if run.info.status != "FINISHED":
        raise ConfigError(f"run {run_id} is {run.info.status}, not FINISHED: only a finished run is evaluated")
    stage = t.get("stage")
    if stage not in ("pretrain", "finetune"):
        raise ConfigError(
            f"run {run_id} is a {stage or 'untagged'} run; fashion evaluate takes a pretrain or finetune run"
        )
    if already_read(run):
        raise ConfigError(
            f"run {run_id} has already scored test ({t.get(SCORED_BY_TAG) or 'at its end'}); "
            "a run reads its test split once"
        )
    config = member_config(run_id)
    base = ExperimentConfig(stage=stage).replace(**{f"data.{k}": v for k, v in (config.get("data") or {}).items()})
    p = prepare_data(data, base.data)
    if p.digest != t.get("dataset_digest"):
        raise ConfigError(
            f"--data gives dataset digest {p.digest}, run {run_id} was trained on "
            f"{t.get('dataset_digest')}: give the dataset it was trained on"
        )
    seed = int(t.get("seed", (config.get("train") or {}).get("seed", 0)))
    extra = None
    if t.get(ENSEMBLE_TAG):
        sd, scores = _scores_ensemble(run, p, stage)
    elif t.get(ZERO_SHOT_TAG) == "true":
        sd, scores, extra = _scores_zeroshot(run, p, stage, config.get("zeroshot") or {})
    elif t.get("baseline") == "metadata_only":
        sd, scores = _scores_metadata(run, p, stage)
    else:
        sd, scores = _scores_network(run, p, stage, device)
    technique = t.get("technique", "")
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    mlflow.start_run(run_id=run_id, log_system_metrics=False)
    try:
        count = "n_test_images" if t.get(ENSEMBLE_TAG) or t.get(ZERO_SHOT_TAG) == "true" else "n_test_images_learnable"
        tracking.log_metrics({count: len(sd.test)})
        metrics = log_test(run_id, sd, scores, seed, extra, by="evaluate")
        mlflow.set_tag(EVALUATED_COMMIT_TAG, git_commit()[0])
    finally:  # the run stays FINISHED whatever happens here: it trained to its end
        mlflow.end_run("FINISHED")
    logger.info(test_summary(stage, technique, metrics, sd.test_only))
    return metrics
