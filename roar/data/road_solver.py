"""Batched preconditioned conjugate gradient for ROAD's imputation system (Rong, Leemann et al., ICML 2022).

Row ``i`` of ROAD's system is ``x_i - sum_j w_ij x_j = 0`` over the removed values ``i``, with
``w_ij = c_ij / D_i`` (``c`` the 3x3 kernel ``[[1,2,1],[2,0,2],[1,2,1]]``, ``D_i`` the sum of ``c``
over the neighbours inside the image) and the kept ``x_j`` known. Multiplied by ``D_i`` it is
``(D - C)_RR u = C_RK v``: symmetric, and positive definite whenever every group of removed values
touches a kept one, so conjugate gradient applies, with ``D`` as (Jacobi) preconditioner. The
preconditioned residual ``r / D`` *is* the residual of ROAD's row-normalised equations in pixel
units, which is what ``tol`` bounds: the solve ends only when that bound holds for the residual
recomputed from the returned values (not only for CG's recursively updated one, which drifts in
float32).

How it is made fast (measured in ``benchmarks/road_imputation.py``, figure 8):

* One independent system per image and channel, all advanced together with per-system step sizes.
* Every ``H x W`` plane is stored with a ring of zeros, flattened, and the planes laid end to end;
  a neighbour is then a constant offset in one flat array, and ``C u`` is the separable
  ``[1,2,1] x [1,2,1]`` stencil (minus ``4 u``) as four additions of contiguous slices. No
  convolution, no gather, and the ring supplies the zeros outside the image.
* All vectors live in buffers allocated once; every step writes in place (fresh multi-megabyte
  tensors cost a page fault per 4 KiB on the CPU, more than the arithmetic).
* The start is the weighted mean of each removed value's kept neighbours (ROAD's equation with the
  removed neighbours left out; the channel's kept mean where there are none), which saves a few
  steps over starting from zero.
* On the CPU the images are solved in chunks whose vectors fit in cache (the work is memory bound);
  on an accelerator the whole batch is one chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

CPU_CHUNK_VALUES = 1 << 18  # values per vector in one CPU chunk: ~1 MiB of float32, cache-sized


class ImputationError(RuntimeError):
    """The imputation's linear system was not solved to the stated residual."""


@dataclass(frozen=True)
class RoadSolution:
    """What :func:`solve_road_system` returns.

    Attributes:
        values: ``(B, C, H, W)``: the solution at the removed values of channels that keep at least one
            value, the input everywhere else.
        iterations: conjugate gradient steps taken by the slowest chunk of images.
        residual: the largest absolute residual of ROAD's row-normalised equations at ``values``.
    """

    values: torch.Tensor
    iterations: int
    residual: float


class _Stencil:
    """``out = sum_j c_ij u_j + 4 u_i`` for ``n`` zero-ringed ``(H+2) x (W+2)`` planes stored end to end.

    Valid at every interior position; the ring of ``out`` holds garbage that the callers mask.
    ``[1,2,1] x [1,2,1]`` is ``c`` plus 4 at the centre, so the stencil is two 1-D passes.
    """

    def __init__(self, n: int, row: int, size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.row = row
        self.rows = torch.zeros(n * size, dtype=dtype, device=device)  # its ends are never written: stay 0

    def __call__(self, u: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.bind(u, out)()
        return out

    def bind(self, u: torch.Tensor, out: torch.Tensor):
        """The stencil from ``u`` into ``out`` as a call with its slices taken once (they cost as much as small ops)."""
        flat, dst, rows, w = u.reshape(-1), out.view(-1), self.rows[: u.numel()], self.row
        left, right, centre, rows_mid = flat[:-2], flat[2:], flat[1:-1], rows[1:-1]
        up, down, middle, dst_mid = rows[: -2 * w], rows[2 * w :], rows[w:-w], dst[w:-w]

        def apply() -> None:
            torch.add(left, right, out=rows_mid)
            rows_mid.add_(centre, alpha=2)
            torch.add(up, down, out=dst_mid)
            dst_mid.add_(middle, alpha=2)

        return apply


class _Workspace:
    """The buffers of the solve, allocated once for the largest chunk and reused by every chunk.

    Each is ``(n, (H+2)(W+2))``: one zero-ringed plane per system. The rings of ``x``, ``kept`` and
    ``minv`` are never written (they stay 0); the other buffers start at 0 so their rings stay finite.
    """

    def __init__(self, n: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> None:
        self.h, self.w, self.size = h, w, (h + 2) * (w + 2)
        self.stencil = _Stencil(n, w + 2, self.size, dtype, device)
        self.bufs = {name: torch.zeros(n, self.size, dtype=dtype, device=device) for name in ("x", "kept", "minv", "rhs", "u", "r", "z", "p", "ap", "tmp")}
        inside = F.pad(torch.ones(1, 1, h, w, dtype=dtype, device=device), (1, 1, 1, 1)).reshape(1, self.size)
        self.diag = self.stencil(inside, torch.zeros_like(inside)) - 4 * inside  # D_i: 12 inside, 8 on an edge, 5 in a corner
        self.diag4 = self.diag + 4  # D - C = (D + 4) - stencil
        self.dinv = torch.where(inside > 0, 1.0 / self.diag.clamp_min(1.0), torch.zeros((), dtype=dtype, device=device))

    def interior(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.view(-1, self.h + 2, self.w + 2)[:, 1:-1, 1:-1]

    def solve(self, images: torch.Tensor, removed: torch.Tensor, has_kept: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int, float]:
        """Solve the systems of one chunk; returns the ``(b, c, H, W)`` values, the steps and the true residual."""
        b, c, h, w = images.shape
        n = b * c
        x, kept, minv, rhs, u, r, z, p, ap, tmp = (buf[:n] for buf in self.bufs.values())
        stencil, diag4, zero = self.stencil, self.diag4, self.diag.new_zeros(())
        self.interior(x).copy_(images.reshape(n, h, w))
        self.interior(kept).copy_(~removed.reshape(n, h, w))
        torch.addcmul(self.dinv, kept, self.dinv, value=-1, out=minv)  # Jacobi 1/D on the unknowns, 0 elsewhere
        if not bool(has_kept.all()):  # a channel with nothing kept: not solved here (no unique solution)
            minv.mul_(has_kept.reshape(n, 1))
        unknown = minv > 0
        stencil(torch.mul(x, kept, out=tmp), rhs)  # C_RK v on the unknowns (other rows: masked by minv)
        # Start from the mean of each unknown's kept neighbours, or of the channel's kept values if it
        # has none: (sum c v + eps * mean) / (sum c + eps) over kept neighbours, c >= 1, so eps barely shifts the first.
        eps = 1e-3
        mean = tmp.sum(1, keepdim=True) / kept.sum(1, keepdim=True).clamp_min(1.0)
        weight = stencil(kept, ap).add_(eps)
        torch.add(rhs, mean, alpha=eps, out=u).div_(weight).mul_(unknown)
        # The stop test max|r_i / D_i| <= tol is skipped while r.z = sum D_i (r_i / D_i)^2 alone proves it false.
        sure = tol * tol * torch.mul(self.diag, unknown, out=tmp).sum(1, keepdim=True)

        def row_max(v: torch.Tensor) -> torch.Tensor:  # (n, 1) max abs per system (aminmax(dim=1) is 10x slower on CPU)
            return torch.maximum(v.amax(1, keepdim=True), v.amin(1, keepdim=True).neg_())

        def residual() -> torch.Tensor:  # r = rhs - (D - C) u, z = r / D on the unknowns: the true residual per system
            stencil(u, r).addcmul_(diag4, u, value=-1).add_(rhs)
            return row_max(torch.mul(r, minv, out=z))

        def dot(a: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:  # one inner product per system
            return torch.mul(a, bb, out=tmp).sum(1, keepdim=True)

        # Each system stops at its own first step below tol (its step size is 0 from then on), so its
        # values do not depend on the other images of the batch. When every system's CG residual is
        # below tol, the true residual is recomputed; systems it rejects restart from it. Signs: ap
        # holds -(D - C) p, so pap = p.ap <= 0 and the step -rz/pap is written as g = rz/pap < 0.
        tiny = torch.finfo(u.dtype).tiny
        stencil_p = stencil.bind(p, ap)
        steps, true = 0, residual()
        active = (true > tol).to(u.dtype)  # 1 for the systems still iterating
        while bool(active.any()) and steps < max_iter:
            p.copy_(z)
            rz = dot(r, z)
            look = sure * active  # an active system with r.z below this may have converged
            while steps < max_iter:
                stencil_p()
                ap.addcmul_(diag4, p, value=-1)
                g = rz.div(dot(p, ap).clamp_max_(-tiny)).mul_(active)  # p = 0 (converged exactly): g = 0
                u.addcmul_(g, p, value=-1)
                r.addcmul_(g, ap, value=-1)
                torch.mul(r, minv, out=z)
                rz_new = dot(r, z)
                torch.addcmul(z, p, rz_new.div(rz.clamp_min(tiny)).mul_(active), out=p)
                rz = rz_new
                steps += 1
                if bool((rz < look).any()):  # some active system may be below tol: look
                    active.mul_(row_max(z) > tol)
                    look = sure * active
                    if not bool(active.any()):
                        break
            true = residual()
            active = (true > tol).to(u.dtype)
        values = torch.where(unknown, u, x)
        return self.interior(values).reshape(b, c, h, w), steps, float(true.max())


def solve_road_system(images: torch.Tensor, removed: torch.Tensor, tol: float, max_iter: int) -> RoadSolution:
    """Solve ROAD's imputation system for every image and channel of a batch (see the module docstring).

    Args:
        images: ``(B, C, H, W)`` float32 or float64 images (the dtype the solve runs in).
        removed: bool ``(B, C, H, W)``: the unknowns.
        tol: bound on the max abs residual of ROAD's row-normalised equations (pixel units).
        max_iter: conjugate gradient steps at most (per chunk of images).

    Raises:
        ImputationError: the residual is still above ``tol`` after ``max_iter`` steps (named).
    """
    b, c, h, w = images.shape
    has_kept = (~removed).flatten(2).any(2)  # (B, C): a channel with nothing kept has no unique solution
    per_chunk = b if images.device.type != "cpu" else max(1, CPU_CHUNK_VALUES // (c * (h + 2) * (w + 2)))
    workspace = _Workspace(min(b, per_chunk) * c, h, w, images.dtype, images.device)
    parts, steps, res = [], 0, 0.0
    for start in range(0, b, per_chunk):
        end = start + per_chunk
        values, chunk_steps, chunk_res = workspace.solve(images[start:end], removed[start:end], has_kept[start:end], tol, max_iter)
        if chunk_res > tol:
            raise ImputationError(
                f"noisy_linear imputation did not converge: residual {chunk_res:.3g} > fill_tol {tol:g} after "
                f"fill_max_iter {max_iter} conjugate gradient steps; raise protocol.fill_max_iter or fill_tol"
            )
        parts.append(values)
        steps, res = max(steps, chunk_steps), max(res, chunk_res)
    return RoadSolution(torch.cat(parts) if len(parts) > 1 else parts[0].contiguous(), steps, res)


__all__ = ["CPU_CHUNK_VALUES", "ImputationError", "RoadSolution", "solve_road_system"]
