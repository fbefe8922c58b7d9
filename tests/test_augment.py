"""Batched affine augmentation: identity, exact quarter turns and flips, any-angle rotation, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from gzmorph.config import AUGMENTATIONS as PRESETS, Augment
from gzmorph.training.augment import augment_batch, get_augment, random_affine
from gzmorph.errors import GzmorphError


def dihedral(img: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections of a (C, H, W) image."""
    out = []
    for flipped in (img, img.flip(-1)):
        out.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return out


def batch(n=8, size=16, seed=0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype)


def blob(size=48, sigma=5.0) -> torch.Tensor:
    c = (size - 1) / 2
    y, x = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    g = torch.exp(-(x ** 2 + y ** 2) / (2 * sigma ** 2))
    return torch.stack([g, 0.5 * g, 0.25 * g])  # (3, size, size)


def test_identity_preset_returns_input_unchanged():
    x = batch()
    assert get_augment("none").is_identity
    out = augment_batch(x, get_augment("none"), torch.Generator().manual_seed(0))
    assert out is x or torch.equal(out, x)


def test_unknown_names():
    with pytest.raises(GzmorphError, match="unknown augmentation 'wild'"):
        get_augment("wild")
    with pytest.raises(GzmorphError, match="rotation"):
        random_affine(2, Augment(rotation="45"))
    assert set(PRESETS) >= {"none", "report", "strong"}


@pytest.mark.parametrize("size", [16, 17])
def test_quarter_turns_and_flips_move_whole_pixels(size):
    x = batch(n=32, size=size, seed=1)
    aug = Augment(rotation="90", flip=True, zoom=1.0, shift=0.0)
    out = augment_batch(x, aug, torch.Generator().manual_seed(2))
    seen = set()
    for i in range(len(x)):
        matches = [k for k, t in enumerate(dihedral(x[i])) if torch.allclose(out[i], t, atol=1e-5, rtol=0)]
        assert matches, f"image {i} is not a rotation/reflection of its input"
        seen.add(matches[0])
    assert len(seen) >= 5  # 32 draws of 8 transforms: most of them appear


def test_any_angle_keeps_a_centred_blob_in_place():
    x = blob().unsqueeze(0).repeat(8, 1, 1, 1)
    out = augment_batch(x, Augment(rotation="any"), torch.Generator().manual_seed(3))
    assert (out - x).abs().max() < 0.05
    mean_in, mean_out = x.mean(dim=(1, 2, 3)), out.mean(dim=(1, 2, 3))
    assert ((mean_out - mean_in).abs() / mean_in).max() < 0.03
    # The brightest pixel stays at the centre.
    peak = out[:, 0].flatten(1).argmax(1)
    rows, cols = peak // 48, peak % 48
    assert ((rows - 23.5).abs() <= 1.5).all() and ((cols - 23.5).abs() <= 1.5).all()


def test_zoom_and_shift_stay_within_their_bounds():
    aug = Augment(rotation="any", flip=True, zoom=1.3, shift=0.05)
    theta = random_affine(500, aug, torch.Generator().manual_seed(4))
    assert theta.shape == (500, 2, 3)
    # |det| = 1 / scale^2 with scale in [1/1.3, 1.3]; the shift (in [-1, 1] units) is at most 2 * 0.05.
    det = torch.linalg.det(theta[:, :, :2]).abs()
    assert (det >= 1 / 1.3 ** 2 - 1e-5).all() and (det <= 1.3 ** 2 + 1e-5).all()
    assert theta[:, :, 2].abs().max() <= 0.1 + 1e-6
    # Flips appear (negative determinant) about half the time.
    flips = (torch.linalg.det(theta[:, :, :2]) < 0).float().mean()
    assert 0.4 < flips < 0.6


@pytest.mark.parametrize("preset", ["report", "strong"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(preset, dtype):
    x = batch(n=4, size=20, dtype=dtype)
    out = augment_batch(x, get_augment(preset), torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_gpu():
    x = batch(n=4, size=20).cuda()
    out = augment_batch(x, get_augment("strong"), torch.Generator().manual_seed(5))
    assert out.device == x.device and out.shape == x.shape


@pytest.mark.parametrize("preset", ["report", "strong"])
def test_seeded_generator_is_deterministic(preset):
    x = batch(n=6, size=20, seed=6)
    aug = get_augment(preset)
    a = augment_batch(x, aug, torch.Generator().manual_seed(7))
    b = augment_batch(x, aug, torch.Generator().manual_seed(7))
    c = augment_batch(x, aug, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("preset", ["report", "strong"])
def test_each_image_gets_its_own_transform(preset):
    one = batch(n=1, size=20, seed=9)
    x = one.repeat(8, 1, 1, 1)  # eight copies of the same image
    out = augment_batch(x, get_augment(preset), torch.Generator().manual_seed(10))
    distinct = {tuple(torch.round(o.flatten() * 1e4).tolist()) for o in out}
    assert len(distinct) >= 4
    theta = random_affine(8, get_augment(preset), torch.Generator().manual_seed(10))
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 8


def test_brightness_gain_is_per_image_and_channel_and_bounded():
    x = torch.full((16, 3, 8, 8), 0.5)
    out = augment_batch(x, Augment(brightness=0.1), torch.Generator().manual_seed(11))
    gain = out.mean(dim=(2, 3)) / 0.5  # (16, 3)
    assert (gain >= math.exp(-0.1) - 1e-5).all() and (gain <= math.exp(0.1) + 1e-5).all()
    assert len(set(torch.round(gain.flatten() * 1e6).tolist())) > 40
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # uniform gain over the image
