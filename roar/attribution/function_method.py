"""A plain function as an attribution method: the least a researcher has to write.

::

    def explain(model, inputs, target, **kwargs):   # inputs (B, C, H, W) in [0, 1], target (B,)
        ...
        return attributions                          # a tensor of the inputs' shape

named in a config as ``{name: my_method, function: mypkg.saliency:explain, args: {...}}`` or
registered with ``@register_method("my_method")``. ``inputs`` is a fresh leaf that requires
grad and the model is in eval mode with gradients enabled, so ``torch.autograd.grad`` works
directly; the ensembles (``ensemble: sg``) call it on noisy copies like any built-in.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from roar.attribution.base import ModelMethod

FUNCTION_ARGS = ("model", "inputs", "target")
"""The positional parameters every attribution function takes, in this order."""


def function_params(function: Callable[..., Any]) -> tuple[tuple[str, ...], bool]:
    """The extra keyword parameters a function takes (after model, inputs, target), and whether it takes **kwargs."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return (), True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < len(FUNCTION_ARGS) and not any(p.kind is p.VAR_POSITIONAL for p in params):
        name = getattr(function, "__qualname__", repr(function))
        raise ValueError(f"attribution function {name} must take ({', '.join(FUNCTION_ARGS)}, **kwargs); it takes ({', '.join(p.name for p in params)})")
    extra = tuple(p.name for p in params[len(FUNCTION_ARGS):] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return extra, any(p.kind is p.VAR_KEYWORD for p in params)


class FunctionMethod(ModelMethod):
    """Calls ``function(model, inputs, target, **args)`` on each chunk and checks what comes back.

    Args:
        model: the classifier.
        function: the attribution function.
        args: its extra keyword arguments.
    """

    def __init__(self, model: nn.Module, *, function: Callable[..., Tensor], args: dict[str, Any] | None = None) -> None:
        super().__init__(model)
        if not callable(function):
            raise ValueError(f"function must be callable, got {function!r}")
        self.function = function
        self.args = dict(args or {})
        accepted, var_keyword = function_params(function)
        unknown = sorted(set(self.args) - set(accepted))
        if unknown and not var_keyword:
            raise ValueError(f"{function.__qualname__} does not take {', '.join(map(repr, unknown))}; it takes: {', '.join(accepted) or 'no extra arguments'}")
        self.params = {"args": self.args}

    def attribute(self, inputs: Tensor, target: Tensor) -> Tensor:
        maps = self.function(self.model, inputs, target, **self.args)
        name = getattr(self.function, "__qualname__", repr(self.function))
        if not isinstance(maps, Tensor):
            raise ValueError(f"attribution function {name} returned {type(maps).__name__}, not a tensor of the inputs' shape {tuple(inputs.shape)}")
        if maps.shape != inputs.shape:
            raise ValueError(f"attribution function {name} returned shape {tuple(maps.shape)}; it must return the inputs' shape {tuple(inputs.shape)}")
        return maps

    def __repr__(self) -> str:
        return f"FunctionMethod({self.function.__module__}.{self.function.__qualname__}, args={self.args})"
