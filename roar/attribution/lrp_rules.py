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
  relevance carried on unchanged by the gradient.
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

from captum.attr import LRP
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import IdentityRule, PropagationRule
from torch import nn
from torchmetrics import Metric

from roar.models.classifier import Normalize


class PassRule(PropagationRule):
    """Relevance passes a module as its gradient does: unchanged through a reshape or an identity.

    No tensor hooks: captum's rules hook the input and the output tensor, which for ``nn.Identity``
    are one tensor, and the identity rule's input hook then ran before the output hook it reads.
    """

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
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
    for kind, rule in ROAR_RULES.items():
        if type(module) is kind:
            return rule()
    return PassRule() if isinstance(module, Metric) else None


@contextmanager
def lrp_rules(model: nn.Module, kept: dict[nn.Module, PropagationRule]) -> Iterator[None]:
    """Within the block, roar's modules have their rules; on exit those are gone and the user's
    rules ``kept`` are back (captum deletes every rule after a call).

    Raises:
        ValueError: naming a leaf module that has no rule and is of a type captum has none for.
    """
    added = []
    try:
        for name, module in leaf_modules(model).items():
            if hasattr(module, "rule") or type(module) in SUPPORTED_LAYERS_WITH_RULES or type(module) in SUPPORTED_NON_LINEAR_LAYERS:
                continue
            if (rule := _roar_rule(module)) is None:
                raise ValueError(
                    f"LRP has no rule for layer {name!r} ({type(module).__name__}); give it one where the network is built, "
                    "e.g. self.<layer>.rule = captum.attr._utils.lrp_rules.EpsilonRule() (IdentityRule for a layer of "
                    "the same shape in and out)"
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
