"""Who may read the test split, and how many configurations have read it: the code's rule, not a habit.

A *selection run* chooses something (an epoch, a default, a technique) and so must not see test: a run on the
year-held-out validation (``data.val_by=year``), an ensemble whose members are selection runs. It logs no
``test_*`` metric and no ``eval/`` table; ``fashion evaluate RUN`` scores its test split later, once
(``fashion_core.evaluate``). Optuna trials never get the test rows at all (``tuning.study.without_test``).

Every run that does score test is tagged with ``configs_read_on_test``: how many distinct configurations
(the logged config without its seed and operational keys) of its technique and stage have been scored on test
on its dataset digest in this store, itself included — 1 is a first look, 7 a seventh. ``compare`` shows it.

Run tags written here:
- ``selection_run``: ``true`` / ``false``;
- ``test_scored``: ``true`` once test is scored, ``false`` on a selection run until ``fashion evaluate``;
- ``test_scored_by``: ``run`` (at the run's end) or ``evaluate``;
- ``test_config_key``: 16 hex digits naming the configuration (what the count counts);
- ``configs_read_on_test``: the count, an integer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fashion_core.config.checks import REMOVED_KEYS
from fashion_core.config.schema import ExperimentConfig, to_dict
from fashion_core.data.stage import StageData
from fashion_core.evaluation import metrics as M
from fashion_core.evaluation.test_split import score_test_split
from fashion_core.tracking import runs as tracking

SELECTION_TAG = "selection_run"
TEST_SCORED_TAG = "test_scored"
SCORED_BY_TAG = "test_scored_by"
CONFIG_KEY_TAG = "test_config_key"
READS_TAG = "configs_read_on_test"
# What a test read leaves behind on a run (any one of them): older runs have the metric but not the tags.
TEST_METRIC = "test_top1_mean"

# Params that say how or where a run ran, not what it learned: two runs differing only here are one configuration.
OPERATIONAL_KEYS = frozenset({"train.seed", "train.device", "train.compile", "description"})
ENSEMBLE_MEMBERS = "ensemble.members"  # an ensemble's member run ids: replaced by the members' own keys


def is_selection_config(cfg) -> bool:
    """True for a config whose run chooses something on the year-held-out validation: it must not score test."""
    return cfg.data.val_by == "year"


def scores_test(cfg, member_tags: list[Mapping[str, str]] | None = None) -> bool:
    """Whether a run of ``cfg`` scores test at its end: not a selection run, nor built from one (ensemble members).

    The one predicate every runner asks (network, metadata-only, zero-shot, ensemble).
    """
    if is_selection_config(cfg):
        return False
    return not any((t or {}).get(SELECTION_TAG) == "true" for t in member_tags or ())


def selection_tags(selection: bool) -> dict[str, str]:
    """The tags a run starts with: a selection run is marked so and has not scored test (yet)."""
    return {SELECTION_TAG: str(selection).lower(), TEST_SCORED_TAG: "false"}


def config_key(params: Mapping[str, str], client=None) -> str:
    """16 hex digits naming a run's configuration: its logged params without the seed and operational keys.

    The params are the config as ``tracking.log_config`` logged it (dotted keys, strings), so a run logged
    before these tags existed gets the same key as a new one. A key at today's default value counts as absent,
    and so does a removed key at the value that behaved as today's code does: a key added (at its default) or
    removed by a later commit does not make an older run of the same setting another configuration. An
    ensemble's member run ids are replaced by the members' keys: two seeds of one ensemble are one configuration.
    """
    defaults = _default_params()
    kept: dict[str, Any] = {
        k: v for k, v in params.items() if k not in OPERATIONAL_KEYS and defaults.get(k, _NO_DEFAULT) != v
    }
    if ENSEMBLE_MEMBERS in kept and client is not None:
        try:
            ids = json.loads(kept[ENSEMBLE_MEMBERS])
            kept[ENSEMBLE_MEMBERS] = [config_key(client.get_run(i).data.params, client) for i in ids]
        except Exception:  # a member deleted from the store: its run id stays the identity
            pass
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NO_DEFAULT = object()


def _default_params() -> dict[str, str]:
    """Today's default config as logged params, plus each removed key at its no-op value."""
    params = tracking.param_strings(to_dict(ExperimentConfig()))
    params.update({k: v for k, (v, _why) in REMOVED_KEYS.items()})
    params.pop("stage", None)  # the stage is part of what a configuration is, whatever its default
    return params


def _read_on_test(run) -> bool:
    return run.data.tags.get(TEST_SCORED_TAG) == "true" or (
        TEST_METRIC in run.data.metrics and run.data.tags.get(TEST_SCORED_TAG) != "false"
    )


def configs_read_on_test(run_id: str, client=None) -> int:
    """Distinct configurations of this run's technique and stage scored on test on its dataset digest in this
    store, this run's own included (so at least 1): what the ``configs_read_on_test`` tag records.

    Searched across every experiment of the store: a test read is a test read wherever it was filed.
    """
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    run = client.get_run(run_id)
    t = run.data.tags
    mine = config_key(run.data.params, client)
    filt = (
        f"tags.stage = '{t.get('stage', '')}' and tags.technique = '{_quote(t.get('technique', ''))}' "
        f"and tags.dataset_digest = '{t.get('dataset_digest', '')}'"
    )
    keys = {mine}
    for exp in client.search_experiments():
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], filter_string=filt, max_results=1000, page_token=token)
            for r in page:
                if r.info.run_id != run_id and _read_on_test(r):
                    keys.add(r.data.tags.get(CONFIG_KEY_TAG) or config_key(r.data.params, client))
            token = page.token
            if not token:
                break
    return len(keys)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def mark_test_read(run_id: str, by: str = "run", client=None) -> int:
    """Tag a run that has just scored test: ``test_scored``, ``test_scored_by``, its config key and the count.

    Returns:
        The ``configs_read_on_test`` count.
    """
    from mlflow.tracking import MlflowClient

    client = client or MlflowClient()
    n = configs_read_on_test(run_id, client)
    key = config_key(client.get_run(run_id).data.params, client)
    for k, v in {TEST_SCORED_TAG: "true", SCORED_BY_TAG: by, CONFIG_KEY_TAG: key, READS_TAG: str(n)}.items():
        client.set_tag(run_id, k, v)
    return n


def already_read(run) -> bool:
    """True when a run has scored test (at its end or by ``fashion evaluate``)."""
    return _read_on_test(run)


# ---------------------------------------------------------------- the read itself


def log_test(run_id: str, sd, scores: np.ndarray, seed: int, extra: Callable | None = None, by: str = "run") -> dict:
    """Score ``scores`` (N_test, C over ``sd.classes``) on the test split and log it to the active run ``run_id``:
    the ``test_*`` metrics, the ``eval/`` tables and the test-read tags. ``extra(table, labels, top5)`` adds metrics
    (the zero-shot S / U / H). Returns the metrics."""

    table, preds, metrics, (labels, top5) = score_test_split(sd, scores, seed)
    if extra is not None:
        metrics.update(extra(table, labels, top5))
    log_evaluation(sd, table, preds, metrics, labels, top5)
    metrics[READS_TAG] = mark_test_read(run_id, by)
    return metrics


def test_summary(stage: str, technique: str, m: dict, test_only=()) -> str:
    """The line a run prints after reading test."""
    return (
        f"{stage} {technique}: test class-mean top-1 {m['test_top1_mean']:.4f} "
        f"[{m['test_top1_mean_lo']:.4f}, {m['test_top1_mean_hi']:.4f}]  "
        f"top-5 {m['test_top5_mean']:.4f}  micro top-1 {m['test_top1_micro']:.4f}  "
        f"({m['test_n_classes_evaluated']} classes evaluated"
        + (f"; {len(test_only)} test-only classes cannot be learned: {', '.join(test_only)}" if test_only else "")
        + f"; configurations read on test: {m.get(READS_TAG, '?')})"
    )


def deferred_line(stage: str, technique: str, run_id: str, val: float | None = None) -> str:
    """The line a selection run prints instead of a test figure."""
    shown = f"validation class-mean top-1 {val:.4f}; " if val is not None and val == val else ""
    return (
        f"{stage} {technique}: selection run, {shown}test not scored (score it once, later: fashion evaluate {run_id})"
    )


def log_evaluation(
    sd: StageData, table: pd.DataFrame, preds: pd.DataFrame, test_metrics: dict, labels: np.ndarray, top5: np.ndarray
) -> None:
    """The test metrics and the ``eval/`` artifacts (docs/ARCHITECTURE.md, "Contracts"), for any model of a stage.

    The per-class table goes out twice: ``eval/per_class.csv`` (the contract in docs/ARCHITECTURE.md; ``compare`` reads
    it, from older runs too) and ``eval/per_class.json`` (``mlflow.log_table``: shown in MLflow's UI).
    """
    tracking.log_metrics(test_metrics)
    tracking.log_frame(table, "eval/per_class.csv")
    tracking.log_table(table, "eval/per_class.json")
    tracking.log_frame(preds, "eval/predictions.csv")
    tracking.log_frame(M.with_wilson(table), "eval/per_class_intervals.csv")
    if len(labels):
        tracking.log_figure_html(M.confusion_matrix_figure(labels, top5[:, 0], sd.classes), "eval/confusion.html")
