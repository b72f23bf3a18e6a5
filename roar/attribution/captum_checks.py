"""Which captum classes a config entry can use, and with what: checked before any compute.

captum's classes differ in what they need (a layer, a window, reference images) and in whether
their maps depend on the rest of the batch. These checks turn a config entry's mistake into one
line naming the argument and what to give, not a traceback on the probe batch, and tell the
fingerprint which classes need the batch size (:func:`uses_the_batch`).
"""

from __future__ import annotations

import inspect
from typing import Any

from captum.attr import (
    LRP, Attribution, Deconvolution, DeepLift, DeepLiftShap, FeatureAblation, FeaturePermutation, GuidedBackprop,
    GuidedGradCam, InputXGradient, IntegratedGradients, InternalInfluence, LayerActivation, LayerAttribution,
    LayerConductance, LayerDeepLift, LayerDeepLiftShap, LayerFeatureAblation, LayerGradCam, LayerGradientXActivation,
    LayerIntegratedGradients, LayerLRP, NeuronAttribution, NoiseTunnel, Occlusion, Saliency, ShapleyValues,
)

from roar.attribution.lrp_rules import check_rules, is_lrp


def _accepted(function: Any, skip: int) -> tuple[set[str], bool]:
    """The keyword names a callable takes after its first ``skip`` parameters, and whether it takes **kwargs."""
    params = list(inspect.signature(function).parameters.values())[skip:]
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}, any(p.kind is p.VAR_KEYWORD for p in params)


def check_captum_class(cls: Any, path: str) -> type[Attribution]:
    if not (isinstance(cls, type) and issubclass(cls, Attribution)):
        raise ValueError(f"class_path {path!r} is {cls!r}, not a captum Attribution class (e.g. captum.attr.DeepLift); "
                         "a plain function goes under function: module:name")  # fmt: skip
    if issubclass(cls, NoiseTunnel):  # it wraps an Attribution, not a model
        raise ValueError(f"class_path {path!r}: NoiseTunnel wraps another method, which roar's ensembles do for any method: "
                         "{class_path: captum.attr.Saliency, ensemble: sg, nt_samples: 25} (sg, sg_sq or var)")  # fmt: skip
    if issubclass(cls, NeuronAttribution):
        raise ValueError(f"class_path {path!r} explains one neuron of a layer; roar ranks features by the target class's "
                         "logit: use a primary class (captum.attr.Saliency...) or a layer class (captum.attr.LayerGradCam...)")  # fmt: skip
    return cls


BATCH_BASELINES = "batch"
"""``attribute_args: {baselines: batch}``: the attribution batch's images as the references, as
roar's ``gradient_shap`` draws them (the maps then depend on the batch size, which their fingerprint records)."""

DRAWS_NOTHING = frozenset({
    Saliency, InputXGradient, IntegratedGradients, GuidedBackprop, Deconvolution, GuidedGradCam, DeepLift,
    DeepLiftShap, LRP, Occlusion, FeatureAblation, ShapleyValues, InternalInfluence, LayerActivation,
    LayerConductance, LayerDeepLift, LayerDeepLiftShap, LayerFeatureAblation, LayerGradCam,
    LayerGradientXActivation, LayerIntegratedGradients, LayerLRP,
})  # fmt: skip
"""captum classes whose maps draw no random numbers, so a call needs no seeded RNGs: swapping the
global RNG states in and out cost more host time than a small model's gradient on a GPU (figure 1).
Exact classes only: a subclass, or any other class (GradientShap, Lime...), is seeded."""


def draws_random_numbers(cls: type[Attribution]) -> bool:
    return cls not in DRAWS_NOTHING


EVERY_PAIR = (DeepLiftShap, LayerDeepLiftShap)
"""Classes that run every input against every reference: with ``baselines: batch`` a batch of B
images is B * B passes, so inputs go in chunks of at most
:data:`~roar.attribution.batch_budget.DEFAULT_BATCH_SIZE` pairs."""


def check_captum_args(cls: type[Attribution], init_args: dict[str, Any], attribute_args: dict[str, Any]) -> None:
    """Refuse an argument the captum class does not take, naming the ones it does, and a missing
    one it needs (the SHAP classes' ``baselines``, which a config gives as ``batch``)."""
    is_layer = issubclass(cls, LayerAttribution)
    required: list[str] = []
    for what, function, skip, args, ours in (
        ("init_args", cls.__init__, 3 if is_layer else 2, init_args, set()),
        ("attribute_args", cls.attribute, 2, attribute_args, {"target"}),
    ):
        accepted, var_keyword = _accepted(function, skip)
        unknown = sorted(set(args) - accepted) if not var_keyword else []
        taken = sorted(set(args) & ours)
        if unknown or taken:
            bad = unknown or taken
            why = "it does not take" if unknown else "roar sets"
            raise ValueError(f"{cls.__name__} {what}: {why} {', '.join(map(repr, bad))}; accepted: {', '.join(sorted(accepted - ours)) or 'none'}")
        required = _required(function, skip)  # the attribute call's, after the loop
        missing = [name for name in required if name not in args]
        if missing:
            hint = f" (baselines: {BATCH_BASELINES}, the batch's images as the references)" if "baselines" in missing else ""
            raise ValueError(f"{cls.__name__} {what}: it needs {', '.join(map(repr, missing))}{hint}")
    baselines = attribute_args.get("baselines")
    if "baselines" in required:  # the SHAP classes: a distribution of images
        if baselines != BATCH_BASELINES:
            raise ValueError(f"{cls.__name__} attribute_args: baselines {baselines!r}; it needs several reference images, "
                             f"which a config gives as baselines: {BATCH_BASELINES} (the batch's images)")  # fmt: skip
        return
    if baselines == BATCH_BASELINES:  # one baseline per image: each image would be its own, a zero map
        raise ValueError(f"{cls.__name__} attribute_args: baselines {BATCH_BASELINES!r} is for classes that draw from several "
                         "references (DeepLiftShap, GradientShap); it takes one per image: give a number")  # fmt: skip
    if isinstance(baselines, str):
        raise ValueError(f"{cls.__name__} attribute_args: baselines {baselines!r} is not one a config can give; "
                         "give a number (that value in every pixel)")  # fmt: skip


def check_lrp_entry(cls: type[Attribution], rules: Any) -> dict[str, tuple[str, float | None]]:
    """``rules:`` belongs to an LRP class, and says rules roar knows: the checked rules
    (:func:`~roar.attribution.lrp_rules.check_rules`), none when not given."""
    if rules is None:
        return {}
    if not is_lrp(cls):
        raise ValueError(f"{cls.__name__} takes no rules; rules: sets LRP's propagation rules (captum.attr.LRP, captum.attr.LayerLRP)")
    return check_rules(rules)


def uses_the_batch(cls: type[Attribution], attribute_args: dict[str, Any]) -> bool:
    """Whether the class's maps depend on the other images of the batch: references drawn from it
    (``baselines: batch``), or features permuted across it (``FeaturePermutation``)."""
    return attribute_args.get("baselines") == BATCH_BASELINES or issubclass(cls, FeaturePermutation)


def _required(function: Any, skip: int) -> list[str]:
    """The parameters after the first ``skip`` that have no default."""
    params = list(inspect.signature(function).parameters.values())[skip:]
    return [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
