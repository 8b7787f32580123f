"""Where and how tensors run: the device, its memory layout and precision, and where a split lives.

Chosen per device type so that the training loop has no device branches of its own: CUDA gets bf16
autocast (fp16 with a gradient scaler where bf16 is missing) and channels-last convolutions, CPUs
get fp32 and channels-last (oneDNN's preferred layout), MPS plain fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from fashion_core.config.checks import ConfigError
from fashion_core.data.loader import TensorData


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; an explicit name that is unavailable is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def _bf16_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def channels_last_on(device: torch.device) -> bool:
    """Whether convolutions run channels-last on ``device``: on CUDA and on CPUs, whose oneDNN kernels prefer it.

    On CPUs it made a training step faster for both backbones measured (bench/layout.py) and a whole Lite0
    quick pretrain faster too; the figures are in docs/performance.md.
    """
    return device.type in ("cuda", "cpu")


def to_preferred_layout(model: nn.Module, device: torch.device) -> bool:
    """Put ``model``'s 4-d weights channels-last where ``device`` prefers it; returns whether it did."""
    if not channels_last_on(device):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (fp16 where the GPU has no bf16); nothing elsewhere (plain fp32 on CPU)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if _bf16_ok(device) else torch.float16)
    return contextlib.nullcontext()


def grad_scaler_for(device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler that is on only for fp16 autocast (bf16 and fp32 need none; off, it changes nothing)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not _bf16_ok(device))


def place_data(data: TensorData, device: torch.device, max_fraction: float = 0.5) -> TensorData:
    """A stage's split where training reads it: moved to ``device`` once when it fits, else pinned host memory.

    On CUDA "fits" means at most ``max_fraction`` of the free device memory (the rest is the model's);
    a split that does not fit stays on the host, pinned, and ``batches`` copies each batch without
    blocking. On the CPU (and MPS's shared memory) ``to`` moves nothing or everything cheaply.
    """
    if device.type == "cuda":
        need = data.images.nbytes + data.labels.nbytes + sum(v.nbytes for v in data.extras.values())
        free, _ = torch.cuda.mem_get_info(device)
        if need > max_fraction * free:
            return data if data.images.device.type == "cuda" else data.pin_memory()
    return data.to(device)
