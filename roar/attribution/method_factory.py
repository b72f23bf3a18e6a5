"""What the method registry holds: a factory that builds one kind of attribution method.

A method is built from one of three things (:mod:`roar.attribution.registry` maps names to
them): a subclass of :class:`~roar.attribution.base.AttributionMethod`, any captum
``Attribution`` class (through :class:`~roar.attribution.captum_adapter.CaptumMethod`), or a
function ``explain(model, inputs, target, **kwargs)``. A :class:`MethodFactory` knows which,
reads the parameters it accepts and their defaults off its signature (and, for model-based
methods, those of the SmoothGrad / SmoothGrad-Squared / VarGrad
:class:`~roar.attribution.ensembles.Ensemble`; Smilkov et al. 2017, Hooker et al. 2019, Adebayo
et al. 2018), and gives the import path and source hash of code outside roar for fingerprints.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from torch import nn

from roar.attribution.base import AttributionMethod
from roar.attribution.captum_adapter import CaptumMethod
from roar.attribution.ensembles import Ensemble
from roar.attribution.function_method import FunctionMethod, function_params
from roar.fingerprint import source_sha256


def _defaults_of(function: Any, names: tuple[str, ...]) -> dict[str, Any]:
    params = inspect.signature(function).parameters
    return {n: params[n].default for n in names if n in params and params[n].default is not inspect.Parameter.empty}


def _is_roar(obj: Any) -> bool:
    return (getattr(obj, "__module__", "") or "").split(".")[0] == "roar"


def _code_identity(obj: Any) -> dict[str, Any]:
    """Import path and source hash of code outside roar (roar's own is covered by its version)."""
    if _is_roar(obj):
        return {}
    return {"import_path": f"{obj.__module__}:{obj.__qualname__}", "source_sha256": source_sha256(obj)}


ENSEMBLE_PARAMS: tuple[str, ...] = tuple(
    n for n, p in inspect.signature(Ensemble.__init__).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
)


@dataclass(frozen=True)
class MethodFactory:
    """What the registry holds: builds one kind of method and says what it accepts.

    Attributes:
        target: the class, function or captum class it builds from.
        kind: ``class`` (an :class:`AttributionMethod` subclass), ``function`` or ``captum``.
        ensemble: a fixed ensemble (the built-in ``_sg``, ``_sg_sq``, ``_var`` keys), else None.
    """

    target: Any
    kind: str = "class"
    ensemble: str | None = None

    @property
    def needs_model(self) -> bool:
        return self.kind != "class" or bool(self.target.needs_model)

    def own_params(self) -> tuple[str, ...]:
        """The parameters of the method itself (not the ensemble's)."""
        if self.kind == "captum":
            return ("init_args", "attribute_args", "layer", "interpolate_mode", "rules")  # rules: LRP only, no default
        if self.kind == "function":
            return function_params(self.target)[0]
        skip = 2 if self.target.needs_model else 1  # self (and the model)
        params = list(inspect.signature(self.target.__init__).parameters.values())[skip:]
        return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def takes_any_params(self) -> bool:
        return self.kind == "function" and function_params(self.target)[1]

    def accepted_params(self, ensemble: str | None = None) -> tuple[str, ...]:
        """Its own parameters, ``ensemble`` (model-based methods), and the ensemble's when there is one."""
        own = self.own_params()
        if not self.needs_model:
            return own
        extra = ("ensemble",) if not self.ensemble else ()
        if self.ensemble or ensemble:
            extra += ENSEMBLE_PARAMS
        return own + tuple(p for p in extra if p not in own)

    def defaults(self, ensemble: str | None) -> dict[str, Any]:
        if self.kind == "captum":
            own = {"init_args": {}, "attribute_args": {}, "layer": None, "interpolate_mode": "bilinear"}
        elif self.kind == "function":
            own = _defaults_of(self.target, self.own_params())
        else:
            own = _defaults_of(self.target.__init__, self.own_params())
        if ensemble:
            own = {**_defaults_of(Ensemble.__init__, ENSEMBLE_PARAMS), **own}
        return own

    def identity(self) -> dict[str, Any]:
        return _code_identity(self.target)

    def build(self, model: nn.Module | None, params: dict[str, Any]) -> AttributionMethod:
        if self.kind == "captum":
            return CaptumMethod(model, captum_class=self.target, **params)
        if self.kind == "function":
            return FunctionMethod(model, function=self.target, args=params)
        return self.target(model, **params) if self.target.needs_model else self.target(**params)


def factory_for(obj: Any, where: str = "") -> MethodFactory:
    """The factory of a class, captum class or function (what ``register_method`` and plugins store)."""
    from captum.attr import Attribution

    if isinstance(obj, MethodFactory):
        return obj
    if isinstance(obj, type) and issubclass(obj, AttributionMethod):
        return MethodFactory(obj, "class")
    if isinstance(obj, type) and issubclass(obj, Attribution):
        return MethodFactory(obj, "captum")
    if callable(obj) and not isinstance(obj, type):
        function_params(obj)  # the signature must be (model, inputs, target, ...)
        return MethodFactory(obj, "function")
    raise ValueError(
        f"{where or repr(obj)} is not an attribution method: register a subclass of roar.attribution.AttributionMethod "
        "(or ModelMethod), a captum Attribution class, or a function explain(model, inputs, target)"
    )
