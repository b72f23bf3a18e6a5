"""Attribution methods by name: ``get_method(name, model, **params)(inputs, target, indices)``.

Gradient maps come from captum (Simonyan et al. 2014; Shrikumar et al. 2016; Sundararajan et
al. 2017; Springenberg et al. 2015; Selvaraju et al. 2017; Lundberg & Lee 2017), with the
SmoothGrad (Smilkov et al. 2017), SmoothGrad-Squared (Hooker et al. 2019) and VarGrad (Adebayo et
al. 2018) ensembles, the ROAR baselines, and the control of Binder et al. (2022). A user's own
method joins them with :func:`register_method`, or by import path in a config (any captum class,
any function ``explain(model, inputs, target)``): see :mod:`roar.attribution.registry`.

One concept per module: :mod:`~roar.attribution.base` (the contract), :mod:`~roar.attribution.checks`
(its argument checks), :mod:`~roar.attribution.captum_adapter` (any captum class),
:mod:`~roar.attribution.function_method` (a plain function), :mod:`~roar.attribution.gradients`
(the six built-ins), :mod:`~roar.attribution.ensembles`, :mod:`~roar.attribution.baselines`,
:mod:`~roar.attribution.registry` (names), :mod:`~roar.attribution.method_factory` (what a name builds), and
:mod:`~roar.attribution.ranks` (a method's cached ranks for the masking datamodule).
"""

from roar.attribution.base import TARGETS, AttributionMethod, ModelMethod, resolve_target
from roar.attribution.ranks import StoreRanks
from roar.attribution.registry import ENSEMBLE_SUFFIXES, METHODS, get_method, list_methods, register_method, resolved_params

__all__ = [
    "AttributionMethod",
    "ENSEMBLE_SUFFIXES",
    "METHODS",
    "ModelMethod",
    "TARGETS",
    "get_method",
    "list_methods",
    "register_method",
    "resolve_target",
    "resolved_params",
    "StoreRanks",
]
