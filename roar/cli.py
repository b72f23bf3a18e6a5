"""The LightningCLI shared by ``train.py`` and ``python -m roar``.

One value is stated once: the datamodule knows the classes, channels, image size and channel
statistics of its data, and ``link_arguments`` hands them to the model when both are built.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier

LINKED_FROM_DATA = ("num_classes", "in_chans", "image_size", "channel_mean", "channel_std")


class RoarCLI(LightningCLI):
    """LightningCLI with the data -> model links and a config that may be re-saved.

    ``--data`` takes any :class:`ImageDataModule` subclass (``class_path``), so a ROAR retrain
    is the same command with ``roar.data.RoarDataModule``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("model_class", ImageClassifier)
        kwargs.setdefault("datamodule_class", ImageDataModule)
        kwargs.setdefault("subclass_mode_data", True)
        # A re-run into the same folder must not fail on the config it saved last time.
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After `fit`, test the final weights on the test split (scored at the last epoch, never the best one).",
        )

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit", True) and not self.trainer.interrupted and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
