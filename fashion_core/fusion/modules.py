"""The fusion modules: metadata encoder, late / FiLM fusion, ``FusedNet`` and its parameter groups.

The auxiliary heads' loss is ``losses.Criterion``'s (weighted by ``fusion.aux_master`` / ``fusion.aux_sub``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fashion_core.config.checks import ConfigError
from fashion_core.fusion.encoders import MetaVocab
from fashion_core.models.network import FashionNet
from fashion_core.models.network import param_groups as plain_param_groups

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
        self.text = (
            nn.EmbeddingBag(text_buckets + 1, embed_dim, mode="mean", padding_idx=text_buckets)
            if text_buckets
            else None
        )
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
    """

    def __init__(
        self,
        net: FashionNet,
        vocab: MetaVocab | None,
        mode: str = "late",
        embed_dim: int = 64,
        aux: Mapping[str, tuple[str, ...]] | None = None,
        meta_dropout: float = 0.0,
        embed_lr_mult: float = 1.0,
    ):
        nn.Module.__init__(self)
        self.name, self.backbone, self.drop, self.head = net.name, net.backbone, net.drop, net.head
        self.input_scale = net.input_scale
        self.embed_dim, self.trainable = net.embed_dim, net.trainable
        self.init_report = getattr(net, "init_report", None)
        self.vocab, self.mode, self.meta_embed_dim = vocab, (mode if vocab is not None else "none"), embed_dim
        self.meta_dropout = meta_dropout
        self.embed_lr_mult = embed_lr_mult
        self.meta: MetadataEncoder | None = None
        self.fuse: nn.Module | None = None
        if vocab is not None:
            if mode not in FUSERS:
                raise ConfigError(f"unknown fusion mode {mode!r} for a network; choose one of: {', '.join(FUSERS)}")
            self.meta = MetadataEncoder(
                [v.size for v in vocab.categorical],
                vocab.text.buckets if vocab.text else None,
                embed_dim,
                2 * embed_dim,
            )
            self.fuse = FUSERS[mode](self.embed_dim, self.meta.out_dim)
        self.aux_classes: dict[str, tuple[str, ...]] = {}
        self.aux = nn.ModuleDict()
        self.set_aux(aux or {})
        ref = next(self.backbone.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

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
        tables = [e.weight for e in self.meta.cat] + ([self.meta.text.weight] if self.meta.text is not None else [])
        return cast(list[nn.Parameter], tables)  # an embedding's weight is a Parameter

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
        meta = self.meta(batch)
        if self.training and self.meta_dropout > 0:
            keep = torch.rand(meta.shape[0], 1, device=meta.device) >= self.meta_dropout
            meta = meta * keep.to(meta.dtype)
        assert self.fuse is not None  # __init__ sets it together with self.meta
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


def reads_metadata(model: nn.Module) -> bool:
    """Whether a network reads catalogue fields from its batch (a FusedNet with a metadata encoder).

    It decides what serving asks for (photo and fields, or the photo alone), not how the network is called.
    """
    return isinstance(model, FusedNet) and model.meta is not None


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
    for part, part_lr in (
        ("backbone", lr * backbone_lr_mult),
        ("metadata", lr),
        ("metadata_embeddings", lr * model.embed_lr_mult),
        ("head", lr),
    ):
        for decay in (True, False):
            params = buckets.get((part, decay))
            if params:
                name = part if decay or part == "metadata_embeddings" else f"{part}_no_decay"
                groups.append(
                    {"name": name, "params": params, "lr": part_lr, "weight_decay": weight_decay if decay else 0.0}
                )
    return groups
