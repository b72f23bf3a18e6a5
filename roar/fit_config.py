"""The sections of a ``train.py fit`` config, for every command that trains: one config system.

A benchmark config (``python -m roar benchmark``) and a sanity config (``python -m roar sanity``)
are ``train.py fit`` configs, with the same ``data:``, ``model:`` and ``trainer:`` sections typed as
LightningCLI types them, plus the command's own section (``benchmark:``, ``sanity:``). So a fit
config composes with either::

    python -m roar sanity --config configs/digits.yaml --config configs/sanity/digits.yaml

A misspelled key anywhere is refused at parse time, with the valid keys listed (roar.parse_errors).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Union

from jsonargparse import ActionConfigFile, Namespace
from lightning.pytorch.cli import LightningArgumentParser

from roar.parse_errors import one_line_error


def plain(value: Any) -> Any:
    """Plain data from what the parser hands over: Namespaces become dicts, jsonargparse's ``__path__`` notes go."""
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k != "__path__"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


FIT_SECTIONS = ("data", "model", "trainer")
LINKED_FROM_DATA = ("num_classes", "in_chans", "image_size", "channel_mean", "channel_std")


class ConfigParser(LightningArgumentParser):
    """A LightningArgumentParser whose "not accepted" errors list the keys that are."""

    def error(self, message: str, *args: Any, **kwargs: Any):  # type: ignore[override]
        return super().error(one_line_error(self, message), *args, **kwargs)

    subcommand_parsers: dict[str, ConfigParser]
    """``train.py``'s ``fit``, ``test``... parsers by name (empty for a parser without subcommands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommand_parsers = {}

    def add_subcommands(self, *args: Any, **kwargs: Any) -> Any:
        action = super().add_subcommands(*args, **kwargs)
        self.subcommand_parsers = action.choices  # argparse's name -> parser map, filled as subcommands are added
        return action

    def print_usage(self, file: Any = None) -> None:
        """One usage line above an error: the full synopsis (30 lines of options) buried the one line
        naming the bad value; ``--help`` still prints it, with the options' descriptions."""
        self._print_message(f"usage: {self.prog} [options]\n", file)


def add_fit_sections(parser: ConfigParser) -> None:
    """The sections of a ``train.py fit`` config, typed as LightningCLI types them."""
    from lightning.pytorch import LightningDataModule, Trainer

    from roar.models.classifier import ImageClassifier

    parser.add_argument("--config", action=ActionConfigFile, help="a config file; several compose in order (a fit config, then a grid)")
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True,
                        help="accepted so that fit configs compose; unused: every training is seeded by the command's own settings (benchmark.base.seed and benchmark.seeds; sanity.seed)")  # fmt: skip
    parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="accepted so that fit configs compose; unused: a trained model is given as benchmark.base.checkpoint, sanity.checkpoint or attribute's --ckpt")
    parser.add_argument("--test_after_fit", type=bool, default=True, help="accepted so that fit configs compose; unused: every trained model is tested")
    parser.add_subclass_arguments(LightningDataModule, "data", required=False,
                                  help="roar.data.ImageDataModule or any LightningDataModule whose datasets yield (image, label)")  # fmt: skip
    parser.add_class_arguments(ImageClassifier, "model", skip=set(LINKED_FROM_DATA))
    parser.add_lightning_class_args(Trainer, "trainer")


def _changed(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The settings a config gave (left-out ones keep their defaults downstream, and out of fingerprints)."""
    return {k: v for k, v in values.items() if k not in defaults or defaults[k] != v}


def fit_sections(parser: ConfigParser, args: Namespace) -> dict[str, dict[str, Any]]:
    """``data``, ``model``, ``trainer`` of parsed args as plain dicts holding what the config set."""
    from roar.accelerator import gpu_accelerator_problem

    problem = gpu_accelerator_problem(plain(args.trainer))
    if problem:
        parser.error(problem)  # before any data is read or model trained
    defaults = plain(parser.get_defaults())
    data = plain(args.get("data")) or {}
    if data.get("class_path"):
        from roar.registry import import_object

        cls = import_object(data["class_path"], "data class_path")
        signature = inspect.signature(cls.__init__).parameters
        init = {k: v for k, v in (data.get("init_args") or {}).items() if k not in signature or signature[k].default != v}
        data = {"class_path": data["class_path"], "init_args": init}
    return {
        "data": data,
        "model": _changed(plain(args.model), defaults["model"]),
        "trainer": _changed(plain(args.trainer), defaults["trainer"]),
    }


__all__ = ["FIT_SECTIONS", "LINKED_FROM_DATA", "ConfigParser", "add_fit_sections", "fit_sections", "plain"]
