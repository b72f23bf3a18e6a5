"""`python -m benchmarks.run --smoke` end to end: every figure measured and written, no timing asserted."""

import json
import math

import torch

from benchmarks.attribution_cost import METHODS
from benchmarks.run import FIGURES, main


def test_smoke_run_writes_every_figure(tmp_path):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    out, markdown = tmp_path / "results.json", tmp_path / "RESULTS.md"
    try:
        assert main(["--smoke", "--device", "cpu", "--out", str(out), "--markdown", str(markdown), "--workdir", str(tmp_path / "work")]) == 0
    finally:
        torch.set_num_threads(threads)  # the command pins the thread count; give the suite its own back

    results = json.loads(out.read_text())
    assert results["meta"]["device"] == "cpu" and results["meta"]["preset"] == "smoke"
    assert set(results["figures"]) == set(FIGURES)
    for name, figure in results["figures"].items():
        assert figure["title"] and figure["rows"], name
        assert f"Figure {FIGURES[name][0]}:" in markdown.read_text()

    attribution = results["figures"]["attribution"]["rows"]
    assert [row["method"] for row in attribution] == list(METHODS)
    assert all(math.isfinite(row["ratio"]) and row["ratio"] > 0 for row in attribution)
    ig = next(row for row in attribution if row["method"] == "integrated_gradients_sg")
    assert ig["floor"] == "4 fwd+bwd" and ig["effective_batch"] == 4 * ig["batch_size"]  # nt_samples 2 x n_steps 2

    store = results["figures"]["store"]["rows"][0]
    assert store["dtype"] == "uint16" and store["features"] == 3 * 32 * 32
    assert store["ranks_bytes"] == store["n"] * store["features"] * 2

    masked = results["figures"]["masked"]["rows"][0]
    assert masked["masked_images_per_s"] > 0 and masked["unmasked_images_per_s"] > 0
    assert [row["way"] for row in results["figures"]["overhead"]["rows"]] == ["train.py fit", "Trainer.fit", "plain loop"]
    assert {row["callback"] for row in results["figures"]["sanity"]["rows"]} == {"ModelRandomizationCheck()", "DataRandomizationCheck(reference)"}

    stacked = results["figures"]["stacked"]["rows"]
    assert [row["what"] for row in stacked] == ["train steps", "grid runs (execute_run vs execute_stack)"]
    assert all(row["members"] == 2 and row["stacked_images_per_s"] > 0 and row["separate_images_per_s"] > 0 for row in stacked)

    demo, epoch = results["figures"]["grid"]["rows"]
    assert demo["status"].startswith("not run")
    assert epoch["status"] == "extrapolated" and epoch["epoch_s"] > 0


def test_smoke_road_imputation_figure(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "road.json"
    try:
        assert main(["--smoke", "--figures", "road", "--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    finally:
        torch.set_num_threads(threads)
    row = json.loads(out.read_text())["figures"]["road"]["rows"][0]
    assert row["batch"] == "4x3x8x8" and row["impute_s"] > 0 and row["resnet50_s"] > 0
    assert math.isfinite(row["vs_resnet50"])
