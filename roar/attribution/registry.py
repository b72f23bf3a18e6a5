"""Attribution methods by name: built-ins, the user's registered ones, and definitions by import path.

Every method a config names is one of:

- a **registry key**: the built-ins (``gradient``, ``integrated_gradients_sg_sq``, ``random``...)
  and anything registered with :func:`register_method`, in the user's code or through a
  ``roar.methods`` entry point of an installed package;
- a **definition** in the method's parameters: ``class_path`` (any captum ``Attribution``
  class, or a subclass of :class:`~roar.attribution.base.AttributionMethod`), ``function``
  (``module:name`` of ``explain(model, inputs, target, **kwargs)``), or ``method`` (another
  key, under a new name: ``{name: ig16, method: integrated_gradients, n_steps: 16}``).

Any model-based method takes ``ensemble: sg | sg_sq | var`` with ``nt_samples``, ``noise_std``...
(:class:`~roar.attribution.ensembles.Ensemble`). :func:`resolved_params` is what fingerprints
record: defaults filled in, and for code outside roar its import path and source hash, so
editing a user's method invalidates its cached ranks. What a key maps to, a factory that
builds one kind of method, is :class:`~roar.attribution.method_factory.MethodFactory`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from roar.attribution.base import AttributionMethod, ModelMethod
from roar.attribution.checks import _check_model
from roar.attribution.captum_checks import check_captum_args, check_captum_class, check_lrp_entry, uses_the_batch
from roar.attribution.ensembles import ENSEMBLE_REDUCTIONS, Ensemble
from roar.attribution.function_method import function_params
from roar.attribution.method_factory import ENSEMBLE_PARAMS, MethodFactory, factory_for
from roar.registry import Registry, import_object

ENSEMBLE_SUFFIXES: tuple[str, ...] = tuple(f"_{kind}" for kind in ENSEMBLE_REDUCTIONS)
DEFINITION_KEYS = ("class_path", "function", "method")
"""Parameters that define a method instead of configuring a registered one."""

MEMORY_ONLY_PARAMS = frozenset({"max_batch_size"})
"""Parameters that change memory use or speed but not the maps: left out of fingerprints."""


METHODS: Registry[MethodFactory] = Registry("attribution method", entry_point_group="roar.methods", adapt=factory_for)
"""Every registry key -> its factory; plugins of the ``roar.methods`` entry-point group are found by name."""


def register_method(name: str | None = None, *, override: bool = False):
    """Register a method under ``name`` (default: its ``__name__``), as the built-ins are.

    Decorates a subclass of :class:`~roar.attribution.base.AttributionMethod` (a
    :class:`~roar.attribution.base.ModelMethod` implementing ``attribute(inputs, target)`` when it
    explains a model), a captum ``Attribution`` class, or a function
    ``explain(model, inputs, target, **kwargs) -> attributions``. Its keyword parameters become
    the method's config parameters. Returns the object unchanged.
    """

    def decorate(obj: Any) -> Any:
        METHODS.add(name or obj.__name__, factory_for(obj, repr(obj)), override=override)
        return obj

    return decorate


def list_methods() -> list[str]:
    """Every registry key :func:`get_method` accepts, sorted (definitions by import path aside)."""
    return METHODS.names()


def _split(name: str, params: dict[str, Any] | None) -> tuple[MethodFactory, dict[str, Any], dict[str, Any]]:
    """(factory, definition keys given, the other params) of a method, definition or key."""
    params = dict(params or {})
    given = [k for k in DEFINITION_KEYS if k in params]
    if len(given) > 1:
        raise ValueError(f"method {name!r} has {' and '.join(given)}; a method is defined by one of {', '.join(DEFINITION_KEYS)}")
    definition = {k: params.pop(k) for k in given}
    if "class_path" in definition:
        obj = import_object(definition["class_path"], f"method {name!r}: class_path")
        if isinstance(obj, type) and issubclass(obj, AttributionMethod):
            return factory_for(obj), definition, params
        check_captum_class(obj, definition["class_path"])
        check_captum_args(obj, dict(params.get("init_args") or {}), dict(params.get("attribute_args") or {}))
        check_lrp_entry(obj, params.get("rules"))
        return MethodFactory(obj, "captum"), definition, params
    if "function" in definition:
        obj = import_object(definition["function"], f"method {name!r}: function")
        if isinstance(obj, type) or not callable(obj):
            raise ValueError(f"method {name!r}: function {definition['function']!r} is {obj!r}, not a function; a class goes under class_path")
        try:  # the signature must be (model, inputs, target, ...): say which entry of the config is wrong
            function_params(obj)
        except ValueError as err:
            raise ValueError(f"method {name!r}: function {definition['function']!r}: {err}") from None
        return MethodFactory(obj, "function"), definition, params
    key = definition.get("method", name)
    if key not in METHODS:
        extra = "; or define it with class_path: (a captum class), function: (module:name) or method: (a key)"
        raise ValueError(METHODS.unknown(key, extra if "method" not in definition else ""))
    return METHODS.get(key), definition, params


def _checked(name: str, params: dict[str, Any] | None) -> tuple[MethodFactory, dict[str, Any], dict[str, Any]]:
    factory, definition, params = _split(name, params)
    ensemble = factory.ensemble or params.get("ensemble")
    if ensemble is not None and ensemble not in ENSEMBLE_REDUCTIONS:
        raise ValueError(f"method {name!r}: unknown ensemble {ensemble!r}; valid: {', '.join(ENSEMBLE_REDUCTIONS)}")
    if "ensemble" in params and not factory.needs_model:
        raise ValueError(f"method {name!r} reads no model; ensembles average a model-based method over noisy inputs")
    accepted = factory.accepted_params(ensemble)
    unknown = sorted(set(params) - set(accepted)) if not factory.takes_any_params() else sorted(set(params) & set(DEFINITION_KEYS))
    loose = [p for p in unknown if p in ENSEMBLE_PARAMS and factory.needs_model]
    if loose:
        raise ValueError(f"method {name!r}: {', '.join(map(repr, loose))} only apply to an ensemble; add ensemble: {' | '.join(ENSEMBLE_REDUCTIONS)}")
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for attribution method {name!r}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    return factory, definition, params


def accepted_params(name: str, params: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The parameters a method (key or definition) takes, with these ``params``."""
    factory, _, params = _checked(name, params)
    return factory.accepted_params(params.get("ensemble"))


def needs_model(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether a method reads the model (and so its ranks depend on the base checkpoint)."""
    return _checked(name, params)[0].needs_model


def captum_uses_the_batch(name: str, params: dict[str, Any] | None = None) -> bool:
    """Whether a captum class's maps depend on the other images of its batch (:func:`~roar.attribution.captum_checks.uses_the_batch`)."""
    factory, _, params = _checked(name, params)
    return factory.kind == "captum" and uses_the_batch(factory.target, dict(params.get("attribute_args") or {}))


def resolved_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's parameters as it will run: every default filled in, memory-only ones dropped.

    This is what a fingerprint records, so that changing a default (``nt_samples``, ``n_steps``)
    in a later release invalidates cached ranks, while ``max_batch_size`` (memory only) does not.
    Code outside roar adds its import path and the sha256 of its source file.

    Raises:
        ValueError: an unknown method or parameter, or a definition that does not import (the
            message names it and lists the valid choices).
    """
    factory, definition, params = _checked(name, params)
    ensemble = factory.ensemble or params.get("ensemble")
    merged = {**factory.identity(), **definition, **factory.defaults(ensemble), **params}
    return {k: merged[k] for k in sorted(merged) if k not in MEMORY_ONLY_PARAMS}


def get_method(name: str, model: nn.Module | None = None, **params: Any) -> AttributionMethod:
    """Build an attribution method by name (or by the definition in ``params``).

    Args:
        name: a registry key (see :func:`list_methods`), or the name of a definition given in
            ``params`` (``class_path``, ``function`` or ``method``).
        model: the classifier to explain; required by model-based methods, ignored by
            ``random``, ``sobel``, ``noise``, ``ground_truth``, ``inverted``.
        **params: the method's parameters, e.g. ``n_steps`` for ``integrated_gradients``,
            ``ensemble``/``nt_samples``/``noise_std``/``seed`` for an ensemble, ``weights`` for the
            oracles, ``attribute_args`` for a captum class.

    Returns:
        An object called as ``method(inputs, target, indices=None)``; it carries ``name``.

    Raises:
        ValueError: for an unknown name or definition (the message lists the valid ones), an
            unknown or invalid parameter, or a missing model.
    """
    factory, _, params = _checked(name, params)
    ensemble = factory.ensemble or params.pop("ensemble", None)
    if factory.needs_model:
        _check_model(model, name)
    # A parameter both take (``seed``) goes to both: one seed governs all of a map's draws.
    own = set(factory.own_params())
    base_params = {k: v for k, v in params.items() if k in own or k not in ENSEMBLE_PARAMS}
    method = factory.build(model, base_params)
    if ensemble:
        if not isinstance(method, ModelMethod):
            raise ValueError(f"method {name!r} reads no model; ensembles average a model-based method over noisy inputs")
        method = Ensemble(method, ensemble, **{k: v for k, v in params.items() if k in ENSEMBLE_PARAMS})
    method.name = name
    return method


def normalize_methods(methods: Any, method_params: dict[str, Any] | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """``methods`` as names, with each definition moved into ``method_params[name]``.

    A method entry is a registry key or a mapping with a ``name`` and a definition::

        {name: deeplift, class_path: captum.attr.DeepLift}
        {name: occlusion, class_path: captum.attr.Occlusion, attribute_args: {sliding_window_shapes: [1, 3, 3]}}
        {name: mine, function: mypkg.saliency:explain, ensemble: sg, nt_samples: 8}
        {name: ig16, method: integrated_gradients, n_steps: 16}

    Every other key is a parameter, as in ``method_params``. Results, plots and the report use
    the ``name``.
    """
    params = {str(k): dict(v or {}) for k, v in (method_params or {}).items()}
    names: list[str] = []
    for entry in methods if isinstance(methods, (list, tuple)) else [methods]:
        if isinstance(entry, str):
            names.append(entry)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise ValueError(f"a method is a registry key or a mapping with a name (e.g. {{name: deeplift, class_path: captum.attr.DeepLift}}), got {entry!r}")
        name = entry["name"]
        definition = {k: v for k, v in entry.items() if k != "name"}
        params[name] = {**params.get(name, {}), **definition}
        names.append(name)
    return names, params


def _register_builtins() -> None:
    from roar.attribution.baselines import GroundTruth, Inverted, NoiseControl, RandomBaseline, Sobel
    from roar.attribution.gradients import Gradient, GradientShap, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients

    gradients = {
        "gradient": Gradient, "input_x_gradient": InputXGradient, "integrated_gradients": IntegratedGradients,
        "guided_backprop": GuidedBackprop, "guided_gradcam": GuidedGradCam, "gradient_shap": GradientShap,
    }  # fmt: skip
    for key, cls in gradients.items():
        register_method(key)(cls)
        for kind in ENSEMBLE_REDUCTIONS:  # the ensembles of the paper as keys of their own
            METHODS.add(f"{key}_{kind}", MethodFactory(cls, "class", ensemble=kind))
    others = {"random": RandomBaseline, "sobel": Sobel, "noise": NoiseControl, "ground_truth": GroundTruth, "inverted": Inverted}
    for key, cls in others.items():
        register_method(key)(cls)


_register_builtins()
