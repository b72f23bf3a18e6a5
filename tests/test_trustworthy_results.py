"""A rerun never mixes configurations, and nothing stale or unsafe is read from disk.

Each test runs the benchmark as a user does (``python -m roar benchmark``) on 8 px digits, then
changes one thing and checks that the folder is resumed, refused or kept apart, never mixed.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from roar.__main__ import main as roar_main
from roar.benchmark.leakage_report import LEAKAGE_CSV, LEAKAGE_TITLE
from roar.benchmark.results import ResultsStore
from roar.models.classifier import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")

# 1 reference + 2 methods x 1 threshold x 1 seed (ROAR), one epoch each; a 6-epoch base model.
GRID = [
    "--config", DEMO, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "6", "--benchmark.methods", "[random, integrated_gradients]",
    "--benchmark.method_params", "{integrated_gradients: {n_steps: 4}}", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.modes", "[roar]",
    "--benchmark.noretrain", "false", "--benchmark.logger", "none", "--progress", "false",
]  # fmt: skip


def benchmark(out: Path, *extra: str) -> int:
    return roar_main(["benchmark", *GRID, *extra, "--out", str(out)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished grid, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("grid") / "out"
    assert benchmark(out) == 0
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def snapshot(out: Path) -> dict:
    rows = ResultsStore(out / "results.db").rows()
    return {r["run_id"]: (r["seconds"], r["fingerprint"]) for r in rows}


# ------------------------------------------------------------------------------- reruns
def test_an_unchanged_rerun_resumes_and_recomputes_nothing(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before, base_bytes = snapshot(out), (out / "base.ckpt").read_bytes()
    entries = {p: p.stat().st_mtime_ns for p in (out / "attributions").glob("*/*/ranks.npy")}
    assert benchmark(out, "--progress", "true") == 0
    printed = capsys.readouterr().out
    assert "resuming: 3 of 3 runs" in printed
    # said as reused, not "ready (0.0 s)" as if computed in no time
    assert "ranks of integrated_gradients: reused (same base model, parameters and data)" in printed and "ready (" not in printed, printed
    assert snapshot(out) == before, "no run was redone"
    assert (out / "base.ckpt").read_bytes() == base_bytes, "the base model was reused"
    assert {p: p.stat().st_mtime_ns for p in (out / "attributions").glob("*/*/ranks.npy")} == entries
    report = (out / "report.md").read_text()
    keys = {r["settings_key"] for r in ResultsStore(out / "results.db").rows()}
    assert len(keys) == 1 and f"`{keys.pop()[:16]}`" in report, "the report states the one fingerprint it covers"


@pytest.mark.parametrize(
    "change,named",
    [
        (["--benchmark.protocol.granularity", "pixel"], "protocol.granularity"),
        (["--trainer.max_epochs", "2"], "trainer.max_epochs: 1 -> 2"),
        (["--benchmark.method_params", "{integrated_gradients: {n_steps: 5}}"], "method.n_steps: 4 -> 5"),
        (["--model.arch", "mlp"], 'model.arch: "small_cnn" -> "mlp"'),
        (["--benchmark.base.max_epochs", "7"], "base.max_epochs: 6 -> 7"),
        (["--data.val_fraction", "0.2"], "data.val_fraction: 0.1 -> 0.2"),
        (["--data.image_size", "16"], "data.image_size: 8 -> 16"),
    ],
)
def test_a_changed_config_is_refused_before_training_naming_the_change(finished, tmp_path, capsys, change, named):
    out = copy_of(finished, tmp_path)
    before, base = snapshot(out), (out / "base.ckpt").stat().st_mtime_ns
    entries = sorted(p.relative_to(out) for p in (out / "attributions").rglob("*"))
    config = (out / "benchmark.yaml").read_text()
    assert benchmark(out, *change) == 2
    err = capsys.readouterr().err
    assert named in err and "--force" in err and "new --out" in err
    # it described the refused command, not the grid whose results the folder holds
    assert (out / "benchmark.yaml").read_text() == config, "benchmark.yaml still describes the recorded results"
    assert snapshot(out) == before and (out / "base.ckpt").stat().st_mtime_ns == base, "nothing was trained or recorded"
    assert sorted(p.relative_to(out) for p in (out / "attributions").rglob("*")) == entries, "nothing was ranked"


def test_a_base_model_of_other_settings_is_refused_keeping_the_folders_config(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "results.db").unlink()  # a folder whose grid stopped after its base model: train_base itself refuses
    config, base = (out / "benchmark.yaml").read_text(), (out / "base.ckpt").read_bytes()
    assert benchmark(out, "--benchmark.base.max_epochs", "7") == 2
    assert "max_epochs" in capsys.readouterr().err
    assert (out / "benchmark.yaml").read_text() == config, "benchmark.yaml still describes the folder's base model"
    assert (out / "base.ckpt").read_bytes() == base


def test_force_starts_the_folder_afresh_with_one_fingerprint(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    old = snapshot(out)
    assert benchmark(out, "--benchmark.base.max_epochs", "7", "--force", "true") == 0
    rows = ResultsStore(out / "results.db").rows()
    assert len(rows) == 3 and len({r["settings_key"] for r in rows}) == 1
    assert all(r["fingerprint"] != old[r["run_id"]][1] for r in rows), "every run is of the new configuration"
    provenance = torch.load(out / "base.ckpt", weights_only=True)["roar_provenance"]
    assert provenance["training"]["base"]["max_epochs"] == 7


def test_longer_retrains_keep_the_base_model_that_base_max_epochs_trains(finished, tmp_path, capsys):
    """base.max_epochs trains the base model: the retrains' trainer.max_epochs changes the runs, not it
    (recording both refused an identical base model, and --force retrained it: hours on ImageNet)."""
    out = copy_of(finished, tmp_path)
    base_bytes = (out / "base.ckpt").read_bytes()
    assert benchmark(out, "--trainer.max_epochs", "2") == 2  # the recorded runs are of 1 epoch
    assert "trainer.max_epochs: 1 -> 2" in capsys.readouterr().err
    assert benchmark(out, "--trainer.max_epochs", "2", "--force", "true", "--progress", "true") == 0
    assert "base model: reusing" in capsys.readouterr().out and (out / "base.ckpt").read_bytes() == base_bytes
    # a base model of roar 0.3, whose record holds the retrains' epochs too, is still this base model
    legacy = copy_of(finished, tmp_path / "legacy")
    checkpoint = torch.load(legacy / "base.ckpt", weights_only=True)
    checkpoint["roar_provenance"]["training"]["trainer"]["max_epochs"] = 1
    torch.save(checkpoint, legacy / "base.ckpt")
    legacy_bytes = (legacy / "base.ckpt").read_bytes()
    assert benchmark(legacy, "--force", "true", "--progress", "true") == 0
    assert "base model: reusing" in capsys.readouterr().out and (legacy / "base.ckpt").read_bytes() == legacy_bytes


def test_a_damaged_results_database_is_refused_in_one_line_and_force_replaces_it(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    db = out / "results.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])  # a copy cut short
    assert benchmark(out) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {db} is not a readable results database (") and "--force true" in line
    assert benchmark(out, "--force", "true") == 0
    assert len(ResultsStore(db).rows()) == 3


def test_a_method_default_is_part_of_the_fingerprint():
    from roar.attribution.registry import resolved_params

    # an omitted default is recorded, so changing it in a later release invalidates cached ranks ...
    assert resolved_params("integrated_gradients_sg_sq", {})["nt_samples"] == 25
    assert resolved_params("integrated_gradients_sg_sq", {}) == resolved_params("integrated_gradients_sg_sq", {"nt_samples": 25})
    # ... while a memory-only setting is not
    assert "max_batch_size" not in resolved_params("gradient_sg", {"max_batch_size": 8})


def test_other_base_weights_under_the_same_settings_are_refused(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    # base.ckpt replaced by other weights of the same training settings (retrained elsewhere, say):
    # the settings match, but the recorded runs were masked by another model's ranks
    checkpoint = torch.load(out / "base.ckpt", weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 0.01
    torch.save(checkpoint, out / "base.ckpt")
    before = snapshot(out)
    assert benchmark(out) == 2
    err = capsys.readouterr().err
    assert "base_checkpoint_sha256" in err and "--force" in err
    assert snapshot(out) == before


def test_rows_of_two_configurations_are_never_averaged(finished):
    from roar.benchmark.report import summarize

    rows = ResultsStore(finished / "results.db").rows()
    other = [dict(rows[0], settings_key="0" * 64, run_id="x")]
    with pytest.raises(ValueError, match="2 different configurations"):
        summarize(rows + other)


# ------------------------------------------------------------------------------- base checkpoints
def save_classifier(path: Path, **hparams) -> Path:
    model = ImageClassifier(**{"num_classes": 10, "in_chans": 1, "image_size": 8, **hparams})
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    return path


@pytest.mark.parametrize(
    "hparams,message",
    [
        ({"arch": "mlp"}, "arch='mlp' (expected 'small_cnn')"),
        ({"arch": "small_cnn", "num_classes": 3}, "num_classes=3 (expected 10)"),
        ({"arch": "small_cnn", "image_size": 16}, "image_size=16 (expected 8)"),
    ],
)
def test_a_base_checkpoint_that_does_not_fit_is_refused_before_ranking(tmp_path, capsys, hparams, message):
    ckpt = save_classifier(tmp_path / "other.ckpt", **hparams)
    assert benchmark(tmp_path / "out", "--benchmark.base.checkpoint", str(ckpt)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "attributions").exists(), "nothing was ranked"


def test_a_diverged_base_model_is_not_kept(tmp_path, capsys):
    out = tmp_path / "out"
    assert benchmark(out, "--model.lr", "1e12") == 2
    err = capsys.readouterr().err
    assert "base model" in err and ("diverged" in err or "not above" in err)
    assert not (out / "base.ckpt").exists()


def test_a_grid_with_failed_runs_exits_non_zero_listing_them(tmp_path, capsys):
    failing = "{class_path: plugins.FailWhen, init_args: {part: runs/roar/random}}"
    args = ["--trainer.callbacks", f"[{failing}]"]
    assert benchmark(tmp_path / "out", *args) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "roar/random/t0.500/s0" in err and "planted failure" in err
    assert benchmark(tmp_path / "out", *args, "--allow_failures", "true") == 0


def test_the_users_trainer_callbacks_and_loggers_run_in_every_training(tmp_path):
    log, out = tmp_path / "fits.txt", tmp_path / "out"
    callbacks = f"[{{class_path: plugins.CountFits, init_args: {{log: {log}}}}}]"
    loggers = "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: logs, name: mine}}]"
    assert benchmark(out, "--trainer.callbacks", callbacks, "--trainer.logger", loggers) == 0
    fits = log.read_text().splitlines()
    assert len(fits) == 4 and fits[0].endswith("runs/base"), "the base model and the 3 retrains"
    assert len(list((out / "runs").rglob("logs/mine/version_0/metrics.csv"))) == 4, "the user's logger, under each run's folder"


# ------------------------------------------------------------------------------- unsafe files
class Payload:
    """Unpickling this creates ``marker``: a stand-in for code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {"arch": "small_cnn", "payload": Payload(marker)}}, path)
    return path


def test_a_pickle_payload_in_any_checkpoint_we_accept_does_not_run(finished, tmp_path, capsys):
    from callbacks import DataRandomizationCheck
    from roar.sanity.report import main as sanity_main

    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    # python -m roar attribute --ckpt
    assert roar_main(["attribute", *GRID, "--ckpt", str(evil), "--out", str(tmp_path / "a")]) == 2
    # base.checkpoint of a benchmark
    assert benchmark(tmp_path / "b", "--benchmark.base.checkpoint", str(evil)) == 2
    # a planted <out>/base.ckpt
    planted = copy_of(finished, tmp_path)
    shutil.copy(evil, planted / "base.ckpt")
    assert benchmark(planted) == 2
    err = capsys.readouterr().err
    assert err.count("could run code") == 3 and "ROAR_TRUSTED_GLOBALS" in err
    # roar sanity --checkpoint
    assert sanity_main(["--config", str(ROOT / "configs/sanity/digits.yaml"), "--sanity.checkpoint", str(evil), "--out", str(tmp_path / "s")]) == 2
    assert "could run code" in capsys.readouterr().err
    # the sanity callback's reference model
    with pytest.raises(ValueError, match="could run code"):
        DataRandomizationCheck(reference_checkpoint=str(evil)).reference("cpu")
    assert not marker.exists(), "the payload never ran"


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    from roar.sanity.report import main as sanity_main

    text = tmp_path / "notes.ckpt"
    text.write_text("hello\n")  # read by the restricted unpickler, this was a KeyError traceback
    assert roar_main(["attribute", *GRID, "--ckpt", str(text), "--out", str(tmp_path / "a")]) == 2
    assert sanity_main(["--config", str(ROOT / "configs/sanity/digits.yaml"), "--sanity.checkpoint", str(text), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("notes.ckpt is not a PyTorch checkpoint") == 2 and "Traceback" not in err


def test_no_checkpoint_load_warns_about_weights_only(finished, tmp_path, capfd, caplog):
    out = copy_of(finished, tmp_path)
    with sqlite3.connect(out / "results.db") as conn:
        conn.execute("DELETE FROM runs WHERE method = 'integrated_gradients'")
    caplog.set_level("INFO")
    assert benchmark(out) == 0
    captured = capfd.readouterr()
    assert "weights_only" not in captured.out + captured.err + caplog.text


# ------------------------------------------------------------------------------- the output folder
def test_an_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    from roar.sanity.report import main as sanity_main

    taken = tmp_path / "notes.txt"
    taken.write_text("mine\n")  # each command was a FileExistsError traceback from mkdir
    for run in (
        lambda out: benchmark(out),
        lambda out: roar_main(["attribute", *GRID, "--out", str(out)]),
        lambda out: sanity_main(["--config", str(ROOT / "configs/sanity/digits.yaml"), "--out", str(out)]),
        lambda out: roar_main(["report", "--config", DEMO, "--out", str(tmp_path), "--report_dir", str(out)]),
    ):
        (tmp_path / "results.db").touch()  # for report: a results database to read
        with pytest.raises(SystemExit) as exit_:
            run(taken)
        assert exit_.value.code == 2
        assert "notes.txt is an existing file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark(taken / "sub")
    assert f"is under {taken}, which is a file" in capsys.readouterr().err
    assert taken.read_text() == "mine\n"


def test_a_missing_dataset_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert benchmark(out, "--data.source", "cifar10", "--data.root", str(tmp_path / "nowhere")) == 2
    err = capsys.readouterr().err
    assert f"no CIFAR-10 folder at {tmp_path / 'nowhere'}" in err and "--data.root PATH" in err
    assert not out.exists()  # no benchmark.yaml or empty results.db to mistake for a started grid


# ------------------------------------------------------------------------------- the folder lock
def test_two_benchmarks_cannot_run_on_one_folder(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from roar.benchmark.lock import FolderLock\nwith FolderLock({str(out)!r}):\n    import time; time.sleep(60)"],
        cwd=ROOT,
    )
    try:
        deadline = time.time() + 60
        while not (out / ".roar.lock").is_file() or not (out / ".roar.lock").read_text():
            assert time.time() < deadline and holder.poll() is None
            time.sleep(0.1)
        assert benchmark(out) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another --out" in err
        assert not (out / "base.ckpt").exists() and not (out / "benchmark.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_during_a_training_says_how_to_resume(tmp_path):
    """Lightning turns a Ctrl-C inside ``fit`` into ``sys.exit(1)``: the grid must still say it was interrupted."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "roar", "benchmark", *GRID, "--benchmark.base.max_epochs", "1000", "--benchmark.logger", "csv", "--out", str(out)]
    grid = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / "runs" / "base" / "metrics.csv").is_file():  # written by the base model's fit, epoch by epoch
            assert time.time() < deadline and grid.poll() is None, grid.communicate()
            time.sleep(0.2)
        grid.send_signal(signal.SIGINT)
        stdout, stderr = grid.communicate(timeout=120)
    finally:
        grid.kill()
    assert grid.returncode == 130, stdout + stderr
    assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    assert not (out / "base.ckpt").exists()


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


@pytest.mark.slow  # 30 s: three grids of two workers, each interrupted at another moment of their start
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from Linux's /proc")
def test_ctrl_c_stops_the_workers_without_their_tracebacks(finished, tmp_path):
    """Ctrl-C reaches the whole process group: the workers must stop silently, at any moment of their start.

    10-30 ms after a worker appears its interpreter is still starting (a Ctrl-C there was "Fatal Python
    error: init_import_site" and a traceback); later it is importing torch, then training.
    """
    for delay in (0.01, 0.03, 0.3):
        out = tmp_path / f"out{delay}"
        shutil.copytree(finished, out)  # the base model and ranks are reused: the workers start at once
        command = [sys.executable, "-m", "roar", "benchmark", *GRID, "--benchmark.seeds", "3", "--workers", "2", "--out", str(out)]
        grid = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)  # fmt: skip
        try:
            deadline = time.time() + 300
            while len(_children(grid.pid)) < 2:  # the first spawned worker and multiprocessing's resource tracker
                assert time.time() < deadline and grid.poll() is None, grid.communicate()
                time.sleep(0.002)
            time.sleep(delay)
            os.killpg(grid.pid, signal.SIGINT)  # as a terminal's Ctrl-C
            stdout, stderr = grid.communicate(timeout=120)
        finally:
            grid.kill()
        assert grid.returncode == 130, (delay, stdout + stderr)
        assert "run the same command again to resume" in stderr and "Traceback" not in stderr, (delay, stderr)
        assert len(stderr.splitlines()) <= 3, (delay, stderr)
        assert _group_ends(grid.pid), f"a worker outlived the interrupted grid (Ctrl-C {delay} s after the start)"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads a process's children from Linux's /proc")
def test_a_grid_that_ignores_ctrl_c_keeps_its_workers(finished, tmp_path):
    """A grid run in a script's background (``&``, ``nohup``) ignores SIGINT, and so must its workers: with a
    handler of their own, a SIGINT to the group killed only them, and the driver retried their runs as deaths."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    command = [sys.executable, "-m", "roar", "benchmark", *GRID, "--benchmark.seeds", "2", "--workers", "2", "--out", str(out)]
    grid = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        deadline = time.time() + 300
        while len(_children(grid.pid)) < 3:  # both workers and multiprocessing's resource tracker
            assert time.time() < deadline and grid.poll() is None, grid.communicate()
            time.sleep(0.01)
        time.sleep(1.0)  # the workers are past their start, importing torch or training
        os.killpg(grid.pid, signal.SIGINT)
        stdout, stderr = grid.communicate(timeout=300)
    finally:
        grid.kill()
    assert grid.returncode == 0 and "retrying" not in stderr and "died" not in stderr, stdout + stderr
    assert len(ResultsStore(out / "results.db").rows()) == 6  # the reference and 2 methods, 2 seeds each: all done


def _group_ends(pgid: int, within: float = 10.0) -> bool:
    """Whether every process of the group has ended (a worker left running would print or write later)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# ------------------------------------------------------------------------------- early errors (item 13)
@pytest.mark.parametrize(
    "override,message",
    [
        (["--benchmark.seeds", "[-1]"], "seed -1"),
        (["--benchmark.seeds", "[0, 0]"], "unique"),
        (["--benchmark.thresholds", "[0.5, 0.5000001]"], "0.5000001"),
        (["--benchmark.method_params", "{integrated_gradients: {n_step: 4}}"], "n_step"),
        (["--benchmark.attribution_device", "gpu"], "unknown attribution_device 'gpu'; valid choices: auto, cpu, cuda"),
    ],
)
def test_bad_grid_values_fail_before_the_base_model(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    code = None
    try:
        code = benchmark(out, *override)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code not in (0, None)
    assert message in capsys.readouterr().err
    assert not (out / "base.ckpt").exists()


def test_thresholds_that_mask_the_same_features_are_refused(tmp_path, capsys):
    # 64 features at 8 px: 0.5 and 0.505 both mask 32
    assert benchmark(tmp_path / "out", "--benchmark.thresholds", "[0.5, 0.505]") == 2
    err = capsys.readouterr().err
    assert "both mask 32 of 64 features" in err
    assert not (tmp_path / "out" / "base.ckpt").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        (["--model.label_smoothing", "1.5"], "label_smoothing must be in [0, 1), got 1.5"),
        (["--benchmark.method_params", "{integrated_gradients: {n_steps: -4}}"], "n_steps must be a positive integer, got -4"),
        (["--benchmark.thresholds", "[0.5, 0.505]"], "both mask 32 of 64 features"),
        # 0 epochs: the base model was refused only after its "training"; retrains of 0 epochs reported untrained models
        (["--benchmark.base.max_epochs", "0"], "base.max_epochs must be a positive number of epochs (or -1 with trainer.max_steps), got 0"),
        (["--trainer.max_epochs", "0"], "trainer.max_epochs must be a positive number of epochs (or -1 with trainer.max_steps), got 0"),
        (["--benchmark.base.checkpoint", "/nowhere/base.ckpt"], "base.checkpoint /nowhere/base.ckpt does not exist; remove base.checkpoint"),
    ],
)
def test_bad_input_leaves_no_folder_behind(tmp_path, capsys, override, message):
    # refused after --out was made, these left a fresh folder holding an empty results.db
    try:
        code = benchmark(tmp_path / "out", *override)
    except SystemExit as exit_info:  # refused by the config check, under the usage line
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_ranks_on_a_cuda_device_torch_cannot_see_are_one_line_keeping_the_base_model(tmp_path, capsys):
    # checked when the ranks are computed (stored ones need no GPU), so after the base model: it is kept for the rerun
    assert benchmark(tmp_path / "out", "--benchmark.attribution_device", "cuda") == 2
    err = capsys.readouterr().err
    assert "attribution device 'cuda' needs CUDA, but torch sees no CUDA device; use auto" in err and "Traceback" not in err
    kept = (tmp_path / "out" / "base.ckpt").read_bytes()
    assert benchmark(tmp_path / "out", "--benchmark.attribution_device", "cpu") == 0
    assert (tmp_path / "out" / "base.ckpt").read_bytes() == kept, "the same grid on the CPU reuses it"


def test_a_base_checkpoint_that_is_no_checkpoint_leaves_no_folder_behind(tmp_path, capsys):
    junk = tmp_path / "notes.ckpt"
    junk.write_text("not a checkpoint")
    assert benchmark(tmp_path / "out", "--benchmark.base.checkpoint", str(junk)) == 2
    assert str(junk) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sanity_refuses_more_images_than_the_split_has(tmp_path, capsys):
    from roar.sanity.report import main as sanity_main

    assert sanity_main(["--config", str(ROOT / "configs/sanity/digits.yaml"), "--sanity.num_images", "100000", "--out", str(tmp_path / "s")]) == 2
    assert "num_images=100000 but the test split has" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sanity_refuses_an_empty_split_naming_the_way_out(tmp_path, capsys):
    from roar.sanity.report import main as sanity_main

    argv = ["--config", str(ROOT / "configs/sanity/digits.yaml"), "--sanity.split", "val", "--data.init_args.val_fraction", "0"]
    assert sanity_main([*argv, "--out", str(tmp_path / "s")]) == 2
    assert "the val split is empty (data.val_fraction 0.0); use sanity.split test or a data.val_fraction in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_attribute_takes_a_single_method_name(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    assert roar_main(["attribute", *GRID, "--benchmark.methods", "gradient", "--out", str(out)]) == 0
    assert list((out / "attributions" / "gradient").glob("train-*/ranks.npy"))


def test_a_report_only_reads_the_results_database(finished, tmp_path):
    # An archived folder may sit on read-only storage: the report opens results.db read-only
    # (no journal, no lock files) and writes its files where --report_dir says.
    archived = copy_of(finished, tmp_path)
    db = archived / "results.db"
    # a leakage probe's table beside the results: the report in another folder still has its section
    probe = {"dataset": "digits", "model": "small_cnn", "method": "random", "order": "roar", "threshold": 0.5, "seed": 0, "test_acc": 0.1, "n_test": 360, "chance": 0.1}
    (archived / LEAKAGE_CSV).write_text(",".join(probe) + "\n" + ",".join(map(str, probe.values())) + "\n")
    before = (db.read_bytes(), sorted(p.name for p in archived.iterdir()))
    report = tmp_path / "report"
    assert roar_main(["report", *GRID[:-2], "--out", str(archived), "--report_dir", str(report)]) == 0
    assert (report / "report.md").is_file() and len((report / "results.csv").read_text().splitlines()) == 4
    assert (report / LEAKAGE_CSV).read_text() == (archived / LEAKAGE_CSV).read_text() and (report / "leakage.png").is_file()
    assert (report / "report.md").read_text().count(LEAKAGE_TITLE) == 1
    assert (db.read_bytes(), sorted(p.name for p in archived.iterdir())) == before


def test_a_report_dir_shows_the_probes_of_the_folder_reported_and_no_other(finished, tmp_path, capsys):
    # reports of two archived folders written one after the other into one --report_dir: the second
    # folder ran no probe, so its report has no leakage section (not the first folder's, as its own)
    probed, plain, report = copy_of(finished, tmp_path), tmp_path / "plain", tmp_path / "report"
    shutil.copytree(finished, plain)
    probe = {"dataset": "digits", "model": "small_cnn", "method": "random", "order": "roar", "threshold": 0.5, "seed": 0, "test_acc": 0.9, "n_test": 360, "chance": 0.1}
    (probed / LEAKAGE_CSV).write_text(",".join(probe) + "\n" + ",".join(map(str, probe.values())) + "\n")
    assert roar_main(["report", "--out", str(probed), "--report_dir", str(report)]) == 0
    assert LEAKAGE_TITLE in (report / "report.md").read_text()
    assert roar_main(["report", "--out", str(plain), "--report_dir", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert LEAKAGE_TITLE not in text and "leak" not in text.split("## Protocol")[0]
    assert not (report / LEAKAGE_CSV).exists() and not (report / "leakage.png").exists()
    # another benchmark's folder as --report_dir: its report files (and probes) would be replaced by these results'
    before = {p.name: p.read_bytes() for p in probed.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        roar_main(["report", "--out", str(plain), "--report_dir", str(probed)])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()[-1:]
    assert "results.db" in line and str(probed) in line
    assert {p.name: p.read_bytes() for p in probed.iterdir() if p.is_file()} == before


def test_a_report_from_the_folder_alone_describes_the_grid_that_ran(finished, tmp_path):
    # `python -m roar report --out DIR` without the grid's config: the title, the configuration
    # table and the methods are those the results recorded, not the defaults; options still apply
    out, report = copy_of(finished, tmp_path), tmp_path / "report"
    assert roar_main(["report", "--out", str(out), "--report_dir", str(report), "--benchmark.confidence_level", "0.9"]) == 0
    text = (report / "report.md").read_text()
    assert text.startswith("# ROAR/KAR benchmark: digits_demo\n")
    assert '| `methods` | `["random", "integrated_gradients"]` |' in text and "| `trainer.max_epochs` | `1` |" in text
    assert "| `confidence_level` | `0.9` |" in text and "90% percentile bootstrap interval" in text


def test_a_report_from_the_folder_alone_needs_not_import_the_grids_callbacks(finished, tmp_path, capsys):
    # the grid ran with a user's callback and logger that do not import here (another machine, a
    # removed module): a report trains nothing, so it must not need them
    out = copy_of(finished, tmp_path)
    with sqlite3.connect(out / "results.db") as conn:
        for run_id, config in conn.execute("SELECT run_id, config FROM runs").fetchall():
            config = json.loads(config)
            config["benchmark"]["trainer"]["callbacks"] = [{"class_path": "gone_module.Gone"}]
            config["benchmark"]["trainer"]["logger"] = [{"class_path": "gone_module.GoneLogger"}]
            conn.execute("UPDATE runs SET config = ? WHERE run_id = ?", (json.dumps(config), run_id))
    assert roar_main(["report", "--out", str(out), "--report_dir", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    assert (tmp_path / "report" / "report.md").read_text().startswith("# ROAR/KAR benchmark: digits_demo\n")


def test_a_report_logs_its_wandb_summary_without_banners(finished, tmp_path, capfd):
    out = copy_of(finished, tmp_path)
    assert roar_main(["report", "--out", str(out), "--benchmark.logger", "wandb"]) == 0
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1, "the summary run"
    printed = capfd.readouterr()
    assert "wandb:" not in printed.out + printed.err and "ROAR/KAR benchmark: digits_demo" in printed.out


def test_random_ranks_of_train_and_test_images_differ(finished):
    import numpy as np

    store = finished / "attributions" / "random"
    train = np.load(next(store.glob("train-*/ranks.npy")))
    test = np.load(next(store.glob("test-*/ranks.npy")))
    n = min(len(train), len(test))
    assert (train[:n] != test[:n]).any(axis=1).mean() > 0.99, "test[j] draws its own ranks, not train[j]'s"
    meta = json.loads(next(store.glob("test-*/meta.json")).read_text())
    assert meta["fingerprint"]["index_offset"] == len(train)


def test_a_report_of_nothing_says_why_in_one_line(tmp_path, capsys):
    """A grid stopped before its first run, or a results.db that is not one: an error line, no empty report."""
    empty, junk = tmp_path / "empty", tmp_path / "junk"
    empty.mkdir(), junk.mkdir()
    ResultsStore(empty / "results.db")  # created as a grid creates it, before any run is recorded
    (junk / "results.db").write_text("rows: none\n")
    assert roar_main(["report", "--out", str(empty)]) == 2
    assert roar_main(["report", "--out", str(junk)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {empty / 'results.db'} records no run yet: nothing to report; run (or resume) `python -m roar benchmark` with this --out",
        f"error: {junk / 'results.db'} is not a roar results database (file is not a database)",
    ]
    assert not (empty / "report.md").exists() and not (junk / "report.md").exists()
    (junk / "results.db").write_bytes(b"")  # an empty file opens as a database of schema version 0
    assert roar_main(["report", "--out", str(junk)]) == 2
    assert "results.db has results schema version 0" in capsys.readouterr().err
