"""One run of a stage: the data prepared once, then the runner of the technique's kind.

Every runner takes ``(cfg, prepared, **the same keywords)`` and returns its run id (the metadata-only runners
ignore the keywords only a network reads: ``source``, ``resume``, ``extras_fn``, ...): ``network`` (a network of any
backbone, image or fused, any transfer method), ``metadata_only`` (the scikit-learn model on the catalogue fields),
``zeroshot`` (the metadata model plus the classes without training images). Under ``torchrun`` every rank calls the
same runner; only rank 0 logs to MLflow and returns the run id, the others return "".

    fashion pretrain -t focal --profile quick --data /path/to/fashion-product-images-small.tar.gz
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig
from fashion_core.data.prepared import Prepared, prepare_data
from fashion_core.data.stage import ExtrasFn
from fashion_core.engine import distributed
from fashion_core.engine.console import silenced
from fashion_core.runners.metadata_only import run_metadata_baseline
from fashion_core.runners.network import run_network
from fashion_core.runners.zeroshot import run_zeroshot
from fashion_core.tracking import runs as tracking

logger = logging.getLogger(__name__)

Runner = Callable[..., str]


def runner_of(cfg: ExperimentConfig) -> Runner:
    """The runner of a technique: the metadata-only model (with the zero-shot head when asked), else a network."""
    if cfg.fusion.mode == "metadata_only":
        return run_zeroshot if cfg.zeroshot.enabled else run_metadata_baseline
    return run_network


def run_stage(
    cfg: ExperimentConfig,
    data: str | None,
    *,
    source: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    tags: dict | None = None,
    register: bool = True,
    resume: str | None = None,
    extras_fn: ExtrasFn | None = None,
    prepared: Prepared | None = None,
    allow_split_mismatch: bool = False,
) -> str:
    """Run one technique of a stage as an MLflow run; return its run id ("" on ranks > 0 of a torchrun job).

    Args:
        cfg: the resolved experiment config (its ``stage`` says which stage).
        data: the ``--data`` value.
        source: finetune only: ``--from`` (run id, runs:/, models:/ or latest).
        parent_run_id: makes this a child run (grid, tune).
        resume: a run id whose ``checkpoint/last.pt`` to continue (same config).
        prepared: reuse already-prepared data (grid).
        allow_split_mismatch: accept a ``--from`` source of another split (tagged on the run).
    """
    started = time.perf_counter()
    env = distributed.init_from_env(cfg.train.device)  # one process unless launched by torchrun
    with nullcontext() if env.is_main else silenced():  # one process prints: the ranks > 0 run silenced
        # Under torchrun rank 0 builds the image cache first; the other ranks then reuse it.
        p = prepared or env.rank0_first(lambda: prepare_data(data, cfg.data))
        if env.is_main:
            tracking.set_experiment(experiment or tracking.experiment_name_for(p.root))
        runner = runner_of(cfg)
        if runner is not run_network:  # the metadata-only model: no network, no checkpoint, one process fits it
            if resume:
                raise ConfigError(
                    "the metadata-only model fits in seconds and has no checkpoint: run it again instead of --resume"
                )
            if not env.is_main:
                return ""
        return runner(
            cfg,
            p,
            source=source,
            experiment=experiment,
            parent_run_id=parent_run_id,
            tags=tags,
            register=register,
            resume=resume,
            extras_fn=extras_fn,
            allow_split_mismatch=allow_split_mismatch,
            env=env,
            started=started,
        )
