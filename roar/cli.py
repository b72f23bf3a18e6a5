"""The LightningCLI shared by ``train.py`` and ``python -m roar``.

One value is stated once: the datamodule knows the classes, channels, image size and channel
statistics of its data, and ``link_arguments`` hands them to the model when both are built.
"""

from __future__ import annotations

import os
import re
import traceback
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from roar.data.datamodule import ImageDataModule
from roar.fit_config import ConfigParser
from roar.models.classifier import ImageClassifier
from roar.quiet import drop_banners, ignore_known_warnings

LINKED_FROM_DATA = ("num_classes", "in_chans", "image_size", "channel_mean", "channel_std")


def _raised_in(err: BaseException, package: str) -> bool:
    """Whether ``err`` was raised by code of ``package`` (its innermost frame is in a folder of that name)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and package in Path(frames[-1].filename).parts


def _with_option(config: Any, message: str) -> str:
    """``unknown score 'sqaure' ...`` raised by a class nested in the config, led by the option that gave it.

    A class checks its own arguments (``StoreRanks(score=...)``) and cannot know it was built from
    ``--data.ranks.score``; the option is the config's one key of that name holding that value.
    """
    from roar.fit_config import plain

    bad = re.match(r"unknown (\w+) '([^']*)'", message)
    if not bad:
        return message
    name, value = bad.groups()

    def paths(node: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in paths(v, path + (k,))]
        return [path] if path and path[-1] == name and node == value else []

    found = paths(plain(config), ())
    if len(found) != 1:
        return message
    option = ".".join(k for k in found[0] if k not in ("init_args", "fit", "validate", "test", "predict"))
    return f"--{option}: {message}"


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
        # as python -m roar's parsers: a misspelled option is refused with the valid keys under a one-line
        # usage, never read as the option it abbreviates (argparse took --trainer.max_epoch for max_epochs)
        kwargs.setdefault("parser_class", ConfigParser)
        no_abbreviations = {"allow_abbrev": False}
        kwargs.setdefault("parser_kwargs", {**no_abbreviations, **{sub: no_abbreviations for sub in self.subcommands()}})
        ignore_known_warnings()  # third-party deprecations that say nothing about the user's run
        drop_banners()  # "GPU available: False", a litlogger ad: Lightning's own lines and the summary stay
        # W&B's banner (and its warnings about settings Lightning passes) in one line of ours, after the run;
        # WANDB_SILENT=false brings W&B's own output back.
        self._wandb_line_owed = "WANDB_SILENT" not in os.environ
        os.environ.setdefault("WANDB_SILENT", "true")
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

    # ------------------------------------------------------------------ checkpoints
    def _ckpt_path(self) -> str | None:
        sub = self.config.get("subcommand")
        return self.config[sub].get("ckpt_path") if sub else None

    def _parse_ckpt_path(self) -> None:
        """Lightning takes the model's hyperparameters from ``--ckpt_path``; refuse a checkpoint of another model.

        Without this, ``train.py test --config <small_cnn config> --ckpt_path <mlp.ckpt>`` would
        silently test the MLP under the small CNN's name.
        """
        from roar.models.checkpoint import CheckpointError, load_checkpoint

        path = self._ckpt_path()
        if path and path not in ("best", "last", "hpc", "registry") and not path.startswith("registry:") and "://" not in path and not Path(path).is_file():
            self.parser.error(f"--ckpt_path {path}: no such file (a checkpoint written by `python train.py fit`, or best/last)")
        if not path or not Path(path).is_file():
            return super()._parse_ckpt_path()
        try:
            hparams = dict(load_checkpoint(path).get("hyper_parameters") or {})  # the restricted unpickler, with our message
        except CheckpointError as err:
            self.parser.error(str(err))
        sub = self.config.subcommand
        wanted = self.config[sub].model.get("arch")
        if "arch" in hparams and wanted is not None and hparams["arch"] != wanted:
            self.parser.error(
                f"--ckpt_path {path} holds a {hparams['arch']!r} model but the config's model.arch is {wanted!r}; "
                f"pass --model.arch {hparams['arch']} (or the config of that model) to use this checkpoint"
            )
        super()._parse_ckpt_path()

    def _check_ckpt_fits_data(self) -> None:
        from roar.models.checkpoint import CheckpointError, load_checkpoint

        path = self._ckpt_path()
        if not path or not Path(path).is_file():
            return
        hparams = dict(load_checkpoint(path).get("hyper_parameters") or {})
        mismatches = [
            f"{name}={hparams[name]!r} (the data has {getattr(self.datamodule, name)!r})"
            for name in ("num_classes", "in_chans", "image_size")
            if name in hparams and hasattr(self.datamodule, name) and hparams[name] != getattr(self.datamodule, name)
        ]
        if mismatches:  # one line, as the other refusals of --ckpt_path, not a traceback from a Lightning hook
            self.parser.error(str(CheckpointError(f"--ckpt_path {path} does not fit this data: {', '.join(mismatches)}")))

    def _run_subcommand(self, subcommand: str) -> None:
        """A checkpoint loaded at the run's setup that does not fit (a callback's ``reference_checkpoint``,
        a retrain's base model), or ranks to compute on a CUDA device this machine lacks (``data.ranks.device
        cuda``, checked only when ranks are computed: stored ones need no GPU), is the user's to fix: one line,
        exit 2, as the other refusals, not a traceback."""
        from roar.attribution.device import DeviceUnavailableError
        from roar.models.checkpoint import CheckpointError

        try:
            super()._run_subcommand(subcommand)
        except (CheckpointError, DeviceUnavailableError) as err:
            self.parser.error(str(err))

    def before_fit(self) -> None:
        self._check_ckpt_fits_data()
        self._drop_unset_wandb_anonymous()
        self._log_seed()

    def _log_seed(self) -> None:
        """The run's seed beside its hyperparameters (hparams.yaml, the W&B run's config).

        Lightning logs the model's and the datamodule's arguments only, whose ``seed`` is the data
        split's: runs of ``--seed_everything 0..4`` all showed ``seed: 0`` on a dashboard. The loggers
        merge this with the hyperparameters Lightning logs when the fit starts.
        """
        seed = self._get(self.config, "seed_everything")
        for logger in self.trainer.loggers:
            logger.log_hyperparams({"seed_everything": seed})

    def before_test(self) -> None:
        # Restoring --ckpt_path into this run's new version folder, Lightning warns that the ModelCheckpoint's
        # dirpath changed and its best-k state "won't be reloaded": true, and nothing to a run that saves none.
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from", category=UserWarning)
        self.before_fit()

    before_validate = before_predict = before_test  # LightningCLI calls before_<subcommand>

    def _drop_unset_wandb_anonymous(self) -> None:
        """Lightning's ``WandbLogger`` passes ``anonymous=None`` to ``wandb.init``, which W&B >= 0.19 warns about.

        The setting does nothing in those versions; passing it only when the user set it ends the warning.
        """
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.trainer.loggers:
            init = getattr(logger, "_wandb_init", None) if isinstance(logger, WandbLogger) else None
            if init is not None and init.get("anonymous") is None:
                init.pop("anonymous", None)

    def before_instantiate_classes(self) -> None:
        """``--trainer.default_root_dir D`` holds everything of the run: loggers, hence checkpoints, go under D.

        The logger configs name a relative ``save_dir`` (``runs``) for the default case; Lightning
        users expect ``default_root_dir`` to move all of a run, so a relative ``save_dir`` is
        replaced by it (an absolute one was chosen on purpose and is kept).
        """
        sub = self.config.get("subcommand")
        config = self.config[sub] if sub else self.config
        self._check_names(config)
        self._drop_lr_monitor_without_logger(config)
        root = config.trainer.get("default_root_dir")
        if not root:
            return
        loggers = config.trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init_args = getattr(logger, "init_args", None)
            if init_args is None:
                continue
            save_dir = init_args.get("save_dir")
            if save_dir is None or not Path(str(save_dir)).is_absolute():
                init_args.save_dir = str(root)

    @staticmethod
    def _drop_lr_monitor_without_logger(config: Any) -> None:
        """``--trainer.logger false`` turns logging off, so the default trainer's ``LearningRateMonitor`` goes too.

        It has nothing to log to, and Lightning would stop the fit with a traceback saying so.
        """
        if config.trainer.get("logger") not in (False, []):  # None is Lightning's default logger
            return
        callbacks = config.trainer.get("callbacks") or []
        kept = [c for c in callbacks if str(getattr(c, "class_path", "")).rpartition(".")[2] != "LearningRateMonitor"]
        if len(kept) != len(callbacks):
            config.trainer.callbacks = kept

    def instantiate_classes(self) -> None:
        """A data root without its files or a size the model cannot take is the user's to fix: one line, exit 2.

        The datamodule and model check their arguments when built (``FileNotFoundError`` naming the
        files a source expects, ``ValueError`` naming the bad value); jsonargparse would wrap the
        datamodule's in a "Does not validate against any of the Union subtypes" traceback.
        ``python -m roar benchmark`` and ``sanity`` print these as ``error: ...`` already.
        """
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as err:
            cause: BaseException = err
            while cause.__cause__ is not None and _raised_in(cause, "jsonargparse"):  # it re-raises ours "from" it
                cause = cause.__cause__
            if not isinstance(cause, (ValueError, FileNotFoundError)):
                raise
            self.parser.error(_with_option(self.config, str(cause)))

    def _check_names(self, config: Any) -> None:
        """An unknown model or dataset source is a usage error (exit 2, the choices listed), before anything is built."""
        from roar.accelerator import gpu_accelerator_problem
        from roar.data.sources import SOURCES
        from roar.models.factory import check_arch

        try:
            check_arch(config.model.get("arch", "small_cnn"), config.model.get("arch_args"))
            data = config.get("data")
            source = data.get("init_args", {}).get("source") if data is not None and hasattr(data, "get") else None
            if source is not None and source not in SOURCES:
                raise ValueError(SOURCES.unknown(source))
            problem = gpu_accelerator_problem(config.get("trainer"))
            if problem:
                raise ValueError(problem)
        except ValueError as err:
            self.parser.error(str(err))

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit", True) and not self.trainer.interrupted and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
        self._say_where_wandb_wrote()

    def _say_where_wandb_wrote(self) -> None:
        """One line for W&B's silenced banner: where the run is, and how an offline one is uploaded."""
        from lightning.pytorch.loggers import WandbLogger

        if not self._wandb_line_owed:
            return
        for logger in self.trainer.loggers:
            run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
            if run is None or self.trainer.global_rank != 0:
                continue  # never started (fast_dev_run logs nothing), or another rank's
            if run.settings._offline:
                # relative only below the working directory: an --trainer.default_root_dir elsewhere
                # printed ../../../tmp/...
                folder = os.path.relpath(run.settings.sync_dir)
                folder = run.settings.sync_dir if folder.startswith(os.pardir) else folder
                print(f"W&B run saved offline in {folder}; upload it with: wandb sync {folder}", flush=True)
            else:
                print(f"W&B run: {run.url}", flush=True)

    after_validate = after_test = after_predict = _say_where_wandb_wrote
