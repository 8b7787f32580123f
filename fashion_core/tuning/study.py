"""The study (pruner, settings, sampler) and the objective: one trial trains on train and reports validation."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig, flatten, to_dict
from fashion_core.data.stage import build_stage_data
from fashion_core.engine.console import prefixed
from fashion_core.engine.devices import pick_device
from fashion_core.engine.train import evaluate, fit
from fashion_core.engine.train import logger as train_logger
from fashion_core.fusion.modules import param_groups
from fashion_core.fusion.plan import plan_stage
from fashion_core.losses import build_criterion
from fashion_core.runners.network import setup_model
from fashion_core.tracking import runs as tracking
from fashion_core.tuning.spaces import SearchSpace, trial_config
from fashion_core.tuning.storage import StudyStorage
from fashion_core.tuning.workers import reap_dead_workers, retried_trial_number, retry_dead_trial, worker_id

if TYPE_CHECKING:  # optuna and torch are imported where used, never at import time
    import optuna

    from fashion_core.data.prepared import Prepared


PRUNER_STARTUP_TRIALS = 5  # median pruning starts once this many trials have completed
# Settings that may differ between the workers of one study (hardware, not the experiment).
WORKER_LOCAL_KEYS = ("train.device", "train.compile")


# ---------------------------------------------------------------- the study


def make_pruner(pruning: bool = True, prune_from: int = 1):
    """Median pruning on per-epoch validation reports, from epoch ``prune_from`` on, once 5 trials completed."""
    import optuna

    if not pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=prune_from)


def study_settings(
    space: SearchSpace, base: ExperimentConfig, digest: str, source_run_id: str | None = None
) -> dict[str, Any]:
    """What every worker of a study must agree on (kept in the study's user attrs)."""
    config = {k: v for k, v in flatten(to_dict(base)).items() if k not in WORKER_LOCAL_KEYS}
    settings = {
        "space": space.name,
        "stage": space.stage,
        "objective": space.objective,
        "params": {p.name: p.to_dict() for p in space.params},
        "config": config,
        "dataset_digest": digest,
        "source_run_id": source_run_id,
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    settings["fingerprint"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return settings


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = []
    for key in ("space", "stage", "objective", "dataset_digest", "source_run_id", "params"):
        if old.get(key) != new.get(key):
            out.append(key)
    oc, nc = old.get("config", {}), new.get("config", {})
    out += [f"{k} ({oc.get(k)!r} -> {nc.get(k)!r})" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
    return out


def open_study(
    storage: StudyStorage,
    study_name: str,
    settings: Mapping[str, Any],
    *,
    seed: int | None = 0,
    pruner=None,
    metric_name: str | None = None,
):
    """Create the study or load it (``load_if_exists``), and check the workers agree on its settings.

    ``metric_name`` (the space's objective, e.g. ``val_top1_mean``) names the value for optuna-dashboard,
    which otherwise labels its axes "Objective 0".

    The sampler's seed is ``seed`` plus the number of trials already in the study, so a resumed
    invocation does not replay the random start-up points of the first one.
    """
    import optuna

    study = optuna.create_study(
        storage=storage.storage, study_name=study_name, direction="maximize", load_if_exists=True, pruner=pruner
    )
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", dict(settings))
    elif stored.get("fingerprint") != settings["fingerprint"]:
        diff = _settings_diff(stored, settings)
        raise ConfigError(
            f"study {study_name!r} in {storage.display} was created with other settings "
            f"({'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}); pass the same space, profile and "
            "overrides, or choose another --study-name"
        )
    if metric_name and study.metric_names != [metric_name]:
        import warnings

        with warnings.catch_warnings():  # set_metric_names is marked experimental
            warnings.simplefilter("ignore")
            study.set_metric_names([metric_name])
    if seed is not None:
        seed = seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    return study


# ---------------------------------------------------------------- the objective


class Objective:
    """One trial: sample, train on train, report validation every epoch, return the objective.

    A trial builds its model, loss and optimizer groups as ``runners.stage.run_stage`` does, so the
    final run of the best trial's config reproduces it.

    Args:
        space: the search space.
        base: the base config (``base_config``).
        prepared: validation-only prepared data (``without_test``): the test split is not in it.
        digest: the dataset digest tagged on every run.
        parent_run_id: the invocation's ``stage=tune`` run.
        storage: the study's storage (journal files are checked for dead workers before each trial).
        source: finetune spaces: the pretrained (model, meta); each trial gets its own copy.
    """

    def __init__(
        self,
        space: SearchSpace,
        base: ExperimentConfig,
        prepared: Prepared,
        digest: str,
        parent_run_id: str,
        storage: StudyStorage,
        study_name: str,
        source: tuple | None = None,
    ):
        if (prepared.splits["split"] == "test").any():
            raise ValueError("the objective takes validation-only prepared data (see without_test)")
        self.space, self.base, self.prepared, self.digest = space, base, prepared, digest
        self.parent_run_id, self.storage, self.study_name = parent_run_id, storage, study_name
        self.source = source
        self._stage_cache: tuple[str, Any] | None = None

    def stage(self, cfg: ExperimentConfig):
        """(config, fusion plan, stage data) of a trial config; rebuilt only when its fusion settings change.

        Raises:
            ConfigError: no training or no validation images.
        """
        key = json.dumps(to_dict(cfg.fusion), sort_keys=True)
        if self._stage_cache is None or self._stage_cache[0] != key:
            self._stage_cache = None  # free the old tensors before gathering new ones
            planned, plan = plan_stage(cfg, self.prepared, self.source)
            sd = build_stage_data(self.prepared, cfg.stage, plan.extras if plan is not None else None)
            if len(sd.val) == 0:
                raise ConfigError(
                    "tuning needs a validation split: data.val_fraction must be > 0, or data.val_by=year "
                    "with a held-out year that has this stage's products"
                )
            if len(sd.train) == 0:
                raise ConfigError(f"the {cfg.stage} stage has no training images with these split settings")
            self._stage_cache = (key, (planned.fusion, plan, sd))
        planned_fusion, plan, sd = self._stage_cache[1]
        # the encoder settings really used (from a fused source run they carry over), as run_stage logs them
        return dataclasses.replace(cfg, fusion=planned_fusion), plan, sd

    def __call__(self, trial: optuna.Trial) -> float:
        import mlflow
        import optuna

        reap_dead_workers(trial.study, self.storage)
        params = self.space.sample(trial)
        cfg, plan, sd = self.stage(trial_config(self.base, params))
        for key, attr in (
            ("worker", worker_id()),
            ("worker_trial", trial.number),
            ("mlflow_parent_run_id", self.parent_run_id),
        ):
            trial.set_user_attr(key, attr)
        tags = {
            "optuna_study": self.study_name,
            "optuna_trial": trial.number,
            "search_space": self.space.name,
            "tuned_stage": self.space.stage,
            "tune_role": "trial",
            "seed": cfg.train.seed,
        }
        retried = retried_trial_number(_frozen(trial))
        if retried is not None:
            tags["retry_of_trial"] = retried
        state, pruned = "failed", None
        name = f"{self.study_name}/trial-{trial.number}"
        with tracking.start_run(
            "tune",
            self.space.name,
            self.digest,
            run_name=name,
            config=to_dict(cfg),
            tags=tags,
            nested=True,
            parent_run_id=self.parent_run_id,
        ) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                value = self._train(trial, cfg, plan, sd)
                state = "complete" if not math.isnan(value) else "failed"
            except optuna.TrialPruned as e:
                state, pruned = "pruned", e
            except KeyboardInterrupt:
                # A stopped worker (Ctrl-C, SIGTERM): the trial never got a fair evaluation; queue it again.
                retry_dead_trial(trial.study, _frozen(trial), why="interrupted", close_runs=False)
                raise
            finally:
                mlflow.set_tag("trial_state", state)
        if pruned is not None:
            raise pruned
        return value

    def _train(self, trial, cfg: ExperimentConfig, plan, sd) -> float:
        """Train one config; report the objective per epoch; prune when the pruner says so."""
        import optuna
        import torch

        device = pick_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)  # the same initial weights as run_stage gives this config (--final)
        source = copy.deepcopy(self.source) if self.source is not None else None
        model, policy, lr_mult = setup_model(cfg, sd, source, device, plan=plan)
        criterion = build_criterion(cfg, sd.n_train)
        tracking.log_metrics(
            {"n_classes": len(sd.classes), "n_train_images": len(sd.train), "n_val_images": len(sd.val)}
        )
        model.to(device)
        key = self.space.objective
        if not policy.train:  # imprint / ncm: nothing to train, the head is the result
            v = {f"val_{k}": x for k, x in evaluate(model, sd.val, device, criterion).items()}
            tracking.log_metrics(v, step=0)
            trial.report(v[key], 0)
            return float(v[key])

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracking.log_metrics(metrics, step=epoch)
            trial.report(float(metrics[key]), epoch)
            # after the last epoch nothing is left to save: keep the result instead of pruning it
            if epoch < cfg.train.epochs and trial.should_prune():
                tracking.log_metrics({"pruned_at_epoch": epoch})
                raise optuna.TrialPruned(
                    f"{key} {metrics[key]:.4f} at epoch {epoch} is below the median of earlier trials"
                )

        groups = param_groups(model, cfg.train.lr, lr_mult, cfg.train.weight_decay)
        with prefixed(f"trial {trial.number}: ", train_logger):  # the epoch lines say which trial they are of
            result = fit(model, sd.train, sd.val, criterion, groups, cfg.train, device, on_epoch=on_epoch)
        best = result.history[result.best_epoch - 1] if result.best_epoch else {}
        value = float(result.best_val if key == "val_top1_mean" else best.get(key, float("nan")))
        tracking.log_metrics({"best_epoch": result.best_epoch, "epochs_run": len(result.history), "objective": value})
        return value


def _frozen(trial):
    """The FrozenTrial of a running trial (for the retry callback)."""
    for t in trial.study.get_trials(deepcopy=True):
        if t.number == trial.number:
            return t
    raise KeyError(trial.number)
