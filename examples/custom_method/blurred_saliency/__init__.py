"""An example attribution method in a package of its own: the absolute gradient, box-blurred.

A researcher's method is one function ``explain(model, inputs, target, **params)`` returning a
map of the inputs' shape; ``@register_method`` makes it a name in roar configs, exactly like the
built-ins (which register themselves with the same decorator). Installed with pip, the package's
``roar.methods`` entry point (pyproject.toml) lets roar find it without any import.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from roar.attribution import register_method


@register_method("blurred_gradient")
def blurred_gradient(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor, *, kernel: int = 3) -> torch.Tensor:
    """|d logit_target / d x|, averaged over a ``kernel`` x ``kernel`` neighbourhood.

    Args:
        model: the classifier (eval mode, gradients enabled).
        inputs: ``(B, C, H, W)`` in [0, 1]; a leaf that requires grad.
        target: ``(B,)`` classes to explain.
        kernel: side of the box filter (odd).
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd integer, got {kernel}")
    logits = model(inputs)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inputs)
    return F.avg_pool2d(grad.abs(), kernel, stride=1, padding=kernel // 2, count_include_pad=False)
