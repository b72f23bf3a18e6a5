"""What the sanity-check callbacks (Adebayo et al., NeurIPS 2018) put on a dashboard during a real fit.

Short fits (8 px digits, 2 batches per epoch) with the callbacks attached, read back as a user
would see them: the offline W&B run's records (``tests/wandb_records.py``), Lightning's
``callback_metrics``, and the warnings printed.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from callbacks import DataRandomizationCheck, ModelRandomizationCheck
from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier
from wandb_records import run_contents

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _model(dm: ImageDataModule) -> ImageClassifier:
    L.seed_everything(0, verbose=False)
    return ImageClassifier(arch="small_cnn", num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                           channel_mean=dm.channel_mean, channel_std=dm.channel_std)  # fmt: skip


def _fit(dm: ImageDataModule, callbacks: list, logger, epochs: int = 2, **kwargs) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=logger, callbacks=callbacks, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip
    trainer.fit(_model(dm), dm)
    return trainer


def test_wandb_media_share_the_step_of_their_epochs_scalars(digits, tmp_path, monkeypatch):
    """W&B plots every key against ``trainer/global_step``: an epoch's table, curves and map grids
    must sit at the step of the same epoch's ``sanity/...`` scalars, or the image slider and the
    line charts disagree about which epoch a point is (they were one step apart)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    wandb.teardown()  # W&B's process-wide setup reads WANDB_MODE once (see test_callbacks.py)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="roar-test")
    check = ModelRandomizationCheck(methods=["gradient"], metrics=["spearman_abs"], num_images=2, log_images=True)
    try:
        _fit(digits, [check], logger)
    finally:
        wandb.finish()
    [run] = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    history = run_contents(Path(run))["history"]
    scalars = {row["epoch"]: row["trainer/global_step"] for row in history if "sanity/cascading/gradient/spearman_abs" in row}
    assert sorted(scalars) == [0, 1]
    for key in ["sanity/cascading/table/_type", "sanity/cascading/spearman_abs/curve_table/_type", "sanity/cascading/gradient/maps/_type"]:
        steps = [row["trainer/global_step"] for row in history if key in row]
        assert steps == [scalars[0], scalars[1]], key


def test_without_a_logger_the_values_reach_callback_metrics_quietly(digits, recwarn):
    """``--trainer.logger false``: nothing to log to, so no warning per key (168 lines in a 2-epoch
    fit with the README's callback), while a ModelCheckpoint or EarlyStopping can still monitor them."""
    warnings.simplefilter("always")
    check = ModelRandomizationCheck(methods=["gradient", "noise"], metrics=["spearman_abs", "ssim"], num_images=2)
    trainer = _fit(digits, [check], logger=False, epochs=1)
    assert check.last_results, "the check did not run"
    final = check.last_results[0].final()
    assert trainer.callback_metrics["sanity/cascading/gradient/ssim"].item() == pytest.approx(final["gradient", "ssim"])
    assert "sanity/cascading/noise/spearman_abs/03_conv3" in trainer.callback_metrics
    noisy = [str(w.message) for w in recwarn if "no logger configured" in str(w.message)]
    assert noisy == []


def test_a_reference_of_another_image_size_is_refused_before_training(digits, tmp_path):
    """The data check's reference must take the fit's images: a 16 px reference in an 8 px fit is
    refused at setup, naming both sizes, not after an epoch with a matrix-shape error."""
    other = ImageDataModule(source="digits", image_size=16, batch_size=64, seed=0)
    reference = _model(other)
    path = tmp_path / "permuted16.ckpt"
    torch.save({"state_dict": reference.state_dict(), "hyper_parameters": dict(reference.hparams)}, path)
    check = DataRandomizationCheck(reference_checkpoint=str(path), methods=["gradient"], metrics=["ssim"], num_images=2)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, callbacks=[check], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"image_size=16 \(expected 8\)"):
        trainer.fit(_model(digits), digits)
    assert trainer.global_step == 0, "the fit trained before refusing the reference"


def test_a_map_grid_is_one_image_per_column_holding_every_row(digits):
    """``log_images``' grid (Adebayo et al. 2018, fig. 2): each column shows the displayed maps of
    every image, top to bottom, in one axes; rows x columns axes took seconds per grid to draw."""
    from roar.sanity.map_figures import display_maps, map_grid_figure

    images = torch.stack([digits.split_dataset("val")[i][0] for i in range(3)])
    maps = [torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    fig = map_grid_figure(images, maps, ["original", "fc2"], title="cascading check, gradient, epoch 0")
    assert [ax.get_title() for ax in fig.axes] == ["input", "original", "fc2"]
    column = np.asarray(fig.axes[2].get_images()[0].get_array())
    shown = display_maps(maps[1])
    assert column.shape == (3 * 8 + 2, 8)  # three maps and a one-pixel white gap between them
    for row in range(3):
        np.testing.assert_allclose(column[row * 9 : row * 9 + 8], shown[row])
    assert (column[8] == 1.0).all() and (column[17] == 1.0).all()
