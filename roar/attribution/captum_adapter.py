"""Any captum attribution class, by import path, as a roar method.

captum (Kokhlikyan et al., "Captum: A unified and generic model interpretability library for
PyTorch", arXiv 2009.07896, 2020) has one interface: ``cls(forward_func, **init_args)`` (layer
methods: ``cls(forward_func, layer, ...)``), then ``.attribute(inputs, target=..., **kwargs)``.
:class:`CaptumMethod` adapts it, so a config entry such as::

    {name: occlusion, class_path: captum.attr.Occlusion, attribute_args: {sliding_window_shapes: [1, 3, 3]}}
    {name: gradcam, class_path: captum.attr.LayerGradCam, layer: net.conv3}

is a method like the built-ins: rankable, wrappable in an ensemble, fingerprinted. Layer methods
attribute to a layer's activations: their map is upsampled to the input (and summed over the
layer's channels, then repeated over the input's), as Grad-CAM is (Selvaraju et al., ICCV 2017).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import Attribution, LayerAttribution
from torch import Tensor, nn

from roar.attribution.base import _STREAM_CAPTUM, INTERPOLATE_MODES, ModelMethod, _eval_mode, _seeded_global_rngs
from roar.attribution.batch_budget import DEFAULT_BATCH_SIZE
from roar.attribution.checks import _choice
from roar.attribution.captum_checks import BATCH_BASELINES, EVERY_PAIR, check_captum_args, check_captum_class, check_lrp_entry, draws_random_numbers
from roar.attribution.lrp_rules import configured_rules, is_lrp, lrp_rules, user_rules


# captum says on every call that it sets hooks (DeepLift, LRP, guided methods): expected here, not news.
# Lime and KernelShap say on every call that several inputs fit several models: roar attributes batches by design.
_HOOK_WARNINGS = r"(Setting forward, backward hooks|Setting backward hooks on ReLU|You are providing multiple inputs for Lime)"


@contextmanager
def quiet_hook_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_HOOK_WARNINGS)
        yield


def find_last_conv_block(model: nn.Module, example: Tensor) -> str:
    """The default Grad-CAM layer: the outermost module around the last conv that stays spatial.

    Walks the ancestors of the model's last ``nn.Conv2d`` from the root down and returns the
    first whose output is a 4-D feature map: ``layer4`` for timm ResNets, ``conv3`` for
    ``small_cnn``, and ``net.layer4`` when the ResNet sits inside the Lightning classifier
    (whose ``net`` returns logits). One forward pass on ``example`` records the output shapes.

    Raises:
        ValueError: if the model has no ``nn.Conv2d``.
    """
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ValueError(f"a layer method needs a convolutional layer but {type(model).__name__} has none; pass layer=<dotted module name>")
    parts = convs[-1].split(".")
    ancestors = [".".join(parts[: i + 1]) for i in range(len(parts))]
    ranks: dict[str, int] = {}
    hooks = []
    for name in ancestors:
        def record(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            ranks[name] = output.dim() if isinstance(output, Tensor) else -1
        hooks.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with _eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return next((name for name in ancestors if ranks.get(name) == 4), convs[-1])


def get_layer(model: nn.Module, layer: Any) -> nn.Module:
    """``model.get_submodule(layer)``; when it is not there, the layers that are, where the name went wrong."""
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a dotted module name, got {type(layer).__name__}")
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(_missing_layer(model, layer)) from None


def _missing_layer(model: nn.Module, layer: str) -> str:
    """Name the deepest part of ``layer`` that exists and list its children; suggest a full name."""
    parts = layer.split(".")
    found = 0  # how many leading parts of the name are a module
    while found < len(parts) - 1:
        try:
            model.get_submodule(".".join(parts[: found + 1]))
        except AttributeError:
            break
        found += 1
    parent = ".".join(parts[:found])
    prefix = parent + "." if parent else ""
    children = [prefix + name for name, _ in model.get_submodule(parent).named_children()]
    names = [name for name, _ in model.named_modules() if name]
    close = [n for n in names if n.endswith("." + layer)] or difflib.get_close_matches(layer, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f"its modules under {parent}" if parent else "its top-level modules"
    listing = f"{where} are: {', '.join(children)}" if children else f"{parent} has no children"
    return f"model has no layer {layer!r}{hint}; {listing}"


def _tuples(value: Any) -> Any:
    """YAML gives lists; captum wants tuples (``sliding_window_shapes``, ``strides``)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class CaptumMethod(ModelMethod):
    """A captum ``Attribution`` class as a method.

    Args:
        model: the classifier.
        captum_class: the captum class (``captum.attr.DeepLift``, ``captum.attr.LayerGradCam``...).
        init_args: keyword arguments of its constructor, after the model (and the layer).
        attribute_args: keyword arguments of its ``attribute`` call, besides ``inputs`` and ``target``.
        layer: for layer methods, the dotted module name (default: the last conv block, see
            :func:`find_last_conv_block`).
        interpolate_mode: how a layer map is upsampled to the input.
        rules: LRP classes only: ``{module name or class name: rule}`` (:func:`~roar.attribution.lrp_rules.check_rules`),
            set for each call on top of the rules the model's modules carry.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        captum_class: type[Attribution],
        init_args: dict[str, Any] | None = None,
        attribute_args: dict[str, Any] | None = None,
        layer: str | None = None,
        interpolate_mode: str = "bilinear",
        rules: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model)
        self.captum_class = check_captum_class(captum_class, getattr(captum_class, "__name__", str(captum_class)))
        self.init_args = dict(init_args or {})
        self.attribute_args = {k: _tuples(v) for k, v in (attribute_args or {}).items()}
        check_captum_args(self.captum_class, self.init_args, self.attribute_args)
        self.is_layer = issubclass(self.captum_class, LayerAttribution)
        if layer is not None and not self.is_layer:
            raise ValueError(f"{self.captum_class.__name__} is not a layer method; remove layer={layer!r}")
        self.layer = layer
        self.interpolate_mode = _choice("interpolate_mode", interpolate_mode, INTERPOLATE_MODES)
        self.params = {"init_args": self.init_args, "attribute_args": self.attribute_args, "layer": layer, "interpolate_mode": interpolate_mode}
        checked_rules = check_lrp_entry(self.captum_class, rules)
        if rules is not None:  # only when given: the fingerprints of entries without it stay as they were
            self.params["rules"] = rules
        # LRP: the rules the user's modules carry now, which captum deletes after every call, and the entry's
        self._user_rules = user_rules(model) if is_lrp(self.captum_class) else None
        self._rules = configured_rules(model, checked_rules)
        self._captum: Attribution | None = None if self.is_layer and layer is None else self._build()
        self._seeded = draws_random_numbers(self.captum_class)
        self._state = np.random.RandomState(0)  # reseeded per call from its sample indices (_begin)

    def _build(self) -> Attribution:
        if self.is_layer:
            return self.captum_class(self.model, get_layer(self.model, self.layer), **self.init_args)
        return self.captum_class(self.model, **self.init_args)

    def _attribute(self, inputs: Tensor, target: Tensor, references: Tensor) -> Tensor:
        if self._captum is None:  # the default layer needs one forward pass to be found
            self.layer = find_last_conv_block(self.model, inputs[:1])
            self._captum = self._build()
        args, step = self.attribute_args, inputs.shape[0]
        if args.get("baselines") == BATCH_BASELINES:
            # the caller's whole batch (an ensemble's clean images); one image alone is its own only
            # reference (a zero map), so it is compared with black, as gradient_shap does
            refs = references.detach() if references.shape[0] > 1 else torch.zeros_like(references).expand(2, *references.shape[1:])
            args = {**args, "baselines": refs}
            if issubclass(self.captum_class, EVERY_PAIR):
                step = max(1, DEFAULT_BATCH_SIZE // refs.shape[0])
        chunks = []
        # captum's sampling classes (GradientShap, KernelShap, Lime...) draw from the global RNGs: seeded
        # by the batch's sample indices, a rerun gives the same maps
        with quiet_hook_warnings(), _seeded_global_rngs(self._state, inputs.device) if self._seeded else nullcontext():
            for start in range(0, inputs.shape[0], step):
                part = inputs[start : start + step].detach().requires_grad_(True) if step < inputs.shape[0] else inputs
                with lrp_rules(self.model, self._user_rules, self._rules) if self._user_rules is not None else nullcontext():
                    maps = self._captum.attribute(part, target=target[start : start + step], **args)
                chunks.append(maps[0] if isinstance(maps, tuple) else maps)
        maps = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        return self._to_input(maps, inputs) if self.is_layer else maps

    def _begin(self, inputs: Tensor, indices: Tensor) -> None:
        if self._seeded:
            self._state = np.random.RandomState(np.random.SeedSequence([_STREAM_CAPTUM, *indices.tolist()]).generate_state(4))

    def _to_input(self, maps: Tensor, inputs: Tensor) -> Tensor:
        """A layer map ``(B, K, h, w)`` as an input map ``(B, C, H, W)``: channel sum, upsample, repeat."""
        if maps.dim() != 4:
            raise ValueError(f"{self.captum_class.__name__} on layer {self.layer!r} returned shape {tuple(maps.shape)}; "
                             "only spatial (B, K, h, w) layer maps can be upsampled to the input; pick a conv layer")  # fmt: skip
        maps = maps.sum(dim=1, keepdim=True)
        align = False if self.interpolate_mode in ("bilinear", "bicubic") else None
        maps = F.interpolate(maps, size=inputs.shape[-2:], mode=self.interpolate_mode, align_corners=align)
        return maps.expand(-1, inputs.shape[1], -1, -1)

    def __repr__(self) -> str:
        return f"CaptumMethod({self.captum_class.__module__}.{self.captum_class.__qualname__}, {self.params})"
