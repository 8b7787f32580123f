"""The one place that talks to MLflow: experiments, runs, tags, params, metrics and artifacts.

Every run carries the tags of docs/ARCHITECTURE.md ("Contracts"): ``stage``, ``technique``,
``dataset_digest`` and the git commit; the fully resolved config is logged as params and as ``config.yaml``. A run
that raises ends FAILED; Ctrl-C or SIGTERM ends it KILLED — never left RUNNING.

The store is MLflow's own default (``sqlite:///mlflow.db`` in the working directory)
unless ``MLFLOW_TRACKING_URI`` says otherwise (e.g. an ``http://`` tracking server).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import signal
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from fashion_core.config.schema import ExperimentConfig, flatten
from fashion_core.tracking import heartbeat

# The code version lives in versions.py; callers import it from here too (store_hint reads PROJECT_DIR here).
from fashion_core.tracking.versions import PROJECT_DIR, git_commit, reusable_version

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "fashion-product-images-small"
GRID_RUNS_ARTIFACT = "grid/runs.csv"  # a grid parent run's table of its runs (grid.py writes it)


def quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")
    warnings.filterwarnings("ignore", message=".*Hint: Inferred schema.*")
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # a start/stop line per run otherwise


def system_metrics_enabled() -> bool | None:
    """System metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) on every run.

    True unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is set, which then decides (None lets MLflow
    read it; the tests set it to false). ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` sets the period
    (MLflow's default: 10 s).
    """
    return None if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING") else True


_READY_STORES: set[str] = set()


def ensure_store() -> None:
    """Create a sqlite tracking store's tables once, under a file lock.

    MLflow creates and migrates the schema on first use; several processes starting on an empty
    sqlite file at once (grid, tune workers) race on it and all but one fail ("table already
    exists"). The first to take ``<db>.lock`` creates it; the others wait, then find it ready.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        _READY_STORES.add(uri)
        return
    from mlflow.tracking import MlflowClient

    db = Path(uri[len("sqlite:///") :].split("?")[0])
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process at a time there
        fcntl = None  # type: ignore[assignment]  # None marks the module's absence
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates the tables
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
    _READY_STORES.add(uri)


def find_reusable(cfg_hash: str, digest: str, code: str, experiment_id: str):
    """The newest FINISHED run of this config, data and code version in the experiment, or None.

    None too when the code version is unknown (no git checkout): nothing says two such runs ran the same code.
    """
    from mlflow.tracking import MlflowClient

    if not reusable_version(code):
        return None
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.config_hash = '{cfg_hash}' and tags.dataset_digest = '{digest}' "
            f"and tags.code_version = '{code}' and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def best_val_score(run_id: str, metric: str = "val_top1_mean") -> float:
    """The best validation class-mean top-1 of a run over its epochs (NaN when never logged)."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(run_id, metric)
    values = [h.value for h in history if h.value == h.value]
    return max(values) if values else float("nan")


def tracking_uri() -> str:
    """The tracking store in use (for messages)."""
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_name_for(dataset_root: str | Path | None) -> str:
    """One experiment per dataset by default: the dataset folder's name."""
    env = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if env:
        return env
    if dataset_root is None:
        return DEFAULT_EXPERIMENT
    return Path(dataset_root).name or DEFAULT_EXPERIMENT


def store_hint() -> str:
    """Where runs were looked for, and how to point at another store: the tail of a "no runs" error line.

    A newcomer who ran the job in one folder and ``compare`` in another gets a fresh, empty
    ``mlflow.db``; this names both the store searched and, when this checkout holds one, that one.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    here = None
    if uri.startswith("sqlite:///"):
        here = Path(uri[len("sqlite:///") :].split("?")[0]).resolve()
        where = f"the store {uri} ({here})"
    else:
        where = f"the store {uri}"
    ours = PROJECT_DIR / "mlflow.db"
    if ours.is_file() and ours.resolve() != here:
        return (
            f"looked in {where}; this checkout's runs are in {ours}: run from {PROJECT_DIR} "
            f"or set MLFLOW_TRACKING_URI=sqlite:///{ours}"
        )
    return (
        f"looked in {where}; if your runs are elsewhere, run from the folder that holds their mlflow.db "
        "or set MLFLOW_TRACKING_URI=sqlite:////path/to/mlflow.db (or http://host:5000)"
    )


def launched_run_id() -> str | None:
    """The run ``mlflow run`` created for this process (``MLFLOW_RUN_ID``), if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def set_experiment(name: str) -> str:
    """Create (once, race-safe) and select an experiment; returns its id.

    Under ``mlflow run`` the run already exists: its experiment wins (``--experiment-name``).
    """
    import mlflow

    quiet_mlflow()
    ensure_store()
    env_run = launched_run_id()
    if env_run:
        exp = mlflow.set_experiment(experiment_id=mlflow.get_run(env_run).info.experiment_id)
        _mark_model_development(exp)
        return exp.experiment_id
    for attempt in range(5):
        try:
            exp = mlflow.set_experiment(name)
            break
        except Exception:  # two processes creating it at once: the loser retries and finds it
            if attempt == 4:
                raise
            import time

            time.sleep(0.2 * (attempt + 1))
    _mark_model_development(exp)
    return exp.experiment_id


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _mark_model_development(exp) -> None:
    """Tag the experiment as model development, so the MLflow UI opens it on its training runs.

    MLflow 3 opens an experiment without a kind on its GenAI overview (traces), where no run shows.
    """
    from mlflow.tracking import MlflowClient

    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            MlflowClient().set_experiment_tag(exp.experiment_id, key, value)


UI_URL = "http://127.0.0.1:5000"  # `make ui`


def runs_page(experiment_id: str, base: str = UI_URL) -> str:
    """The MLflow UI page of an experiment's training runs.

    MLflow 3.17's UI opens an experiment on the view of its global GenAI / Model training switch
    (GenAI unless the user switched), whatever the experiment's kind tag says; the
    ``workflowType`` parameter picks the Model training view and its runs table.
    """
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


def print_ui_links(base: str = UI_URL) -> None:
    """One line per experiment with stage runs: its name and its runs page (`make ui` prints them)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for exp in client.search_experiments():
        if client.search_runs(
            [exp.experiment_id], filter_string="tags.stage = 'prepare'", max_results=1
        ) or client.search_runs([exp.experiment_id], filter_string="tags.stage = 'grid'", max_results=1):
            print(f"runs of {exp.name!r}: {runs_page(exp.experiment_id, base)}")


def log_dataset(table, source: str, name: str, digest: str, context: str) -> None:
    """The run's dataset as an MLflow input (the runs table's Dataset column): the split table, named and digested."""
    import mlflow

    # mlflow.data sets its dataset constructors (from_pandas ...) on itself at import: no static attribute
    ds = mlflow.data.from_pandas(table, source=source, name=name, targets="label", digest=digest)  # type: ignore[attr-defined]
    for attempt in range(4):
        try:
            mlflow.log_input(ds, context=context)
            return
        except Exception as e:  # two grid workers creating the same dataset row at once (sqlite): the loser
            if "UNIQUE constraint" not in str(e) or attempt == 3:  # retries and finds it, then links it
                raise
            import time

            time.sleep(0.2 * (attempt + 1))


class RunKilled(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM so runs end as KILLED."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum, frame):
        raise RunKilled(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


_CLAIMED: contextvars.ContextVar = contextvars.ContextVar("fashion_claimed_run", default=None)


@contextlib.contextmanager
def claimed_run(run_id: str, parent_run_id: str) -> Iterator[None]:
    """Inside the block, the next ``start_run`` of a child of ``parent_run_id`` continues ``run_id`` instead of
    creating a run: a grid cell's claim (``grid_claims``) becomes the cell's run."""
    token = _CLAIMED.set((run_id, parent_run_id))
    try:
        yield
    finally:
        _CLAIMED.reset(token)


def _sweep_quietly(experiment_id: str) -> None:
    """End the experiment's runs whose process died (``heartbeat.sweep``); a failed sweep never stops a run."""
    try:
        heartbeat.sweep(experiment_id)
    except Exception as e:  # noqa: BLE001 - a busy store: the next run that starts sweeps again
        logger.warning(f"could not look for dead runs: {type(e).__name__}: {e}")


@contextlib.contextmanager
def start_run(
    stage: str,
    technique: str,
    dataset_digest: str,
    *,
    run_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run with the project's tags; ends FAILED on error and KILLED on interrupt.

    Our own wrapper around ``mlflow.start_run`` because MLflow's context manager ends a run FAILED on
    any exception, Ctrl-C included, and leaves it RUNNING on SIGTERM; here an interrupt or SIGTERM
    ends it KILLED (``--resume`` continues it), and ``mlflow run``'s own run is adopted. While it is open
    the run has a heartbeat (``heartbeat``); a run at the top level (no parent) first ends the runs of its
    experiment whose process died (``heartbeat.sweep``).

    Args:
        stage, technique, dataset_digest: the tags of docs/ARCHITECTURE.md ("Contracts").
        config: the resolved config (nested dict); logged as params and ``config.yaml``.
        run_id: resume this run instead of creating one.
    """
    import mlflow

    quiet_mlflow()
    ensure_store()
    commit, dirty = git_commit()
    all_tags = {
        "stage": stage,
        "technique": technique,
        "dataset_digest": dataset_digest,
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
    }
    if tags:
        all_tags.update({k: str(v) for k, v in tags.items()})
    if description:
        all_tags["mlflow.note.content"] = description
    all_tags.update(heartbeat.run_tags())
    if parent_run_id:  # start_run(parent_run_id=) tags a new run; a resumed or adopted run needs the tag set
        all_tags["mlflow.parentRunId"] = parent_run_id
    adopt = None
    claimed = _CLAIMED.get()
    if run_id is None and claimed is not None and parent_run_id == claimed[1]:
        adopt = claimed[0]  # a grid cell's claim: created before the data was read, continued here once
        _CLAIMED.set(None)
    elif run_id is None and not nested and not parent_run_id:
        adopt = os.environ.pop("MLFLOW_RUN_ID", None)  # the run `mlflow run` made for us
    existing = run_id or adopt
    kwargs: dict[str, Any] = (
        {"run_id": existing} if existing else {"run_name": run_name, "tags": all_tags, "parent_run_id": parent_run_id}
    )
    with _sigterm_as_interrupt():
        run = mlflow.start_run(nested=nested, log_system_metrics=system_metrics_enabled(), **kwargs)
        heartbeat.start(run.info.run_id)
        try:
            if not nested and not parent_run_id:
                _sweep_quietly(run.info.experiment_id)
            if existing:
                mlflow.set_tags(all_tags)
            if adopt and run_name:
                mlflow.set_tag("mlflow.runName", run_name)
            if config is not None and not run_id:
                log_config(config)
            yield run
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        else:
            mlflow.end_run("FINISHED")
        finally:
            heartbeat.stop(run.info.run_id)


def param_strings(config: Mapping[str, Any]) -> dict[str, str]:
    """A config as MLflow params: dotted keys, lists as JSON, every value a string (at most 6,000 characters)."""
    params = {k: (json.dumps(v) if isinstance(v, (list, tuple, dict)) else v) for k, v in flatten(config).items()}
    return {k: str(v)[:6000] for k, v in params.items()}


def log_config(config: Mapping[str, Any]) -> None:
    """The resolved config as params (dotted keys) and as a ``config.yaml`` artifact.

    ``mlflow.log_text`` rather than ``mlflow.log_dict``: log_dict's YAML sorts the keys and may tag
    tuples as Python objects; ``yaml.safe_dump(sort_keys=False)`` keeps the config's own order.
    """
    import mlflow

    mlflow.log_params(param_strings(config))
    mlflow.log_text(yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import math

    import mlflow

    clean = {k: float(v) for k, v in metrics.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    if clean:
        mlflow.log_metrics(clean, step=step)


def log_frame(df, artifact_path: str, index: bool = False) -> None:
    """A DataFrame as a CSV artifact (``artifact_path`` like ``eval/per_class.csv``)."""
    import mlflow

    mlflow.log_text(df.to_csv(index=index), artifact_path)


def log_table(df, artifact_path: str) -> None:
    """A DataFrame as an MLflow table (``mlflow.log_table``, JSON): the UI's artifact view and its
    evaluation view show it, and ``mlflow.load_table`` reads it back across runs."""
    import mlflow

    mlflow.log_table(df, artifact_path)


def log_file(path: str | Path, artifact_dir: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_dir)


def log_figure_html(fig, artifact_path: str) -> None:
    """A plotly figure as a self-contained HTML artifact (plotly.js embedded, opens offline).

    ``mlflow.log_figure`` links plotly.js from a CDN by default; the page must open without a network.
    """
    import mlflow

    mlflow.log_figure(fig, artifact_path, save_kwargs={"include_plotlyjs": True, "full_html": True})


def download_artifact(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    import mlflow

    return Path(
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst) if dst else None)
    )


def find_runs(
    filter_string: str = "",
    experiment_names: list[str] | None = None,
    order_by: list[str] | None = None,
    max_results: int = 1000,
):
    """Runs (as MLflow Run objects) matching a filter across the given (default: all) experiments."""
    import mlflow

    ensure_store()
    if experiment_names and all(mlflow.get_experiment_by_name(n) is None for n in experiment_names):
        return []  # mlflow.search_runs would warn; no such experiment holds no run
    return mlflow.search_runs(
        experiment_names=experiment_names or None,
        search_all_experiments=not experiment_names,
        filter_string=filter_string,
        order_by=order_by or ["attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )


def grid_run_ids(parent_run_id: str) -> list[str]:
    """The child runs of a grid: those listed in its ``grid/runs.csv`` (reused ones included) and its children."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    ids: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            table = pd.read_csv(
                download_artifact(parent_run_id, GRID_RUNS_ARTIFACT, d), dtype=str, keep_default_na=False
            )
            ids += [r for r in table["run_id"] if r]
    except Exception:  # a grid still running has no table yet; its children are found below
        pass
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000
    )
    ids += [r.info.run_id for r in children]
    return list(dict.fromkeys(ids))


def run_name(cfg: ExperimentConfig) -> str:
    """The technique first and short (the UI cuts long names); the stage is the run's ``stage`` tag."""
    return f"{cfg.technique} · s{cfg.train.seed}"


def run_inputs(tags: Mapping[str, str]) -> str:
    """What a run's model sees, from its tags: image, metadata (the metadata-only baseline) or image+metadata."""
    if tags.get("ensemble_inputs"):  # an ensemble (ensemble.py): what its members see together
        return tags["ensemble_inputs"]
    if tags.get("baseline") == "metadata_only" or tags.get("fusion") == "metadata_only":
        return "metadata"
    return "image+metadata" if tags.get("fusion") in ("late", "film") else "image"
