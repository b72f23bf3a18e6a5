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


def _emprt_rows(methods: list[str]) -> list[dict]:
    cells = [(0, "entropy", 4.0), (1, "entropy", 4.4), (1, "complexity_rise", 0.1)]
    return [{"method": m, "check": "emprt", "step": s, "metric": k, "mean": v, "std": 0.01, "n": 8} for m in methods for s, k, v in cells]


@pytest.mark.parametrize("control", [True, False])
def test_emprt_table_names_the_noise_control_only_when_it_ran(control):
    from roar.sanity.revisited import print_emprt_table

    console = Console(file=io.StringIO(), width=400)
    print_emprt_table(console, _emprt_rows(["gradient", "noise"] if control else ["gradient"]))
    printed = " ".join(console.file.getvalue().split())
    assert "mean ± std over 8 images" in printed and "+0.100 ± 0.010" in printed
    assert ("noise control's (about 0)" in printed) is control
    assert ("this run has no noise control" in printed) is not control
