"""What a run costs, relatively: minutes of one task from its kind, stage and epochs (docs/performance.md).

``main_job`` adds them up into the job's expected time before it starts; ``grid_eta`` scales them
by the cells a grid has finished into its ETA. A pretrain cell costs far more than a finetune cell
(several times the training images), and a cell that trains nothing (imprint, NCM) or only a logistic
regression (the metadata-only baseline) costs a fixed few seconds.

    python -c "from fashion_core.grid.costs import PRETRAIN_MINUTES; print(PRETRAIN_MINUTES)"
"""

from __future__ import annotations

from typing import Any

from fashion_core.config.profiles import PROFILES
from fashion_core.config.schema import TrainConfig
from fashion_core.models.network import transfer_policy

# Minutes of one image-network pretrain (the stage with the most training images) per profile and device:
# each constant is measured on 2 CPU cores or estimated, and docs/performance.md ("What a run costs")
# gives the run or bench script behind it.
PRETRAIN_MINUTES = {
    ("quick", "cpu"): 7.2,  # measured: the quick pretrain of a fresh clone's make run
    ("cpu", "cpu"): 26.0,  # measured: 3 epochs at 2x input scale, channels-last, 2 threads
    ("default", "cpu"): 300.0,  # estimate: hours
    ("quick_scratch", "cpu"): 4.5,  # measured: bench/e2e.py on 2 idle cores
    ("cpu_scratch", "cpu"): 55.0,  # from the measured images/s on 2 idle cores, 25 epochs
    ("default_scratch", "cpu"): 300.0,  # from the measured images/s (bench/throughput.py), 30 epochs
    ("smoke", "cpu"): 0.05,
    ("quick", "cuda"): 0.5,
    ("cpu", "cuda"): 1.5,  # estimate
    ("default", "cuda"): 4.0,  # estimate (docs/techniques.md, the from-scratch default on one GPU)
    ("smoke", "cuda"): 0.05,
}
FUSED_FACTOR = 1.02  # a fused_text pretrain against class_balanced in the same make run (docs/performance.md)
FINETUNE_SHARE = 1 / 3.6  # the finetune stage's share of the pretrain stage's training images
NO_TRAINING_MINUTES = 0.2  # imprint / ncm: embeddings only
METADATA_MINUTES = 0.5  # the logistic regression (a few C values)
PREPARE_MINUTES = 0.5  # extract + image cache on 2 idle cores (bench/e2e.py; docs/performance.md)
COMPARE_MINUTES = 0.5
ENSEMBLE_MINUTES = 1.5  # fashion ensemble: both members score validation and test (docs/performance.md)

GROUPS = ("pretrain", "finetune", "no_training", "metadata")  # cells whose costs scale alike


def cost_group(cfg: Any) -> str:
    """Which cells cost alike: ``pretrain`` / ``finetune`` (a network trains), ``no_training``, ``metadata``."""
    if cfg.fusion.mode == "metadata_only":
        return "metadata"
    if cfg.stage == "finetune":
        return "finetune" if transfer_policy(cfg.transfer.method).train else "no_training"
    return "pretrain"


def task_minutes(cfg: Any, profile: str, gpu: bool) -> float:
    """Expected minutes of one task (a resolved ``ExperimentConfig``) under a profile, on a GPU or the CPUs."""
    group = cost_group(cfg)
    if group == "metadata":
        return METADATA_MINUTES
    if group == "no_training":
        return NO_TRAINING_MINUTES
    unit = PRETRAIN_MINUTES.get((profile, "cuda" if gpu else "cpu"), PRETRAIN_MINUTES[("default", "cpu")])
    profile_epochs = PROFILES.get(profile, {}).get("train.epochs", TrainConfig().epochs)  # what ``unit`` trained
    minutes = unit * (FUSED_FACTOR if cfg.fusion.mode != "none" else 1.0) * cfg.train.epochs / profile_epochs
    return minutes * (FINETUNE_SHARE if group == "finetune" else 1.0)
