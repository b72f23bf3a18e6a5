"""Similarity metrics of the sanity checks (Adebayo et al. 2018) against scipy / scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr, spearmanr
from skimage.feature import hog as skimage_hog
from skimage.metrics import structural_similarity

from roar.sanity.similarity import (
    HOG_CELLS_PER_BLOCK,
    HOG_ORIENTATIONS,
    SIMILARITY_METRICS,
    aggregate_channels,
    compare_maps,
    get_metric,
    hog,
    hog_cell,
    list_metrics,
    normalize_maps,
    percentile_normalize,
    spearman,
    spearman_abs,
    ssim,
    ssim_window,
)
from roar.sanity.settings import SanitySettings


def _tied_maps(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed integer-valued maps: plenty of ties, and the sign matters."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(-3, 4, shape, generator=g).float(),
        torch.randint(-3, 4, shape, generator=g).float(),
    )


def _abs_normalized(maps: torch.Tensor) -> np.ndarray:
    """Reference preprocessing written out with numpy: |channel sum|, then min-max per image."""
    x = maps.numpy().astype(np.float64)
    x = np.abs(x).sum(axis=1) if x.ndim == 4 else np.abs(x)
    low = x.min(axis=(1, 2), keepdims=True)
    span = x.max(axis=(1, 2), keepdims=True) - low
    return (x - low) / np.where(span > 0, span, 1.0)


@pytest.mark.parametrize("shape", [(6, 3, 5, 7), (4, 8, 8)])
def test_spearman_equals_scipy_with_ties(shape):
    a, b = _tied_maps(shape, seed=0)
    raw_a = a.sum(1) if a.ndim == 4 else a
    raw_b = b.sum(1) if b.ndim == 4 else b
    abs_a = a.abs().sum(1) if a.ndim == 4 else a.abs()
    abs_b = b.abs().sum(1) if b.ndim == 4 else b.abs()
    expected_raw = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(raw_a, raw_b)]
    expected_abs = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(abs_a, abs_b)]
    got_raw, got_abs = spearman(a, b), spearman_abs(a, b)
    assert got_raw.shape == got_abs.shape == (shape[0],)
    assert got_raw.dtype == torch.float32
    np.testing.assert_allclose(got_raw.numpy(), expected_raw, atol=1e-6)
    np.testing.assert_allclose(got_abs.numpy(), expected_abs, atol=1e-6)
    # The two variants really differ on signed maps.
    assert not np.allclose(expected_raw, expected_abs)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(-2, 2), min_size=9, max_size=9),
    st.lists(st.integers(-2, 2), min_size=9, max_size=9),
)
def test_spearman_matches_scipy_property(xs, ys):
    a = torch.tensor(xs, dtype=torch.float32).view(1, 3, 3)
    b = torch.tensor(ys, dtype=torch.float32).view(1, 3, 3)
    expected = spearmanr(xs, ys).statistic
    expected = 0.0 if np.isnan(expected) else expected  # our documented constant-map convention
    assert spearman(a, b).item() == pytest.approx(expected, abs=1e-6)


def test_spearman_sign_flip():
    a, _ = _tied_maps((3, 2, 6, 6), seed=1)
    assert torch.allclose(spearman(a, -a), torch.full((3,), -1.0), atol=1e-6)
    assert torch.allclose(spearman_abs(a, -a), torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("shape, window", [((3, 2, 8, 8), 7), ((3, 1, 4, 4), 3), ((2, 6, 9), 5)])
def test_ssim_equals_skimage(shape, window):
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert ssim_window(*shape[-2:]) == window
    na, nb = _abs_normalized(a), _abs_normalized(b)
    expected = [structural_similarity(x, y, win_size=window, data_range=1.0) for x, y in zip(na, nb)]
    np.testing.assert_allclose(ssim(a, b).numpy(), expected, atol=1e-6)
    # An explicit window is honoured.
    expected3 = [structural_similarity(x, y, win_size=3, data_range=1.0) for x, y in zip(na, nb)]
    np.testing.assert_allclose(ssim(a, b, win_size=3).numpy(), expected3, atol=1e-6)


@pytest.mark.parametrize("shape, cell", [((3, 3, 8, 8), 2), ((2, 1, 4, 4), 1), ((2, 32, 32), 8), ((1, 64, 64), 8)])
def test_hog_equals_skimage_pearson(shape, cell):
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert hog_cell(*shape[-2:]) == cell
    expected = []
    for x, y in zip(_abs_normalized(a), _abs_normalized(b)):
        kwargs = dict(orientations=HOG_ORIENTATIONS, pixels_per_cell=(cell, cell), cells_per_block=HOG_CELLS_PER_BLOCK)
        expected.append(pearsonr(skimage_hog(x, **kwargs), skimage_hog(y, **kwargs)).statistic)
    np.testing.assert_allclose(hog(a, b).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("metric", list(SIMILARITY_METRICS))
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 16, 16)])
def test_map_compared_with_itself_scores_one(metric, shape):
    maps = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    scores = get_metric(metric)(maps, maps.clone())
    assert scores.shape == (shape[0],)
    assert torch.allclose(scores, torch.ones(shape[0]), atol=1e-5)


def test_independent_random_maps_spearman_near_zero():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(16, 1, 32, 32, generator=g), torch.randn(16, 1, 32, 32, generator=g)
    for fn in (spearman, spearman_abs):
        scores = fn(a, b)
        # n = 1024 pixels: the null standard deviation is about 1/sqrt(1023) ~ 0.031.
        assert scores.abs().max() < 0.15
        assert scores.mean().abs() < 0.05


def test_constant_maps_give_zero_correlation_not_nan():
    constant = torch.full((3, 2, 8, 8), 0.7)
    varied = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    for a, b in ((constant, varied), (varied, constant), (constant, constant)):
        for name in ("spearman", "spearman_abs", "hog"):
            assert torch.equal(get_metric(name)(a, b), torch.zeros(3)), name
        assert torch.isfinite(ssim(a, b)).all()
    # SSIM is well defined for constant maps: two equal constant maps are identical.
    assert torch.allclose(ssim(constant, constant), torch.ones(3))
    # Zero maps (e.g. a dead gradient) too.
    zeros = torch.zeros(2, 4, 4)
    assert torch.equal(spearman(zeros, zeros), torch.zeros(2))


def test_normalize_maps():
    g = torch.Generator().manual_seed(7)
    maps = torch.randn(5, 2, 6, 6, generator=g) * 10 + 3
    maps[2] = -4.0  # one constant map
    out = normalize_maps(maps)
    assert out.shape == maps.shape
    flat = out.flatten(1)
    for i in (0, 1, 3, 4):
        assert flat[i].min().item() == 0.0
        assert flat[i].max().item() == pytest.approx(1.0)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert not torch.isnan(out).any()
    # Order within an image is preserved (an increasing affine map).
    assert torch.equal(flat[0].argsort(), maps[0].flatten().argsort())


def test_aggregate_channels():
    maps = torch.tensor([[[[1.0, -2.0]], [[-3.0, 5.0]]]])  # (1, 2, 1, 2)
    assert torch.equal(aggregate_channels(maps, absolute=False), torch.tensor([[[-2.0, 3.0]]]))
    assert torch.equal(aggregate_channels(maps, absolute=True), torch.tensor([[[4.0, 7.0]]]))
    three_d = torch.tensor([[[1.0, -2.0]]])
    assert torch.equal(aggregate_channels(three_d, absolute=False), three_d)
    assert torch.equal(aggregate_channels(three_d, absolute=True), three_d.abs())


def test_registry_and_errors():
    assert list_metrics() == ["spearman", "spearman_abs", "ssim", "hog"]
    assert get_metric("ssim") is ssim
    with pytest.raises(ValueError, match="unknown similarity metric 'pearson'.*spearman, spearman_abs, ssim, hog"):
        get_metric("pearson")
    a = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="same shape"):
        spearman(a, torch.randn(2, 1, 8, 7))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        spearman(torch.randn(8, 8), torch.randn(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        spearman(a, torch.full_like(a, float("nan")))
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(torch.randn(2, 2, 2), torch.randn(2, 2, 2))
    with pytest.raises(ValueError, match="win_size"):
        ssim(a, a, win_size=4)


def test_compare_maps_returns_every_metric():
    g = torch.Generator().manual_seed(8)
    a, b = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    scores = compare_maps(a, b)
    assert list(scores) == list_metrics()
    assert torch.equal(scores["spearman"], spearman(a, b))
    assert list(compare_maps(a, b, ["hog"])) == ["hog"]
    with pytest.raises(ValueError, match="unknown similarity metric 'nope'.*valid: spearman"):
        compare_maps(a, b, ["nope"])


# ----------------------------------------------------------------------------- settings (issue 13)


def test_percentile_normalize_matches_adebayo_abs_grayscale_norm_by_hand():
    """``clip((x - min) / (p99 - min), 0, 1)``: for 0..99, p99 (linear) = 98.01."""
    values = torch.arange(100, dtype=torch.float64).reshape(1, 10, 10)
    out = percentile_normalize(values)
    assert out[0, 0, 0].item() == 0.0
    assert out[0, 5, 0].item() == pytest.approx(50 / 98.01)
    assert out[0, 9, 8].item() == pytest.approx(98 / 98.01)
    assert out[0, 9, 9].item() == 1.0  # 99 > p99: clipped
    assert torch.equal(percentile_normalize(torch.full((2, 3, 3), 4.0)), torch.zeros(2, 3, 3))


def test_channel_reduction_sum_of_abs_or_abs_of_sum():
    maps = torch.tensor([[[[1.0, 2.0]], [[-1.0, 3.0]]]])  # (1, 2 channels, 1, 2)
    assert aggregate_channels(maps, absolute=True).tolist() == [[[2.0, 5.0]]]
    assert aggregate_channels(maps, absolute=True, reduction="abs_sum").tolist() == [[[0.0, 5.0]]]
    assert aggregate_channels(maps, absolute=False, reduction="abs_sum").tolist() == [[[0.0, 5.0]]]
    # Channels that cancel: identical under abs_sum only where the signed sums agree.
    a = torch.tensor([[[[1.0, 0.0, 2.0]], [[-1.0, 1.0, 0.0]]]])
    b = torch.tensor([[[[0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0]]]])
    assert spearman_abs(a, b, reduction="abs_sum").item() == pytest.approx(1.0)
    assert spearman_abs(a, b).item() < 1.0


def test_percentile_normalisation_changes_ssim_with_an_outlier():
    """One extreme pixel squashes a min-max map; the 99th-percentile clip keeps its structure."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 1, 16, 16, generator=g)
    spiky = base.clone()
    spiky[0, 0, 3, 3] = 1000.0
    minmax = ssim(base, spiky).item()
    clipped = ssim(base, spiky, normalization="percentile").item()
    assert minmax < 0.1 < 0.5 < clipped
    expected = compare_maps(base, spiky, ["ssim", "hog"], normalization="percentile")
    assert expected["ssim"].item() == pytest.approx(clipped)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"normalization": "zscore"}, "unknown normalization 'zscore'; valid choices: minmax, percentile"),
     ({"reduction": "max"}, "unknown reduction 'max'; valid choices: sum_abs, abs_sum")],
)  # fmt: skip
def test_unknown_map_settings_name_the_choices(kwargs, words):
    maps = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=words):
        compare_maps(maps, maps, ["spearman"], **kwargs)
    with pytest.raises(ValueError, match=words):
        SanitySettings(**kwargs)
