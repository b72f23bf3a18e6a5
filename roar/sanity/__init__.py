"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018; Binder et al., arXiv 2211.12486).

Pure parts: :mod:`roar.sanity.similarity` compares batches of maps, :mod:`roar.sanity.randomization`
randomises copies of a model layer group by layer group. The Lightning callbacks live in
the top-level ``callbacks`` package.
"""

from roar.sanity.randomization import (
    ORDERS,
    LayerGroup,
    RandomizationStep,
    describe_layers,
    layer_groups,
    randomization_steps,
    reinitialize_,
)
from roar.sanity.similarity import (
    SIMILARITY_METRICS,
    aggregate_channels,
    compare_maps,
    get_metric,
    hog,
    list_metrics,
    normalize_maps,
    spearman,
    spearman_abs,
    ssim,
)

__all__ = [
    "ORDERS",
    "SIMILARITY_METRICS",
    "LayerGroup",
    "RandomizationStep",
    "aggregate_channels",
    "compare_maps",
    "describe_layers",
    "get_metric",
    "hog",
    "layer_groups",
    "list_metrics",
    "normalize_maps",
    "randomization_steps",
    "reinitialize_",
    "spearman",
    "spearman_abs",
    "ssim",
]
