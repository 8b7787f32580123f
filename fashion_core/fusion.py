"""Product metadata in the network: encoders, fusion modules, auxiliary heads, and their wiring into a stage.

Inputs (``fusion.fields``; ``year`` is never one, it defines the split):

- categorical ``gender``, ``baseColour``, ``season``, ``usage`` (and, only when asked through
  ``fusion.leaky_fields``, ``masterCategory`` / ``subCategory``): a vocabulary fitted on the
  TRAINING rows of the stage that builds the encoders. Code 0 is the unknown bucket (a value never
  seen in training), code 1 is "missing" (empty cell); the literal ``NA`` is a value of its own.
  The techniques in ``experiments/`` leave ``season`` out: it is the catalogue season a product was
  listed in and tracks time like ``year`` (Tshirts: mostly Fall in 2010, mostly Summer in 2012).
- ``productDisplayName``: lower-cased words, plurals made singular (``fusion.text_stem``, Harman's
  S-stemmer: the odd years write "Wallets" where the even years write "Wallet"; with
  ``fusion.text_stem_rules=plural`` also "Dresses" -> dress, which Harman's rules leave as "dresse"), and pairs with
  ``fusion.text_ngrams=2``, hashed with CRC-32 into ``fusion.text_buckets`` buckets, averaged by an
  ``EmbeddingBag``. Hashing rather than a learned vocabulary, because the finetune stage's classes
  bring words the pretrain stage never saw (``cufflinks``, ``saree``): they get their own buckets with
  nothing to fit or carry over, and the pretrained encoder keeps working on them.

Fusion (``fusion.mode``), on any backbone, keeping the embedding size of the image model, so every
head and transfer method works on the fused embedding:

- ``late``: [image embedding ; metadata embedding] -> Linear -> ReLU (the MLP head's hidden layer,
  which the class head reads);
- ``film``: the metadata embedding scales and shifts each channel of the image feature map
  (zero-initialised, so training starts from the image-only model), then ReLU and pooling.

The lookup tables learn at ``train.lr * fusion.meta_embed_lr_mult`` without weight decay: a word's
row moves only when the word is in the batch, and at the plain learning rate the name path is far
from trained within a quick profile's few hundred steps.

``fusion.meta_dropout`` zeroes an item's whole metadata embedding with that chance in training, so
the image path keeps classifying on its own (the name nearly gives the label away in training, and
odd-year names such as "... Kidswear" do not). ``fusion.text_dropout`` (word dropout, Iyyer et al. 2015)
leaves each hashed word of a name out with that chance in training, so the model also learns from
names that lack their most telling word. ``fusion.class_word_dropout`` shows a training item's name without
the words of its own class ("Puma Men Red T-shirt" -> "Puma Men Red") with that chance: the odd years
name many products without them ("Disney Kids Girl's Pink Kidswear"), and there the image, the brand and
the other words must decide. Only training rows get the class-less name; it is built from their labels.

Auxiliary heads (``fusion.aux_master`` / ``fusion.aux_sub`` > 0) predict ``masterCategory`` /
``subCategory`` from the fused embedding as extra training targets; they are outputs only.
Feeding those two fields in as inputs (``fusion.leaky_fields``) tags the run ``leaky=true``.

Transfer methods on a fused model: the heads see the fused embedding, so linear_probe, partial,
imprint, imprint_finetune, ncm and finetune all work (imprint and NCM embed the training set with
its metadata). A fused model is not logged as an MLflow serving model (that one takes images only).

In the finetune stage the encoders (vocabularies and weights) come from the pretrain run; the
class head and the auxiliary heads are new, fitted on the finetune stage's own training rows.

    .venv/bin/python -c "from fashion_core.fusion import TextHasher; print(TextHasher(4096).encode(['Puma Men Black Shoes'])[0][:8])"
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import LEAKY_FIELDS, ConfigError, ExperimentConfig, FusionConfig, ModelConfig, to_dict
from .models import FashionNet, build_model
from .models import param_groups as plain_param_groups
from .train import LabelLoss, logits_of

TEXT_FIELD = "productDisplayName"
UNKNOWN, MISSING = 0, 1  # reserved codes of every categorical vocabulary
MAX_TOKENS = 32  # hashed n-grams kept per name (the longest real name has 14 words: 27 with pairs)
AUX_FIELDS = {"aux_master": "masterCategory", "aux_sub": "subCategory"}  # output key -> catalogue column
# The fusion settings that shape the encoders: a finetune run takes them from its pretrain run.
INPUT_KEYS = ("mode", "fields", "leaky_fields", "text_buckets", "text_ngrams", "text_stem", "text_stem_rules",
              "embed_dim")
# An input key's value in runs logged before the key existed (they did not stem; then stemmed by Harman's rules).
LEGACY_INPUTS = {"text_stem": False, "text_stem_rules": "harman"}
_TOKEN = re.compile(r"[a-z0-9]+")


# ---------------------------------------------------------------- encoders (vocabularies)

def _clean(values: Iterable[Any]) -> list[str]:
    """Cells as stripped strings; None / NaN become '' (missing)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and v != v) or v is pd.NA:
            out.append("")
        else:
            out.append(str(v).strip())
    return out


@dataclass(frozen=True)
class CategoryVocab:
    """Codes of one categorical field: 0 unknown, 1 missing, 2.. the values seen in training (sorted)."""

    field: str
    values: tuple[str, ...]

    @classmethod
    def fit(cls, field_name: str, values: Iterable[Any]) -> "CategoryVocab":
        """The vocabulary of the non-empty values among ``values`` (the training rows)."""
        return cls(field_name, tuple(sorted({v for v in _clean(values) if v})))

    @property
    def size(self) -> int:
        return len(self.values) + 2

    def encode(self, values: Iterable[Any]) -> np.ndarray:
        """Values -> int64 codes; empty -> MISSING, never seen in training -> UNKNOWN."""
        index = {v: i + 2 for i, v in enumerate(self.values)}
        return np.asarray([MISSING if not v else index.get(v, UNKNOWN) for v in _clean(values)], dtype=np.int64)


def s_stem(word: str, rules: str = "harman") -> str:
    """A plural to its singular, nothing else (``wallets``, ``accessories``, ``shoes``, and with "plural" ``dresses``).

    ``rules="harman"`` is Harman's (1991) S-stemmer: ies -> y (not eies, aies); es -> e (not aes, ees, oes);
    s -> '' (not us, ss); words of 3 letters or fewer stay. It leaves an "e" on the plurals of words that end
    in s, ch, sh or x (dresses -> dresse, watches -> watche, while dress and watch stay); ``rules="plural"``
    first takes -es off those (sses -> ss, ches -> ch, shes -> sh, xes -> x), so both forms meet.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if rules == "plural" and word.endswith(("sses", "ches", "shes", "xes")):
        return word[:-2]
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


_NOT_CLASS_WORDS = {"and", "of", "the", "with", "for"}  # "Perfume and Body Mist"


def class_words(label: str) -> set[str]:
    """The singular words of a class name that a product name may hold ("Casual Shoes" -> casual, shoe)."""
    return {s_stem(w, "plural") for w in _TOKEN.findall(label.lower()) if w not in _NOT_CLASS_WORDS}


def holds_class_word(label: str, name: Any) -> bool:
    """Whether the name holds a word of its class, letters and digits only ("T-shirt" holds "Tshirts")."""
    compact = re.sub(r"[^a-z0-9]", "", _clean([name])[0].lower())
    return any(w in compact for w in class_words(label))


def drop_class_words(name: Any, label: str) -> str:
    """The name without the words of its class: single words ("Shoes") and split ones ("T-shirt", "Flip-Flops")."""
    wanted = class_words(label)
    words = _TOKEN.findall(_clean([name])[0].lower())
    drop = [False] * len(words)
    for i, w in enumerate(words):
        if s_stem(w, "plural") in wanted or w in wanted:
            drop[i] = True
        elif i + 1 < len(words) and s_stem(w + words[i + 1], "plural") in wanted:
            drop[i] = drop[i + 1] = True
    return " ".join(w for w, d in zip(words, drop) if not d)


@dataclass(frozen=True)
class TextHasher:
    """productDisplayName -> up to MAX_TOKENS hashed word n-gram buckets, padded with ``buckets`` (the pad index)."""

    buckets: int
    ngrams: int = 2
    stem: bool = False
    rules: str = "harman"  # s_stem's rules when ``stem`` (models logged before the key: Harman's)

    def tokens(self, text: str) -> list[str]:
        """Lower-cased alphanumeric words (singular when ``stem``), then the word pairs (and triples) when ngrams > 1."""
        words = _TOKEN.findall(text.lower())
        if self.stem:
            words = [s_stem(w, self.rules) for w in words]
        grams = list(words)
        for n in range(2, self.ngrams + 1):
            grams += [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
        return grams[:MAX_TOKENS]

    def bucket(self, token: str) -> int:
        # CRC-32, not hash(): Python's string hash changes with every process.
        return zlib.crc32(token.encode("utf-8")) % self.buckets

    def encode(self, texts: Iterable[Any]) -> np.ndarray:
        """(N, MAX_TOKENS) int64 bucket ids, padded with ``buckets``; an empty name is all padding."""
        texts = _clean(texts)
        out = np.full((len(texts), MAX_TOKENS), self.buckets, dtype=np.int64)
        memo: dict[str, int] = {}
        for i, t in enumerate(texts):
            ids = [memo.setdefault(g, self.bucket(g)) for g in self.tokens(t)]
            out[i, :len(ids)] = ids
        return out


@dataclass(frozen=True)
class MetaVocab:
    """Everything that turns catalogue rows into encoder inputs; fitted once, carried to the finetune stage."""

    categorical: tuple[CategoryVocab, ...]
    text: TextHasher | None

    @classmethod
    def fit(cls, rows: pd.DataFrame, fcfg: FusionConfig) -> "MetaVocab":
        """Fit on training rows: ``fields`` (minus the name) then ``leaky_fields`` become categorical inputs."""
        names = [f for f in fcfg.fields if f != TEXT_FIELD] + list(fcfg.leaky_fields)
        absent = [f for f in names + ([TEXT_FIELD] if TEXT_FIELD in fcfg.fields else []) if f not in rows.columns]
        if absent:
            raise ConfigError(f"fusion fields {', '.join(absent)} are not columns of this catalogue "
                              "(brandName, ageGroup, colour1, fashionType come with the full-resolution dataset)")
        text = TextHasher(fcfg.text_buckets, fcfg.text_ngrams, fcfg.text_stem, fcfg.text_stem_rules) \
            if TEXT_FIELD in fcfg.fields else None
        return cls(tuple(CategoryVocab.fit(n, rows[n]) for n in names), text)

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.categorical]

    def encode(self, rows: pd.DataFrame) -> dict[str, Tensor]:
        """``{"meta_cat": (N, F) int64[, "meta_text": (N, MAX_TOKENS) int64]}`` aligned with ``rows``."""
        cat = np.stack([v.encode(rows[v.field]) for v in self.categorical], axis=1) if self.categorical \
            else np.zeros((len(rows), 0), dtype=np.int64)
        out = {"meta_cat": torch.from_numpy(cat)}
        if self.text is not None:
            out["meta_text"] = torch.from_numpy(self.text.encode(rows[TEXT_FIELD]))
        return out

    def to_dict(self) -> dict:
        return {"categorical": {v.field: list(v.values) for v in self.categorical},
                "text": None if self.text is None else {"buckets": self.text.buckets, "ngrams": self.text.ngrams,
                                                        "stem": self.text.stem, "rules": self.text.rules}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "MetaVocab":
        text = d.get("text")
        return cls(tuple(CategoryVocab(k, tuple(v)) for k, v in d["categorical"].items()),
                   TextHasher(int(text["buckets"]), int(text["ngrams"]), bool(text.get("stem", False)),
                              str(text.get("rules", "harman"))) if text else None)


def aux_vocab(rows: pd.DataFrame, fcfg: FusionConfig) -> dict[str, tuple[str, ...]]:
    """The classes of each auxiliary head with a weight > 0, from the stage's training rows."""
    weights = {"aux_master": fcfg.aux_master, "aux_sub": fcfg.aux_sub}
    return {k: tuple(sorted({v for v in _clean(rows[col]) if v})) for k, col in AUX_FIELDS.items() if weights[k] > 0}


def encode_aux(rows: pd.DataFrame, aux: Mapping[str, tuple[str, ...]]) -> dict[str, Tensor]:
    """Auxiliary targets as int64 indices; a value outside the head's classes is -1 (ignored by the loss)."""
    out = {}
    for key, values in aux.items():
        index = {v: i for i, v in enumerate(values)}
        out[key] = torch.tensor([index.get(v, -1) for v in _clean(rows[AUX_FIELDS[key]])], dtype=torch.int64)
    return out


# ---------------------------------------------------------------- modules

class MetadataEncoder(nn.Module):
    """Metadata codes (B, F) and hashed name (B, T) -> a metadata embedding (B, out_dim).

    Args:
        cat_sizes: vocabulary size of each categorical field (codes 0/1 = unknown/missing included).
        text_buckets: hash buckets of the name, or None without the name.
        embed_dim: size of each field's embedding (and of the name's).
        out_dim: size of the result (a Linear + ReLU over the concatenated field embeddings).
    """

    def __init__(self, cat_sizes: list[int], text_buckets: int | None, embed_dim: int, out_dim: int):
        super().__init__()
        self.cat = nn.ModuleList(nn.Embedding(n, embed_dim) for n in cat_sizes)
        # The last row is the pad: EmbeddingBag leaves it out of the mean (an empty name gives zeros).
        self.text = nn.EmbeddingBag(text_buckets + 1, embed_dim, mode="mean", padding_idx=text_buckets) \
            if text_buckets else None
        n_in = embed_dim * (len(cat_sizes) + (1 if text_buckets else 0))
        self.proj = nn.Sequential(nn.Linear(n_in, out_dim), nn.ReLU(inplace=True))
        self.out_dim = out_dim

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        codes = batch["meta_cat"]
        parts = [emb(codes[:, i]) for i, emb in enumerate(self.cat)]
        if self.text is not None:
            parts.append(self.text(batch["meta_text"]))
        return self.proj(torch.cat(parts, dim=1))


class LateFusion(nn.Module):
    """[image embedding ; metadata embedding] -> Linear -> ReLU, back to the image embedding's size."""

    def __init__(self, image_dim: int, meta_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(image_dim + meta_dim, image_dim), nn.ReLU(inplace=True))

    def forward(self, fmap: Tensor, meta: Tensor) -> Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        return self.mlp(torch.cat([pooled, meta.to(pooled.dtype)], dim=1))


class FiLMFusion(nn.Module):
    """FiLM (Perez et al. 2018) on the last feature map: ReLU(x * (1 + gamma) + beta), then pooling.

    The projection starts at zero, so the fused model starts as the image-only one; the ReLU after
    the modulation is what lets it do more than an affine map of the pooled embedding.
    """

    def __init__(self, image_dim: int, meta_dim: int):
        super().__init__()
        self.film = nn.Linear(meta_dim, 2 * image_dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, fmap: Tensor, meta: Tensor) -> Tensor:
        gamma, beta = self.film(meta).to(fmap.dtype).chunk(2, dim=1)
        x = F.relu(fmap * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


FUSERS = {"late": LateFusion, "film": FiLMFusion}


class FusedNet(FashionNet):
    """A FashionNet whose embedding also sees product metadata, with optional auxiliary heads.

    ``forward_features(x, batch)`` is the fused embedding (same size as the image embedding), so
    heads, imprinting and nearest-class-mean work unchanged; ``forward`` returns
    ``{"logits", "aux_master"?, "aux_sub"?}``. ``set_trainable("head")`` freezes the image trunk,
    the metadata encoder and the fusion layer (the fused embedding is the fixed feature);
    ``"last_block"`` also trains the encoder and the fusion layer, which sit on top of the trunk.

    Args:
        net: the image model; its backbone, dropout and head are taken over (same state-dict keys).
        vocab: the encoders' vocabularies, or None for an image-only model with auxiliary heads.
        mode: "late" or "film" (ignored without ``vocab``).
        embed_dim: per-field embedding size of the metadata encoder.
        aux: auxiliary head name ("aux_master" / "aux_sub") -> its classes.
        meta_dropout: in training, the chance that an item's metadata embedding is zeroed, so the
            image path must classify on its own too (the name alone nearly gives the label away).
        embed_lr_mult: learning-rate multiplier of the metadata lookup tables (see ``param_groups``).
        text_dropout: in training, the chance that each hashed word (n-gram) of a name is left out.
        class_word_dropout: in training, the chance that an item's name is replaced by its class-less
            version (``meta_text_classless`` in the batch, built by ``FusionPlan.extras``).
    """

    def __init__(self, net: FashionNet, vocab: MetaVocab | None, mode: str = "late", embed_dim: int = 64,
                 aux: Mapping[str, tuple[str, ...]] | None = None, meta_dropout: float = 0.0,
                 embed_lr_mult: float = 1.0, text_dropout: float = 0.0, class_word_dropout: float = 0.0):
        nn.Module.__init__(self)
        self.name, self.backbone, self.drop, self.head = net.name, net.backbone, net.drop, net.head
        self.input_scale = net.input_scale
        self.embed_dim, self.trainable = net.embed_dim, net.trainable
        self.init_report = getattr(net, "init_report", None)
        self.vocab, self.mode, self.meta_embed_dim = vocab, (mode if vocab is not None else "none"), embed_dim
        self.meta_dropout = meta_dropout
        self.text_dropout = text_dropout
        self.class_word_dropout = class_word_dropout
        self.embed_lr_mult = embed_lr_mult
        self.meta: MetadataEncoder | None = None
        self.fuse: nn.Module | None = None
        if vocab is not None:
            if mode not in FUSERS:
                raise ConfigError(f"unknown fusion mode {mode!r} for a network; choose one of: {', '.join(FUSERS)}")
            self.meta = MetadataEncoder([v.size for v in vocab.categorical],
                                        vocab.text.buckets if vocab.text else None, embed_dim, 2 * embed_dim)
            self.fuse = FUSERS[mode](self.embed_dim, self.meta.out_dim)
        self.aux_classes: dict[str, tuple[str, ...]] = {}
        self.aux = nn.ModuleDict()
        self.set_aux(aux or {})
        ref = next(self.backbone.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

    @property
    def uses_batch(self) -> bool:
        return self.meta is not None

    def set_aux(self, aux: Mapping[str, tuple[str, ...]]) -> None:
        """Replace the auxiliary heads by fresh linear ones, one per entry (name -> classes)."""
        self.aux_classes = {k: tuple(v) for k, v in aux.items()}
        heads = nn.ModuleDict({k: nn.Linear(self.embed_dim, max(1, len(v))) for k, v in self.aux_classes.items()})
        if len(self.aux_classes):
            ref = next(self.backbone.parameters())
            heads.to(device=ref.device, dtype=ref.dtype)
        self.aux = heads

    def embedding_tables(self) -> list[nn.Parameter]:
        """The metadata encoder's lookup tables (one row per value / hash bucket)."""
        if self.meta is None:
            return []
        return [e.weight for e in self.meta.cat] + ([self.meta.text.weight] if self.meta.text is not None else [])

    def metadata_parameters(self):
        """Parameters of the metadata encoder and the fusion layer."""
        for m in (self.meta, self.fuse):
            if m is not None:
                yield from m.parameters()

    def forward_features(self, x: Tensor, batch: Mapping[str, Tensor] | None = None) -> Tensor:
        """Images (B, 3, H, W) and their batch (metadata codes) -> fused embedding (B, embed_dim)."""
        fmap = self.backbone(self.scale_input(x))
        if self.meta is None:
            return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)
        if batch is None or "meta_cat" not in batch:
            raise ValueError("this model fuses product metadata: call it with the batch (meta_cat, meta_text)")
        if self.training and self.class_word_dropout > 0 and "meta_text_classless" in batch:
            swap = torch.rand(batch["meta_text"].shape[0], 1, device=batch["meta_text"].device) < self.class_word_dropout
            batch = {**batch, "meta_text": torch.where(swap, batch["meta_text_classless"], batch["meta_text"])}
        if self.training and self.text_dropout > 0 and self.meta.text is not None:
            text = batch["meta_text"]
            pad = self.meta.text.padding_idx
            drop = torch.rand(text.shape, device=text.device) < self.text_dropout
            batch = {**batch, "meta_text": text.masked_fill(drop, pad)}
        meta = self.meta(batch)
        if self.training and self.meta_dropout > 0:
            keep = torch.rand(meta.shape[0], 1, device=meta.device) >= self.meta_dropout
            meta = meta * keep.to(meta.dtype)
        return self.fuse(fmap, meta)

    def forward(self, x: Tensor, batch: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        feats = self.forward_features(x, batch)
        out = {"logits": self.forward_head(feats)}
        dropped = self.drop(feats)
        for k, head in self.aux.items():
            out[k] = head(dropped)
        return out

    def set_trainable(self, policy: str) -> None:
        super().set_trainable(policy)  # the trunk and the class head
        for p in self.metadata_parameters():
            p.requires_grad_(policy != "head")
        self.aux.requires_grad_(True)


def is_fused(model: nn.Module) -> bool:
    return isinstance(model, FusedNet)


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups as ``models.param_groups``; a FusedNet's metadata encoder and fusion layer run at ``lr``.

    Only the image trunk is slowed by ``transfer.backbone_lr_mult``: hashed words the pretrain stage
    never saw start from their initialisation in the finetune stage and must move as fast as the head.
    The lookup tables (group ``metadata_embeddings``) run at ``lr * model.embed_lr_mult`` without
    weight decay: a row learns only from the items that hold its value, as in wide-and-deep models,
    where the sparse features get a larger step than the dense layers.
    """
    if not isinstance(model, FusedNet):
        return plain_param_groups(model, lr, backbone_lr_mult, weight_decay)
    table_ids = {id(p) for p in model.embedding_tables()}
    meta_ids = {id(p) for p in model.metadata_parameters()} - table_ids
    head_ids = {id(p) for p in model.head_parameters()} | {id(p) for p in model.aux.parameters()}
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            if id(p) in table_ids:  # no decay: AdamW would shrink every row, also those of absent words
                buckets.setdefault(("metadata_embeddings", False), []).append(p)
                continue
            part = "head" if id(p) in head_ids else "metadata" if id(p) in meta_ids else "backbone"
            buckets.setdefault((part, p.ndim > 1), []).append(p)
    groups = []
    for part, part_lr in (("backbone", lr * backbone_lr_mult), ("metadata", lr),
                          ("metadata_embeddings", lr * model.embed_lr_mult), ("head", lr)):
        for decay in (True, False):
            params = buckets.get((part, decay))
            if params:
                name = part if decay or part == "metadata_embeddings" else f"{part}_no_decay"
                groups.append({"name": name, "params": params, "lr": part_lr,
                               "weight_decay": weight_decay if decay else 0.0})
    return groups


# ---------------------------------------------------------------- loss

class AuxLoss(LabelLoss):
    """The label loss plus ``weight * cross-entropy`` of each auxiliary head (targets of -1 are ignored).

    Outputs without the auxiliary keys (a plain logits tensor, as ``train.evaluate`` passes) give the
    label loss alone.

    Args:
        loss: the class loss ``loss(logits, target)`` (``losses.build_loss``).
        weights: output key ("aux_master" / "aux_sub") -> loss weight.
    """

    def __init__(self, loss: nn.Module, weights: Mapping[str, float]):
        super().__init__(loss)
        self.weights = {k: float(w) for k, w in weights.items() if w > 0}

    def forward(self, out: Any, batch: Mapping[str, Tensor]) -> Tensor:
        total = self.loss(logits_of(out).float(), batch["label"])
        if isinstance(out, Mapping):
            for key, w in self.weights.items():
                if key in out and key in batch and bool((batch[key] >= 0).any()):
                    total = total + w * F.cross_entropy(out[key].float(), batch[key], ignore_index=-1)
        return total


def wrap_criterion(cfg: ExperimentConfig, loss: nn.Module) -> LabelLoss:
    """``LabelLoss(loss)``, or ``AuxLoss`` when the config weights an auxiliary head."""
    weights = {"aux_master": cfg.fusion.aux_master, "aux_sub": cfg.fusion.aux_sub}
    return AuxLoss(loss, weights) if any(w > 0 for w in weights.values()) else LabelLoss(loss)


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
        if self.fusion.class_word_dropout > 0 and self.vocab is not None and self.vocab.text is not None:
            # class-less names for the TRAINING rows only (they come from the labels); the rest keep theirs
            train = (rows["split"] == "train").to_numpy()
            names = meta[TEXT_FIELD].fillna("").astype(str).to_numpy()
            less = [drop_class_words(n, lab) if t else n for n, lab, t in zip(names, rows["label"].astype(str), train)]
            out["meta_text_classless"] = torch.from_numpy(self.vocab.text.encode(less))
        out.update(encode_aux(meta, self.aux))
        return out

    def chain(self, other: Callable | None) -> Callable:
        """This plan's extras, plus those of a caller's ``extras_fn`` when there is one."""
        if other is None:
            return self.extras
        return lambda p, rows, classes: {**other(p, rows, classes), **self.extras(p, rows, classes)}

    def new_model(self, model_cfg: ModelConfig, num_classes: int) -> FusedNet:
        """A fresh fused model (the image part initialised as ``model.init`` says)."""
        return FusedNet(build_model(model_cfg, num_classes), self.vocab, self.fusion.mode, self.fusion.embed_dim,
                        self.aux, self.fusion.meta_dropout, self.fusion.meta_embed_lr_mult, self.fusion.text_dropout,
                        self.fusion.class_word_dropout)

    def adapt(self, model: FashionNet) -> FusedNet:
        """A pretrained model for this stage: its encoders carried over, this stage's auxiliary heads new."""
        if isinstance(model, FusedNet):
            model.set_aux(self.aux)
            model.meta_dropout, model.embed_lr_mult = self.fusion.meta_dropout, self.fusion.meta_embed_lr_mult
            model.text_dropout, model.class_word_dropout = self.fusion.text_dropout, self.fusion.class_word_dropout
            return model
        return FusedNet(model, None, "none", self.fusion.embed_dim, self.aux)


def needs_plan(cfg: ExperimentConfig) -> bool:
    """Whether a network config uses metadata as input or as auxiliary targets."""
    f = cfg.fusion
    return f.mode in FUSERS or f.aux_master > 0 or f.aux_sub > 0


def plan_stage(cfg: ExperimentConfig, prepared, source: tuple[FashionNet, dict] | None = None,
               log=print) -> tuple[ExperimentConfig, FusionPlan | None]:
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
            theirs = {k: src_cfg.get(k, LEGACY_INPUTS.get(k, to_dict(getattr(FusionConfig(), k)))) for k in INPUT_KEYS}
            if cfg.fusion.mode != "none" and wanted != theirs:
                diff = ", ".join(f"{k}: {wanted[k]} here, {theirs[k]} there"
                                 for k in INPUT_KEYS if wanted[k] != theirs[k])
                raise ConfigError(f"technique {cfg.technique} needs a pretrain run with the same metadata encoders "
                                  f"({diff}); pass --from a matching pretrain run")
            if cfg.fusion.mode == "none":
                inputs = ", ".join(list(theirs["fields"]) + list(theirs["leaky_fields"]))
                log(f"the pretrained model fuses metadata ({theirs['mode']}: {inputs}); its encoders carry over")
            cfg = cfg.replace(**{f"fusion.{k}": v for k, v in theirs.items()})
            src_vocab = MetaVocab.from_dict(src_fused)
        elif cfg.fusion.mode != "none":
            raise ConfigError(f"technique {cfg.technique} fuses metadata (fusion.mode={cfg.fusion.mode}) but the "
                              "pretrain run has no metadata encoders; pass --from a fused pretrain run "
                              "or use transfer.method=scratch")
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
        log(f"LEAKY: {', '.join(cfg.fusion.leaky_fields)} are model inputs; the run is tagged leaky=true")
    return cfg, FusionPlan(cfg.fusion, vocab, aux_vocab(train_rows, cfg.fusion))


def run_tags(cfg: ExperimentConfig, plan: FusionPlan | None) -> dict[str, str]:
    """Tags that say what a run fed its model: ``fusion`` (mode), ``fusion_inputs``, ``aux_heads``."""
    if plan is None:
        return {"fusion": "none"}
    inputs = (plan.vocab.fields + ([TEXT_FIELD] if plan.vocab.text else [])) if plan.vocab is not None else []
    return {"fusion": plan.fusion.mode if plan.vocab is not None else "none", "fusion_inputs": ",".join(inputs),
            "aux_heads": ",".join(plan.aux)}


# ---------------------------------------------------------------- model.json round trip

def model_meta(model: nn.Module) -> dict:
    """What ``model.json`` needs to rebuild a FusedNet (``{}`` for a plain FashionNet)."""
    if not isinstance(model, FusedNet):
        return {}
    return {"fused": {"mode": model.mode, "embed_dim": model.meta_embed_dim,
                      "vocab": model.vocab.to_dict() if model.vocab is not None else None,
                      "aux": {k: list(v) for k, v in model.aux_classes.items()}}}


def model_from_meta(model_cfg: ModelConfig, meta: Mapping) -> FashionNet:
    """The (untrained) model a ``model.json`` describes: a FusedNet when it has a ``fused`` entry."""
    net = build_model(model_cfg, len(meta["classes"]))
    fused = meta.get("fused")
    if not fused:
        return net
    vocab = MetaVocab.from_dict(fused["vocab"]) if fused.get("vocab") else None
    return FusedNet(net, vocab, fused["mode"], int(fused["embed_dim"]),
                    {k: tuple(v) for k, v in fused.get("aux", {}).items()})


__all__ = ["CategoryVocab", "TextHasher", "MetaVocab", "MetadataEncoder", "LateFusion", "FiLMFusion", "FusedNet",
           "AuxLoss", "FusionPlan", "plan_stage", "wrap_criterion", "param_groups", "model_meta", "model_from_meta",
           "is_fused", "needs_plan", "LEAKY_FIELDS", "UNKNOWN", "MISSING"]
