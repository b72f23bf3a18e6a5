"""Layer-wise relevance propagation (Bach et al., "On Pixel-Wise Explanations for Non-Linear
Classifier Decisions by Layer-Wise Relevance Propagation", PLoS ONE 2015) through captum's
``LRP`` and ``LayerLRP`` on roar's models, and on a user's model whose modules carry their own rules.

captum gives a rule to the layer types it knows (convolutions, linear and pooling layers,
BatchNorm2d; ReLU and Dropout pass relevance on) and refuses any other leaf module, so on its own
it refuses every roar model: each starts with :class:`~roar.models.classifier.Normalize` and the
built-in networks flatten with ``nn.Flatten``. :func:`lrp_rules` gives those modules a rule for
the duration of one ``attribute`` call:

- ``Normalize`` (``(x - mean) / std``, a change of units): the identity rule, so a pixel's
  relevance is that of its standardised value. The epsilon rule would divide by ``x - mean`` and
  blow up at the channel mean, the very value ROAR fills with.
- ``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity`` (reshapes, no-ops): :class:`PassRule`,
  relevance passed on unchanged.
- torchmetrics' metrics (the classifier's accuracies, leaves that forward never calls):
  :class:`PassRule`, which never fires.

captum also deletes every module's ``rule`` after each call, so rules a user set on their own
modules (``module.rule = EpsilonRule(...)``) held for the first batch only; :func:`lrp_rules`
puts them back after each call. A leaf of another type without a rule is still
refused before captum runs, naming the module: how relevance crosses a user's layer is theirs to choose.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from captum.attr import LRP
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule, PropagationRule
from torch import nn
from torchmetrics import Metric

from roar.models.classifier import Normalize


class PassRule(PropagationRule):
    """Relevance passes a module unchanged: through a reshape or an identity as the gradient carries
    it, and through an elementwise layer (GELU, SiLU...) as captum passes it through ReLU, the
    layer's derivative skipped (its output's gradient goes to its input as it is).

    No tensor hooks: captum's rules hook the input and the output tensor, which for ``nn.Identity``
    are one tensor, and the identity rule's input hook then ran before the output hook it reads.
    """

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> Any:
        if len(inputs) == 1 and isinstance(outputs, torch.Tensor) and outputs.shape == inputs[0].shape and outputs is not inputs[0]:
            return inputs[0] + (outputs - inputs[0]).detach()  # the output's value, the identity's gradient
        return None

    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        return None


# The rule classes roar gives modules captum has none for (an instance per module and call).
ROAR_RULES: dict[type[nn.Module], type[PropagationRule]] = {
    Normalize: IdentityRule,
    nn.Flatten: PassRule,
    nn.Unflatten: PassRule,
    nn.Identity: PassRule,
}


# ``rules:`` of an LRP entry: a rule by name, with its one setting where it has one (Montavon et al., "Layer-Wise
# Relevance Propagation: An Overview", 2019: epsilon for dense layers, gamma for convolutions, alpha1-beta0 near the input).
RULES: dict[str, tuple[type[PropagationRule], str | None]] = {
    "epsilon": (EpsilonRule, "epsilon"),
    "gamma": (GammaRule, "gamma"),
    "alpha1_beta0": (Alpha1_Beta0_Rule, None),
    "identity": (IdentityRule, None),
    "pass": (PassRule, None),
}


def check_rules(rules: Any) -> dict[str, tuple[str, float | None]]:
    """``rules`` of a config entry as ``{module name or class name: (rule, setting)}``.

    Each value is a rule's name (``epsilon``, ``gamma``...) or a one-key mapping giving its setting
    (``{gamma: 0.25}``, ``{epsilon: 1.0e-6}``).

    Raises:
        ValueError: naming a key or value that is not one, and the rules.
    """
    if not isinstance(rules, dict) or not rules:
        raise ValueError(f"rules must map module names or classes to rules, e.g. {{Conv2d: {{gamma: 0.25}}, Linear: epsilon}}; got {rules!r}")
    checked = {}
    for key, spec in rules.items():
        name, setting = (next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (spec, None))
        if not isinstance(name, str) or name not in RULES:
            raise ValueError(f"rules: {key}: {spec!r} is not a rule; rules: {', '.join(RULES)} (epsilon and gamma take a value: {{gamma: 0.25}})")
        if setting is not None and (RULES[name][1] is None or isinstance(setting, bool) or not isinstance(setting, (int, float)) or setting < 0):
            what = f"takes a number >= 0, got {setting!r}" if RULES[name][1] else "takes no value"
            raise ValueError(f"rules: {key}: {name} {what}")
        checked[str(key)] = (name, None if setting is None else float(setting))
    return checked


def configured_rules(model: nn.Module, rules: dict[str, tuple[str, float | None]]) -> dict[nn.Module, PropagationRule]:
    """The rule of each leaf module that ``rules`` names, by its dotted name or else its class name.

    Raises:
        ValueError: a key that names no leaf module and no class of one, with the classes there are.
    """
    if not rules:
        return {}
    leaves = leaf_modules(model)
    classes = {type(module).__name__ for module in leaves.values()}
    unknown = [key for key in rules if key not in leaves and key not in classes]
    if unknown:
        raise ValueError(f"rules: {', '.join(map(repr, unknown))} names no layer of the model; its layer classes are "
                         f"{', '.join(sorted(classes))}; a layer by name: {', '.join(list(leaves)[:4])}...")  # fmt: skip
    chosen = {}
    for name, module in leaves.items():
        spec = rules.get(name) or rules.get(type(module).__name__)
        if spec is not None:
            rule, setting = RULES[spec[0]]
            chosen[module] = rule(**({setting: spec[1]} if setting and spec[1] is not None else {}))
    return chosen


def is_lrp(captum_class: type) -> bool:
    """captum's ``LRP`` or a subclass of it (``LayerLRP``)."""
    return isinstance(captum_class, type) and issubclass(captum_class, LRP)


def leaf_modules(model: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """The modules captum's LRP gives rules to, by name: every module without children, in its order."""
    leaves: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if any(True for _ in child.children()):
            leaves.update(leaf_modules(child, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = child
    return leaves


def user_rules(model: nn.Module) -> dict[nn.Module, PropagationRule]:
    """The rules the model's own modules carry now (set by the user), to put back after captum deletes them."""
    return {module: module.rule for module in leaf_modules(model).values() if isinstance(getattr(module, "rule", None), PropagationRule)}


def _roar_rule(module: nn.Module) -> PropagationRule | None:
    rule = ROAR_RULES.get(type(module))  # the exact type: a user's subclass may compute something else
    return rule() if rule is not None else PassRule() if isinstance(module, Metric) else None


@contextmanager
def lrp_rules(model: nn.Module, kept: dict[nn.Module, PropagationRule], configured: dict[nn.Module, PropagationRule] | None = None) -> Iterator[None]:
    """Within the block, the ``configured`` rules (an entry's ``rules:``) hold, and roar's modules have
    theirs; on exit those are gone and the user's rules ``kept`` are back (captum deletes every rule
    after a call). Configured rules are set for the call only: methods of one model share it.

    Raises:
        ValueError: naming a leaf module that has no rule and is of a type captum has none for.
    """
    added = list(configured or {})
    try:
        for module, rule in (configured or {}).items():
            module.rule = rule
        for name, module in leaf_modules(model).items():
            if hasattr(module, "rule") or type(module) in SUPPORTED_LAYERS_WITH_RULES or type(module) in SUPPORTED_NON_LINEAR_LAYERS:
                continue
            if (rule := _roar_rule(module)) is None:
                raise ValueError(
                    f"LRP has no rule for layer {name!r} ({type(module).__name__}); give it one in the entry "
                    f"(rules: {{{type(module).__name__}: epsilon}}; identity for a layer of the same shape in and out) "
                    "or where the network is built (self.<layer>.rule = captum.attr._utils.lrp_rules.EpsilonRule())"
                )
            module.rule = rule
            added.append(module)
        yield
    finally:
        for module in added:
            if hasattr(module, "rule"):
                del module.rule
        for module, rule in kept.items():
            module.rule = rule
