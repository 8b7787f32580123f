"""The ``pretrain`` and ``finetune`` stages: one technique config -> one MLflow run.

A run: prepare the data (same split and digest as ``prepare``), build the model (or take
the pretrained one and apply ``transfer.method``), train with validation selection, evaluate
once on test, and log config, per-epoch metrics, ``eval/`` artifacts, checkpoints and the model.

    fashion pretrain --technique baseline --profile quick --data /path/to/fashion-product-images-small.tar.gz
    fashion finetune --technique finetune --from latest --profile quick
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import cast

import numpy as np
import torch

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig, to_dict
from fashion_core.data.loader import TensorData, batches, to_float
from fashion_core.data.prepared import Prepared, without_test
from fashion_core.data.sources import cache_root
from fashion_core.data.stage import ExtrasFn, StageData, build_stage_data
from fashion_core.engine import distributed
from fashion_core.engine.devices import pick_device, to_preferred_layout
from fashion_core.engine.train import FitResult, evaluate, fit, load_checkpoint, load_error, predict_scores
from fashion_core.fusion.meta import model_meta
from fashion_core.fusion.modules import param_groups, reads_metadata
from fashion_core.fusion.plan import FusionPlan, plan_stage, run_tags
from fashion_core.losses import build_criterion
from fashion_core.models.heads import NCMHead, imprint_weights
from fashion_core.models.network import PRETRAIN_POLICY, FashionNet, TransferPolicy, build_model, transfer_policy
from fashion_core.runners.prepare import log_dataset_input
from fashion_core.serving.predict import ServingModel, log_product_model, registered_name, set_best_alias
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.references import SourceError, load_run_model, resolve_source
from fashion_core.tracking.runs import run_name
from fashion_core.tracking.split_check import check_source_split
from fashion_core.tracking.test_reads import deferred_line, log_test, scores_test, selection_tags, test_summary

logger = logging.getLogger(__name__)

LAST_ARTIFACT = "checkpoint/last.pt"


# ---------------------------------------------------------------- the run


@torch.no_grad()
def embed(model: FashionNet, data: TensorData, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Embeddings of every item, unaugmented."""
    model.eval()
    cl = to_preferred_layout(model, device)
    out = [
        model.forward_features(to_float(b["image"], cl), b).float().cpu()
        for b in batches(data, batch_size, shuffle=False, device=device)
    ]
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


def setup_model(
    cfg: ExperimentConfig,
    sd: StageData,
    source: tuple[FashionNet, dict] | None,
    device: torch.device,
    plan: FusionPlan | None = None,
) -> tuple[FashionNet, TransferPolicy, float]:
    """The model a stage trains, its transfer policy, and the backbone lr multiplier.

    With a fusion ``plan`` the model is a ``fusion.FusedNet``: the heads (and imprinting / NCM) see the
    fused embedding; from a source, its metadata encoders carry over and the auxiliary heads are new.
    """
    n = len(sd.classes)
    if cfg.stage == "pretrain":
        mult = cfg.transfer.init_lr_mult if cfg.model.init != "scratch" else 1.0
        return _new_model(cfg, n, plan), PRETRAIN_POLICY, mult
    policy = transfer_policy(cfg.transfer.method)
    if not policy.pretrained or source is None:
        if source is None and policy.pretrained:
            raise SourceError(f"transfer.method={cfg.transfer.method} needs --from (a pretrain run)")
        return _new_model(cfg, n, plan), policy, 1.0
    model, meta = source
    if plan is not None:
        model = plan.adapt(model)
    # The backbone (architecture and weights) comes from the source run; only the head is new.
    head = policy.head or cfg.model.head
    if head == "ncm":
        model.to(device)
        feats = embed(model, sd.train, device)
        model.set_head(NCMHead.from_features(feats, sd.train.labels, n))
    elif policy.imprint:
        model.to(device)
        feats = embed(model, sd.train, device)
        imprint_weights(model, feats, sd.train.labels, n)
    else:
        model.reset_head(n, head)
    model.set_trainable(policy.trainable)
    mult = cfg.transfer.backbone_lr_mult if policy.lr_mult else 1.0
    return model, policy, mult


def _new_model(cfg: ExperimentConfig, n: int, plan: FusionPlan | None) -> FashionNet:
    """A fresh model: fused when the stage has a fusion plan."""
    return plan.new_model(cfg.model, n) if plan is not None else build_model(cfg.model, n)


def _checkpoint_meta(model: FashionNet, cfg: ExperimentConfig, classes: list[str], extra: dict | None = None) -> dict:
    """What ``model.json`` holds: enough to rebuild the network (``model_from_checkpoint``)."""
    return {
        "model": to_dict(cfg.model),
        "classes": classes,
        "height": cfg.data.height,
        "width": cfg.data.width,
        "head_kind": model.head_kind,
        "fusion": to_dict(cfg.fusion),
        **model_meta(model),
        **(extra or {}),
    }


def _write_checkpoint(model: FashionNet, meta: dict, folder: Path) -> None:
    torch.save(model.state_dict(), folder / "model_state.pt")
    (folder / "model.json").write_text(json.dumps(meta, indent=1))


def _log_state(model: FashionNet, cfg: ExperimentConfig, classes: list[str], extra: dict | None = None) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as d:
        _write_checkpoint(model, _checkpoint_meta(model, cfg, classes, extra), Path(d))
        mlflow.log_artifacts(d, "checkpoint")


def _log_init(report: dict | None) -> None:
    """Where a new network's initial weights came from: ``init/report.json`` and, for packaged ImageNet
    weights, the tags ``init_package``, ``init_version``, ``init_file``, ``init_sha256``."""
    import mlflow

    if not report:
        return
    mlflow.log_dict(report, "init/report.json")
    source = report.get("source") or {}
    if source:
        mlflow.set_tags({f"init_{k}": v for k, v in source.items()})
        logger.info(
            f"initial weights: {source['package']} {source['version']} ({source['file']}, sha256 {source['sha256'][:12]}), "
            f"{len(report['loaded'])} tensors"
        )


def _log_missing_epochs(run_id: str, history: list[dict]) -> None:
    """On --resume: log the epochs the checkpoint holds but the killed run did not (a signal between the
    per-epoch checkpoint and its metrics), so the run's curves have every epoch once."""
    from mlflow.tracking import MlflowClient

    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")}
    for h in history:
        if int(h["epoch"]) not in logged:
            tracking.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]))


def _log_last(ckpt_path: Path) -> None:
    """The resumable training checkpoint as ``checkpoint/last.pt``."""
    import shutil

    import mlflow

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(ckpt_path, Path(d) / "last.pt")
        mlflow.log_artifact(str(Path(d) / "last.pt"), "checkpoint")


def _log_mlflow_model(
    model: FashionNet, cfg: ExperimentConfig, classes: list[str], register: str | None, val_score: float
) -> None:
    """The run's MLflow model: ``mlflow.pytorch`` of a serving wrapper (uint8 NHWC in, probabilities out) for an
    image network; a pyfunc (photo bytes + catalogue fields in) for a fused one (``serving.log_product_model``)."""
    import mlflow

    if reads_metadata(model):
        with tempfile.TemporaryDirectory() as d:
            _write_checkpoint(model, _checkpoint_meta(model, cfg, classes), Path(d))
            log_product_model(d, register, val_score)
        return
    serving = ServingModel(model.cpu().eval(), classes)
    example = np.full((1, cfg.data.height, cfg.data.width, 3), 255, dtype=np.uint8)
    # pt2 (torch.export) always: MLflow's default turns to pickle on Databricks, and a pickled model
    # runs code when `mlflow models serve` / mlflow.pytorch.load_model opens it.
    info = mlflow.pytorch.log_model(
        serving,
        name="model",
        input_example=example,
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        registered_model_name=register,
    )
    mlflow.log_dict({"classes": classes}, "model_classes.json")
    if register and info.registered_model_version is not None:
        set_best_alias(register, str(info.registered_model_version), val_score)


def _run_on_main(env: distributed.DistEnv, cfg: ExperimentConfig, p: Prepared, **start) -> AbstractContextManager:
    """Rank 0: the stage's MLflow run (``tracking.start_run``); ranks > 0: a context that yields None and tracks
    nothing (torchvision's ``save_on_master`` idea: every rank runs the same code, one of them records it)."""
    if not env.is_main:
        return nullcontext(None)
    return tracking.start_run(cfg.stage, cfg.technique, p.digest, run_name=run_name(cfg), config=to_dict(cfg), **start)


def _log_sizes(model: FashionNet, sd: StageData, criterion, selection: bool) -> None:
    """The data and model sizes (metrics) and the classes and their loss weights (``classes.json``)."""
    import mlflow

    tracking.log_metrics(
        {
            "n_classes": len(sd.classes),
            "n_train_images": len(sd.train),
            "n_val_images": len(sd.val),
            **({} if selection else {"n_test_images_learnable": len(sd.test)}),
            "n_params": sum(p_.numel() for p_ in model.parameters()),
            "n_trainable_params": sum(p_.numel() for p_ in model.parameters() if p_.requires_grad),
        }
    )
    mlflow.log_dict(
        {
            "classes": sd.classes,
            "test_only": sd.test_only,
            "class_weight": criterion.loss.class_weight.tolist()
            if getattr(criterion.loss, "class_weight", None) is not None
            else None,
        },
        "classes.json",
    )


def _resume_state(resume: str) -> dict:
    """The training checkpoint (``checkpoint/last.pt``) of the run ``--resume`` continues."""
    with tempfile.TemporaryDirectory() as d:
        try:
            return load_checkpoint(tracking.download_artifact(resume, LAST_ARTIFACT, d))
        except Exception as e:
            raise SourceError(f"--resume {resume}: no loadable {LAST_ARTIFACT} in that run ({load_error(e)})") from None


def _stage_tags(
    cfg: ExperimentConfig,
    env: distributed.DistEnv,
    device: torch.device,
    tags: dict | None,
    src_run: str | None,
    split_tags: dict,
    plan: FusionPlan | None,
    selection: bool,
) -> dict:
    """The run's tags beyond ``tracking.start_run``'s own: seed, device, transfer, the process group, the source run
    (and a mismatched split), the fusion inputs and whether it is a selection run."""
    all_tags = {
        "leaky": str(cfg.fusion.leaky).lower(),
        "seed": cfg.train.seed,
        "device": device.type,
        "transfer": cfg.transfer.method if cfg.stage == "finetune" else "",
        **(tags or {}),
    }
    if env.active:
        all_tags.update({"world_size": env.world_size, "ddp_backend": env.backend})
    if src_run:
        all_tags["source_run_id"] = src_run
        all_tags.update(split_tags)
    all_tags.update(run_tags(cfg, plan))
    all_tags.update(selection_tags(selection))
    return all_tags


def _select(model: FashionNet, result: FitResult | None, sd: StageData, device: torch.device, criterion) -> float:
    """Rank 0 after training: load the selected weights and log how they were chosen; without training (a frozen
    transfer), score validation once. Returns the validation class-mean top-1 (NaN without validation)."""
    import mlflow

    if result is None:
        v = evaluate(model, sd.val, device, criterion) if len(sd.val) else {}
        tracking.log_metrics({f"val_{k}": x for k, x in v.items()}, step=0)
        return v.get("top1_mean", float("nan"))
    model.load_state_dict(result.best_state)
    tracking.log_metrics({"best_epoch": result.best_epoch, "epochs_run": len(result.history)})
    mlflow.set_tag("selection", result.selection)
    if result.selection != "val_top1_mean":
        logger.info(
            f"no validation images: kept the weights of the last epoch ({result.best_epoch}), "
            f"tagged selection={result.selection}"
        )
    return result.best_val


def _source_of(
    cfg: ExperimentConfig,
    p: Prepared,
    source: str | None,
    experiment: str | None,
    allow_split_mismatch: bool,
    env: distributed.DistEnv,
) -> tuple[ExperimentConfig, str | None, tuple[FashionNet, dict] | None, dict]:
    """A finetune's source run and network (its architecture replaces the config's), and the split tags a
    mismatched source adds; nothing for a pretrain or a transfer that starts from no pretrained run."""
    if cfg.stage != "finetune" or not transfer_policy(cfg.transfer.method).pretrained:
        return cfg, None, None, {}
    if not source:
        raise SourceError(
            f"finetune with transfer.method={cfg.transfer.method} needs --from "
            "(a pretrain run id, runs:/ or models:/ URI, or latest)"
        )
    # rank 0's run id, a str on every rank once broadcast
    src_run = cast(str, env.broadcast_object(resolve_source(source, experiment) if env.is_main else None))
    split_tags: dict = {}
    if env.is_main:  # a source of another split: its trunk saw this run's validation (or test) images
        split_tags = check_source_split(src_run, p.digest, cfg.data, allow_split_mismatch)
    src_model = load_run_model(src_run)
    cfg = cfg.replace(**{f"model.{k}": v for k, v in src_model[1]["model"].items() if k != "init"})
    return cfg, src_run, src_model, split_tags


def run_network(
    cfg: ExperimentConfig,
    p: Prepared,
    *,
    source: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    register: bool = True,
    resume: str | None = None,
    extras_fn: ExtrasFn | None = None,
    allow_split_mismatch: bool = False,
    env: distributed.DistEnv | None = None,
    started: float | None = None,
) -> str:
    """Train, select (on validation) and log one network of a stage as an MLflow run; return its run id.

    Under ``torchrun`` (see ``engine.distributed``) every rank runs this same code (model, loss, ``fit``); rank 0
    alone talks to MLflow (the run, its metrics, checkpoints, test, the model) and returns the run id, the other
    ranks return "" once ``fit`` is done. ``runners.stage.run_stage`` prepares the data and calls this for a
    network technique.

    Args:
        cfg: the resolved experiment config (its ``stage`` says which stage).
        p: the prepared data.
        source: finetune only: ``--from`` (run id, runs:/, models:/ or latest).
        parent_run_id: makes this a child run (grid, tune).
        resume: a run id whose ``checkpoint/last.pt`` to continue (same config).
        allow_split_mismatch: accept a ``--from`` source of another split (tagged on the run).
        env: the process group (one process when None).
        started: ``time.perf_counter()`` when the run's work began (the ``run_seconds`` metric).

    A selection run (``test_reads.scores_test`` false: the year-held-out validation) scores no test:
    ``fashion evaluate RUN`` does, later, once.
    """
    t_start = started if started is not None else time.perf_counter()
    env = env or distributed.init_from_env(cfg.train.device)
    main = env.is_main  # rank 0 alone talks to MLflow, writes files and scores test (run_stage silences the others)
    cfg, src_run, src_model, split_tags = _source_of(cfg, p, source, experiment, allow_split_mismatch, env)
    cfg, plan = plan_stage(cfg, p, src_model)  # metadata encoders and auxiliary heads, if any
    if plan is not None:
        extras_fn = plan.chain(extras_fn)
    device = env.device_for(pick_device(cfg.train.device))
    torch.manual_seed(cfg.train.seed)
    selection = not scores_test(cfg)
    # A selection run never gathers a test image or label: `fashion evaluate` scores its test split later, once.
    sd = build_stage_data(without_test(p) if selection else p, cfg.stage, extras_fn)
    if len(sd.train) == 0:
        raise ConfigError(f"the {cfg.stage} stage has no training images with these split settings")
    resume_state = _resume_state(resume) if resume else None
    all_tags = _stage_tags(cfg, env, device, tags, src_run, split_tags, plan, selection)
    ckpt_dir = cache_root() / "checkpoints"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    with _run_on_main(
        env,
        cfg,
        p,
        tags=all_tags,
        description=cfg.description or None,
        parent_run_id=parent_run_id,
        run_id=resume,
    ) as run:
        run_id = run.info.run_id if main else ""
        ckpt_path = ckpt_dir / f"{run_id}.pt" if main else None
        if main:
            log_dataset_input(p, cfg.stage)  # the runs table's Dataset column
            if resume_state is not None:
                _log_missing_epochs(run_id, resume_state["history"])
        logger.info(
            f"{cfg.stage} run {run_id} ({run_name(cfg)}): {len(sd.classes)} classes, "
            f"{len(sd.train)} train / {len(sd.val)} val / "
            + ("test deferred (selection run)" if selection else f"{len(sd.test)} test images")
            + f", device {device}"
        )
        # Every rank builds the same model and loss and trains it through the same fit (DDP keeps them in step).
        model, policy, lr_mult = setup_model(cfg, sd, src_model, device, plan=plan)
        if main:
            _log_init(getattr(model, "init_report", None) if cfg.stage == "pretrain" or not src_run else None)
        criterion = build_criterion(cfg, sd.n_train)
        if main:
            _log_sizes(model, sd, criterion, selection)
        model.to(device)
        try:
            result = None
            if policy.train:
                groups = param_groups(model, cfg.train.lr, lr_mult, cfg.train.weight_decay)
                result = fit(
                    model,
                    sd.train,
                    sd.val,
                    criterion,
                    groups,
                    cfg.train,
                    device,
                    on_epoch=(lambda e, m: tracking.log_metrics(m, step=e)) if main else None,
                    checkpoint_path=ckpt_path,
                    resume=resume_state,
                    dist=env,
                )
            if not main:
                # fit's collectives are the run's last: what follows (selection, test, checkpoints, the model)
                # is rank 0's alone and must stay free of them.
                return ""
            val_score = _select(model, result, sd, device, criterion)
        except KeyboardInterrupt:
            if ckpt_path is not None and ckpt_path.is_file():
                _log_last(ckpt_path)
                logger.info(
                    f"interrupted: last checkpoint logged to run {run_id} as {LAST_ARTIFACT}; "
                    f"continue with --resume {run_id}"
                )
            raise
        if not selection:
            test_metrics = log_test(run_id, sd, predict_scores(model, sd.test, device), cfg.train.seed)
        _log_state(model, cfg, sd.classes, {"source_run_id": src_run})
        if ckpt_path is not None and ckpt_path.is_file():
            _log_last(ckpt_path)
            ckpt_path.unlink(missing_ok=True)
        inputs = "image+metadata" if reads_metadata(model) else "image"
        _log_mlflow_model(
            model,
            cfg,
            sd.classes,
            registered_name(cfg.stage, inputs) if register else None,
            val_score if val_score == val_score else -1.0,
        )
        tracking.log_metrics({"run_seconds": time.perf_counter() - t_start})
        logger.info(
            test_summary(cfg.stage, cfg.technique, test_metrics, sd.test_only)
            if not selection
            else deferred_line(cfg.stage, cfg.technique, run_id, val_score)
        )
        return run_id
