"""``python -m roar sanity`` end to end on tiny settings, and its refusals of bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

import roar
from roar.__main__ import main as roar_main
from roar.sanity.report import CSV_COLUMNS, SanityReportConfig, model_warnings, parse_config, read_csv, run_report

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "sanity" / "digits.yaml")
METHODS = ["gradient", "guided_backprop"]
METRICS = ["spearman_abs", "ssim"]
LAYERS = ["original", "fc2", "fc1", "conv3", "conv2", "conv1"]


def _tiny(out: Path, *extra: str) -> list[str]:
    return [
        "sanity", "--config", CONFIG, "--out", str(out), "--data.image_size", "8", "--sanity.epochs", "2",
        "--sanity.permuted_epochs", "2", "--sanity.num_images", "4", "--sanity.methods", f"[{', '.join(METHODS)}]",
        "--sanity.metrics", f"[{', '.join(METRICS)}]", "--sanity.progress", "false", *extra,
    ]  # fmt: skip


def _run(argv: list[str]) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = roar_main(argv)
    return status, printed.getvalue()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    """One tiny report: 8 px digits, 2 epochs per model, 4 images, 2 methods + the noise control."""
    out = tmp_path_factory.mktemp("sanity")
    status, printed = _run(_tiny(out))
    assert status == 0
    return out, printed


def test_sanity_csv_has_every_check_step_and_metric(report):
    out, _ = report
    with (out / "sanity.csv").open() as handle:
        assert tuple(next(csv.reader(handle))) == CSV_COLUMNS
    rows = read_csv(out / "sanity.csv")
    methods = [*METHODS, "noise"]  # the control is added
    assert {r["method"] for r in rows} == set(methods)
    assert {r["metric"] for r in rows} == set(METRICS)
    assert {r["check"] for r in rows} == {"cascading", "independent", "bottom_up", "data"}
    assert len(rows) == len(methods) * len(METRICS) * (3 * len(LAYERS) + 1)
    for order, layers in [("cascading", LAYERS), ("independent", LAYERS), ("bottom_up", ["original", *reversed(LAYERS[1:])])]:
        steps = sorted({(r["step"], r["layer"]) for r in rows if r["check"] == order})
        assert steps == list(enumerate(layers))
    assert {(r["step"], r["layer"]) for r in rows if r["check"] == "data"} == {(1, "permuted_labels")}
    assert all(r["n"] == 4 and -1.0 <= r["mean"] <= 1.0 and r["std"] >= 0 for r in rows)
    assert all(-1.0 <= r["ci_low"] <= r["ci_high"] <= 1.0 for r in rows)  # a bootstrap interval over the 4 images
    # Step 0 explains the unrandomised copy again: a deterministic method reproduces its maps.
    step0 = [r for r in rows if r["step"] == 0 and r["method"] in METHODS]
    assert all(r["mean"] == pytest.approx(1.0) and r["std"] == pytest.approx(0.0, abs=1e-6) for r in step0)
    # Cascading and bottom-up end in the same fully random network (the same seeds per layer).
    last = {(r["check"], r["method"], r["metric"]): r["mean"] for r in rows if r["step"] == 5}
    for method in METHODS:
        for metric in METRICS:
            assert last["cascading", method, metric] == pytest.approx(last["bottom_up", method, metric])


def test_curves_and_cascading_grids_are_written(report):
    out, _ = report
    for check in ["cascading", "independent", "bottom_up", "data"]:
        for metric in METRICS:
            image = matplotlib.image.imread(out / f"curve_{check}_{metric}.png")
            assert image.ndim == 3 and image.shape[0] > 100
    for method in [*METHODS, "noise"]:
        grid = matplotlib.image.imread(out / f"grid_cascading_{method}.png")
        # 4 image rows, 7 columns (input, original, 5 randomised layers): wider than high.
        assert grid.shape[1] > grid.shape[0] * 1.3
    assert (out / "model.ckpt").is_file() and (out / "permuted.ckpt").is_file()
    assert (out / "logs" / "true_labels").is_dir() and (out / "logs" / "permuted_labels").is_dir()


def test_printed_tables_put_the_noise_control_beside_each_method(report):
    flat = " ".join(report[1].split())  # rich wraps long lines at the console width
    for method in METHODS:
        assert f"{method}: similarity to the original map after the last step" in flat
    assert flat.count("noise (control)") == len(METHODS)
    assert "necessary but not sufficient" in flat
    assert "Binder et al. 2022" in flat
    assert "Read every method against the control, and against bottom-up randomisation" in flat
    assert "the curves and the grids in" in flat


def test_a_permuted_label_model_that_has_not_memorised_its_labels_is_flagged(report):
    # 2 epochs cannot memorise 1,617 permuted labels (Adebayo et al. train until they are fitted)
    out, printed = report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["permuted_model"]["train_acc_permuted_labels"] < 0.5
    (warning,) = summary["warnings"]
    assert "sanity.permuted_epochs" in warning and "after 2 epochs" in warning
    assert "warning: the permuted-label model fits" in " ".join(printed.split())
    memorised = {"permuted_model": {**summary["permuted_model"], "train_acc_permuted_labels": 0.99}}
    assert model_warnings(memorised, permuted_epochs=60) == [] and model_warnings({}, permuted_epochs=60) == []


def test_a_given_permuted_checkpoint_is_not_told_to_raise_permuted_epochs(report, tmp_path):
    # sanity.permuted_epochs (default 60) trains nothing when the checkpoint is given: the warning
    # said "after 60 epochs ... raise sanity.permuted_epochs" of a 2-epoch model.
    given = [f"--sanity.checkpoint={report[0] / 'model.ckpt'}", f"--sanity.permuted_checkpoint={report[0] / 'permuted.ckpt'}"]
    status, printed = _run(_tiny(tmp_path / "given", *given, "--sanity.permuted_epochs", "60", "--sanity.orders", "[cascading]"))
    assert status == 0
    summary = json.loads((tmp_path / "given" / "summary.json").read_text())
    assert summary["permuted_model"]["epochs"] is None
    (warning,) = summary["warnings"]
    assert "given permuted_checkpoint" in warning and "sanity.permuted_epochs" not in warning and "epochs" not in warning
    assert "warning: the given permuted_checkpoint" in " ".join(printed.split())


def test_one_line_per_check_counts_methods_and_images(report, tmp_path):
    given = [f"--sanity.checkpoint={report[0] / 'model.ckpt'}", "--sanity.data_check", "false", "--sanity.control", "false"]
    status, printed = _run(_tiny(tmp_path / "one", *given, "--sanity.methods", "[gradient]", "--sanity.num_images", "1",
                                 "--sanity.orders", "[independent]", "--sanity.emprt", "true"))  # fmt: skip
    assert status == 0
    assert "independent randomisation: 1 method x 1 image\n" in printed and "eMPRT: 1 method x 1 image\n" in printed
    # Without the control and without cascading, the closing text names neither a control column
    # nor cascading grids that this run does not have.
    words = " ".join(printed.split())
    assert "Read every method against the control" not in words and "no `noise` control (sanity.control false)" in words
    assert "bottom-up" not in words
    assert f"the curves in {tmp_path / 'one'}" in words and "grids" not in words


def test_a_second_run_reuses_matching_checkpoints(report, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(report[0], out)
    stamps = {name: (out / name).stat().st_mtime_ns for name in ["model.ckpt", "permuted.ckpt"]}
    status, printed = _run(_tiny(out, "--sanity.orders", "[cascading]", "--sanity.data_check", "false", "--sanity.control", "false"))
    assert status == 0
    assert "reusing the true-label model" in " ".join(printed.split())
    # the hint names the option as the command line takes it (a bare --retrain is refused)
    assert "--sanity.retrain true to train again" in " ".join(printed.split())
    assert "does not replace bottom-up, which this run left out (sanity.orders)" in " ".join(printed.split())
    assert (out / "model.ckpt").stat().st_mtime_ns == stamps["model.ckpt"]
    rows = read_csv(out / "sanity.csv")
    assert {r["check"] for r in rows} == {"cascading"}
    assert {r["method"] for r in rows} == set(METHODS)
    # Only this run's figures: the first run's other checks and its noise control are gone.
    figures = sorted(p.name for p in out.glob("*.png"))
    assert figures == sorted([f"curve_cascading_{m}.png" for m in METRICS] + [f"grid_cascading_{m}.png" for m in METHODS])


def test_the_full_config_is_saved_beside_the_numbers_and_reruns_them(report):
    """sanity.yaml holds every setting, defaults included (sMPRT's noise, eMPRT's bins): --config reruns the same."""
    out, _ = report
    saved = yaml.safe_load((out / "sanity.yaml").read_text())
    assert saved["sanity"]["smprt_noise"] is not None and saved["sanity"]["emprt_bins"] is not None
    assert saved["data"]["init_args"]["image_size"] == 8 and saved["sanity"]["num_images"] == 4
    assert parse_config(["--config", str(out / "sanity.yaml")]) == parse_config(_tiny(out)[1:])


def test_a_checkpoint_replaced_beside_its_record_is_trained_again(report, tmp_path):
    """Reuse needs the settings (resolved: defaults filled in, roar's version) and the checkpoint's bytes to match."""
    out = tmp_path / "swapped"
    shutil.copytree(report[0], out)
    record = json.loads((out / "model.json").read_text())
    # resolved: the learning rate the config leaves at ImageClassifier's default is written down, as is roar's version
    assert record["model"]["lr"] == 0.05 and record["roar"] == ".".join(roar.__version__.split(".")[:2])
    assert record["data"]["image_size"] == 8 and record["epochs"] == 2 and record["label_permutation"] is False
    shutil.copyfile(out / "permuted.ckpt", out / "model.ckpt")  # a valid checkpoint, of another model
    status, printed = _run(_tiny(out, "--sanity.orders", "[cascading]", "--sanity.data_check", "false", "--sanity.control", "false"))
    assert status == 0
    assert "training the true-label model for 2 epochs (model.ckpt changed since it was trained)" in " ".join(printed.split())
    # a changed setting names itself
    status, printed = _run(_tiny(out, "--sanity.orders", "[cascading]", "--sanity.data_check", "false", "--sanity.control", "false", "--model.lr", "0.1"))
    assert status == 0
    assert "(settings changed: model.lr: 0.05 -> 0.1)" in " ".join(printed.split())


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--sanity.methods", "[gradient, saliency_map]"], ["'saliency_map'", "guided_backprop", "integrated_gradients"]),
        (["--sanity.metrics", "[spearman, pearson]"], ["'pearson'", "spearman_abs", "ssim", "hog"]),
        (["--sanity.orders", "[cascading, top_down]"], ["'top_down'", "independent", "bottom_up"]),
        (["--sanity.checkpoint", "missing/model.ckpt"], ["missing/model.ckpt"]),
        (["--sanity.methods", "[]"], ["methods is empty", "gradient"]),
        (["--sanity.methods", "[ground_truth]"], ["GroundTruth needs weights", "oracle of the synthetic benchmark", "synthetic_linear"]),
        (["--sanity.method_params", "{integrated_gradients: {steps: 4}}"], ["'steps'", "n_steps"]),
        # one bin: every map's entropy is 0 and eMPRT's rise NaN, after the whole run
        (["--sanity.emprt", "true", "--sanity.emprt_bins", "1"], ["emprt_bins must be at least 2, got 1"]),
        (["--sanity.methods", "[guided_gradcam]", "--sanity.method_params", "{guided_gradcam: {layer: conv3}}"], ["'conv3'", "net"]),
    ],
)
def test_bad_inputs_fail_before_any_computation(tmp_path, capsys, extra, words):
    out = tmp_path / "never"
    assert roar_main(_tiny(out, *extra)) == 2
    message = capsys.readouterr().err
    for word in words:
        assert word in message
    assert not out.exists(), "nothing may be trained or written for bad input"


def test_a_bad_choice_at_parse_time_lists_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        roar_main(_tiny(tmp_path / "never", "--sanity.device", "tpu"))
    err = capsys.readouterr().err
    assert "tpu" in err and "cuda" in err


def test_the_python_api_raises_for_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="'sideways'.*cascading"):
        run_report(SanityReportConfig(orders=["sideways"]), tmp_path / "never")
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        run_report(SanityReportConfig(permuted_checkpoint=str(tmp_path / "nope.ckpt")), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_checkpoint_for_other_data_is_refused(report, tmp_path):
    cfg = SanityReportConfig(
        data={"source": "digits", "image_size": 12}, checkpoint=str(report[0] / "model.ckpt"), data_check=False, progress=False
    )
    with pytest.raises(ValueError, match="image_size=8 \\(expected 12\\)"):
        run_report(cfg, tmp_path / "other")
    assert not (tmp_path / "other" / "sanity.csv").exists()


def test_a_checkpoint_of_another_architecture_is_refused(report, tmp_path):
    """It was taken as the true-label model while the permuted one was trained as the configured arch."""
    cfg = SanityReportConfig(
        data={"source": "digits", "image_size": 8}, model={"arch": "mlp"}, checkpoint=str(report[0] / "model.ckpt"), progress=False
    )
    with pytest.raises(ValueError, match="arch='small_cnn' \\(expected 'mlp'\\)"):
        run_report(cfg, tmp_path / "other")
    assert not (tmp_path / "other").exists(), "refused before any training"


def test_a_fit_config_composes_with_the_sanity_section(capsys):
    """One config system: train.py fit's data/model/trainer sections, then the sanity: section."""
    from roar.sanity.report import parse_config

    cfg, out = parse_config([
        "--config", str(ROOT / "configs/digits.yaml"), "--config", str(ROOT / "configs/model/resnet18.yaml"),
        "--config", CONFIG, "--trainer.precision", "bf16-mixed", "--out", "x",
    ])  # fmt: skip
    assert cfg.data["image_size"] == 16 and cfg.data["batch_size"] == 64  # the class_path form, read as ImageDataModule arguments
    assert cfg.model.get("arch", "small_cnn") == "small_cnn" and cfg.model.get("lr") != 0.1, "the later config (configs/sanity/digits.yaml) wins, as in train.py"
    assert cfg.trainer["precision"] == "bf16-mixed" and cfg.epochs == 15 and str(out) == "x"
    assert cfg.share is True, "layers shared by the randomisation steps are computed once by default"
    assert parse_config(["--config", CONFIG, "--sanity.share", "false", "--out", "x"])[0].share is False
    with pytest.raises(SystemExit):
        parse_config(["--config", CONFIG, "--sanity.num_imgs", "3"])
    err = capsys.readouterr().err
    assert "num_imgs" in err and "num_images" in err, "a misspelled key names the valid ones"


def test_settings_smprt_and_emprt_rows(report, tmp_path):
    """Every row records batchnorm, normalization and reduction; sMPRT and eMPRT add their rows."""
    out = tmp_path / "revisited"
    shutil.copytree(report[0], out)
    extra = ["--sanity.orders", "[cascading]", "--sanity.data_check", "false", "--sanity.batchnorm", "keep_stats", "--sanity.normalization", "percentile",
             "--sanity.reduction", "abs_sum", "--sanity.smprt", "true", "--sanity.smprt_samples", "3", "--sanity.emprt", "true", "--sanity.emprt_bins", "20"]  # fmt: skip
    status, printed = _run(_tiny(out, *extra))
    assert status == 0 and "eMPRT" in printed
    rows = read_csv(out / "sanity.csv")
    assert all((r["batchnorm"], r["normalization"], r["reduction"]) == ("keep_stats", "percentile", "abs_sum") for r in rows)
    assert {r["check"] for r in rows} == {"cascading", "smprt", "emprt"}
    methods = [*METHODS, "noise"]
    smprt = [r for r in rows if r["check"] == "smprt"]
    assert sorted({(r["step"], r["layer"]) for r in smprt}) == list(enumerate(LAYERS))
    assert len(smprt) == len(methods) * len(METRICS) * len(LAYERS)
    emprt = {(r["method"], r["step"], r["metric"]): r["mean"] for r in rows if r["check"] == "emprt"}
    assert set(emprt) == {(m, s, k) for m in methods for s, k in [(0, "entropy"), (1, "entropy"), (1, "complexity_rise")]}
    assert all(0 < emprt[m, s, "entropy"] <= np.log(20) + 1e-9 for m in methods for s in (0, 1))


@pytest.mark.parametrize(
    "field,value",
    [("batchnorm", "frozen"), ("normalization", "zscore"), ("reduction", "max")],
)
def test_bad_sanity_settings_fail_before_training(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'; valid choices"):
        run_report(SanityReportConfig(**{field: value}), tmp_path / "never")
    assert not (tmp_path / "never").exists()
