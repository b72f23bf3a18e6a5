"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018; Binder et al., arXiv 2211.12486).

Pure parts: :mod:`roar.sanity.similarity` compares batches of maps (prepared by
:mod:`roar.sanity.map_prep`), :mod:`roar.sanity.randomization`
randomises copies of a model layer group by layer group (:mod:`roar.sanity.layer_groups` finds the
groups, :mod:`roar.sanity.reinitialization` re-initialises them), :mod:`roar.sanity.settings` holds the
protocol details the papers differ on, :mod:`roar.sanity.batched` explains several randomised
copies in one call, and :mod:`roar.sanity.revisited` adds sMPRT and eMPRT (Hedström et al. 2023). The Lightning callbacks live in
the top-level ``callbacks`` package.
"""

from roar.sanity.layer_groups import LayerGroup, describe_layers, layer_groups
from roar.sanity.map_prep import aggregate_channels, normalize_maps, percentile_normalize
from roar.sanity.randomization import ORDERS, RandomizationStep, randomization_steps
from roar.sanity.reinitialization import reinitialize_
from roar.sanity.settings import SanitySettings
from roar.sanity.similarity import (
    SIMILARITY_METRICS,
    compare_maps,
    get_metric,
    hog,
    list_metrics,
    spearman,
    spearman_abs,
    ssim,
)

__all__ = [
    "ORDERS",
    "SIMILARITY_METRICS",
    "LayerGroup",
    "RandomizationStep",
    "SanitySettings",
    "aggregate_channels",
    "compare_maps",
    "describe_layers",
    "get_metric",
    "hog",
    "layer_groups",
    "list_metrics",
    "normalize_maps",
    "percentile_normalize",
    "randomization_steps",
    "reinitialize_",
    "spearman",
    "spearman_abs",
    "ssim",
]
