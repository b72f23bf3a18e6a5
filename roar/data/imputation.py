"""Fills that impute removed features from the rest of the image: ROAD's noisy linear imputation and a blur control.

ROAD (Rong, Leemann, Nguyen, Fiedler, Kasneci & Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML 2022) argues that a constant fill lets the *shape* of the
mask leak the class: a model can read where features were removed. Its noisy linear imputation
replaces every removed pixel by the weighted mean of its 8 neighbours (direct neighbours weigh
twice the diagonal ones, 1/6 and 1/12 in the paper's code; only neighbours inside the image),
solved jointly over all removed pixels of an image, plus small Gaussian noise (std 0.01 in the
paper's code).

The published code builds one scipy sparse system per image on the CPU. Here the system is solved
batched on the device by preconditioned conjugate gradient (:mod:`roar.data.road_solver`: ROAD's
equations, why CG applies, what ``tol`` bounds, and how the solve is made fast):

* One independent system per image and channel: a removed value is imputed from the same channel
  of its neighbours. With pixel granularity every channel has the same mask (whole pixels, all
  channels together); with element granularity each channel has its own.
* A channel with no kept value at all (possible for element masks at high thresholds) has no
  unique solution; it is filled with the mean of the image's kept values, stated here because the
  papers do not cover it.
* The noise is drawn from a counter-based hash of ``(seed, sample index, feature)``, so an image's
  fill does not depend on the batch it arrives in.

Everything is pure torch, vectorised over the batch, on the images' device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from roar.data.ranking import _GAMMA_FEATURE, _GAMMA_INDEX, _MIX1, _MIX2, _mix64, _signed
from roar.data.road_solver import ImputationError, solve_road_system

# ROAD's neighbour weights up to scale (1/6 direct, 1/12 diagonal): the scale cancels in w = c / D.
NEIGHBOUR_KERNEL = ((1.0, 2.0, 1.0), (2.0, 0.0, 2.0), (1.0, 2.0, 1.0))
DEFAULT_NOISE_STD = 0.01  # the ROAD code's NoisyLinearImputer(noise=0.01), in [0, 1] pixel units
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITER = 1000
DEFAULT_SIGMA = 2.0
_NOISE_CHUNK = 64  # images per chunk of noise draws on the CPU
_NOISE_SALT = 0x5EED_0F_F111  # keeps the noise stream apart from the rank tie-breaking keys of the same seed


def check_imputation_settings(sigma: float = DEFAULT_SIGMA, noise_std: float = DEFAULT_NOISE_STD, tol: float = DEFAULT_TOL, max_iter: int = DEFAULT_MAX_ITER) -> None:
    """Refuse settings that cannot run, naming the value: ``sigma > 0``, ``noise_std >= 0``, ``tol > 0``, ``max_iter >= 1``."""
    for name, value, ok, rule in (
        ("fill_sigma", sigma, lambda v: v > 0, "> 0 (pixels)"),
        ("fill_noise_std", noise_std, lambda v: v >= 0, ">= 0"),
        ("fill_tol", tol, lambda v: v > 0, "> 0"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"{name} must be a finite number {rule}, got {value!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"fill_max_iter must be a positive integer, got {max_iter!r}")


def _check(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a floating point (B, C, H, W) tensor, got {images.dtype} of shape {tuple(images.shape)}")
    if removed.dtype != torch.bool:
        raise ValueError(f"removed must be a bool tensor, got dtype {removed.dtype}")
    try:
        return removed.expand_as(images)  # a (B, 1, H, W) pixel mask covers every channel
    except RuntimeError:
        raise ValueError(f"removed {tuple(removed.shape)} does not broadcast to images {tuple(images.shape)}") from None


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` images, radius ``ceil(3 sigma)``, edges replicated."""
    check_imputation_settings(sigma=sigma)
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images.dtype)
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_fill(images: torch.Tensor, removed: torch.Tensor, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Removed features take the value of a Gaussian-blurred copy of the image (a control that keeps low frequencies)."""
    removed = _check(images, removed)
    return torch.where(removed, gaussian_blur(images, sigma), images)


def _uniform24_(x: torch.Tensor) -> torch.Tensor:
    """Finish :func:`~roar.data.ranking.tie_break_keys`' hash in place on ``x = row key + feature * gamma``
    and return its top 24 bits as float32 uniforms in (0, 1).

    The same splitmix64 arithmetic on one buffer (fresh multi-megabyte int64 temporaries cost more
    than the hashing). Its last step, ``x ^= x >>> 31``, leaves bits 33..63 as they are, so it is
    skipped: the 24 bits taken are bit for bit those of ``tie_break_keys``.
    """
    tmp = torch.empty_like(x)
    for bits, multiplier in ((30, _MIX1), (27, _MIX2)):
        torch.bitwise_right_shift(x, bits, out=tmp).bitwise_and_((1 << (64 - bits)) - 1)  # the logical shift
        x.bitwise_xor_(tmp).mul_(_signed(multiplier))
    x.bitwise_right_shift_(40).bitwise_and_(0xFFFFFF)
    return x.to(torch.float32).add_(0.5).mul_(1.0 / (1 << 24))  # never 0


def _row_keys(indices: torch.Tensor, seed: int) -> torch.Tensor:
    if indices.ndim != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be a 1-D integer tensor, got dtype {indices.dtype} and shape {tuple(indices.shape)}")
    seed_state = torch.tensor(_signed((int(seed) ^ _NOISE_SALT) + _GAMMA_INDEX), dtype=torch.int64, device=indices.device)
    return _mix64(_mix64(seed_state) + indices.to(torch.int64) * _signed(_GAMMA_INDEX))


def _box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    return u1.log_().mul_(-2.0).sqrt_().mul_(u2.mul_(2.0 * math.pi).cos_())


def standard_normal(indices: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``(B, *shape)`` float32 standard normal draws that depend only on ``(seed, sample index, position)``.

    Box-Muller on two 24-bit uniforms from :func:`~roar.data.ranking.tie_break_keys` (splitmix64) at
    features ``f`` and ``n + f`` (``n`` values per sample), so the draws of an image are the same in
    any batch and on any device.
    """
    n = math.prod(shape)
    features = torch.arange(2 * n, dtype=torch.int64, device=indices.device).mul_(_signed(_GAMMA_FEATURE))
    uniform = _uniform24_(_row_keys(indices, seed).unsqueeze(1) + features)
    return _box_muller(uniform[:, :n], uniform[:, n:]).view(len(indices), *shape)


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
    indices: torch.Tensor | None = None,
    seed: int = 0,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the removed values of a batch (see the module docstring).

    Args:
        images: ``(B, C, H, W)`` floating point images (computed in float32, float64 kept).
        removed: bool, ``(B, C, H, W)`` (element masks) or ``(B, 1, H, W)`` (whole pixels).
        noise_std: std of the Gaussian noise added to every imputed value (0: none).
        indices: ``(B,)`` global sample indices that seed each image's noise (default ``0..B-1``).
        seed: the noise seed.
        tol: the solve stops when every removed value satisfies its equation
            ``x_i = sum_j w_ij x_j`` to within ``tol`` (max abs residual, pixel units).
        max_iter: conjugate gradient steps at most.

    Returns:
        A new tensor: kept values unchanged, removed ones imputed (plus noise).

    Raises:
        ImputationError: the residual is still above ``tol`` after ``max_iter`` steps (named).
    """
    check_imputation_settings(noise_std=noise_std, tol=tol, max_iter=max_iter)
    mask, removed = removed, _check(images, removed)
    b = images.shape[0]
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x0 = images.to(dtype)
    # On the mask as given (not expanded to every channel), as bytes: bool any/all reductions are ~30x slower on the CPU.
    if bool(mask.reshape(mask.shape[0] if mask.ndim == 4 else 1, -1).view(torch.uint8).amin(1).any()):
        raise ValueError("an image has every value removed; nothing is left to impute from (thresholds must be < 1)")
    solution = solve_road_system(x0, removed, tol, max_iter)
    filled, has_kept = solution.values, solution.solved[:, :, None, None]  # (B, C, 1, 1)
    if not bool(has_kept.all()):  # a channel with nothing kept: the mean of the image's kept values
        kept = ~removed
        kept_mean = (x0 * kept).flatten(1).sum(1) / kept.flatten(1).sum(1)
        filled = torch.where(has_kept, filled, kept_mean.view(b, 1, 1, 1).to(dtype))
    if noise_std > 0:
        idx = torch.arange(b, device=images.device) if indices is None else indices.to(images.device)
        # On the CPU in chunks of images: the int64 hashing is memory bound, a chunk's buffers stay in cache.
        per_chunk = _NOISE_CHUNK if images.device.type == "cpu" else b
        for start in range(0, b, per_chunk):
            chunk = slice(start, start + per_chunk)
            noise = standard_normal(idx[chunk], tuple(images.shape[1:]), seed).to(dtype).mul_(noise_std)
            filled[chunk].add_(noise.mul_(removed[chunk]))  # filled is a fresh tensor; kept values get + 0
    return filled.to(images.dtype)


__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_NOISE_STD",
    "DEFAULT_SIGMA",
    "DEFAULT_TOL",
    "ImputationError",
    "blur_fill",
    "check_imputation_settings",
    "gaussian_blur",
    "noisy_linear_impute",
    "standard_normal",
]
