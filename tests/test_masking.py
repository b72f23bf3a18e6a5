"""Property tests for roar.data.masking: scores, seeded ranks, and ROAR/KAR masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from roar.data import masking
from roar.data.masking import (
    apply_mask,
    attribution_scores,
    feature_mask,
    mask_images,
    num_masked,
    ranks_from_scores,
    tie_break_keys,
)

SETTINGS = settings(max_examples=50, deadline=None, database=None)

shapes = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))  # B, C, H, W
thresholds = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)


def _batch(shape: tuple[int, int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images whose values never equal the fill (so every replaced value shows), ranks, and fill."""
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    images = torch.rand(shape, generator=gen) * 0.4 + 0.55  # in [0.55, 0.95): never the fill 0.1*(ch+1) <= 0.3
    fill = 0.1 * torch.arange(1, c + 1, dtype=torch.float32)
    attributions = torch.randn(shape, generator=gen)
    return images, attributions, fill


def _ranks(attributions: torch.Tensor, granularity: str, seed: int = 0) -> torch.Tensor:
    scores = attribution_scores(attributions, "abs", granularity)
    return ranks_from_scores(scores, torch.arange(len(attributions)), seed)


# ---------------------------------------------------------------------------------- masking


@SETTINGS
@given(shape=shapes, threshold=thresholds, seed=st.integers(0, 2**16))
def test_roar_replaces_exactly_k_elements_with_the_channel_mean(shape, threshold, seed):
    images, attributions, fill = _batch(shape, seed)
    ranks = _ranks(attributions, "element", seed)
    out = mask_images(images, ranks, threshold, "roar", fill, "element")
    b, c, h, w = shape
    k = num_masked(threshold, c * h * w)
    changed = out != images
    assert changed.flatten(1).sum(1).tolist() == [k] * b
    expected_fill = fill.view(1, c, 1, 1).expand_as(images)
    assert torch.equal(out[changed], expected_fill[changed])
    # The replaced values are exactly the k most important (lowest-rank) ones.
    assert torch.equal(changed.flatten(1), ranks < k)


@SETTINGS
@given(shape=shapes, threshold=thresholds, seed=st.integers(0, 2**16))
def test_kar_replaces_exactly_the_complement_of_roar(shape, threshold, seed):
    images, attributions, fill = _batch(shape, seed)
    ranks = _ranks(attributions, "element", seed)
    roar = mask_images(images, ranks, threshold, "roar", fill) != images
    kar = mask_images(images, ranks, threshold, "kar", fill) != images
    assert torch.equal(kar, ~roar)


@SETTINGS
@given(shape=shapes, threshold=thresholds, seed=st.integers(0, 2**16), mode=st.sampled_from(masking.MODES))
def test_pixel_granularity_replaces_whole_pixels(shape, threshold, seed, mode):
    images, attributions, fill = _batch(shape, seed)
    ranks = _ranks(attributions, "pixel", seed)
    out = mask_images(images, ranks, threshold, mode, fill, "pixel")
    b, c, h, w = shape
    changed = out != images  # (B, C, H, W)
    per_pixel = changed.any(dim=1)
    assert torch.equal(changed.all(dim=1), per_pixel), "a pixel is replaced in all channels or none"
    k = num_masked(threshold, h * w)
    expected = k if mode == "roar" else h * w - k
    assert per_pixel.flatten(1).sum(1).tolist() == [expected] * b
    assert torch.equal(out[changed], fill.view(1, c, 1, 1).expand_as(images)[changed])


def test_pixel_scores_sum_the_channel_scores():
    attributions = torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.5]]]])  # (1, 2, 1, 2)
    assert attribution_scores(attributions, "abs", "pixel").tolist() == [[4.0, 2.5]]
    assert attribution_scores(attributions, "square", "pixel").tolist() == [[10.0, 4.25]]
    assert attribution_scores(attributions, "raw", "pixel").tolist() == [[-2.0, -1.5]]
    assert attribution_scores(attributions, "raw", "element").tolist() == [[1.0, -2.0, -3.0, 0.5]]


def test_raw_score_ranks_signed_evidence():
    scores = attribution_scores(torch.tensor([[[[-5.0, 1.0, 3.0]]]]), "raw")
    assert ranks_from_scores(scores, torch.tensor([0])).tolist() == [[2, 1, 0]]
    scores = attribution_scores(torch.tensor([[[[-5.0, 1.0, 3.0]]]]), "abs")
    assert ranks_from_scores(scores, torch.tensor([0])).tolist() == [[0, 2, 1]]


@pytest.mark.parametrize("granularity", masking.GRANULARITIES)
def test_threshold_zero_changes_nothing_under_roar(granularity):
    images, attributions, fill = _batch((3, 3, 4, 4), 0)
    ranks = _ranks(attributions, granularity)
    assert torch.equal(mask_images(images, ranks, 0.0, "roar", fill, granularity), images)
    assert not torch.equal(mask_images(images, ranks, 0.0, "kar", fill, granularity), images)


def test_image_mean_fill_uses_each_images_own_channel_mean():
    images, attributions, _ = _batch((2, 3, 4, 4), 1)
    ranks = _ranks(attributions, "element")
    out = mask_images(images, ranks, 0.5, "roar", "image_mean")
    changed = out != images
    means = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    assert changed.sum() == 2 * num_masked(0.5, 48)
    assert torch.equal(out[changed], means[changed])


def test_mask_images_does_not_modify_its_input():
    images, attributions, fill = _batch((2, 1, 3, 3), 2)
    before = images.clone()
    mask_images(images, _ranks(attributions, "element"), 0.7, "roar", fill)
    assert torch.equal(images, before)


def test_stored_uint16_ranks_are_accepted():
    images, attributions, fill = _batch((2, 2, 3, 3), 3)
    ranks = _ranks(attributions, "element")
    expected = mask_images(images, ranks, 0.4, "kar", fill)
    assert torch.equal(mask_images(images, ranks.to(torch.uint16), 0.4, "kar", fill), expected)
    assert torch.equal(mask_images(images, ranks.to(torch.int32), 0.4, "kar", fill), expected)


def test_fill_as_a_list_works():
    images, attributions, _ = _batch((1, 2, 2, 2), 4)
    ranks = _ranks(attributions, "element")
    assert torch.equal(mask_images(images, ranks, 0.5, fill=[0.1, 0.2]), mask_images(images, ranks, 0.5, fill=torch.tensor([0.1, 0.2])))


# ---------------------------------------------------------------------------------- num_masked


@pytest.mark.parametrize(
    ("threshold", "features", "k"),
    [(0.0, 10, 0), (0.5, 5, 3), (0.3, 5, 2), (0.1, 15, 2), (0.25, 2, 1), (0.1, 16, 2), (0.9, 16, 14), (0.99, 10, 10), (0.05, 10, 1)],
)
def test_num_masked_rounds_half_up(threshold, features, k):
    assert num_masked(threshold, features) == k


@pytest.mark.parametrize("threshold", [1.0, -0.1, 1.5, float("nan"), "half", None])
def test_num_masked_rejects_bad_thresholds(threshold):
    with pytest.raises(ValueError, match="threshold"):
        num_masked(threshold, 10)


# ---------------------------------------------------------------------------------- ranks


@SETTINGS
@given(
    b=st.integers(1, 4),
    f=st.integers(1, 40),
    seed=st.integers(-(2**40), 2**40),
    values=st.integers(1, 4),
    data=st.data(),
)
def test_ranks_are_a_permutation_ordered_by_score(b, f, seed, values, data):
    # Few distinct values, so ties are common.
    scores = torch.tensor(data.draw(st.lists(st.integers(0, values - 1), min_size=b * f, max_size=b * f)), dtype=torch.float32).view(b, f)
    ranks = ranks_from_scores(scores, torch.arange(b), seed)
    assert ranks.dtype == torch.int64
    assert torch.equal(ranks.sort(dim=1).values, torch.arange(f).expand(b, f))
    # Higher score -> lower rank.
    order = ranks.argsort(dim=1)
    sorted_scores = scores.gather(1, order)
    assert bool((sorted_scores[:, :-1] >= sorted_scores[:, 1:]).all())


@SETTINGS
@given(seed=st.integers(0, 2**31), perm_seed=st.integers(0, 2**31), b=st.integers(2, 6))
def test_ties_depend_on_index_and_seed_not_on_batching(seed, perm_seed, b):
    f = 12
    gen = torch.Generator().manual_seed(perm_seed)
    scores = torch.randint(0, 2, (b, f), generator=gen).float()
    indices = torch.randperm(100, generator=gen)[:b]
    together = ranks_from_scores(scores, indices, seed)
    # Same samples, shuffled batch.
    perm = torch.randperm(b, generator=gen)
    shuffled = ranks_from_scores(scores[perm], indices[perm], seed)
    assert torch.equal(shuffled, together[perm])
    # Each sample alone.
    for i in range(b):
        assert torch.equal(ranks_from_scores(scores[i : i + 1], indices[i : i + 1], seed), together[i : i + 1])


def test_all_equal_scores_are_not_ranked_by_position():
    f = 64
    scores = torch.zeros(3, f)
    ranks = ranks_from_scores(scores, torch.tensor([0, 1, 2]), seed=0)
    for row in ranks:
        assert not torch.equal(row, torch.arange(f))
        assert not torch.equal(row, torch.arange(f).flip(0))
    # Different samples and different seeds break ties differently.
    assert not torch.equal(ranks[0], ranks[1])
    assert not torch.equal(ranks, ranks_from_scores(scores, torch.tensor([0, 1, 2]), seed=1))
    # Deterministic across calls.
    assert torch.equal(ranks, ranks_from_scores(scores.clone(), torch.tensor([0, 1, 2]), seed=0))


def test_tied_positions_are_uniformish():
    # Over many samples, the feature ranked first among all-equal scores is spread over positions.
    f, n = 8, 800
    first = ranks_from_scores(torch.zeros(n, f), torch.arange(n), seed=5).argmin(dim=1)
    counts = torch.bincount(first, minlength=f)
    assert int(counts.min()) > 0.5 * n / f and int(counts.max()) < 1.5 * n / f


def test_tie_break_keys_match_a_reference_splitmix64():
    def mix(x: int) -> int:
        mask = (1 << 64) - 1
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    def signed(x: int) -> int:
        return x - (1 << 64) if x >= 1 << 63 else x

    seed, idx = 1234, [0, 7, 2**40, -3]
    keys = tie_break_keys(torch.tensor(idx), 5, seed)
    for row, i in zip(keys.tolist(), idx, strict=True):
        r = mix(mix(seed + 0x9E3779B97F4A7C15) + i * 0x9E3779B97F4A7C15)
        assert row == [signed(mix(r + f * 0xD1B54A32D192ED03)) for f in range(5)]


# ---------------------------------------------------------------------------------- bad input


def test_bad_choices_name_the_value_and_the_choices():
    x = torch.rand(1, 1, 2, 2)
    ranks = torch.arange(4).view(1, 4)
    with pytest.raises(ValueError, match=r"'ROAR'.*roar, kar"):
        mask_images(x, ranks, 0.5, "ROAR", torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"'channel'.*element, pixel"):
        attribution_scores(x, "abs", "channel")
    with pytest.raises(ValueError, match=r"'l2'.*abs, square, raw"):
        attribution_scores(x, "l2")
    with pytest.raises(ValueError, match=r"'zero'.*image_mean"):
        mask_images(x, ranks, 0.5, "roar", "zero")
    with pytest.raises(ValueError, match="fill is required"):
        mask_images(x, ranks, 0.5)


def test_bad_shapes_and_dtypes_are_rejected():
    x = torch.rand(2, 3, 2, 2)
    fill = torch.zeros(3)
    with pytest.raises(ValueError, match=r"mask must be \(2, 4\) for pixel"):
        apply_mask(x, torch.zeros(2, 12, dtype=torch.bool), fill, "pixel")
    with pytest.raises(ValueError, match="bool"):
        apply_mask(x, torch.zeros(2, 12), fill)
    with pytest.raises(ValueError, match=r"fill must be a \(3,\)"):
        apply_mask(x, torch.zeros(2, 12, dtype=torch.bool), torch.zeros(2))
    with pytest.raises(ValueError, match="integer"):
        feature_mask(torch.zeros(2, 12), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        ranks_from_scores(torch.tensor([[1.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="indices"):
        ranks_from_scores(torch.zeros(2, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        attribution_scores(torch.zeros(2, 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_same_keys_ranks_and_masks_as_cpu():
    images, attributions, fill = _batch((4, 3, 8, 8), 7)
    indices = torch.tensor([3, 1, 4, 1000])
    scores = attribution_scores(attributions.round(decimals=1), "abs", "pixel")
    assert torch.equal(tie_break_keys(indices.cuda(), 64, 9).cpu(), tie_break_keys(indices, 64, 9))
    ranks = ranks_from_scores(scores, indices, 9)
    assert torch.equal(ranks_from_scores(scores.cuda(), indices.cuda(), 9).cpu(), ranks)
    out = mask_images(images.cuda(), ranks.cuda(), 0.3, "kar", fill.cuda(), "pixel")
    assert torch.equal(out.cpu(), mask_images(images, ranks, 0.3, "kar", fill, "pixel"))
