"""Loader: batches by index, to_float and the batched augmentation (shapes, seeds, crop bounds, flip, padding, no per-item loop)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fashion_core.config.schema import AugmentConfig
from fashion_core.data.loader import GRAY, MEAN, STD, TensorData, _crop_flip, augment, batches, num_batches, to_float

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def images(n: int = 8, h: int = 20, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unnormalise(x: torch.Tensor) -> torch.Tensor:
    """Normalised NCHW -> pixel values 0..255 (float)."""
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255


def reference_augment(imgs: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """The augmentation written step by step (affine_grid, white padding, jitter op by op), same random draws."""
    x = imgs.permute(0, 3, 1, 2).float() / 255
    b = x.shape[0]
    if cfg.crop_scale_min < 1.0 or cfg.hflip:
        area = cfg.crop_scale_min + (1 - cfg.crop_scale_min) * torch.rand(b, generator=gen)
        log_r = (torch.rand(b, generator=gen) * 2 - 1) * math.log(4 / 3)
        log_r = log_r.clamp(min=area.log(), max=-area.log())
        sx, sy = torch.sqrt(area * log_r.exp()), torch.sqrt(area / log_r.exp())
        h, w = x.shape[2:]
        tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sx) * (1 - 1 / w)  # edge samples on the edge pixel centres
        ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sy) * (1 - 1 / h)
        flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = 1 - F.grid_sample(1 - x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.jitter > 0:
        bright, contrast, sat = (1 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * cfg.jitter for _ in range(3))
        x = x * bright
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - m) * contrast + m
        gray = GRAY[0] * x[:, 0:1] + GRAY[1] * x[:, 1:2] + GRAY[2] * x[:, 2:3]
        x = ((x - gray) * sat + gray).clamp(0, 1)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class CountCalls(TorchFunctionMode):
    """Counts torch functions and tensor methods called while active."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- batches


def test_batches_shapes_dtypes_and_extras():
    data = TensorData(images(10), torch.arange(10) * 10, {"meta": torch.arange(10) + 100})
    out = list(batches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b["label"]) for b in out] == [4, 4, 2] == [len(b["image"]) for b in out]
    for b in out:
        assert b["image"].dtype == torch.uint8 and b["image"].shape[1:] == (20, 16, 3)
        assert b["label"].dtype == torch.int64
        assert torch.equal(b["meta"], b["label"] // 10 + 100)  # extras follow the same index
        rows = b["label"] // 10
        assert torch.equal(b["image"], data.images[rows])
    seen = torch.cat([b["label"] for b in out])
    assert sorted(seen.tolist()) == list(range(0, 100, 10))  # a permutation: every item once


def test_batches_order_seed_drop_last_and_cap():
    data = TensorData(images(10), torch.arange(10), {})
    plain = torch.cat([b["label"] for b in batches(data, 3, shuffle=False)])
    assert plain.tolist() == list(range(10))

    def order(seed):
        return torch.cat(
            [b["label"] for b in batches(data, 3, shuffle=True, generator=torch.Generator().manual_seed(seed))]
        )

    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
    assert [len(b["label"]) for b in batches(data, 3, shuffle=False, drop_last=True)] == [3, 3, 3]
    assert len(list(batches(data, 3, shuffle=False, max_batches=2))) == 2
    for bs, drop, cap in [(3, False, 0), (3, True, 0), (3, False, 2), (20, True, 0), (5, True, 0)]:
        assert num_batches(10, bs, drop, cap) == len(
            list(batches(data, bs, shuffle=False, drop_last=drop, max_batches=cap))
        )


# ---------------------------------------------------------------- to_float


@pytest.mark.parametrize("channels_last", [False, True])
def test_to_float_values_and_layout(channels_last):
    x = images(4)
    out = to_float(x, channels_last)
    assert out.shape == (4, 3, 20, 16) and out.dtype == torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    want = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- augment


@pytest.mark.parametrize("channels_last", [False, True])
def test_augment_shape_dtype_layout(channels_last):
    out = augment(images(6), AugmentConfig(), torch.Generator().manual_seed(0), channels_last)
    assert out.shape == (6, 3, 20, 16) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.isfinite(out).all()


def test_augment_is_deterministic_given_a_seed():
    x, cfg = images(6), AugmentConfig(jitter=0.2)

    def run(seed):
        return augment(x, cfg, torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(),
        AugmentConfig(jitter=0.0),
        AugmentConfig(crop_scale_min=0.2, jitter=0.4),
        AugmentConfig(crop_scale_min=1.0, hflip=False, jitter=0.3),
        AugmentConfig(crop_scale_min=0.7, hflip=False, jitter=0.0),
    ],
)
def test_augment_equals_the_step_by_step_definition(cfg):
    """The fused version (separable grid, one colour matrix, clamp after normalising) changes no value."""
    x = images(16, 24, 18)
    got = augment(x, cfg, torch.Generator().manual_seed(7))
    want = reference_augment(x, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("scale_min", [0.3, 0.9])
def test_crop_area_and_aspect_stay_in_bounds_and_inside_the_image(scale_min):
    # Pixel (v, u) holds (5u, 3v, 0) on a 86 x 52 image, so the sampled coordinates read back exactly.
    h, w = 86, 52
    u = torch.arange(w).view(1, w).expand(h, w)
    v = torch.arange(h).view(h, 1).expand(h, w)
    img = torch.stack([5 * u, 3 * v, torch.zeros(h, w, dtype=torch.int64)], dim=-1).to(torch.uint8)
    cfg = AugmentConfig(crop_scale_min=scale_min, hflip=False, jitter=0.0)
    px = unnormalise(augment(img.expand(256, h, w, 3), cfg, torch.Generator().manual_seed(0)))
    sx = (px[:, 0].amax(dim=(1, 2)) - px[:, 0].amin(dim=(1, 2))) / 255  # crop width / image width
    sy = (px[:, 1].amax(dim=(1, 2)) - px[:, 1].amin(dim=(1, 2))) / 255
    area, ratio = sx * sy, sx / sy
    assert area.min() >= scale_min - 1e-3 and area.max() <= 1 + 1e-3
    assert area.min() < scale_min + 0.05 and area.max() > 0.95  # the whole range is drawn
    assert ratio.min() >= 3 / 4 - 1e-3 and ratio.max() <= 4 / 3 + 1e-3
    assert px[:, 2].abs().max() < 0.05  # no white padding sampled: crops stay inside the image


def test_flip_only_mirrors_and_no_augmentation_is_to_float():
    x = images(64)
    base = to_float(x)
    out = augment(x, AugmentConfig(crop_scale_min=1.0, hflip=True, jitter=0.0), torch.Generator().manual_seed(0))
    same = (out - base).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirrored = (out - base.flip(3)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert (same | mirrored).all() and same.any() and mirrored.any()
    plain = augment(x, AugmentConfig(crop_scale_min=1.0, hflip=False, jitter=0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, base, atol=1e-5, rtol=0)


def test_samples_outside_the_image_are_white():
    black = torch.zeros(2, 20, 16, 3, dtype=torch.uint8)
    zoom_out = torch.tensor([[2.0, 0.0, 2.0, 0.0], [-2.0, 0.0, 2.0, 0.0]])  # the image fills the middle half
    s = _crop_flip(black, zoom_out)  # 255 - sampled pixel
    assert s.shape == (2, 3, 20, 16)
    assert (s[:, :, :3] == 0).all() and (s[:, :, :, :2] == 0).all()  # borders: white
    assert (s[:, :, 8:12, 6:10] == 255).all()  # centre: the black image


def test_jitter_clamps_to_the_valid_pixel_range():
    white = torch.full((32, 10, 8, 3), 255, dtype=torch.uint8)
    px = unnormalise(augment(white, AugmentConfig(hflip=True, jitter=0.5), torch.Generator().manual_seed(0)))
    assert px.max() <= 255 + 1e-3 and px.min() >= -1e-3
    assert (px > 254.9).float().mean() > 0.4  # brightening a white image saturates at white


@pytest.mark.parametrize("fn", ["augment", "batches"])
def test_no_per_item_python(fn):
    """The number of tensor operations per batch does not grow with the batch size."""

    def count(b):
        data = TensorData(images(b), torch.arange(b), {"meta": torch.arange(b)})
        with CountCalls() as c:
            if fn == "augment":
                augment(data.images, AugmentConfig(hflip=True), torch.Generator().manual_seed(0))
            else:
                next(batches(data, b, shuffle=True, generator=torch.Generator().manual_seed(0)))
        return c.n

    assert count(4) == count(64) > 0


# ---------------------------------------------------------------- CUDA (run by bench/gpu_check.py on a GPU machine)


@CUDA
def test_cuda_matches_cpu_for_the_same_seed():
    x, cfg = images(32, 80, 60), AugmentConfig(hflip=True, jitter=0.2)
    cpu = augment(x, cfg, torch.Generator().manual_seed(5))
    gpu = augment(x.cuda(), cfg, torch.Generator().manual_seed(5), channels_last=True)
    assert gpu.is_cuda and gpu.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
    torch.testing.assert_close(to_float(x.cuda(), True).cpu(), to_float(x), atol=1e-5, rtol=0)


@CUDA
def test_cuda_batches_from_resident_data():
    data = TensorData(images(10), torch.arange(10), {}).to(torch.device("cuda"))
    out = list(batches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(b["image"].is_cuda and b["label"].is_cuda for b in out)
    assert sorted(torch.cat([b["label"] for b in out]).tolist()) == list(range(10))
