"""Figures 7 and 8 without Quantus (a benchmark-only dependency): our rows only, and no verdict on a target half unmeasured."""

import sys

import pytest


@pytest.fixture
def no_quantus(monkeypatch):
    # `import quantus` (and `from quantus.x import y`, which reads an already imported submodule first)
    # now raises ImportError, as where it is not installed
    for name in ["quantus", *(n for n in sys.modules if n.startswith("quantus."))]:
        monkeypatch.setitem(sys.modules, name, None)


def test_figures_7_and_8_without_quantus_give_no_verdict(run_benchmarks, no_quantus):
    code, results = run_benchmarks("--smoke", "--figures", "mprt,road")
    assert code == 0 and "failed" not in results["meta"]

    mprt = results["figures"]["mprt"]
    assert [row["way"] for row in mprt["rows"]] == [
        "ours, one model at a time (stack=1, share=False)", "ours, shared layers (stack=1, the default on CPU)", "ours, batched (stack=8)"]
    assert mprt["meets_target"] is None and mprt["status"].startswith("Quantus not installed") and "three paths" in mprt["status"]

    road = results["figures"]["road"]
    row = road["rows"][0]
    assert row["quantus_s"] is None and row["speedup_vs_quantus"] is None  # NaN in JSON is written as null
    # the ResNet50 half alone cannot say "met": the target is also >= 10x faster than Quantus
    assert road["meets_target"] is None and "no verdict" in road["status"]
