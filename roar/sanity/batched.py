"""Explain with several randomised copies of one network in one batched call.

The models of a randomisation cascade (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018, section 4) share one architecture and differ only in their weights. Instead of
explaining them one after another, their parameters and buffers are stacked
(``torch.func.stack_module_state``-style: one leading axis of K models) and the input gradients
of all K models come from one ``torch.func.vmap`` over ``torch.func.grad`` of
``torch.func.functional_call``: one large grouped forward and backward in place of K small ones.

captum cannot run under ``vmap``, so the gradient methods are re-derived here with the same
arithmetic as captum's (the test suite checks them against the captum path, model by model):

- ``gradient``: the gradient of the target logit (captum ``Saliency``, ``abs=False``);
- ``input_x_gradient``: input times that gradient (captum ``InputXGradient``);
- ``integrated_gradients``: captum's default Gauss-Legendre rule (its ``step_sizes`` and
  ``alphas``), ``sum_i w_i grad(b + alpha_i (x - b)) * (x - b)`` (Sundararajan et al. 2017);
- their ensembles (``_sg``, ``_sg_sq``, ``_var``): the ensemble's own per-sample noise draws
  (seeded by sample index, so every model sees the same noisy copies), the base method on all
  copies at once, then the ensemble's reduction.

Any other method (guided backprop, Grad-CAM, a user's, the ``noise`` control) is not stackable
and the caller explains it model by model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from roar.attribution.ensembles import ENSEMBLE_REDUCTIONS, Ensemble
from roar.attribution.gradients import Gradient, InputXGradient, IntegratedGradients

State = dict[str, Tensor]
InputGrads = Callable[[Tensor, Tensor], Tensor]
"""``(inputs (N, ...), target (N,)) -> (K, N, ...)``: each of K models' input gradients of its target logit."""

MAX_ROWS = 2048
"""Most input rows (summed over the K models) given to one vmapped call: bounds memory."""


def snapshot(model: nn.Module) -> State:
    """A copy of every parameter and buffer of ``model``, by qualified name."""
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def stack_states(states: Sequence[State]) -> State:
    """K states of one architecture as one state with a leading model axis."""
    return {name: torch.stack([s[name] for s in states]) for name in states[0]}


def can_stack(method: object) -> bool:
    """Whether :func:`stacked_explain` reproduces ``method`` (see the module docstring).

    Exact classes, not ``isinstance``: a user's subclass may change how it attributes, and our
    arithmetic would silently replace it; such a method is explained one model at a time.
    """
    if type(method) is Ensemble:
        # An ensemble of an ensemble (sMPRT of ``gradient_sg``) has no batched arithmetic here.
        return type(method.base) is not Ensemble and can_stack(method.base)
    if type(method) is IntegratedGradients:
        return not isinstance(method.baseline, Tensor)
    return type(method) in (Gradient, InputXGradient)


def _input_grads(network: nn.Module, stacked: State, inputs: Tensor, target: Tensor) -> Tensor:
    """``(K, N, C, H, W)``: the gradient of each model's target logit w.r.t. the shared ``inputs``."""
    def logit(state: State, x: Tensor, t: Tensor) -> Tensor:
        return functional_call(network, state, (x,)).gather(1, t.unsqueeze(1)).sum()

    per_model = vmap(grad(logit, argnums=1), in_dims=(0, None, None))
    models = next(iter(stacked.values())).shape[0]
    rows = max(1, MAX_ROWS // models)
    return torch.cat(
        [per_model(stacked, inputs[i : i + rows], target[i : i + rows]) for i in range(0, inputs.shape[0], rows)], dim=1
    )


def _integrated_gradients(method: IntegratedGradients, grads_of: InputGrads, x: Tensor, target: Tensor) -> Tensor:
    step_sizes, alphas = (f(method.n_steps) for f in approximation_parameters("gausslegendre"))
    baseline = torch.full_like(x, float(method.baseline))
    path = torch.cat([baseline + alpha * (x - baseline) for alpha in alphas])
    grads = grads_of(path, target.repeat(method.n_steps))
    # As captum: each step's gradients times its (float32) weight, summed over the steps.
    weights = torch.tensor(step_sizes, dtype=torch.float32, device=x.device).view(1, -1, *([1] * x.dim()))
    total = (grads.view(grads.shape[0], method.n_steps, *x.shape) * weights).sum(dim=1)
    return total * (x - baseline)


def _base_maps(method: object, grads_of: InputGrads, x: Tensor, target: Tensor) -> Tensor:
    if isinstance(method, IntegratedGradients):
        return _integrated_gradients(method, grads_of, x, target)
    grads = grads_of(x, target)
    return grads * x if isinstance(method, InputXGradient) else grads


def _ensemble(method: Ensemble, grads_of: InputGrads, x: Tensor, target: Tensor, indices: Tensor) -> Tensor:
    draws = method.nt_samples
    sigma = method._sigma(x)
    noise = torch.stack([method._noise(sample, int(i)) for sample, i in zip(x, indices)])
    noisy = (x.unsqueeze(1) + noise * sigma.view(-1, 1, 1, 1, 1)).flatten(0, 1)
    maps = _base_maps(method.base, grads_of, noisy, target.repeat_interleave(draws))
    models = maps.shape[0]
    reduced = ENSEMBLE_REDUCTIONS[method.kind](maps.float().reshape(models * x.shape[0], draws, *x.shape[1:]))
    return reduced.view(models, *x.shape)


def stacked_explain(
    method: object, network: nn.Module, states: Sequence[State], images: Tensor, target: Tensor, indices: Tensor
) -> Tensor:
    """The maps of ``method`` under each of ``states``, in one batched computation.

    Args:
        method: a method for which :func:`can_stack` holds, built on ``network``.
        network: the architecture (any of the K models; its own weights are not used), eval mode.
        states: K :func:`snapshot` s of the network's parameters and buffers.
        images: ``(B, C, H, W)``.
        target: ``(B,)`` classes, the same for every model.
        indices: ``(B,)`` per-sample ids (seed the ensembles' noise).

    Returns:
        ``(K, B, C, H, W)`` float32 maps, detached.
    """
    if not can_stack(method):
        raise ValueError(f"{type(method).__name__} has no batched path; explain it model by model")
    stacked = stack_states(states)
    return method_maps(method, lambda inputs, t: _input_grads(network, stacked, inputs, t), images, target, indices)


def method_maps(method: object, grads_of: InputGrads, images: Tensor, target: Tensor, indices: Tensor) -> Tensor:
    """``(K, B, C, H, W)``: the maps of a :func:`can_stack` method from K models' input gradients ``grads_of``.

    The method's arithmetic (IG's path and weights, an ensemble's noise and reduction) is done
    once here; how the K models' gradients are computed (vmapped over stacked weights, or with
    shared layers, :mod:`roar.sanity.shared_forward`) is up to ``grads_of``.
    """
    x = images.detach()
    with torch.enable_grad():
        if isinstance(method, Ensemble):
            maps = _ensemble(method, grads_of, x, target, indices)
        else:
            maps = _base_maps(method, grads_of, x, target)
    return maps.detach().float()
