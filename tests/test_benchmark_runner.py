"""The benchmark as a user runs it: `python -m roar benchmark --config ... --out ...`."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roar.__main__ import main as roar_main
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore
from roar.benchmark.runner import execute_and_record, run_benchmark

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")
SYNTHETIC = str(ROOT / "configs/benchmark/synthetic.yaml")

TINY_DIGITS = [
    "--config", DEMO, "--data.image_size", "8", "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "3",
    "--benchmark.methods", "[gradient, random, sobel]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--progress", "false",
]  # fmt: skip


def accuracy(summary, method, mode, threshold):
    for row in summary:
        if row["method"] == method and row["mode"] == mode and abs(float(row["threshold"]) - threshold) < 1e-9:
            return float(row["mean"])
    raise KeyError((method, mode, threshold))


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_digits_benchmark_writes_every_output_and_resumes(tmp_path):
    out = tmp_path / "demo"
    assert roar_main(["benchmark", *TINY_DIGITS, "--benchmark.logger", "wandb", "--out", str(out)]) == 0
    for name in ["results.db", "results.csv", "summary.csv", "roar.png", "kar.png", "noretrain.png", "noretrain_kar.png", "report.md", "base.ckpt", "benchmark.yaml"]:
        assert (out / name).is_file(), name
    rows = read_csv(out / "results.csv")
    # 1 reference + (1 unmasked + 3 methods) noretrain + 3 methods noretrain in KAR order + 3 methods x 2 modes
    assert len(rows) == 1 + 4 + 3 + 6
    assert list(rows[0])[:11] == ["dataset", "model", "method", "mode", "fill", "threshold", "seed", "test_acc", "epochs", "seconds", "checkpoint"]
    assert all(r["status"] == "done" for r in rows)
    summary = read_csv(out / "summary.csv")
    assert {r["mode"] for r in summary} >= {"roar", "kar", "noretrain"}
    report = (out / "report.md").read_text()
    assert "sobel" in report and "random" in report
    assert list((out / "wandb").glob("offline-run-*")), "every retrain is an offline W&B run"
    # the recorded config carries the protocol choices
    db_rows = ResultsStore(out / "results.db").rows()
    assert db_rows[0]["config"]["benchmark"]["protocol"]["granularity"] == "element"

    seconds_before = {r["run_id"]: r["seconds"] for r in db_rows}
    assert roar_main(["benchmark", *TINY_DIGITS, "--benchmark.logger", "none", "--out", str(out)]) == 0
    assert {r["run_id"]: r["seconds"] for r in ResultsStore(out / "results.db").rows()} == seconds_before


def test_killed_benchmark_resumes_without_losing_or_duplicating_runs(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "roar", "benchmark", *TINY_DIGITS, "--benchmark.logger", "none", "--benchmark.modes", "[roar]", "--benchmark.seeds", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = out / "results.db"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if db.exists() and len(ResultsStore(db)) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the benchmark finished before it could be killed")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {r["run_id"]: r["seconds"] for r in ResultsStore(db).rows()}
    assert 3 <= len(done_before) < 12
    assert roar_main(["benchmark", *TINY_DIGITS, "--benchmark.logger", "none", "--benchmark.modes", "[roar]", "--benchmark.seeds", "2", "--out", str(out)]) == 0
    rows = ResultsStore(db).rows()
    # 2 references + 4 noretrain + 3 methods x 2 seeds, each once; earlier runs untouched
    assert len(rows) == 12 and len({r["run_id"] for r in rows}) == 12
    assert all(r["status"] == "done" for r in rows)
    after = {r["run_id"]: r["seconds"] for r in rows}
    assert all(after[k] == v for k, v in done_before.items())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_crashing_run_is_recorded_as_failed_and_the_grid_goes_on(tmp_path):
    cfg = BenchmarkConfig(data={"source": "digits", "image_size": 8}, methods=["gradient"], logger="none", trainer={"max_epochs": 1})
    results = ResultsStore(tmp_path / "results.db")
    spec = RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 0)
    # no base checkpoint: the ranks cannot be computed, so the run crashes
    assert not execute_and_record(spec, cfg, tmp_path, tmp_path / "missing.ckpt", results, progress=False)
    (row,) = results.failures()
    assert row["run_id"] == spec.run_id and "missing.ckpt" in row["error"]
    ok = RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 0)
    assert execute_and_record(ok, cfg, tmp_path, tmp_path / "missing.ckpt", results, progress=False)
    assert results.counts() == {"done": 1, "failed": 1}


@pytest.mark.parametrize(
    "override,message",
    [
        (["--benchmark.thresholds", "[0.5, 1.0]"], "outside (0, 1)"),
        (["--benchmark.thresholds", "[0.0]"], "outside (0, 1)"),
        (["--benchmark.methods", "[]"], "methods is empty"),
        (["--benchmark.methods", "[gradient, lime]"], "unknown attribution method 'lime'"),
        (["--benchmark.modes", "[roar, drop]"], "drop"),
        # typed as the README's --benchmark.methods a,b: the bad value is named, not "Expected a list"
        (["--benchmark.thresholds", "0.3,1.5"], "threshold 1.5 is outside (0, 1)"),
        (["--benchmark.modes", "roar,drop"], "unknown mode 'drop'"),
        (["--benchmark.protocol.granularity", "patch"], "patch"),
        # the option named, with the close match (it said "unknown score 'sqaure'" alone)
        (["--benchmark.protocol.score", "sqaure"], "error: --benchmark.protocol.score 'sqaure': expected one of abs, square, raw (did you mean square?)\n"),
        (["--benchmark.seeds", "0"], "seeds"),
        (["--data.source", "imagenet"], "valid: cifar10, digits"),
    ],
)
def test_bad_benchmark_settings_fail_before_any_training(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit):
        roar_main(["benchmark", "--config", DEMO, *override, "--out", str(tmp_path / "bad")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "base.ckpt").exists()


def test_a_refused_value_is_not_buried_under_the_usage(tmp_path, capsys):
    with pytest.raises(SystemExit):
        roar_main(["benchmark", "--config", DEMO, "--workers", "0", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.splitlines()
    # one usage line, the --help tip, the error naming the value: not 30 lines of options first
    assert len(err) == 3 and err[-1] == "error: workers must be a positive integer or auto, got 0", err


@pytest.mark.parametrize(
    ("option", "suggestion", "another_valid_key"), [("--benchmark.seed", "seeds", "thresholds"), ("--outt", "out", "workers")]
)
def test_a_misspelled_option_names_the_valid_ones_below_the_one_line_usage(tmp_path, capsys, option, suggestion, another_valid_key):
    with pytest.raises(SystemExit):
        roar_main(["benchmark", "--config", DEMO, option, "3", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    valid = err.split("valid keys: ")[-1].strip()
    assert f"(did you mean {suggestion}?); valid keys: " in err and another_valid_key in valid.split(", "), err


@pytest.mark.parametrize(
    ("command", "option", "line"),
    [
        ("benchmark", "--benchmrk.seeds", "error: --benchmrk.seeds: 'benchmrk' is not a valid key (did you mean --benchmark.seeds?); valid keys: "),
        ("benchmark", "--benchmark.protocl.score", "error: --benchmark.protocl.score: 'protocl' is not a valid key (did you mean --benchmark.protocol.score?)"),
        ("benchmark", "--benchmark.seedz", "error: --benchmark.seedz: 'seedz' is not a valid key (did you mean seeds?); valid keys: "),
        ("sanity", "--sanityy.seed", "error: --sanityy.seed: 'sanityy' is not a valid key (did you mean --sanity.seed?); valid keys: "),
        ("attribute", "--benchmrk.methods", "error: --benchmrk.methods: 'benchmrk' is not a valid key (did you mean --benchmark.methods?); valid keys: "),
    ],
)
def test_a_misspelled_section_is_one_line_naming_the_option_it_meant(tmp_path, capsys, command, option, line):
    """A misspelled section (--benchmrk.seeds) said only "unrecognized arguments", with no key or close match named."""
    with pytest.raises(SystemExit) as exit_info:
        roar_main([command, option, "3", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(line) and "unrecognized" not in "".join(err), err


def test_a_store_of_another_dataset_is_refused_before_training(tmp_path):
    out = tmp_path / "mixed"
    cfg = BenchmarkConfig(
        data={"source": "synthetic_linear", "source_options": {"n_train": 200, "n_test": 100}}, model={"arch": "linear"},
        methods=["random"], thresholds=[0.5], seeds=1, logger="none", trainer={"max_epochs": 1},
    )  # fmt: skip
    run_benchmark(cfg, out, progress=False, report=False)
    digits = BenchmarkConfig(data={"source": "digits", "image_size": 8}, methods=["random"], thresholds=[0.5], seeds=1, logger="none")
    # the results of the other dataset are refused first, naming what changed ...
    with pytest.raises(ValueError, match=r"data\.source: \"synthetic_linear\" -> \"digits\""):
        run_benchmark(digits, out, progress=False)
    # ... and without them, its ranks in the store still are
    (out / "base.ckpt").unlink()
    (out / "results.db").unlink()
    with pytest.raises(ValueError, match="holds ranks of dataset 'synthetic_linear'"):
        run_benchmark(digits, out, progress=False)
    assert not (out / "base.ckpt").exists()


def test_trained_linear_model_agrees_with_closed_form_least_squares():
    from lightning.pytorch import Trainer

    from roar.data.datamodule import ImageDataModule
    from roar.models.classifier import ImageClassifier

    dm = ImageDataModule(source="synthetic_linear", batch_size=256, val_fraction=0.0, source_options={"n_train": 4000, "n_test": 2000})
    x = dm.source.train.images[dm.train_indices].flatten(1)
    y = dm.source.train.labels[dm.train_indices]
    design = torch.cat([x, torch.ones(len(x), 1)], 1)
    weights = torch.linalg.lstsq(design, torch.nn.functional.one_hot(y, 2).float()).solution
    xt, yt = dm.source.test.images.flatten(1), dm.source.test.labels
    closed_acc = ((torch.cat([xt, torch.ones(len(xt), 1)], 1) @ weights).argmax(1) == yt).float().mean().item()

    torch.manual_seed(0)
    model = ImageClassifier(arch="linear", num_classes=2, in_chans=1, image_size=4, channel_mean=dm.channel_mean, channel_std=dm.channel_std,
                            loss="least_squares", optimizer="adamw", lr=0.1, weight_decay=0.0, warmup_epochs=0)  # fmt: skip
    trainer = Trainer(max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trained_acc = trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"]
    assert closed_acc > 0.8
    assert trained_acc == pytest.approx(closed_acc, abs=0.015)
    # the decision functions (logit margins) agree, not only the accuracies
    with torch.no_grad():
        trained = model(dm.source.test.images)
    closed = torch.cat([xt, torch.ones(len(xt), 1)], 1) @ weights
    margins = torch.stack([trained[:, 1] - trained[:, 0], closed[:, 1] - closed[:, 0]])
    assert torch.corrcoef(margins)[0, 1] > 0.99


def test_synthetic_benchmark_reproduces_the_papers_finding(tmp_path):
    """Hooker et al. 2019, section 4.1 and figure 3: retraining is what separates the rankings."""
    out = tmp_path / "synthetic"
    assert roar_main([
        "benchmark", "--config", SYNTHETIC, "--benchmark.seeds", "1",
        "--data.source_options", "{n_train: 4000, n_test: 2000}",
        "--benchmark.thresholds", "[0.25, 0.75]", "--progress", "false", "--out", str(out),
    ]) == 0  # fmt: skip
    summary = read_csv(out / "summary.csv")
    reference = accuracy(summary, "unmasked", "reference", 0.0)
    base = accuracy(summary, "unmasked", "noretrain", 0.0)
    assert reference > 0.8 and base > 0.8
    # Without retraining every ranking appears to degrade accuracy (the distribution-shift confound) ...
    for method in ["ground_truth", "random", "inverted"]:
        assert accuracy(summary, method, "noretrain", 0.75) < base - 0.15, method
    # ... with retraining, the inverted ranking keeps its accuracy with 75% of the features gone,
    assert accuracy(summary, "inverted", "roar", 0.75) > reference - 0.12
    assert accuracy(summary, "inverted", "roar", 0.75) > accuracy(summary, "random", "roar", 0.75) + 0.05
    # while ground truth falls to chance as soon as its 4 informative features are removed.
    assert accuracy(summary, "ground_truth", "roar", 0.25) < 0.56
    # ROAR ranks ground truth best and the inverted ranking worst; report.md says so
    from roar.benchmark.report import ranking

    order = [r["method"] for r in ranking(summary, "roar")]
    assert order == ["ground_truth", "random", "inverted"]
    assert "ground_truth" in (out / "report.md").read_text()


@pytest.mark.slow  # ResNet50 on a CPU: about a minute on a quiet machine, many under load
def test_cifar10_resnet50_config_runs_one_retrain_step_on_cifar_files(tmp_path):
    from formats import write_cifar10

    write_cifar10(tmp_path / "data", n_train_per_batch=4, n_test=8)
    out = tmp_path / "cifar"
    limits = "{max_epochs: 1, limit_train_batches: 1, limit_val_batches: 1, limit_test_batches: 1, accelerator: cpu, precision: 32-true, logger: false}"
    assert roar_main([
        "benchmark", "--config", str(ROOT / "configs/benchmark/cifar10_resnet50.yaml"),
        "--data.root", str(tmp_path / "data"), "--data.batch_size", "4", "--trainer", limits,
        "--benchmark.methods", "[gradient, random]", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.modes", "[roar]", "--benchmark.noretrain", "false",
        "--benchmark.logger", "none", "--progress", "false", "--out", str(out),
    ]) == 0  # fmt: skip
    rows = read_csv(out / "results.csv")
    assert {r["model"] for r in rows} == {"resnet50"} and {r["dataset"] for r in rows} == {"cifar10"}
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)


def test_an_unreadable_image_read_in_a_loader_worker_is_one_error_line(tmp_path, capsys):
    # ImageNet's config reads with 16 loader workers: torch wraps a worker's error in the worker's traceback text.
    from formats import write_image_folder

    write_image_folder(tmp_path / "images", classes=["a", "b"], per_class=4, size=12, splits=("train", "val"), ext="jpg")
    broken = tmp_path / "images" / "val" / "b" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")  # in val/ only: the channel statistics (train/) never open it
    code = roar_main([
        "benchmark", "--config", str(ROOT / "configs/benchmark/imagenet_resnet50.yaml"), "--data.root", str(tmp_path / "images"),
        "--data.image_size", "8", "--data.num_workers", "1", "--data.batch_size", "4", "--model.arch", "small_cnn",
        "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--benchmark.base.max_epochs", "1", "--benchmark.methods", "[random]",
        "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.logger", "none", "--progress", "false", "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: cannot read image {broken}: cannot identify image file '{broken}' (in a DataLoader worker)"], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("command", ["benchmark", "sanity"])
def test_a_gpu_accelerator_without_a_gpu_is_refused_before_any_training(tmp_path, capsys, command):
    config = DEMO if command == "benchmark" else str(ROOT / "configs/sanity/digits.yaml")
    with pytest.raises(SystemExit):
        roar_main([command, "--config", config, "--trainer.accelerator", "gpu", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: trainer.accelerator 'gpu' needs a GPU, but torch sees none") and "auto" in err[-1], err
    assert not (tmp_path / "run").exists()
