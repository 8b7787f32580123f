"""A stage's fusion plan: which encoders and auxiliary heads a stage builds or carries over from its source run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from torch import Tensor

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import ExperimentConfig, FusionConfig, ModelConfig, to_dict
from fashion_core.fusion.encoders import INPUT_KEYS, TEXT_FIELD, MetaVocab, aux_vocab, encode_aux
from fashion_core.fusion.modules import FUSERS, FusedNet
from fashion_core.models.network import FashionNet, build_model

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------- a stage's plan


def stage_rows(prepared, ids: Iterable[int]) -> pd.DataFrame:
    """The catalogue rows (metadata columns) of these product ids, in order."""
    cat = prepared.catalog[prepared.catalog["valid"]].drop_duplicates("id").set_index("id")
    return cat.loc[np.asarray(list(ids), dtype=np.int64)]


@dataclass
class FusionPlan:
    """What a stage needs to build, feed and train a fused model.

    Attributes:
        fusion: the effective fusion settings (in the finetune stage, the encoder settings of the source).
        vocab: the encoders' vocabularies (None: image only).
        aux: auxiliary head -> classes, from this stage's training rows.
    """

    fusion: FusionConfig
    vocab: MetaVocab | None
    aux: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def extras(self, prepared, rows: pd.DataFrame, classes: list[str]) -> dict[str, Tensor]:
        """``run_stage``'s ``extras_fn``: encoder inputs and auxiliary targets aligned with ``rows``."""
        meta = stage_rows(prepared, rows["id"])
        out = self.vocab.encode(meta) if self.vocab is not None else {}
        out.update(encode_aux(meta, self.aux))
        return out

    def chain(self, other: Callable | None) -> Callable:
        """This plan's extras, plus those of a caller's ``extras_fn`` when there is one."""
        if other is None:
            return self.extras
        return lambda p, rows, classes: {**other(p, rows, classes), **self.extras(p, rows, classes)}

    def new_model(self, model_cfg: ModelConfig, num_classes: int) -> FusedNet:
        """A fresh fused model (the image part initialised as ``model.init`` says)."""
        return FusedNet(
            build_model(model_cfg, num_classes),
            self.vocab,
            self.fusion.mode,
            self.fusion.embed_dim,
            self.aux,
            self.fusion.meta_dropout,
            self.fusion.meta_embed_lr_mult,
        )

    def adapt(self, model: FashionNet) -> FusedNet:
        """A pretrained model for this stage: its encoders carried over, this stage's auxiliary heads new."""
        if isinstance(model, FusedNet):
            model.set_aux(self.aux)
            model.meta_dropout, model.embed_lr_mult = self.fusion.meta_dropout, self.fusion.meta_embed_lr_mult
            return model
        return FusedNet(model, None, "none", self.fusion.embed_dim, self.aux)


def needs_plan(cfg: ExperimentConfig) -> bool:
    """Whether a network config uses metadata as input or as auxiliary targets."""
    f = cfg.fusion
    return f.mode in FUSERS or f.aux_master > 0 or f.aux_sub > 0


def plan_stage(
    cfg: ExperimentConfig, prepared, source: tuple[FashionNet, dict] | None = None
) -> tuple[ExperimentConfig, FusionPlan | None]:
    """The fusion plan of a network run, and its config with the encoder settings it really uses.

    In the pretrain stage (or a finetune without a source) the vocabularies are fitted on the stage's
    TRAIN split. From a fused pretrain run the encoders carry over: a technique with ``fusion.mode``
    none takes the source's encoder settings (the logged config says so), a fused technique must ask
    for the same ones. The auxiliary heads always belong to the stage.

    Args:
        cfg: the resolved config.
        prepared: the prepared data (catalogue and splits).
        source: (model, model.json) of the pretrain run, finetune stage only.

    Returns:
        (config, plan); the plan is None for a plain image model.

    Raises:
        ConfigError: a fused technique whose source has other (or no) metadata encoders.
    """
    src_vocab = None
    if source is not None:
        model, meta = source
        src_fused = (meta.get("fused") or {}).get("vocab")
        if src_fused is not None:
            src_cfg = meta["fusion"]
            wanted = {k: to_dict(getattr(cfg.fusion, k)) for k in INPUT_KEYS}
            theirs = {k: src_cfg.get(k, to_dict(getattr(FusionConfig(), k))) for k in INPUT_KEYS}
            if cfg.fusion.mode != "none" and wanted != theirs:
                diff = ", ".join(
                    f"{k}: {wanted[k]} here, {theirs[k]} there" for k in INPUT_KEYS if wanted[k] != theirs[k]
                )
                raise ConfigError(
                    f"technique {cfg.technique} needs a pretrain run with the same metadata encoders "
                    f"({diff}); pass --from a matching pretrain run"
                )
            if cfg.fusion.mode == "none":
                inputs = ", ".join(list(theirs["fields"]) + list(theirs["leaky_fields"]))
                logger.info(
                    f"the pretrained model fuses metadata ({theirs['mode']}: {inputs}); its encoders carry over"
                )
            cfg = cfg.replace(**{f"fusion.{k}": v for k, v in theirs.items()})
            src_vocab = MetaVocab.from_dict(src_fused)
        elif cfg.fusion.mode != "none":
            raise ConfigError(
                f"technique {cfg.technique} fuses metadata (fusion.mode={cfg.fusion.mode}) but the "
                "pretrain run has no metadata encoders; pass --from a fused pretrain run "
                "or use transfer.method=scratch"
            )
    # A carried-over FusedNet always gets a plan: its auxiliary heads belong to the pretrain stage.
    if not needs_plan(cfg) and not (source is not None and isinstance(source[0], FusedNet)):
        return cfg, None
    sp = prepared.splits
    train_ids = sp.loc[(sp["subset"] == cfg.stage) & (sp["split"] == "train"), "id"]
    train_rows = stage_rows(prepared, train_ids)
    vocab = src_vocab
    if vocab is None and cfg.fusion.mode in FUSERS:
        vocab = MetaVocab.fit(train_rows, cfg.fusion)
    if cfg.fusion.leaky:
        logger.warning(f"LEAKY: {', '.join(cfg.fusion.leaky_fields)} are model inputs; the run is tagged leaky=true")
    return cfg, FusionPlan(cfg.fusion, vocab, aux_vocab(train_rows, cfg.fusion))


def run_tags(cfg: ExperimentConfig, plan: FusionPlan | None) -> dict[str, str]:
    """Tags that say what a run fed its model: ``fusion`` (mode), ``fusion_inputs``, ``aux_heads``."""
    if plan is None:
        return {"fusion": "none"}
    inputs = (plan.vocab.fields + ([TEXT_FIELD] if plan.vocab.text else [])) if plan.vocab is not None else []
    return {
        "fusion": plan.fusion.mode if plan.vocab is not None else "none",
        "fusion_inputs": ",".join(inputs),
        "aux_heads": ",".join(plan.aux),
    }
