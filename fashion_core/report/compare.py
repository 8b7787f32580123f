"""The ``compare`` command: select the runs, build the tables, write the report, log a ``stage=compare`` run."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fashion_core.report.analysis import N_GALLERY_PAIRS, split_pair, unknown_pairs
from fashion_core.report.images import find_image_cache, thumbnails
from fashion_core.report.render import UI_URL, report_markdown, write_report
from fashion_core.report.runs import STAGES, CompareError, Scope, find_runs
from fashion_core.report.tables import Tables, build_tables, display_summary, evaluate_run, markdown_table
from fashion_core.tracking import runs as tracking
from fashion_core.tracking.runs import tracking_uri

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- the command


@dataclass
class CompareResult:
    """A finished comparison: the tables, the local folder, the ``stage=compare`` run."""

    tables: Tables
    out: Path
    files: list[Path]
    run_id: str | None
    scope: Scope


def run_compare(
    experiment: str | None = None,
    stages: Sequence[str] = STAGES,
    grid: str | None = "latest",
    tags: Mapping[str, str] | None = None,
    out: str | Path = "reports/compare",
    log_run: bool = True,
    pairs: Sequence[str] = (),
    ui_url: str = UI_URL,
    images: bool = True,
) -> CompareResult:
    """Build the report of the selected runs, write it to ``out`` and log it as a ``stage=compare`` run.

    Args:
        experiment, stages, grid, tags: the run filters of :func:`find_runs`.
        out: local folder for report.html, the CSV and Markdown files.
        log_run: also log the files as artifacts (``report/``) of a ``stage=compare`` run.
        pairs: extra paired comparisons, each ``"A,B"`` (two row names of one stage, as the summary shows them).
        ui_url: the MLflow UI's address, for links from run ids ('' for none).
        images: embed example images of mistakes from the runs' image cache when it is on this machine.

    Returns:
        A :class:`CompareResult`.
    """
    t0 = time.perf_counter()
    try:
        wanted = [split_pair(p) for p in pairs]
    except ValueError as err:
        raise CompareError(str(err)) from None
    tracking.quiet_mlflow()  # no progress bar per downloaded artifact
    scope = find_runs(experiment, stages, grid, tags)
    logger.info(
        f"comparing {len(scope.runs)} runs of experiment {scope.experiment_name!r}"
        + (f", grid {scope.grid_run_id}" if scope.grid_run_id else "")
        + (f" ({len(scope.left_out)} left out)" if len(scope.left_out) else "")
    )
    with tempfile.TemporaryDirectory() as d:
        evals = [evaluate_run(r, d, scope.configs.get(r.info.run_id, "")) for r in scope.runs]
    bad = [e for e in evals if e.n_mismatch]
    for e in bad:
        logger.warning(
            f"warning: run {e.run_id} ({e.run_name}): {e.n_mismatch} classes of eval/per_class.csv differ from "
            "eval/predictions.csv; the report uses the predictions"
        )
    names: dict[str, set[str]] = {}
    for e in evals:
        names.setdefault(e.stage, set()).add(e.technique)
    missing = unknown_pairs(wanted, names)
    if missing:
        raise CompareError(
            f"--pair {missing[0]}: not two techniques of one stage; choose from: "
            + "; ".join(f"{s}: {', '.join(sorted(n))}" for s, n in names.items())
        )
    tables = build_tables(evals, scope.left_out, pairs=wanted)
    if images:
        cache, tables.images_note = find_image_cache(scope.runs, scope.dataset_digest)
        if cache is not None:
            ids = [
                i
                for conf in tables.confusions.values()
                for i in conf.loc[conf["rank"] <= N_GALLERY_PAIRS, "examples"].explode().dropna()
            ]
            tables.thumbnails = thumbnails(cache, ids)
    else:
        tables.images_note = "No example images (not asked for)."
    scope_text = (
        f"Experiment {scope.experiment_name!r} ({tracking_uri()}), "
        + (f"grid run {scope.grid_run_id}, " if scope.grid_run_id else "all runs, ")
        + f"dataset digest {scope.dataset_digest}, {len(evals)} runs"
        + (f", filtered by tags {dict(tags)}" if tags else "")
        + f"; built {time.strftime('%Y-%m-%d %H:%M:%S')}."
    )
    files = write_report(tables, out, scope_text, ui_url=ui_url)
    run_id = None
    if log_run:
        tracking.set_experiment(scope.experiment_name)
        name = f"compare/{'grid-' + scope.grid_run_id[:8] if scope.grid_run_id else 'all'}"
        with tracking.start_run(
            "compare",
            "compare",
            scope.dataset_digest,
            run_name=name,
            tags={"grid_run_id": scope.grid_run_id or "", "n_runs": len(evals)},
            description=report_markdown(tables, scope_text, full=False),
        ) as run:
            run_id = run.info.run_id
            for f in files:
                tracking.log_file(f, "report")
            tracking.log_metrics(
                {
                    "n_runs": len(evals),
                    "n_left_out": len(scope.left_out),
                    "n_mismatch": sum(e.n_mismatch for e in evals),
                    "compare_seconds": time.perf_counter() - t0,
                }
            )
    logger.info(f"report: {Path(out) / 'report.html'}" + (f" (compare run {run_id})" if run_id else ""))
    for stage, summ in tables.summary.items():
        logger.info(f"\n{stage}:\n" + markdown_table(display_summary(summ)))
        if tables.paired_text.get(stage):
            logger.info(tables.paired_text[stage])
    return CompareResult(tables=tables, out=Path(out), files=files, run_id=run_id, scope=scope)
