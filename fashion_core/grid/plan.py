"""A grid's plan: which technique files, resolved at which seeds, and how finetune cells find their source.

``plan_grid`` resolves every (technique, seed) into a validated config before any run starts;
``config_hash`` identifies a resolved config for reuse; ``model_kind`` says which pretrained
networks fit a finetune technique, and ``pick_best_pretrain`` chooses one on validation only.

    python -c "from fashion_core.grid.plan import plan_grid; print(len(plan_grid(profile='quick')))"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fashion_core.config.checks import STAGES, ConfigError
from fashion_core.config.schema import ExperimentConfig, find_technique, list_techniques, load_experiment, to_dict
from fashion_core.fusion.encoders import INPUT_KEYS
from fashion_core.models.network import transfer_policy

STAGE_ORDER = STAGES  # pretrain first: the finetune techniques need its model
IMAGE = "image"  # the kind of a plain image network


@dataclass(frozen=True)
class GridTask:
    """One technique at one seed: a resolved config and the file it came from."""

    cfg: ExperimentConfig
    path: Path

    @property
    def name(self) -> str:
        return f"{self.cfg.stage}/{self.cfg.technique}/seed{self.cfg.train.seed}"


# ---------------------------------------------------------------- planning


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a range ``"0-2"`` works too; duplicates are dropped."""
    import re

    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"--seeds {text!r}: expected non-negative integers separated by commas, e.g. 0,1,2")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds += [v for v in range(lo, hi + 1) if v not in seeds]
    return seeds


def select_techniques(
    experiments_dir: str | Path = "experiments", names: Sequence[str] | None = None, stages: Sequence[str] = STAGE_ORDER
) -> list[Path]:
    """The technique files of a grid, pretrain first.

    Args:
        experiments_dir: the folder with ``pretrain/`` and ``finetune/``.
        names: ``None``/``["all"]`` for every file of ``stages``, else stems (``focal``), qualified
            stems (``finetune/ncm``) or YAML paths; a stem found in two stages must be qualified.
        stages: the stages to include.

    Returns:
        The files, pretrain ones first, each once.
    """
    for s in stages:
        if s not in STAGE_ORDER:
            raise ConfigError(f"unknown stage {s!r}; choose from: {', '.join(STAGE_ORDER)}")
    ordered = [s for s in STAGE_ORDER if s in stages]
    if not names or list(names) == ["all"]:
        files = [p for s in ordered for p in list_techniques(s, experiments_dir)]
        if not files:
            raise ConfigError(f"no technique files in {experiments_dir}/{{{','.join(ordered)}}}/")
        return files
    picked: dict[str, list[Path]] = {s: [] for s in STAGE_ORDER}
    for name in names:
        if name.endswith((".yaml", ".yml")):
            p = Path(name)
            if not p.is_file():
                raise ConfigError(f"technique file {name!r} not found")
            stage = p.parent.name if p.parent.name in STAGE_ORDER else load_experiment(p).stage
            picked[stage].append(p)
            continue
        stage_hint, _, stem = name.rpartition("/")
        where = [stage_hint] if stage_hint else ordered
        hits = []
        for s in where:
            try:
                hits.append((s, find_technique(stem, s, experiments_dir)))
            except ConfigError:
                pass
        if not hits:
            valid = [f"{s}/{p.stem}" for s in ordered for p in list_techniques(s, experiments_dir)]
            raise ConfigError(f"unknown technique {name!r}; choose from: {', '.join(valid)}")
        if len(hits) > 1:
            raise ConfigError(
                f"technique {name!r} exists in {' and '.join(s for s, _ in hits)}; "
                f"write {hits[0][0]}/{stem} or {hits[1][0]}/{stem}"
            )
        picked[hits[0][0]].append(hits[0][1])
    out: list[Path] = []
    for s in STAGE_ORDER:
        for p in picked[s]:
            if p not in out:
                out.append(p)
    return out


def plan_grid(
    experiments_dir: str | Path = "experiments",
    techniques: Sequence[str] | None = None,
    stages: Sequence[str] = STAGE_ORDER,
    seeds: Sequence[int] = (0,),
    profile: str = "default",
    overrides: Mapping[str, Any] | None = None,
) -> list[GridTask]:
    """Resolve every (technique, seed) of a grid into a config, pretrain first, seed-major within a stage.

    Args:
        experiments_dir, techniques, stages: see :func:`select_techniques`.
        seeds: training seeds (``train.seed``).
        profile: a config profile (``quick`` on CPUs).
        overrides: dotted keys applied to every technique after its file (``data.top_k``, ``train.epochs``).

    Returns:
        The tasks in run order; every config is validated, so a bad value fails before any run.
    """
    files = select_techniques(experiments_dir, techniques, stages)
    # A file under experiments/<stage>/ belongs to that stage; any other file says its own.
    loaded = [
        (
            p,
            load_experiment(
                p, overrides=overrides, profile=profile, stage=p.parent.name if p.parent.name in STAGE_ORDER else None
            ),
        )
        for p in files
    ]
    tasks: list[GridTask] = []
    for stage in STAGE_ORDER:
        for seed in seeds:
            tasks += [GridTask(c.replace(**{"train.seed": seed}), p) for p, c in loaded if c.stage == stage]
    data_cfgs = {json.dumps(to_dict(t.cfg.data), sort_keys=True) for t in tasks}
    if len(data_cfgs) > 1:
        raise ConfigError(
            "the techniques of one grid must share the data settings (split, size); "
            f"got {len(data_cfgs)} different ones - set them with the grid's data options"
        )
    return tasks


# ---------------------------------------------------------------- reuse and source selection


def needs_source(cfg: ExperimentConfig) -> bool:
    """Whether a config trains from a pretrained model (finetune with a transfer method that uses one)."""
    return cfg.stage == "finetune" and bool(transfer_policy(cfg.transfer.method).pretrained)


def config_hash(cfg: ExperimentConfig, source_run_id: str | None = None) -> str:
    """16 hex digits identifying a resolved config (and, for transfer, the pretrain run it starts from)."""
    payload = {"config": to_dict(cfg), "source_run_id": source_run_id if needs_source(cfg) else None}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_kind(cfg: ExperimentConfig) -> str:
    """Which pretrained networks fit a config: ``image``, ``<mode>-<hash>`` of the metadata encoders, or '' (no network).

    A finetune technique starts only from a pretrain run of its own kind: image techniques from an
    image network, a fused one from a network with the same metadata encoders; the metadata-only
    baseline is no network at all.
    """
    f = cfg.fusion
    if f.mode == "metadata_only":
        return ""
    if f.mode == "none":
        return IMAGE
    encoders = {k: to_dict(getattr(f, k)) for k in INPUT_KEYS}
    return f"{f.mode}-{hashlib.sha256(json.dumps(encoders, sort_keys=True).encode()).hexdigest()[:8]}"


def pick_best_pretrain(runs: pd.DataFrame, kind: str = IMAGE) -> tuple[str | None, pd.DataFrame]:
    """The finished pretrain run of a kind with the best validation class-mean top-1, and the ranking."""
    cand = runs[(runs["stage"] == "pretrain") & (runs["status"] == "FINISHED") & (runs["kind"] == kind)]
    cand = cand[cand["val_top1_best"].notna()].sort_values("val_top1_best", ascending=False, kind="stable")
    table = cand[["kind", "technique", "seed", "run_id", "val_top1_best"]].reset_index(drop=True)
    return (str(cand.iloc[0]["run_id"]) if len(cand) else None), table
