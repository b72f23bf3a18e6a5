"""The sanity report's words for sMPRT (Hedström et al. 2023) follow its ``smprt_order``.

sMPRT runs any randomisation order; after the last step of ``independent`` only the input layer
is random, so its table caption and curve must not say "every layer" or "cumulative".
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from roar.sanity.report_config import SanityReportConfig
from roar.sanity.report_outputs import plot_curve, print_tables

LAYERS = ["original", "fc2", "fc1", "conv3", "conv2", "conv1"]


def _rows(layers: list[str]) -> list[dict]:
    return [
        {"method": "gradient", "check": "smprt", "step": step, "layer": layer, "metric": "spearman",
         "mean": 1.0 - 0.1 * step, "std": 0.0, "n": 4, "ci_low": 0.9 - 0.1 * step, "ci_high": 1.0 - 0.1 * step}
        for step, layer in enumerate(layers)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "order,layers,caption,xlabel",
    [
        ("independent", LAYERS, "smprt: only conv1 randomised (independent), noise-averaged maps", "randomised layer (alone)"),
        ("cascading", LAYERS, "smprt: every layer randomised, top down, noise-averaged maps", "randomised layer (cumulative)"),
        ("bottom_up", ["original", *reversed(LAYERS[1:])], "smprt: every layer randomised, bottom up, noise-averaged maps", "randomised layer (cumulative)"),
    ],
)
def test_smprt_caption_and_curve_name_its_order(tmp_path, order, layers, caption, xlabel):
    cfg = SanityReportConfig(methods=["gradient"], metrics=["spearman"], smprt=True, smprt_order=order)
    rows = _rows(layers)
    console = Console(file=io.StringIO(), width=400)
    print_tables(console, rows, cfg)
    printed = " ".join(console.file.getvalue().split())
    assert caption in printed
    figure = plot_curve(rows, "smprt", "spearman", tmp_path / "curve.png", order=order)
    axes = figure.axes[0]
    assert axes.get_xlabel() == xlabel
    assert axes.get_title() == f"smprt randomisation, {order} order (spearman)"
    assert (tmp_path / "curve.png").stat().st_size > 0
