"""The sanity-check callbacks (Adebayo et al. 2018; Binder et al. 2022) during real fits.

One small CNN is trained on 8 px digits once per module (a few seconds); the callbacks then run
inside short fits with real CSV and offline W&B loggers, and in a 2-process CPU DDP fit.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger
import pytest
import torch
import yaml

from callbacks import DataRandomizationCheck, ModelRandomizationCheck
from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier
from roar.models.checkpoint import load_classifier
from roar.sanity.maps import data_randomization, model_randomization, select_batch

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8
LAYERS = ["fc2", "fc1", "conv3", "conv2", "conv1"]  # small_cnn, logits to input


def _datamodule(label_permutation: bool = False) -> ImageDataModule:
    return ImageDataModule(source="digits", image_size=SIZE, batch_size=64, seed=0, label_permutation=label_permutation, augment="none" if label_permutation else "auto")


def _classifier(dm: ImageDataModule) -> ImageClassifier:
    return ImageClassifier(arch="small_cnn", num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                           channel_mean=dm.channel_mean, channel_std=dm.channel_std)  # fmt: skip


def _trainer(**kwargs) -> L.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(**{**options, **kwargs})


def _fit(dm: ImageDataModule, epochs: int, seed: int = 0) -> ImageClassifier:
    L.seed_everything(seed, verbose=False)
    model = _classifier(dm)
    _trainer(max_epochs=epochs, limit_val_batches=0).fit(model, dm)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits() -> ImageDataModule:
    return _datamodule()


@pytest.fixture(scope="module")
def trained(digits) -> ImageClassifier:
    """A small CNN trained for 4 epochs on the true labels."""
    return _fit(digits, epochs=4)


@pytest.fixture(scope="module")
def permuted_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint trained (briefly) on permuted labels, for the data-randomisation callback."""
    dm = _datamodule(label_permutation=True)
    L.seed_everything(1, verbose=False)
    model = _classifier(dm)
    trainer = _trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(model, dm)
    path = tmp_path_factory.mktemp("permuted") / "permuted.ckpt"
    trainer.save_checkpoint(path)
    return path


def _metrics_rows(log_dir: Path) -> list[dict[str, str]]:
    with (log_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the finding


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_decorrelates_guided_backprop_does_not_noise_scores_zero(trained, digits, seed):
    """Adebayo et al. (2018), fig. 4: under cascading randomisation the gradient map becomes
    unrelated to the original while Guided Backprop's stays similar; the noise control scores ~0.

    Thresholds hold with margin over 8 training seeds x 4 randomisation seeds of this setup.
    Guided Backprop's *absolute* rank correlation after the very last step (conv1) is not used:
    on this tiny CNN it ranges from about 0 to 0.7 with the random draw of conv1, while its
    signed correlation (0.6-0.9) and its whole absolute-value curve stay high.
    """
    images, _, indices = select_batch(digits.split_dataset("val"), 16, seed)
    result = model_randomization(
        trained, images, "cascading", ["gradient", "guided_backprop", "noise"], ["spearman", "spearman_abs"], indices=indices, seed=seed
    )
    assert result.layers == ["original", *LAYERS]
    final = result.final()
    curve = {
        (method, metric): sum(r.mean for r in result.records if (r.method, r.metric) == (method, metric) and r.step > 0) / len(LAYERS)
        for method in ["gradient", "guided_backprop"]
        for metric in ["spearman_abs"]
    }
    # Gradient: decorrelated after full randomisation.
    assert final["gradient", "spearman_abs"] < 0.4
    assert abs(final["gradient", "spearman"]) < 0.2
    # Guided Backprop: still similar to the trained model's map.
    assert final["guided_backprop", "spearman"] > 0.5
    assert final["guided_backprop", "spearman"] > final["gradient", "spearman"] + 0.4
    assert curve["guided_backprop", "spearman_abs"] > curve["gradient", "spearman_abs"] + 0.2
    # The control "passes" without ever reading the model (Binder et al. 2022).
    assert abs(final["noise", "spearman_abs"]) < 0.15
    assert abs(final["noise", "spearman"]) < 0.15
    # Step 0 recomputes the trained copy's maps: deterministic methods reproduce themselves.
    step0 = {(r.method, r.metric): r.mean for r in result.records if r.step == 0}
    assert step0["gradient", "spearman_abs"] == pytest.approx(1.0)
    assert step0["guided_backprop", "spearman"] == pytest.approx(1.0)
    assert abs(step0["noise", "spearman_abs"]) < 0.15


def test_method_params_reach_the_methods(trained, digits):
    """A layer name refers to the classifier (``net.conv3``), as in the attribution registry."""
    params = {"guided_gradcam": {"layer": "net.conv3"}, "integrated_gradients": {"n_steps": 4}}
    check = ModelRandomizationCheck(methods=["guided_gradcam", "integrated_gradients"], method_params=params)
    images, _, indices = select_batch(digits.split_dataset("val"), 4, 0)
    result = model_randomization(trained, images, "independent", check.methods, ["spearman"], indices=indices, method_params=check.method_params)
    assert {r.method for r in result.records} == {"guided_gradcam", "integrated_gradients"}
    with pytest.raises(ValueError, match="no layer 'net.conv9'"):
        model_randomization(trained, images, "cascading", ["guided_gradcam"], ["spearman"], method_params={"guided_gradcam": {"layer": "net.conv9"}})


# ----------------------------------------------------------------------------- isolation


def test_callback_leaves_the_model_and_the_random_state_untouched(trained, digits, tmp_path):
    before = _snapshot(trained)
    trained.train()
    trained.net.conv1.eval()  # a mixed mode must come back exactly as it was
    modes = {name: m.training for name, m in trained.named_modules()}
    # Validation itself draws from the global generator (the loader's base seed): compare the
    # state after a validation with the check with the state after one without it.
    torch.manual_seed(123)
    _trainer().validate(trained, datamodule=digits, verbose=False)
    rng = torch.get_rng_state()
    torch.manual_seed(123)
    check = ModelRandomizationCheck(order="cascading", num_images=8, log_images=True, methods=["gradient", "guided_backprop", "noise"])
    trainer = _trainer(logger=CSVLogger(tmp_path, name="validate"), callbacks=[check])
    trainer.validate(trained, datamodule=digits, verbose=False)
    assert check.last_results, "the check did not run"
    after = trained.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the callback changed the trained weights"
    assert all(p.grad is None for p in trained.parameters())
    assert torch.equal(torch.get_rng_state(), rng), "the callback consumed the global random stream"
    trained.train()
    trained.net.conv1.eval()
    assert {name: m.training for name, m in trained.named_modules()} == modes
    trained.eval()
    # With log_images and no W&B logger, a grid PNG per method lands in the log folder.
    pngs = sorted(p.name for p in (Path(trainer.logger.log_dir) / "sanity").glob("*.png"))
    assert pngs == [f"cascading_{m}_epoch000.png" for m in ["gradient", "guided_backprop", "noise"]]


def test_the_fixed_batch_is_taken_once_and_is_deterministic(trained, digits, tmp_path):
    first = ModelRandomizationCheck(num_images=5, seed=3)
    second = ModelRandomizationCheck(num_images=5, seed=3)
    trainer = _trainer(callbacks=[first, second], default_root_dir=tmp_path)
    trainer.validate(trained, datamodule=digits, verbose=False)
    a, b = first.fixed_batch(trainer, torch.device("cpu")), second.fixed_batch(trainer, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (5, 1, SIZE, SIZE)
    val_ids = set(digits.val_indices.tolist())
    assert set(a[2].tolist()) <= val_ids, "the images must come from the validation split"
    # Both instances computed the same numbers on the same model and images.
    assert first.last_results[0].final() == second.last_results[0].final()
    # Without a logger nothing is logged and no file is written.
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- loggers


def _fit_with(tmp_path, config: dict, max_epochs: int):
    """``train.py fit`` of the digits config, a few batches per epoch, with ``config`` (callbacks) on top."""
    from train import main

    path = tmp_path / "callbacks.yaml"
    path.write_text(yaml.safe_dump(config))
    return main([
        "fit", "--config", str(ROOT / "configs/digits.yaml"), "--trainer", str(ROOT / "configs/trainer/debug.yaml"),
        "--config", str(path), "--data.init_args.image_size", str(SIZE), "--trainer.max_epochs", str(max_epochs),
        "--trainer.limit_train_batches", "3", "--trainer.num_sanity_val_steps", "0", "--test_after_fit", "false",
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip


def test_csv_logger_gets_every_key_through_a_config(tmp_path, permuted_checkpoint):
    """Both callbacks added via ``trainer.callbacks`` in a YAML config of the training CLI."""

    methods = ["gradient", "noise"]
    metrics = ["spearman_abs", "ssim"]
    config = {
        "trainer": {
            "callbacks": [
                {"class_path": "callbacks.ModelRandomizationCheck",
                 "init_args": {"order": "independent", "methods": methods, "metrics": metrics, "num_images": 4, "every_n_epochs": 1}},
                {"class_path": "callbacks.DataRandomizationCheck",
                 "init_args": {"reference_checkpoint": str(permuted_checkpoint), "methods": methods, "metrics": metrics, "num_images": 4}},
            ]
        }
    }  # fmt: skip
    cli = _fit_with(tmp_path, config, max_epochs=2)
    log_dir = Path(cli.trainer.log_dir)
    rows = _metrics_rows(log_dir)
    columns = set(rows[0])
    for method in methods:
        for metric in metrics:
            assert f"sanity/independent/{method}/{metric}" in columns
            assert f"sanity/data/{method}/{metric}" in columns
            per_layer = {f"sanity/independent/{method}/{metric}/{i:02d}_{layer}" for i, layer in enumerate(["original", *LAYERS])}
            assert per_layer <= columns
    # Logged once per validation epoch, and the final key is the last step's value.
    logged = [r for r in rows if r["sanity/independent/gradient/spearman_abs"]]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    for row in logged:
        assert float(row["sanity/independent/gradient/spearman_abs"]) == float(row["sanity/independent/gradient/spearman_abs/05_conv1"])
        assert float(row["sanity/independent/gradient/spearman_abs/00_original"]) == pytest.approx(1.0)
        assert -1.0 <= float(row["sanity/data/gradient/ssim"]) <= 1.0
    assert len([r for r in rows if r["sanity/data/noise/ssim"]]) == 2
    # The randomised layers, once, as hyperparameters and as a text file.
    hparams = yaml.safe_load((log_dir / "hparams.yaml").read_text())
    assert [line.split(":")[0] for line in hparams["sanity/independent/layers"]] == LAYERS
    assert (log_dir / "sanity_layers_independent.txt").read_text().startswith("sanity/independent/layers:\n  fc2: Linear")
    assert hparams["sanity/data/reference"] == [str(permuted_checkpoint)]


def test_a_users_method_definitions_run_in_a_callback_through_a_config(tmp_path):
    """``methods`` takes the entries of a benchmark or sanity config: a captum class, a function by path."""

    methods = [{"name": "deeplift", "class_path": "captum.attr.DeepLift"}, {"name": "doubled", "function": "user_code:gradient_times_two"}, "gradient"]
    callback = {"class_path": "callbacks.ModelRandomizationCheck", "init_args": {"order": "independent", "methods": methods, "metrics": ["spearman"], "num_images": 4}}
    cli = _fit_with(tmp_path, {"trainer": {"callbacks": [callback]}}, max_epochs=1)
    (row,) = [r for r in _metrics_rows(Path(cli.trainer.log_dir)) if r.get("sanity/independent/gradient/spearman")]
    assert -1.0 <= float(row["sanity/independent/deeplift/spearman"]) <= 1.0
    # twice the gradient is the gradient up to scale: the same Spearman correlation at every layer
    for layer in ["original", *LAYERS]:
        key = "sanity/independent/{}/spearman/{:02d}_" + layer
        index = ["original", *LAYERS].index(layer)
        assert float(row[key.format("doubled", index)]) == pytest.approx(float(row[key.format("gradient", index)]), abs=1e-5)


def test_wandb_offline_run_gets_scalars_tables_and_images(trained, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    # W&B's process-wide setup reads WANDB_MODE once, when first made: an earlier test's (e.g. an
    # explicit mode="offline" init) would hide the mode Lightning exports; start as a fresh process does
    wandb.teardown()
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="roar-test")
    check = ModelRandomizationCheck(methods=["gradient", "noise"], metrics=["spearman_abs"], num_images=4, log_images=True)
    trainer = _trainer(logger=logger, callbacks=[check])
    try:
        trainer.validate(trained, datamodule=digits, verbose=False)
        assert trainer.callback_metrics["sanity/cascading/gradient/spearman_abs"].item() < 1.0
        assert "sanity/cascading/noise/spearman_abs/03_conv3" in trainer.callback_metrics
    finally:
        wandb.finish()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    run = Path(runs[0])
    assert any(p.stat().st_size > 0 for p in run.glob("run-*.wandb"))
    assert wandb.run is None
    # The client's log is written synchronously (wandb-core's own log may still be catching up).
    finished = (run / "logs" / "debug.log").read_text()
    assert "finishing run" in finished and "got exitcode: 0" in finished
    media = run / "files" / "media"
    table = json.loads(next((media / "table" / "sanity" / "cascading").glob("table_*.table.json")).read_text())
    assert table["columns"] == ["step", "layer", "method", "metric", "similarity"]
    assert {(row[0], row[1]) for row in table["data"]} == set(enumerate(["original", *LAYERS]))
    assert list((media / "table" / "sanity" / "cascading" / "spearman_abs").glob("curve_table_*.table.json"))
    # The randomised layers go into the run's files (uploaded with it), nowhere else.
    assert (run / "files" / "sanity_layers_cascading.txt").read_text().startswith("sanity/cascading/layers:")
    for method in ["gradient", "noise"]:
        assert list((media / "images" / "sanity" / "cascading" / method).glob("maps_*.png"))


# ----------------------------------------------------------------------------- DDP

DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from callbacks import ModelRandomizationCheck
    from roar.data.datamodule import ImageDataModule
    from roar.models.classifier import ImageClassifier


    class RecordingCheck(ModelRandomizationCheck):
        # Leaves one file per (rank, epoch) where the check really computed.
        def __init__(self, out, **kwargs):
            super().__init__(**kwargs)
            self.out = out

        def compute(self, trainer, *args, **kwargs):
            Path(self.out, f"computed_rank{trainer.global_rank}_epoch{trainer.current_epoch}").touch()
            return super().compute(trainer, *args, **kwargs)


    def main(out):
        L.seed_everything(0)
        dm = ImageDataModule(source="digits", image_size=8, batch_size=32, seed=0)
        model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8,
                                channel_mean=dm.channel_mean, channel_std=dm.channel_std)
        check = RecordingCheck(out, methods=["gradient", "noise"], metrics=["spearman_abs"], num_images=4)
        trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2,
                            limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
                            logger=CSVLogger(out, name="ddp", version=0), callbacks=[check],
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(model, dm)


    if __name__ == "__main__":
        main(sys.argv[1])
    """
)


@pytest.mark.slow
def test_ddp_two_cpu_processes_finish_and_only_rank_zero_logs(tmp_path):
    """Under DDP (gloo, 2 CPU processes), rank 0 alone computes and logs, and no rank hangs.

    Lightning's ``ddp`` strategy relaunches the script for rank 1, so it runs as a script in a
    subprocess; a hang fails the test through the timeout instead of blocking the suite. Slow:
    two processes import torch and Lightning (about 18 s of CPU, 40 s on a busy 2-core machine).
    """
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("computed_*")) == ["computed_rank0_epoch0", "computed_rank0_epoch1"]
    rows = _metrics_rows(out / "ddp" / "version_0")
    logged = [r for r in rows if r.get("sanity/cascading/gradient/spearman_abs")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]
    assert (out / "ddp" / "version_0" / "sanity_layers_cascading.txt").exists()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"methods": ["gradient", "saliency"]}, ["'saliency'", "guided_backprop", "noise"]),
        ({"metrics": ["pearson"]}, ["'pearson'", "spearman_abs", "hog"]),
        ({"order": "top_down"}, ["'top_down'", "cascading", "bottom_up"]),
        ({"target": "true"}, ["'true'", "predicted", "label"]),
        ({"num_images": 0}, ["num_images", "0"]),
        ({"method_params": {"integrated_gradients": {"steps": 3}}, "methods": ["integrated_gradients"]}, ["'steps'", "n_steps"]),
        ({"batchnorm": "frozen"}, ["'frozen'", "reset", "keep_stats"]),
        ({"normalization": "zscore"}, ["'zscore'", "minmax", "percentile"]),
        ({"reduction": "max"}, ["'max'", "sum_abs", "abs_sum"]),
        ({"stack": 0}, ["stack", "auto", "0"]),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, words):
    with pytest.raises(ValueError) as err:
        ModelRandomizationCheck(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_missing_reference_checkpoint_fails_at_construction(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        DataRandomizationCheck(reference_checkpoint=str(missing))


def test_randomisation_settings_reach_every_result_row(trained, digits):
    check = ModelRandomizationCheck(methods=["gradient"], metrics=["ssim"], batchnorm="keep_stats", normalization="percentile", reduction="abs_sum")
    images, _, indices = select_batch(digits.split_dataset("val"), 4, seed=0)
    (result,) = check.compute(None, trained, images, None, indices)
    rows = [record.row() for record in result.records]
    assert len(rows) == 6 and all((r["batchnorm"], r["normalization"], r["reduction"]) == ("keep_stats", "percentile", "abs_sum") for r in rows)
    plain = ModelRandomizationCheck(methods=["gradient"], metrics=["ssim"]).compute(None, trained, images, None, indices)[0]
    assert plain.records[-1].row()["normalization"] == "minmax"
    assert plain.records[-1].mean != pytest.approx(result.records[-1].mean)


def test_the_data_check_takes_the_map_settings_of_python_m_roar_sanity(trained, digits, permuted_checkpoint):
    images, _, indices = select_batch(digits.split_dataset("val"), 4, seed=0)
    check = DataRandomizationCheck(reference_checkpoint=str(permuted_checkpoint), methods=["gradient"], metrics=["ssim"], normalization="percentile", reduction="abs_sum")
    (result,) = check.compute(None, trained, images, None, indices)
    (row,) = [record.row() for record in result.records]
    assert (row["normalization"], row["reduction"]) == ("percentile", "abs_sum")
    reference = load_classifier(permuted_checkpoint)
    same = data_randomization(trained, reference, images, ["gradient"], ["ssim"], indices=indices, settings={"normalization": "percentile", "reduction": "abs_sum"})
    assert result.records[0].mean == pytest.approx(same.records[0].mean)
    (plain,) = DataRandomizationCheck(reference_checkpoint=str(permuted_checkpoint), methods=["gradient"], metrics=["ssim"]).compute(None, trained, images, None, indices)
    assert plain.records[0].mean != pytest.approx(result.records[0].mean)
    with pytest.raises(ValueError, match="'zscore'.*minmax"):
        DataRandomizationCheck(reference_checkpoint=str(permuted_checkpoint), normalization="zscore")
