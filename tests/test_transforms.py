"""Tests of the batched augmentation: crop offsets, zero padding, flips and normalisation."""

import math

import pytest
import torch

from normcl.datasets.transforms import Normalize, TrainTransform, random_crop, random_hflip


def _random_images(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 images with values in [1, 255]: no zeros, so zero padding is recognisable."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


def _crop_offsets(x: torch.Tensor, out: torch.Tensor, padding: int) -> torch.Tensor:
    """Brute force: (N, K) bool, which of the K = (2p+1)^2 windows of the zero-padded input equals each output."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    k = 2 * padding + 1
    matches = [(padded[:, :, dy : dy + h, dx : dx + w] == out).flatten(1).all(1) for dy in range(k) for dx in range(k)]
    return torch.stack(matches, 1)


@pytest.mark.parametrize("shape", [(8, 1, 5, 7), (8, 3, 6, 6)])
def test_random_crop_keeps_shape_and_dtype(shape: tuple[int, int, int, int]):
    x = _random_images(*shape, seed=0)
    out = random_crop(x, 2, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert out.dtype == torch.uint8


def test_random_crop_without_padding_is_identity():
    x = _random_images(4, 1, 5, 5, seed=0)
    assert torch.equal(random_crop(x, 0), x)


def test_random_crop_offsets_are_windows_of_zero_padded_input_and_uniform():
    padding, n = 2, 5000
    k = (2 * padding + 1) ** 2
    x = _random_images(n, 2, 6, 5, seed=0)
    out = random_crop(x, padding, generator=torch.Generator().manual_seed(123))
    matches = _crop_offsets(x, out, padding)
    # every output is exactly one shifted window (inputs are random, so windows never coincide)
    assert torch.equal(matches.sum(1), torch.ones(n, dtype=torch.long))
    offset = matches.int().argmax(1)

    counts = torch.bincount(offset, minlength=k).double()
    assert (counts > 0).all(), "some crop offsets never drawn"
    expected = n / k
    std = math.sqrt(n * (1 / k) * (1 - 1 / k))  # binomial std of each count
    assert (counts - expected).abs().max() < 5 * std, counts.tolist()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    df = k - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2  # chi-square(df) has mean df and std sqrt(2 df)

    # zero padding shows exactly when the window is not the centred one (offset (p, p))
    centre = padding * (2 * padding + 1) + padding
    has_zero = (out == 0).flatten(1).any(1)
    assert torch.equal(has_zero, offset != centre)
    assert has_zero.any()


def test_random_crop_uses_each_samples_own_offset_for_all_channels():
    x = _random_images(200, 3, 4, 4, seed=5)
    out = random_crop(x, 1, generator=torch.Generator().manual_seed(0))
    for c in range(3):
        per_channel = _crop_offsets(x[:, c : c + 1], out[:, c : c + 1], 1)
        whole = _crop_offsets(x, out, 1)
        assert torch.equal(per_channel, whole)


def test_random_hflip_flips_about_half_and_exactly():
    n = 4000
    x = _random_images(n, 3, 4, 5, seed=1)
    out = random_hflip(x, generator=torch.Generator().manual_seed(7))
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert torch.equal(flipped ^ kept, torch.ones(n, dtype=torch.bool)), "each sample is either flipped or kept"
    n_flipped = int(flipped.sum())
    assert abs(n_flipped - n / 2) < 5 * math.sqrt(n) / 2, n_flipped  # binomial(n, 1/2): std sqrt(n)/2


def test_normalize_matches_reference_formula():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2615)
    x = _random_images(16, 3, 8, 8, seed=2)
    x[0] = 0
    x[1] = 255
    out = Normalize(mean, std)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    m = torch.tensor(mean, dtype=torch.float64)[None, :, None, None]
    s = torch.tensor(std, dtype=torch.float64)[None, :, None, None]
    expected = (x.double() / 255 - m) / s
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-6)


def test_normalize_single_channel():
    x = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(4, 1, 8, 8)
    out = Normalize((0.2860,), (0.3530,))(x)
    expected = (x.double() / 255 - 0.2860) / 0.3530
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "hflip"),
    [((6, 1, 28, 28), True), ((6, 3, 32, 32), True), ((6, 3, 32, 32), False)],
)
def test_train_transform_is_crop_flip_normalize(shape: tuple[int, int, int, int], hflip: bool):
    mean, std = (0.5,) * shape[1], (0.25,) * shape[1]
    transform = TrainTransform(mean, std, padding=4, hflip=hflip)
    x = _random_images(*shape, seed=3)
    torch.manual_seed(11)
    out = transform(x)
    assert out.dtype == torch.float32
    assert out.shape == x.shape
    # same global random draws, composed by hand: crop, then flip, then normalise
    torch.manual_seed(11)
    y = random_crop(x, 4)
    if hflip:
        y = random_hflip(y)
    assert torch.equal(out, Normalize(mean, std)(y))
    assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # (0 - 0.5) / 0.25 and (1 - 0.5) / 0.25
    assert (out == -2.0).any(), "zero padding normalises to (0 - 0.5) / 0.25"
