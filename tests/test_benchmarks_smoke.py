"""`python -m benchmarks.run --smoke` end to end: every figure measured and written, no timing asserted."""

import json
import math

import pytest
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
    # 512 images hold less than the process's fixed allocations: no verdict, and the status says why
    assert results["figures"]["store"]["meets_target"] is None and "judged from 50,000 images" in results["figures"]["store"]["status"]

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

    gpu = results["figures"]["gpu"]  # on a CPU: smoke numbers, no MFU, no verdict
    assert gpu["meets_target"] is None and gpu["status"].startswith("CPU smoke number")
    assert [row["variant"] for row in gpu["rows"]] == ["config", "bf16", "contiguous", "plain", "plain_graph"]
    assert [row["settings"] for row in gpu["rows"]][:4] == [
        "32-true, channels_last", "bf16-mixed, channels_last", "32-true, contiguous", "32-true, channels_last, plain loop",
    ]  # fmt: skip
    # the plain loop's floor: eager on any device, the whole-step CUDA graph on CUDA only
    assert gpu["rows"][4]["status"] == "skipped: CUDA only"
    assert all(row["status"] == "measured" and row["images_per_s"] > 0 and row["mfu"] is None for row in gpu["rows"][:4])
    assert gpu["config"]["retrains"] == 350 and gpu["config"]["forward_gflops_per_image"] > 0
    hours = gpu["rows"][0]["grid_gpu_hours"]
    assert hours * 3600 == pytest.approx(350 * gpu["config"]["max_epochs"] * 50_000 / gpu["rows"][0]["images_per_s"])


def test_smoke_road_imputation_figure(run_benchmarks):
    code, results = run_benchmarks("--smoke", "--figures", "road")
    assert code == 0
    row = results["figures"]["road"]["rows"][0]
    assert row["batch"] == "4x3x8x8" and row["impute_s"] > 0 and row["resnet50_s"] > 0
    assert math.isfinite(row["vs_resnet50"])


def test_a_failing_figure_does_not_stop_the_others(run_benchmarks, capsys):
    # A GPU session runs several figures in one command: one that breaks (here an unknown
    # architecture; on a GPU image, a missing package) is reported, the rest still measured.
    code, results = run_benchmarks("--smoke", "--figures", "stacked,gpu", "--set", "stacked.cases=no_such_arch:1:8:4:2", "--set", "stacked.grid_members=0")
    assert code == 1
    assert list(results["figures"]) == ["gpu"] and results["figures"]["gpu"]["rows"]
    assert "no_such_arch" in results["meta"]["failed"]["stacked"]
    assert "FAILED: stacked" in capsys.readouterr().err


def test_a_figure_whose_roar_options_are_refused_does_not_stop_the_others(run_benchmarks, capsys):
    # figure 10 parses `python -m roar benchmark` options in-process: a bad --set value made that parser
    # exit the whole command (SystemExit), so the figures after it never ran and nothing said which failed
    code, results = run_benchmarks("--smoke", "--figures", "per_run,gpu", "--set", "per_run.logger=nosuch")
    assert code == 1
    assert list(results["figures"]) == ["gpu"] and results["figures"]["gpu"]["rows"]
    assert results["meta"]["failed"] == {"per_run": "SystemExit 2: the error printed above"}
    err = capsys.readouterr().err
    assert "--benchmark.logger 'nosuch': expected one of wandb, csv, none" in err and "FAILED: per_run" in err


def test_markdown_goes_into_a_new_folder_like_the_json(run_benchmarks, tmp_path):
    # --out made its folder; --markdown did not, and crashed with a traceback after every figure was measured
    markdown = tmp_path / "new" / "RESULTS.md"
    code, results = run_benchmarks("--smoke", "--figures", "grid", "--markdown", str(markdown))
    assert code == 0 and list(results["figures"]) == ["grid"]
    text = markdown.read_text()
    assert text.startswith(f"Measured {results['meta']['date']} on ") and "### Figure 6: " in text and "| digits demo grid" in text
