"""Experiment configuration: frozen dataclasses loaded from YAML, with dotted overrides.

A technique is one YAML file under ``experiments/<stage>/``; it holds only the keys
that differ from the defaults below, or from the technique it names as ``parent``
(``technique_raw``; docs/techniques.md). ``load_experiment`` resolves it (profile, then
file over its parents, then ``-o key=value`` overrides) and validates every name and number,
so a bad value is a clear :class:`ConfigError` before any run starts. The key of an option removed from the code
(``checks.REMOVED_KEYS``) still loads at the value the code follows, so a config logged before reads back; at any
other value it is refused with the reason it left.

    python -c "from fashion_core.config.schema import load_experiment; print(load_experiment('experiments/pretrain/baseline.yaml'))"
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

# The names, ConfigError and the checks live in config_checks, the profiles in config_profiles; callers
# import every one of them from here.
from fashion_core.config.checks import REMOVED_KEYS, ConfigError, validate
from fashion_core.config.profiles import PROFILES


@dataclass(frozen=True)
class DataConfig:
    """Which products, which split, which image size."""

    height: int = 80
    width: int = 60
    top_k: int = 20
    rank_on: str = "train"  # rank the top-k classes by TRAIN frequency (default) or over the whole table
    val_fraction: float = 0.15  # val_by=random: share of each class's training images held out
    split_seed: int = 0  # val_by=random: seed of the carve-out
    # random: validation is a random share of each class's even-year images (the same years as training);
    # year: validation is every even-year image of ``val_years`` (the test's year shift, mirrored; see splits.py)
    val_by: str = "random"
    # val_by=year: the held-out even years. 2016 holds about a quarter of the even-year products; 2012 about two
    # thirds, too much to train without, and the other even years too few to rank techniques (docs/data-and-split.md)
    val_years: tuple[int, ...] = (2016,)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"
    stem: str = "s2"  # imagenet: 7x7/2 conv + maxpool; s2: 3x3/2 conv; s1: 3x3/1 conv (no maxpool)
    init: str = "scratch"  # scratch | imagenet | path to a local state dict
    head: str = "linear"  # linear | cosine
    dropout: float = 0.0
    width_mult: float = 1.0  # channel multiplier for resnets (0.5 = half width); 1.0 is torchvision's
    # the trunk sees the images upsampled by this factor (bilinear, inside the model, on the device): ImageNet
    # features were learnt near 224 px, the cached photos are 80x60
    input_scale: float = 1.0


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    weights: str = "none"  # class-weight scheme, from the stage's training counts, normalised to mean 1
    beta: float = 0.999  # effective_number only
    gamma: float = 2.0  # focal only
    label_smoothing: float = 0.0
    tau: float = 1.0  # logit_adjusted only


@dataclass(frozen=True)
class FusionConfig:
    """Product metadata as model input: which fields, how they are encoded, how they join the network (fusion/).

    The metadata-only model (``mode: metadata_only``) reads the same fields the same way. ``year`` is never an
    input (it defines the split)."""

    mode: str = "none"  # none | late | film | metadata_only (see FUSION_MODES)
    fields: tuple[str, ...] = ("gender", "baseColour", "season", "usage")
    leaky_fields: tuple[str, ...] = ()  # masterCategory / subCategory as INPUTS: tags the run leaky=true
    aux_master: float = 0.0  # loss weight of an auxiliary masterCategory head (0 = no head)
    aux_sub: float = 0.0  # loss weight of an auxiliary subCategory head
    text_buckets: int = 4096  # hashed bag-of-words size for productDisplayName
    text_ngrams: int = 1  # word n-grams hashed from productDisplayName: 1 = words, 2 = words + word pairs
    embed_dim: int = 64
    meta_dropout: float = 0.0  # training: chance that an item's whole metadata embedding is zeroed (image alone)
    # lr of the metadata lookup tables = train.lr * this, no decay: a row learns only from the items holding
    # its word, so it needs big steps (chosen on finetune validation: docs/selection-ledger.md)
    meta_embed_lr_mult: float = 100.0

    @property
    def leaky(self) -> bool:
        return bool(self.leaky_fields)


@dataclass(frozen=True)
class MetadataConfig:
    """The metadata-only model (``fusion.mode: metadata_only``): a logistic regression on the fusion fields."""

    logreg_c: float = 0.0  # inverse L2 strength; 0 = pick from LOGREG_C_GRID on validation


@dataclass(frozen=True)
class ZeroShotConfig:
    """Generalised zero-shot on top of the metadata-only model: the classes without training images scored from
    their names (zeroshot/; the evidence and the calibration are described in docs/results-fusion.md)."""

    enabled: bool = False  # also predict the stage's classes without training images (needs fusion.mode=metadata_only)
    # word meanings as one more evidence kind, the cosine of sentence embeddings (all-MiniLM-L6-v2) of the product
    # name and the class text (zeroshot/semantic.py): none | cosine | mapped (through a map learned on the seen
    # classes, pulled toward the identity with strength text_l2)
    text: str = "none"
    text_l2: float = 10.0
    class_template: str = "{}"  # the text embedded for a class name ("{}" = the name)
    # how the calibration's pseudo-unseen folds hold classes out: class (a random third of the classes) or a
    # catalogue column (subCategory, masterCategory): whole groups of classes together (zeroshot/calibration.py)
    fold_by: str = "class"
    # A zero-shot benchmark no design has seen (zeroshot/holdout.py): classes that DO have training images, held
    # out of training and validation and scored as unseen on their test images. holdout_classes names them
    # (explicit list); otherwise holdout_n of the stage's classes with training and test images are drawn with
    # holdout_seed, one by one (holdout_by=class) or as whole groups of a catalogue column (e.g. subCategory)
    # until holdout_n classes are in. 0 / empty: off (the stage's own unseen classes only).
    holdout_n: int = 0
    holdout_seed: int = 0
    holdout_by: str = "class"
    holdout_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale_min: float = 0.5  # RandomResizedCrop scale range [crop_scale_min, 1]
    hflip: bool = True
    jitter: float = 0.1  # brightness/contrast/saturation strength; 0 = off


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    patience: int = 8  # early stopping on validation class-mean top-1; 0 = off
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    max_batches_per_epoch: int = 0  # 0 = all; >0 caps an epoch (smoke tests)
    # > 0: validate, select and keep an exponential moving average of the weights (and BatchNorm statistics),
    # updated every step with this decay (warmed up as min(decay, (1+t)/(10+t))); 0 = the raw weights.
    # Without it the validation top-1 of a from-scratch run swung from epoch to epoch in the high-lr phase; with it
    # it rose steadily (docs/selection-ledger.md, docs/results-image.md).
    ema_decay: float = 0.998
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TransferConfig:
    """How a stage uses a pretrained network: the finetune stage its pretrain run, the pretrain stage
    ImageNet weights (``model.init`` other than scratch)."""

    method: str = "finetune"  # finetune stage only
    backbone_lr_mult: float = 0.1  # finetune/partial/imprint_finetune: backbone lr = lr * this
    init_lr_mult: float = 1.0  # pretrain stage from model.init weights: trunk lr = lr * this (head, encoders at lr)


@dataclass(frozen=True)
class ExperimentConfig:
    stage: str = "pretrain"
    technique: str = "baseline"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def replace(self, **overrides: Any) -> ExperimentConfig:
        """A copy with dotted overrides applied, e.g. ``replace(**{"loss.gamma": 1.0})``."""
        return apply_overrides(self, overrides)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (tuples become lists) for YAML / MLflow."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (``{"loss": {"gamma": 2}}`` -> ``{"loss.gamma": 2}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(value: Any, current: Any, key: str) -> Any:  # noqa: C901 - one branch per config value type
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(current, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]  # one year, e.g. data.val_years=2016
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if current and all(isinstance(v, int) for v in current):  # a list of integers (data.val_years)
            try:
                return tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise ConfigError(f"{key}: expected integers, got {value!r}") from None
        return tuple(str(v) for v in value)
    if isinstance(current, str):
        return str(value)
    return value


def _removed(full: str, value: Any) -> None:
    """A removed key (``REMOVED_KEYS``, e.g. in a config logged before it left): nothing to set at the value the
    code still follows, a ConfigError with the reason at any other."""
    kept, why = REMOVED_KEYS[full]
    if str(value).strip() != kept:
        raise ConfigError(f"{full}={value} is no longer an option: {why}; leave the key out (or set it to {kept})")


def _set(obj: Any, path: list[str], value: Any, full: str) -> Any:
    names = [f.name for f in fields(obj)]
    head = path[0]
    if head not in names:
        if full in REMOVED_KEYS:
            _removed(full, value)
            return obj
        raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{full}: expected a mapping of {', '.join(f.name for f in fields(current))}")
            new = current
            for k, v in value.items():
                new = _set(new, [k], v, f"{full}.{k}")
            return replace(obj, **{head: new})
        return replace(obj, **{head: _coerce(value, current, full)})
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"unknown config key {full!r}: {head!r} has no sub-keys")
    return replace(obj, **{head: _set(current, path[1:], value, full)})


def apply_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Apply dotted-key overrides (values may be YAML strings) and validate the result."""
    for key, value in overrides.items():
        cfg = _set(cfg, key.split("."), value, key)
    validate(cfg)
    return cfg


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["loss.gamma=1.5"]`` -> ``{"loss.gamma": "1.5"}``; values stay strings until applied."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. loss.gamma=1.5")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _read_yaml(p: Path) -> dict[str, Any]:
    """One technique file's own mapping."""
    if not p.is_file():
        raise ConfigError(f"experiment file {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return dict(raw)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: sections merge key by key, anything else (a list too) is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def parent_path(name: str, child: Path) -> Path:
    """The file a ``parent:`` names: a technique of the child's folder (``fused_text``), or ``<stage>/<name>`` of
    the experiments folder above it (``pretrain/fused_text``); an unknown one lists the choices."""
    folder = child.parent if "/" not in name else child.parent.parent
    cand = folder / f"{name}.yaml"
    if cand.is_file():
        return cand
    here = sorted(x.stem for x in child.parent.glob("*.yaml") if x != child)
    there = sorted(f"{x.parent.name}/{x.stem}" for x in child.parent.parent.glob("*/*.yaml") if x != child)
    raise ConfigError(f"{child}: unknown parent {name!r}; choose one of: {', '.join(here + there)}")


def technique_raw(path: str | Path) -> dict[str, Any]:
    """A technique file's keys with its parents' under them (``parent: name``; each file states only what differs).

    ``technique`` is the file's own stem unless it sets one; ``description`` is never inherited (it describes
    one file). A cycle of parents is an error naming the files.
    """
    chain: list[Path] = []
    p = Path(path)
    while True:
        if p.resolve() in [c.resolve() for c in chain]:
            raise ConfigError(f"technique parents form a cycle: {' -> '.join(str(c) for c in chain + [p])}")
        chain.append(p)
        raw = _read_yaml(p)
        parent = raw.get("parent")
        if parent is None:
            break
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{p}: parent must name a technique file, e.g. parent: fused_text")
        p = parent_path(parent, p)
    merged: dict[str, Any] = {}
    for p in reversed(chain):
        own = _read_yaml(p)
        own.pop("parent", None)
        merged = _merge({k: v for k, v in merged.items() if k not in ("description", "technique")}, own)
    merged.setdefault("technique", Path(path).stem)
    return merged


def load_experiment(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    profile: str = "default",
    stage: str | None = None,
) -> ExperimentConfig:
    """Resolve an experiment: defaults <- profile <- YAML file (over its parents) <- overrides.

    Args:
        path: an ``experiments/**.yaml`` file, or None for the defaults.
        overrides: dotted keys, e.g. ``{"loss.gamma": "1.5"}``.
        profile: a name in PROFILES.
        stage: the stage the caller runs; a file of another stage is an error.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    cfg = ExperimentConfig(stage=stage or "pretrain")
    cfg = apply_overrides(cfg, PROFILES[profile])
    if path is not None:
        p = Path(path)
        cfg = apply_overrides(cfg, flatten(technique_raw(p)))
        if stage is not None and cfg.stage != stage:
            raise ConfigError(f"{p} is a {cfg.stage} technique, not a {stage} one")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


PROJECT_EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"  # this checkout's techniques


def find_technique(name_or_path: str, stage: str, root: str | Path = "experiments") -> Path:
    """A technique by name (``focal``) or path; an unknown name lists the valid ones.

    A name is looked up in ``root/<stage>`` (relative to the working directory), and, when no such
    folder is there, in the project's own ``experiments/`` (so ``fashion pretrain -t focal`` works from
    any directory of a source checkout).
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"experiment file {str(p)!r} not found")
        return p
    folder = Path(root) / stage
    if not folder.is_dir() and str(root) == "experiments" and (PROJECT_EXPERIMENTS / stage).is_dir():
        folder = PROJECT_EXPERIMENTS / stage
    cand = folder / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    valid = sorted(x.stem for x in folder.glob("*.yaml"))
    if not valid:
        raise ConfigError(
            f"unknown {stage} technique {name_or_path!r}: no {folder} folder of technique files here; "
            "run from the project folder or pass the path of a technique's YAML file"
        )
    raise ConfigError(f"unknown {stage} technique {name_or_path!r}; choose one of: {', '.join(valid)}")


def list_techniques(stage: str, root: str | Path = "experiments") -> list[Path]:
    return sorted((Path(root) / stage).glob("*.yaml"))


def describe(cfg: Any) -> str:
    """One plan line of a resolved config: what trains, on what input, for how long."""
    m, t, d = cfg.model, cfg.train, cfg.data
    if cfg.fusion.mode == "metadata_only":
        net = "metadata-only logistic regression" + (" + zero-shot head" if cfg.zeroshot.enabled else "")
    else:
        net = (
            f"{m.backbone} ({m.init}, width {m.width_mult}) at {d.height}x{d.width} x{m.input_scale:g}, "
            f"{t.epochs} epochs, batch {t.batch_size}, loss {cfg.loss.name}"
            + (f", fusion {cfg.fusion.mode}" if cfg.fusion.mode != "none" else "")
        )
    transfer = f", transfer {cfg.transfer.method}" if cfg.stage == "finetune" else ""
    return f"{cfg.stage}/{cfg.technique} seed {t.seed}: {net}{transfer}, device {t.device}"
