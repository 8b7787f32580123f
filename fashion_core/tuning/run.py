"""The invocations: ``run_tune`` (a parent run of trials), its summary, and ``final_run`` (the selected config, read on test)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig, flatten, load_experiment, to_dict
from fashion_core.data.prepared import prepare_data, without_test
from fashion_core.models.network import transfer_policy
from fashion_core.runners.stage import run_stage
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.references import load_run_model, resolve_source
from fashion_core.tracking.split_check import check_source_split
from fashion_core.tuning.spaces import SearchSpace, base_config, best_config_yaml, trial_config
from fashion_core.tuning.storage import DEFAULT_STORAGE, StudyStorage, check_storage_url, open_storage
from fashion_core.tuning.study import Objective, make_pruner, open_study, study_settings
from fashion_core.tuning.workers import reap_dead_workers, retry_dead_trial, worker_id

if TYPE_CHECKING:  # optuna and torch are imported where used, never at import time
    from fashion_core.data.prepared import Prepared

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- the parent run's summary


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's figure helpers warn about small studies (one value of a choice, equal importances): not news here."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(level)


def log_study_summary(study, space: SearchSpace, header: str = "") -> dict[str, Any]:
    """On the active parent run: Optuna's figures, the trials table, counts and the best configuration.

    Returns:
        ``{"best_value", "best_trial", "best_params", "best_yaml", "counts"}`` (best_* None without a complete trial).
    """
    import mlflow
    import optuna.visualization as vis
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    tracking.log_metrics(
        {
            "n_trials": len(trials),
            "n_complete": counts["complete"],
            "n_pruned": counts["pruned"],
            "n_failed": counts["fail"],
        }
    )
    if trials:
        tracking.log_frame(study.trials_dataframe(), "tune/trials.csv")
    figures: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: vis.plot_optimization_history(study),
        "intermediate_values": lambda: vis.plot_intermediate_values(study),
        "param_importances": lambda: vis.plot_param_importances(study),
        "slice": lambda: vis.plot_slice(study),
    }
    names = space.param_names
    if len(names) >= 2:  # the space's first two parameters against each other (focal_weights: gamma x scheme)
        figures[f"contour_{names[0]}_x_{names[1]}"] = lambda: vis.plot_contour(study, params=names[:2])
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for name, make in figures.items():
        try:
            with _quiet_optuna():
                fig = make()
        except Exception as e:  # a figure is never worth losing the summary (importances need 2+ complete trials)
            logger.info(f"figure {name} skipped: {e}")
            continue
        tracking.log_figure_html(fig, f"tune/figures/{name}.html")
    out: dict[str, Any] = {
        "best_value": None,
        "best_trial": None,
        "best_params": None,
        "best_yaml": None,
        "counts": counts,
    }
    if done:
        best = study.best_trial
        note = (
            f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, "
            f"validation {space.objective} {best.value:.4f}."
        )
        text = best_config_yaml(space, best.params, note, header)
        mlflow.log_text(text, f"tune/best/{space.name}.yaml")
        mlflow.set_tags({"best_trial": best.number, "best_params": json.dumps(best.params)})
        tracking.log_metrics({"best_value": best.value})
        out.update(best_value=best.value, best_trial=best.number, best_params=dict(best.params), best_yaml=text)
    return out


# ---------------------------------------------------------------- invocations


@dataclass
class TuneResult:
    """What one ``fashion tune`` invocation did."""

    study_name: str
    storage: str  # masked URL
    dashboard: str = ""  # the optuna-dashboard command
    parent_run_id: str | None = None
    final_run_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] | None = None
    best_yaml: str | None = None
    seconds: float = 0.0


def _header(study_name: str, storage: StudyStorage, profile: str, overrides: Mapping[str, Any]) -> str:
    opts = " ".join(f"-o {k}={v}" for k, v in overrides.items())
    return (
        f"Best configuration of Optuna study {study_name!r} ({storage.display}).\n"
        f"Trained in the study with: --profile {profile} {opts}".rstrip()
        + "\n"
        "Save as experiments/<stage>/<name>.yaml and run it with the same --profile and -o options."
    )


def check_space_config(space: SearchSpace, base: ExperimentConfig) -> None:
    """Each searched value on the profiled base config: a value the profile refuses is an error before any study.

    Ranges are checked at both ends and every choice once, each alone on the base (a trial combines them; the
    checks of a config are per key, so the ends cover what a trial can draw).
    """
    for param in space.params:
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        for value in values:
            try:
                trial_config(base, {param.name: value})
            except ConfigError as e:
                raise ConfigError(
                    f"{space.path}: {param.name}={value!r} with this profile and these overrides: {e}"
                ) from None


def run_tune(
    space: SearchSpace,
    data: str | None,
    *,
    profile: str = "default",
    overrides: Mapping[str, Any] | None = None,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    n_trials: int = 20,
    timeout: float | None = None,
    seed: int | None = 0,
    pruning: bool = True,
    prune_from: int = 1,
    heartbeat: int = 60,
    experiment: str | None = None,
    create_only: bool = False,
    final: bool = False,
    source: str | None = "latest",
    prepared: Prepared | None = None,
    pruner=None,
    catch: tuple[type[BaseException], ...] = (RuntimeError,),
    allow_split_mismatch: bool = False,
) -> TuneResult:
    """One ``fashion tune`` invocation: a worker of a study, and optionally its final run.

    Args:
        space: a loaded search space.
        data: the ``--data`` value.
        profile, overrides: applied to the base technique (the same for every worker; checked).
        study_name: default: the space's name.
        storage: an Optuna storage URL (see ``open_storage``).
        n_trials: trials this invocation runs (0: none).
        timeout: stop starting trials after this many seconds (None: no limit).
        seed: sampler seed (offset by the trials already in the study); None: random.
        pruning, prune_from: median pruning on per-epoch validation, from this epoch on.
        heartbeat: RDB storages: heartbeat seconds; a trial silent for twice this is failed and retried.
        create_only: create the storage, the study and the MLflow experiment, then return.
        final: afterwards, train the best configuration as a normal run tagged ``selected=true`` (reads test once).
        source: finetune spaces: the pretrained model (run id, runs:/, models:/ or latest).
        prepared: reuse prepared data.
        pruner: an Optuna pruner instead of ``make_pruner(pruning, prune_from)``.
        catch: trial exceptions that fail the trial without stopping the worker (e.g. out of memory).
        allow_split_mismatch: accept a ``source`` trained on another split (``split_check``; tagged).
    Returns:
        TuneResult.
    """
    import optuna

    t0 = time.perf_counter()
    check_storage_url(storage)  # a typo is an error before any data is read or any run starts
    overrides = dict(overrides or {})
    study_name = study_name or space.name
    base = base_config(space, profile, overrides)  # space, profile and overrides: checked before any data or study
    if base.fusion.mode == "metadata_only":
        raise ConfigError(f"{space.base_path}: the metadata-only baseline trains no network; nothing to tune here")
    check_space_config(space, base)
    p = prepared or prepare_data(data, base.data)
    experiment = experiment or tracking.experiment_name_for(p.root)
    tracking.set_experiment(experiment)
    src_run, src_model = None, None
    split_tags: dict = {}
    if space.stage == "finetune":
        if transfer_policy(base.transfer.method).pretrained:
            src_run = resolve_source(source or "latest", experiment)
            split_tags = check_source_split(src_run, p.digest, base.data, allow_split_mismatch)
            src_model = load_run_model(src_run)
            # The architecture comes from the pretrained run, as in run_stage.
            base = base.replace(**{f"model.{k}": v for k, v in src_model[1]["model"].items() if k != "init"})
    settings = study_settings(space, base, p.digest, src_run)
    st = open_storage(storage, heartbeat, on_dead_trial=lambda s, t: retry_dead_trial(s, t))
    study = open_study(
        st,
        study_name,
        settings,
        seed=seed,
        pruner=pruner or make_pruner(pruning, prune_from),
        metric_name=space.objective,
    )
    result = TuneResult(study_name=study_name, storage=st.display, dashboard=st.dashboard)
    n_before = len(study.get_trials(deepcopy=False))
    logger.info(f"study {study_name!r} in {st.display}: {n_before} trial(s) so far; MLflow experiment {experiment!r}")
    if create_only:
        return result
    if n_trials > 0:
        reap_dead_workers(study, st)
        objective = Objective(space, base, without_test(p), p.digest, "", st, study_name, src_model)
        objective.stage(base)  # gathers the images once; no data is an error before the parent run starts
        tags = {
            "optuna_study": study_name,
            "optuna_storage": st.display,
            "search_space": space.name,
            "tuned_stage": space.stage,
            "tune_role": "study",
            "base_technique": space.base_path.stem,
            "profile": profile,
            "worker": worker_id(),
        }
        if src_run:
            tags["source_run_id"] = src_run
            tags.update(split_tags)
        with tracking.start_run(
            "tune",
            space.name,
            p.digest,
            run_name=f"tune/{study_name}",
            config=to_dict(base),
            tags=tags,
            description=space.description or None,
        ) as parent:
            import mlflow

            result.parent_run_id = parent.info.run_id
            mlflow.log_params(
                {
                    "tune.n_trials": n_trials,
                    "tune.timeout": timeout,
                    "tune.sampler_seed": seed,
                    "tune.pruning": pruning,
                    "tune.prune_from": prune_from,
                    "tune.objective": space.objective,
                }
            )
            mlflow.log_text(space.path.read_text(), "tune/search_space.yaml")
            objective.parent_run_id = result.parent_run_id

            def progress(study_, trial) -> None:
                best = ""
                with contextlib.suppress(ValueError):
                    best = f"; best {study_.best_value:.4f} (trial {study_.best_trial.number})"
                value = f" {trial.value:.4f}" if trial.value is not None else ""
                params = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in trial.params.items()}
                logger.info(f"trial {trial.number} {trial.state.name.lower()}{value} {params}{best}")

            try:
                study.optimize(objective, n_trials=n_trials, timeout=timeout, catch=catch, callbacks=[progress])
            finally:
                summary = log_study_summary(study, space, _header(study_name, st, profile, overrides))
            for k in ("counts", "best_value", "best_trial", "best_params", "best_yaml"):
                setattr(result, k, summary[k])
    else:
        result.counts = {
            s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState
        }
    if final:
        result.final_run_id = final_run(
            study,
            space,
            data,
            profile=profile,
            overrides=overrides,
            prepared=p,
            experiment=experiment,
            source=src_run,
            tune_run_id=result.parent_run_id,
            header=_header(study_name, st, profile, overrides),
            allow_split_mismatch=allow_split_mismatch,
        )
    result.seconds = time.perf_counter() - t0
    return result


def final_run(
    study,
    space: SearchSpace,
    data: str | None,
    *,
    profile: str = "default",
    overrides: Mapping[str, Any] | None = None,
    prepared: Prepared | None = None,
    experiment: str | None = None,
    source: str | None = None,
    tune_run_id: str | None = None,
    header: str = "",
    allow_split_mismatch: bool = False,
) -> str:
    """Train the study's best configuration as a normal pretrain/finetune run tagged ``selected=true``.

    The config is the best-configuration YAML loaded like any technique file (same profile and
    overrides as the study), so the run is exactly what ``fashion pretrain -t <that file>`` would do.
    Returns:
        The run id.
    """
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet; run some trials before --final")
    best = study.best_trial
    note = (
        f"Tuned by Optuna study {study.study_name!r}: trial {best.number}, "
        f"validation {space.objective} {best.value:.4f}."
    )
    text = best_config_yaml(space, best.params, note, header)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{space.name}.yaml"
        path.write_text(text)
        cfg = load_experiment(path, overrides=dict(overrides or {}), profile=profile, stage=space.stage)
    expected = trial_config(base_config(space, profile, overrides), best.params)
    if space.stage == "pretrain":  # (finetune: run_stage takes the architecture from the source run)
        mismatch = {
            k: v
            for k, v in flatten(to_dict(cfg)).items()
            if k not in ("description",) and flatten(to_dict(expected)).get(k) != v
        }
        if mismatch:  # the YAML must reproduce the trial exactly; anything else is a bug worth stopping for
            raise RuntimeError(f"best-configuration YAML does not reproduce trial {best.number}: {mismatch}")
    logger.info(
        f"final run of study {study.study_name!r}: trial {best.number} {best.params} "
        f"(validation {space.objective} {best.value:.4f})"
    )
    tags = {
        "selected": "true",
        "optuna_study": study.study_name,
        "optuna_trial": best.number,
        "search_space": space.name,
        "tuned_val_objective": f"{best.value:.6f}",
    }
    if tune_run_id:
        tags["tune_run_id"] = tune_run_id
    run_id = run_stage(
        cfg,
        data,
        source=source,
        experiment=experiment,
        tags=tags,
        prepared=prepared,
        allow_split_mismatch=allow_split_mismatch,
    )
    if run_id:
        study.set_user_attr("final_run_id", run_id)
        if tune_run_id:
            from mlflow.tracking import MlflowClient

            MlflowClient().set_tag(tune_run_id, "final_run_id", run_id)
    return run_id
