"""Fills that impute removed features from the rest of the image: ROAD's noisy linear imputation and a blur control.

ROAD (Rong, Leemann, Nguyen, Fiedler, Kasneci & Kasneci, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML 2022) argues that a constant fill lets the *shape* of the
mask leak the class: a model can read where features were removed. Its noisy linear imputation
replaces every removed pixel by the weighted mean of its 8 neighbours (direct neighbours weigh
twice the diagonal ones, 1/6 and 1/12 in the paper's code; only neighbours inside the image),
solved jointly over all removed pixels of an image, plus small Gaussian noise (std 0.01 in the
paper's code).

The published code builds one scipy sparse system per image on the CPU. Here the system is solved
batched on the device by preconditioned conjugate gradient:

* Row ``i`` of ROAD's system is ``x_i - sum_j w_ij x_j = 0`` with ``w_ij = c_ij / D_i`` (``c`` the
  3x3 kernel ``[[1,2,1],[2,0,2],[1,2,1]]``, ``D_i`` the sum of ``c`` over the neighbours inside the
  image) and kept ``x_j`` known. Multiplied by ``D_i`` it is ``(D - C)_RR u = C_RK v``: symmetric,
  and positive definite whenever every group of removed values touches a kept one. So CG applies,
  with the diagonal ``D`` as (Jacobi) preconditioner; its preconditioned residual ``r / D`` *is* the
  residual of ROAD's row-normalised equations, in pixel units, which is what ``tol`` bounds.
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

# ROAD's neighbour weights up to scale (1/6 direct, 1/12 diagonal): the scale cancels in w = c / D.
NEIGHBOUR_KERNEL = ((1.0, 2.0, 1.0), (2.0, 0.0, 2.0), (1.0, 2.0, 1.0))
DEFAULT_NOISE_STD = 0.01  # the ROAD code's NoisyLinearImputer(noise=0.01), in [0, 1] pixel units
DEFAULT_TOL = 1e-5
DEFAULT_MAX_ITER = 1000
DEFAULT_SIGMA = 2.0
_CHECK_EVERY = 8  # convergence is checked (a device sync) every few CG steps, not every one
_NOISE_SALT = 0x5EED_0F_F111  # keeps the noise stream apart from the rank tie-breaking keys of the same seed


class ImputationError(RuntimeError):
    """The imputation's linear system was not solved to the stated residual."""


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


def standard_normal(indices: torch.Tensor, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``(B, *shape)`` float32 standard normal draws that depend only on ``(seed, sample index, position)``.

    Box-Muller on two 24-bit uniforms from :func:`~roar.data.masking.tie_break_keys` (splitmix64), so
    the draws of an image are the same in any batch and on any device.
    """
    from roar.data.masking import tie_break_keys

    n = math.prod(shape)
    keys = tie_break_keys(indices, 2 * n, int(seed) ^ _NOISE_SALT)
    uniform = (((keys >> 40) & 0xFFFFFF).to(torch.float32) + 0.5) / float(1 << 24)  # in (0, 1), never 0
    u1, u2 = uniform[:, :n], uniform[:, n:]
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.view(len(indices), *shape)


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
    removed = _check(images, removed)
    b, c, h, w = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    x0 = images.to(dtype)
    kept = ~removed
    has_kept = kept.flatten(2).any(2)[:, :, None, None]  # (B, C, 1, 1)
    if not bool(kept.flatten(1).any(1).all()):
        raise ValueError("an image has every value removed; nothing is left to impute from (thresholds must be < 1)")
    solve = (removed & has_kept).to(dtype)  # the unknowns of a well-posed system

    kernel = torch.tensor(NEIGHBOUR_KERNEL, dtype=dtype, device=images.device).expand(c, 1, 3, 3)

    def neighbours(field: torch.Tensor) -> torch.Tensor:  # sum_j c_ij field_j, zero outside the image
        return F.conv2d(field, kernel, padding=1, groups=c)

    diag = neighbours(torch.ones(1, c, h, w, dtype=dtype, device=images.device))  # D_i: 12 inside, less at edges

    def operator(u: torch.Tensor) -> torch.Tensor:  # (D - C)_RR u, zero outside the unknowns
        return solve * (diag * u - neighbours(u))

    rhs = solve * neighbours(x0 * (1 - solve) * has_kept)
    u = torch.zeros_like(x0)
    steps, residual = 0, float("inf")
    while True:
        # (Re)start from the true residual: float32 recursion drifts, so the stated tolerance is checked for real.
        r = rhs - operator(u)
        z = r / diag
        residual = float(z.abs().amax()) if z.numel() else 0.0
        if residual <= tol or steps >= max_iter:
            break
        p = z
        rz = (r * z).sum((2, 3), keepdim=True)
        restart_at = steps + 16 * _CHECK_EVERY
        while steps < min(max_iter, restart_at):
            ap = operator(p)
            pap = (p * ap).sum((2, 3), keepdim=True)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(pap))
            u = u + alpha * p
            r = r - alpha * ap
            z = r / diag
            rz_new = (r * z).sum((2, 3), keepdim=True)
            beta = torch.where(rz > 0, rz_new / rz.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_new
            steps += 1
            if steps % _CHECK_EVERY == 0 and float(z.abs().amax()) <= tol:
                break
    if residual > tol:
        raise ImputationError(
            f"noisy_linear imputation did not converge: residual {residual:.3g} > fill_tol {tol:g} after "
            f"fill_max_iter {max_iter} conjugate gradient steps; raise protocol.fill_max_iter or fill_tol"
        )
    kept_mean = (x0 * kept).flatten(1).sum(1) / kept.flatten(1).sum(1)  # for channels with nothing kept
    filled = torch.where(has_kept, u, kept_mean.view(b, 1, 1, 1))
    if noise_std > 0:
        idx = torch.arange(b, device=images.device) if indices is None else indices.to(images.device)
        filled = filled + noise_std * standard_normal(idx, (c, h, w), seed).to(dtype)
    return torch.where(removed, filled, x0).to(images.dtype)


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
