"""One bar over the epochs of a long training (base model, sanity models), in a terminal only."""

import io

import lightning as L

from roar.data.datamodule import ImageDataModule
from roar.epoch_progress import EpochProgress
from roar.models.classifier import ImageClassifier


class Terminal(io.StringIO):
    """What a terminal receives: tqdm draws only where ``isatty()`` is true."""

    def isatty(self) -> bool:
        return True


def _fit(progress: EpochProgress, epochs: int = 3) -> None:
    dm = ImageDataModule(source="digits", image_size=8, limit_train=128, limit_test=32)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[progress])  # fmt: skip
    trainer.fit(model, datamodule=dm)


def test_the_bar_counts_the_epochs_and_shows_the_validation_accuracy():
    terminal = Terminal()
    _fit(EpochProgress("base model", file=terminal))
    drawn = terminal.getvalue()
    assert "base model" in drawn and "3/3" in drawn and "2/3" in drawn and "val acc 0." in drawn
    assert drawn.endswith("\r") and drawn.split("\r")[-2].strip() == "", "the bar is wiped at the end: the caller's result line follows"


def test_nothing_is_drawn_in_a_log_file():
    log = io.StringIO()
    _fit(EpochProgress("base model", file=log), epochs=1)
    assert log.getvalue() == ""
