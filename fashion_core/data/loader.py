"""Batches by index from uint8 tensors, and augmentation on tensors, on the device.

No per-item Python in the hot loop: a batch is one gather from an N x H x W x 3 uint8
tensor (in memory, or on the GPU when there is one), and augmentation is one batched
``grid_sample`` (random resized crop + horizontal flip) followed by one batched 3x3 colour
matrix per image that folds colour jitter and normalisation together. The random draws
are made on the CPU generator (so a seed gives the same batch on every device) and reach
the device as one small copy per batch. This replaces ``torch.utils.data.DataLoader`` and
torchvision's per-image transforms on purpose: those run Python per item in worker processes,
which bench/pipeline.py measures as several times slower on this data (docs/performance.md).

    .venv/bin/python -c "import torch; from fashion_core.config.schema import AugmentConfig; from fashion_core.data.loader import augment; print(augment(torch.zeros(4, 80, 60, 3, dtype=torch.uint8), AugmentConfig()).shape)"
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fashion_core.config.schema import AugmentConfig

# The catalogue's own statistics are close to these; ImageNet's keep imagenet init honest.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's saturation uses
# Normalised values of black and white per channel: clamping here equals clamping to [0, 1] first.
_LO = tuple(-m / s for m, s in zip(MEAN, STD))
_HI = tuple((1 - m) / s for m, s in zip(MEAN, STD))


@dataclass
class TensorData:
    """A stage's split: images (N,H,W,3 uint8), labels (N,) int64, and optional extra per-item tensors."""

    images: torch.Tensor
    labels: torch.Tensor
    extras: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device) -> TensorData:
        return TensorData(
            self.images.to(device, non_blocking=True),
            self.labels.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def pin_memory(self) -> TensorData:
        """The same tensors in page-locked host memory (CUDA only): batches then copy to the GPU without blocking."""
        return TensorData(
            self.images.pin_memory(), self.labels.pin_memory(), {k: v.pin_memory() for k, v in self.extras.items()}
        )

    def subset(self, idx: torch.Tensor) -> TensorData:
        return TensorData(self.images[idx], self.labels[idx], {k: v[idx] for k, v in self.extras.items()})


def batches(
    data: TensorData,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | None = None,
    max_batches: int = 0,
    shard: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield dicts ``{"image": uint8 NHWC, "label": int64, **extras}`` on ``device``.

    ``shard`` maps each global batch's indices to the part this process takes (``distributed``:
    one rank's slice); the permutation and the batch boundaries stay those of one process.
    """
    n = len(data)
    if shuffle:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    # One copy of the order per epoch: a copy per batch would stall a GPU on every step.
    order = order.to(data.images.device)
    stop = n - (n % batch_size if drop_last and n >= batch_size else 0)
    # Host data in pinned memory (``TensorData.pin_memory``): gather each batch into pinned memory too,
    # so that the copy to the GPU below is asynchronous.
    pinned = (
        device is not None and device.type == "cuda" and data.images.device.type == "cpu" and data.images.is_pinned()
    )
    count = 0
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        if shard is not None:
            idx = shard(idx)
        batch = {"image": _gather(data.images, idx, pinned), "label": _gather(data.labels, idx, pinned)}
        batch.update({k: _gather(v, idx, pinned) for k, v in data.extras.items()})
        if device is not None:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        yield batch
        count += 1
        if max_batches and count >= max_batches:
            return


def _gather(t: torch.Tensor, idx: torch.Tensor, pinned: bool = False) -> torch.Tensor:
    """Rows ``idx`` of ``t``; into a pinned buffer when asked (torch's pinned-memory cache recycles it safely)."""
    # index_select, not t[idx]: the same rows, much faster for uint8 images on CPU (docs/performance.md).
    if not pinned:
        return t.index_select(0, idx)
    out = torch.empty((idx.shape[0], *t.shape[1:]), dtype=t.dtype, pin_memory=True)
    return torch.index_select(t, 0, idx, out=out)


def num_batches(n: int, batch_size: int, drop_last: bool = False, max_batches: int = 0) -> int:
    """How many batches ``batches`` yields for ``n`` items."""
    nb = n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)
    return min(nb, max_batches) if max_batches else nb


@functools.lru_cache(maxsize=8)
def _normalisers(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of shape (3,) that map uint8 values to normalised floats, kept per device.

    Cached because building a CUDA tensor from Python numbers is a blocking copy.
    """
    scale = torch.tensor([1 / (255 * s) for s in STD])
    shift = torch.tensor([-m / s for m, s in zip(MEAN, STD)])
    return scale.to(device), shift.to(device)


def to_float(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW (contiguous, or channels-last when asked)."""
    scale, shift = _normalisers(images.device)
    if channels_last:
        # NHWC memory already is channels-last: normalise in place of layout, then relabel the dims.
        return torch.addcmul(shift, images.float(), scale).permute(0, 3, 1, 2)
    # Transposing bytes before widening moves a quarter of the memory.
    x = images.permute(0, 3, 1, 2).contiguous().float()
    return torch.addcmul(shift.view(1, 3, 1, 1), x, scale.view(1, 3, 1, 1))


def _draw_params(
    b: int, h: int, w: int, cfg: AugmentConfig, generator: torch.Generator | None, geometric: bool, complemented: bool
) -> torch.Tensor:
    """Per-image augmentation parameters drawn on the CPU: (b, 19) = grid (4), colour matrix (9), bias (3), k (3).

    The normalised output is ``A @ s + bias0 + k * mean(x)`` for sampled values ``s``, where
    ``x = p + q * s`` is the image in [0, 1] (``s`` is ``255 - pixel`` when ``complemented``).
    """

    def rand(n: int) -> torch.Tensor:
        return torch.rand(n, generator=generator)

    grid = torch.zeros(b, 4)
    if geometric:
        area = cfg.crop_scale_min + (1 - cfg.crop_scale_min) * rand(b)
        log_r = (rand(b) * 2 - 1) * math.log(4 / 3)
        # Keep both sides <= 1 so the crop has exactly `area` and stays inside the image
        # (torchvision resamples instead; clamping the ratio needs no loop).
        log_r = torch.maximum(torch.minimum(log_r, -area.log()), area.log())
        ratio = torch.exp(log_r)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        # Shifts keep the outermost sample points on or inside the outermost pixel centres,
        # so bilinear sampling never blends in the padding at the crop's edge.
        tx = (rand(b) * 2 - 1) * (1 - sx) * (1 - 1 / w)
        ty = (rand(b) * 2 - 1) * (1 - sy) * (1 - 1 / h)
        flip = torch.where(rand(b) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
        grid = torch.stack([sx * flip, tx, sy, ty], dim=1)
    p, q = (1.0, -1.0 / 255) if complemented else (0.0, 1.0 / 255)
    eye = torch.eye(3).expand(b, 3, 3)
    k = torch.zeros(b, 3)
    if cfg.jitter > 0:
        j = cfg.jitter
        bright, contrast, sat = (1 + (rand(b) * 2 - 1) * j for _ in range(3))
        gray = torch.tensor(GRAY)
        # brightness, contrast about the image mean m, then saturation about the luma g:
        # x3 = sat*a*x + (1-sat)*a*g(x) + e*(sat + (1-sat)*sum(GRAY)), a = bright*contrast, e = bright*(1-contrast)*m
        a = (bright * contrast)[:, None, None]
        s = sat[:, None, None]
        colour = a * (s * eye + (1 - s) * gray.view(1, 1, 3))
        k = (bright * (1 - contrast) * (sat + (1 - sat) * gray.sum()))[:, None].expand(b, 3)
    else:
        colour = eye
    std = torch.tensor(STD).view(1, 3)
    mat = q * colour / std[:, :, None]
    bias0 = (p * colour.sum(2) - torch.tensor(MEAN).view(1, 3)) / std
    return torch.cat([grid, mat.reshape(b, 9), bias0, k / std], dim=1)


def _crop_flip(images: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Bilinear resample of uint8 NHWC images at x' = g0*x + g1, y' = g2*y + g3 (normalised coordinates).

    Returns ``255 - pixel`` as float NCHW: grid_sample pads with zeros, so the padding is white.
    """
    b, h, w = images.shape[:3]
    dev = images.device
    xs = (torch.arange(w, device=dev, dtype=torch.float32) * 2 + 1) / w - 1  # pixel centres, align_corners=False
    ys = (torch.arange(h, device=dev, dtype=torch.float32) * 2 + 1) / h - 1
    gx = g[:, 0:1] * xs + g[:, 1:2]
    gy = g[:, 2:3] * ys + g[:, 3:4]
    # Scale + shift only, so the sampling grid is separable: cheaper than affine_grid's matmul.
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1)
    return F.grid_sample(
        (255 - images).permute(0, 3, 1, 2).float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def augment(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None, channels_last: bool = False
) -> torch.Tensor:
    """Random resized crop (scale [min,1], aspect 3/4..4/3), flip and colour jitter, batched; returns float NCHW.

    Args:
        images: uint8 (B, H, W, 3) on any device.
        cfg: crop scale, flip and jitter strength (jitter 0 = off).
        generator: CPU generator for the random draws (same seed -> same output on every device).
        channels_last: return channels-last memory (what CUDA convolutions prefer).
    Returns:
        Normalised float32 (B, 3, H, W) on the images' device. Out-of-image samples are
        white (the catalogue's background); crops themselves stay inside the image.
    """
    b, h, w = images.shape[:3]
    dev = images.device
    geometric = cfg.crop_scale_min < 1.0 or cfg.hflip
    params = _draw_params(b, h, w, cfg, generator, geometric, complemented=geometric).to(dev, non_blocking=True)
    if geometric:
        s = _crop_flip(images, params[:, 0:4])
        p, q = 1.0, -1.0 / 255
    else:
        s = images.permute(0, 3, 1, 2).contiguous().float()
        p, q = 0.0, 1.0 / 255
    s = s.contiguous().view(b, 3, h * w)
    bias = params[:, 13:16]
    if cfg.jitter > 0:
        x_mean = p + q * s.mean(dim=(1, 2))  # contrast pivots on the mean of the cropped image
        bias = bias + params[:, 16:19] * x_mean[:, None]
    out = torch.baddbmm(bias[:, :, None], params[:, 4:13].view(b, 3, 3), s).view(b, 3, h, w)
    if cfg.jitter > 0:
        for c in range(3):  # three scalar clamps are much faster than one broadcast clamp on CPU
            out[:, c].clamp_(_LO[c], _HI[c])
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
