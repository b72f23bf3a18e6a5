"""Method names -> factories, the one place a method name is turned into an object.

The keys are the names used everywhere else (configs, the attribution cache, result rows):
the six captum gradient methods, each also with the ensemble suffixes ``_sg`` (SmoothGrad,
Smilkov et al. 2017), ``_sg_sq`` (SmoothGrad-Squared, Hooker et al. 2019) and ``_var`` (VarGrad,
Adebayo et al. 2018); the baselines ``random`` and ``sobel``; the sanity checks' control
``noise`` (Binder et al. 2022); and the synthetic benchmark's oracles ``ground_truth`` and
``inverted``. See :mod:`roar.attribution.methods` for what each computes.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from roar.attribution.methods import (
    ENSEMBLE_REDUCTIONS,
    AttributionMethod,
    Ensemble,
    Gradient,
    GradientShap,
    GroundTruth,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    Inverted,
    NoiseControl,
    RandomBaseline,
    Sobel,
    _check_model,
)


def _keyword_params(cls: type) -> tuple[str, ...]:
    """The keyword-only parameters of a class's constructor: the params a user may set."""
    signature = inspect.signature(cls.__init__)
    return tuple(name for name, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class MethodFactory:
    """Builds one registry entry: a method class, optionally wrapped in an ensemble.

    Attributes:
        cls: the method class.
        ensemble: an ensemble suffix (``sg``, ``sg_sq``, ``var``) or None.
    """

    cls: type[AttributionMethod]
    ensemble: str | None = None

    @property
    def needs_model(self) -> bool:
        return self.cls.needs_model

    def accepted_params(self) -> tuple[str, ...]:
        own = _keyword_params(self.cls)
        if self.ensemble is None:
            return own
        return own + tuple(p for p in _keyword_params(Ensemble) if p not in own)

    def __call__(self, model: nn.Module | None = None, **params: Any) -> AttributionMethod:
        if self.ensemble is None:
            return self.cls(model, **params) if self.needs_model else self.cls(**params)
        # A parameter both take (``seed``) goes to both: one seed governs all of a map's draws.
        base_names, ensemble_names = set(_keyword_params(self.cls)), set(_keyword_params(Ensemble))
        base = self.cls(model, **{k: v for k, v in params.items() if k in base_names})
        return Ensemble(base, self.ensemble, **{k: v for k, v in params.items() if k in ensemble_names})


GRADIENT_METHODS: dict[str, type[AttributionMethod]] = {
    "gradient": Gradient,
    "input_x_gradient": InputXGradient,
    "integrated_gradients": IntegratedGradients,
    "guided_backprop": GuidedBackprop,
    "guided_gradcam": GuidedGradCam,
    "gradient_shap": GradientShap,
}
"""The captum-backed methods, each of which also gets the ensemble suffixes."""

ENSEMBLE_SUFFIXES: tuple[str, ...] = tuple(f"_{kind}" for kind in ENSEMBLE_REDUCTIONS)

OTHER_METHODS: dict[str, type[AttributionMethod]] = {
    "random": RandomBaseline,
    "sobel": Sobel,
    "noise": NoiseControl,
    "ground_truth": GroundTruth,
    "inverted": Inverted,
}
"""Baselines, the sanity-check control and the synthetic oracles; none of them reads a model."""

METHODS: dict[str, MethodFactory] = {
    **{name: MethodFactory(cls) for name, cls in GRADIENT_METHODS.items()},
    **{
        f"{name}_{kind}": MethodFactory(cls, kind)
        for name, cls in GRADIENT_METHODS.items()
        for kind in ENSEMBLE_REDUCTIONS
    },
    **{name: MethodFactory(cls) for name, cls in OTHER_METHODS.items()},
}
"""Every registry key -> its factory."""


def list_methods() -> list[str]:
    """Every name :func:`get_method` accepts, sorted."""
    return sorted(METHODS)


MEMORY_ONLY_PARAMS = frozenset({"max_batch_size"})
"""Parameters that change memory use or speed but not the maps: left out of fingerprints."""


def _checked_factory(name: str, params: dict[str, Any]) -> MethodFactory:
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown attribution method {name!r}{hint}; valid methods: {', '.join(list_methods())}")
    factory = METHODS[name]
    accepted = factory.accepted_params()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for attribution method {name!r}; "
            f"accepted: {', '.join(accepted) if accepted else 'none'}"
        )
    return factory


def resolved_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's parameters as it will run: every default filled in, memory-only ones dropped.

    This is what a fingerprint records, so that changing a default (``nt_samples``, ``n_steps``)
    in a later release invalidates cached ranks, while ``max_batch_size`` (memory only) does not.

    Raises:
        ValueError: an unknown method or parameter (the message lists the valid ones).
    """
    params = dict(params or {})
    factory = _checked_factory(name, params)
    defaults: dict[str, Any] = {}
    for cls in (factory.cls, Ensemble) if factory.ensemble else (factory.cls,):
        for pname, p in inspect.signature(cls.__init__).parameters.items():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty:
                defaults.setdefault(pname, p.default)
    merged = {**defaults, **params}
    return {k: merged[k] for k in sorted(merged) if k not in MEMORY_ONLY_PARAMS}


def get_method(name: str, model: nn.Module | None = None, **params: Any) -> AttributionMethod:
    """Build an attribution method by name.

    Args:
        name: a registry key (see :func:`list_methods`).
        model: the classifier to explain; required by the gradient methods and their
            ensembles, ignored by ``random``, ``sobel``, ``noise``, ``ground_truth``, ``inverted``.
        **params: the method's parameters, e.g. ``n_steps`` for ``integrated_gradients``,
            ``nt_samples``/``noise_std``/``noise_mode``/``max_batch_size``/``seed`` for an
            ensemble, ``weights`` for the oracles.

    Returns:
        An object called as ``method(inputs, target, indices=None)``; it carries ``name`` and
        ``params`` (the resolved parameters).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones), an unknown or
            invalid parameter, or a missing model.
    """
    factory = _checked_factory(name, params)
    if factory.needs_model:
        _check_model(model, name)
    method = factory(model, **params)
    method.name = name
    return method
