"""Value tests of ROAD's noisy linear imputation and the blur fill (Rong, Leemann et al., ICML 2022)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from roar.data.imputation import ImputationError, blur_fill, gaussian_blur, noisy_linear_impute, standard_normal
from roar.data.ranking import tie_break_keys
from roar.data.road_solver import CPU_CHUNK_VALUES, solve_road_system


def road_system(removed: np.ndarray, image: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
    """ROAD's equations for one channel, built independently of the code under test.

    Row i: x_i - sum_j w_ij x_j = 0 over the in-image 8-neighbours j, w_ij proportional to 2 for
    direct and 1 for diagonal neighbours and summing to 1; kept x_j move to the right-hand side.
    """
    h, w = image.shape
    where = np.argwhere(removed)
    number = -np.ones((h, w), dtype=int)
    number[removed] = np.arange(len(where))
    a, rhs = sp.lil_matrix((len(where), len(where))), np.zeros(len(where))
    for n, (i, j) in enumerate(where):
        nbrs = [(i + di, j + dj, 2.0 if di == 0 or dj == 0 else 1.0) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]
        nbrs = [(p, q, c) for p, q, c in nbrs if 0 <= p < h and 0 <= q < w]
        total = sum(c for _, _, c in nbrs)
        a[n, n] = 1.0
        for p, q, c in nbrs:
            if removed[p, q]:
                a[n, number[p, q]] -= c / total
            else:
                rhs[n] += c / total * image[p, q]
    return a.tocsc(), rhs


def _batch(shape=(3, 2, 9, 7), fraction=0.6, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen, dtype=dtype), torch.rand(shape, generator=gen) < fraction


def test_equals_a_direct_sparse_solve_on_small_images():
    images, removed = _batch()
    out = noisy_linear_impute(images, removed, noise_std=0.0, tol=1e-12)
    for b in range(images.shape[0]):
        for c in range(images.shape[1]):
            rem, img = removed[b, c].numpy(), images[b, c].numpy()
            a, rhs = road_system(rem, img)
            expected = img.copy()
            expected[rem] = spl.spsolve(a, rhs)
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-10)


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_result_satisfies_the_linear_system_to_the_stated_tolerance(tol):
    images, removed = _batch(shape=(2, 3, 16, 16), fraction=0.8, dtype=torch.float32)
    removed = removed[:, :1]  # whole pixels: every channel the same mask
    out = noisy_linear_impute(images, removed, noise_std=0.0, tol=tol)
    for b in range(2):
        rem = removed[b, 0].numpy()
        for c in range(3):
            a, rhs = road_system(rem, images[b, c].double().numpy())
            residual = a @ out[b, c].double().numpy()[rem] - rhs
            assert np.abs(residual).max() <= tol * 1.01


def test_kept_values_are_unchanged_and_noise_only_touches_removed_ones():
    images, removed = _batch(dtype=torch.float32)
    out = noisy_linear_impute(images, removed, noise_std=0.05)
    assert torch.equal(out[~removed], images[~removed])
    clean = noisy_linear_impute(images, removed, noise_std=0.0)
    noise = (out - clean)[removed]
    assert 0.03 < float(noise.std()) < 0.07 and abs(float(noise.mean())) < 0.02


def test_a_constant_image_stays_constant():
    images = torch.full((2, 3, 10, 10), 0.37, dtype=torch.float64)
    _, removed = _batch(shape=(2, 3, 10, 10), fraction=0.7)
    out = noisy_linear_impute(images, removed, noise_std=0.0, tol=1e-12)
    torch.testing.assert_close(out, images, rtol=0, atol=1e-12)


def test_a_linear_ramp_is_reproduced_in_the_interior():
    # The weighted mean of symmetric neighbours of a linear function is its centre value: a removed
    # block whose every neighbour lies inside the image is imputed exactly (a discrete harmonic function).
    i, j = torch.meshgrid(torch.arange(12.0, dtype=torch.float64), torch.arange(12.0, dtype=torch.float64), indexing="ij")
    ramp = (0.02 * i + 0.05 * j + 0.1).expand(1, 1, 12, 12)
    removed = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    removed[..., 3:9, 2:10] = True
    out = noisy_linear_impute(ramp, removed, noise_std=0.0, tol=1e-12)
    torch.testing.assert_close(out, ramp, rtol=0, atol=1e-10)


def test_noise_is_deterministic_and_independent_of_the_batch():
    images, removed = _batch(shape=(4, 3, 8, 8), dtype=torch.float32)
    indices = torch.tensor([10, 11, 12, 13])
    full = noisy_linear_impute(images, removed, noise_std=0.01, indices=indices, seed=3)
    assert torch.equal(full, noisy_linear_impute(images, removed, noise_std=0.01, indices=indices, seed=3))
    # image 13 alone, in another batch position: the same fill
    alone = noisy_linear_impute(images[3:], removed[3:], noise_std=0.01, indices=indices[3:], seed=3)
    torch.testing.assert_close(alone[0], full[3], rtol=0, atol=1e-6)
    other_seed = noisy_linear_impute(images, removed, noise_std=0.01, indices=indices, seed=4)
    assert not torch.equal(other_seed[removed], full[removed])
    no_noise = noisy_linear_impute(images, removed, noise_std=0.0)
    assert torch.equal(no_noise, noisy_linear_impute(images, removed, noise_std=0.0))


def test_a_channel_with_nothing_kept_takes_the_mean_of_the_kept_values():
    images, _ = _batch(shape=(1, 2, 6, 6))
    removed = torch.zeros(1, 2, 6, 6, dtype=torch.bool)
    removed[0, 0] = True  # channel 0 entirely removed: ROAD's system has no unique solution there
    removed[0, 1, 2, 2] = True
    out = noisy_linear_impute(images, removed, noise_std=0.0, tol=1e-12)
    kept_mean = images[~removed].mean()
    torch.testing.assert_close(out[0, 0], kept_mean.expand(6, 6))


def test_a_solver_that_does_not_converge_names_the_residual():
    images, removed = _batch(shape=(2, 1, 32, 32), fraction=0.95, dtype=torch.float32)
    with pytest.raises(ImputationError, match=r"residual .* > fill_tol 1e-06 after fill_max_iter 2 "):
        noisy_linear_impute(images, removed, tol=1e-6, max_iter=2)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tol": 0.0}, "fill_tol must be a finite number > 0, got 0.0"),
    ({"noise_std": -0.1}, "fill_noise_std must be a finite number >= 0, got -0.1"),
    ({"max_iter": 0}, "fill_max_iter must be a positive integer, got 0"),
])  # fmt: skip
def test_bad_settings_are_named(kwargs, message):
    images, removed = _batch()
    with pytest.raises(ValueError, match=message):
        noisy_linear_impute(images, removed, **kwargs)


def test_blur_with_vanishing_sigma_reproduces_the_image():
    images, removed = _batch(dtype=torch.float32)
    assert torch.equal(blur_fill(images, removed, sigma=1e-3), images)
    assert torch.equal(gaussian_blur(images, 0.05), images)


def test_blur_fill_replaces_removed_values_by_the_blurred_image():
    images, removed = _batch(shape=(2, 3, 12, 12), dtype=torch.float64)
    out = blur_fill(images, removed, sigma=1.5)
    blurred = gaussian_blur(images, 1.5)
    assert torch.equal(out[removed], blurred[removed]) and torch.equal(out[~removed], images[~removed])
    # a blur keeps the mean of a constant image and smooths: less variance than the image
    assert float(blurred.var()) < 0.5 * float(images.var())
    const = torch.full((1, 1, 5, 5), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 4.0), const)


@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_blur_refuses_sigma_not_positive(sigma):
    images, removed = _batch()
    with pytest.raises(ValueError, match=rf"fill_sigma must be a finite number > 0 \(pixels\), got {sigma}"):
        blur_fill(images, removed, sigma=sigma)


# The batched CG solve (roar/data/road_solver.py): its invariants, and the noise it is paired with.


def _masks(h: int, w: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    one = torch.zeros(h, w, dtype=torch.bool)
    one[h // 2, 0] = True  # one removed pixel, on an edge
    all_but_one = torch.ones(h, w, dtype=torch.bool)
    all_but_one[0, w - 1] = False  # one kept pixel, in a corner: the hardest system of this size
    block = torch.zeros(h, w, dtype=torch.bool)
    block[1:-2, 2:] = True
    return {"one removed": one, "all but one removed": all_but_one, "block": block, "half": torch.rand(h, w, generator=gen) < 0.5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("granularity", ["pixel", "element"])
@pytest.mark.parametrize("tol", [1e-4, 1e-5])
def test_the_returned_values_satisfy_roads_equations_to_tol(granularity, tol, dtype):
    h, w = 11, 9
    masks = list(_masks(h, w).values())
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(len(masks), 3, h, w, generator=gen, dtype=torch.float64).to(dtype)
    if granularity == "pixel":
        removed = torch.stack(masks)[:, None].expand(-1, 3, -1, -1)
    else:  # each channel its own mask: rotate the list per channel
        removed = torch.stack([torch.stack([masks[(i + c) % len(masks)] for c in range(3)]) for i in range(len(masks))])
    solution = solve_road_system(images, removed, tol, 1000)
    assert solution.residual <= tol and solution.iterations >= 1
    for b in range(len(masks)):
        for c in range(3):
            rem = removed[b, c].numpy()
            a, rhs = road_system(rem, images[b, c].double().numpy())
            residual = a @ solution.values[b, c].double().numpy()[rem] - rhs
            assert np.abs(residual).max() <= tol * 1.01  # the float32 residual is evaluated in float32
            assert torch.equal(solution.values[b, c][~removed[b, c]], images[b, c][~removed[b, c]])


def test_a_channel_with_nothing_kept_is_returned_as_it_came_and_marked_unsolved():
    # ROAD's system of such a channel has no unique solution: the solver leaves it to its caller
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(2, 3, 7, 8, generator=gen)
    removed = torch.rand(2, 3, 7, 8, generator=gen) < 0.5
    removed[1, 2] = True
    solution = solve_road_system(images, removed, 1e-5, 1000)
    assert solution.solved.tolist() == [[True, True, True], [True, True, False]]
    assert torch.equal(solution.values[1, 2], images[1, 2])
    assert torch.equal(solution.values[~removed], images[~removed])  # kept values bit for bit
    assert not torch.equal(solution.values[0, 0][removed[0, 0]], images[0, 0][removed[0, 0]])  # the others were imputed


def test_an_image_gets_the_same_values_in_any_chunk_of_a_batch():
    # more images than one CPU chunk holds: the batch is solved in several chunks
    per_chunk = CPU_CHUNK_VALUES // (3 * 34 * 34)
    b = per_chunk + 3
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(b, 3, 32, 32, generator=gen)
    removed = torch.rand(b, 1, 32, 32, generator=gen) < 0.5
    removed[-1] = True
    removed[-1, :, 5, 7] = False  # one image far harder than the rest: it takes many more steps
    batch = solve_road_system(images, removed.expand_as(images), 1e-5, 1000)
    for i in (0, per_chunk - 1, per_chunk, b - 1):
        alone = solve_road_system(images[i : i + 1], removed[i : i + 1].expand(1, 3, 32, 32), 1e-5, 1000)
        torch.testing.assert_close(batch.values[i], alone.values[0], rtol=0, atol=1e-6)


def test_the_noise_is_the_tie_break_hash_of_the_same_seed():
    # standard_normal hashes in place and skips splitmix64's last xor-shift, which leaves the 24 bits it uses alone
    indices, shape, seed = torch.tensor([0, 7, 123456789]), (2, 3, 4), 5
    n = math.prod(shape)
    keys = tie_break_keys(indices, 2 * n, seed ^ 0x5EED_0F_F111)
    uniform = (((keys >> 40) & 0xFFFFFF).to(torch.float32) + 0.5) / float(1 << 24)
    expected = torch.sqrt(-2.0 * torch.log(uniform[:, :n])) * torch.cos(2.0 * math.pi * uniform[:, n:])
    assert torch.equal(standard_normal(indices, shape, seed), expected.view(3, *shape))


def test_the_noise_is_added_to_the_removed_values_only_and_matches_the_draws():
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(70, 3, 6, 5, generator=gen)  # more images than one noise chunk
    removed = torch.rand(70, 3, 6, 5, generator=gen) < 0.4
    indices = torch.arange(100, 170)
    clean = noisy_linear_impute(images, removed, noise_std=0.0)
    noisy = noisy_linear_impute(images, removed, noise_std=0.02, indices=indices, seed=9)
    expected = torch.where(removed, clean + 0.02 * standard_normal(indices, (3, 6, 5), 9), images)
    torch.testing.assert_close(noisy, expected, rtol=0, atol=1e-6)
