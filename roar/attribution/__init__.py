"""Attribution methods by name: ``get_method(name, model, **params)(inputs, target, indices)``.

Gradient maps come from captum (Simonyan et al. 2014; Shrikumar et al. 2016; Sundararajan et
al. 2017; Springenberg et al. 2015; Selvaraju et al. 2017; Lundberg & Lee 2017), with the
SmoothGrad (Smilkov et al. 2017), SmoothGrad-Squared (Hooker et al. 2019) and VarGrad (Adebayo et
al. 2018) ensembles, the ROAR baselines, and the control of Binder et al. (2022).
"""

from roar.attribution.methods import TARGETS, AttributionMethod, resolve_target
from roar.attribution.registry import ENSEMBLE_SUFFIXES, METHODS, get_method, list_methods

__all__ = [
    "AttributionMethod",
    "ENSEMBLE_SUFFIXES",
    "METHODS",
    "TARGETS",
    "get_method",
    "list_methods",
    "resolve_target",
]
