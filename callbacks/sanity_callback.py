"""What every sanity-check callback shares: its Lightning glue (Adebayo et al., NeurIPS 2018).

:class:`SanityCheckCallback` holds the arguments both checks take, the fixed, seeded batch of
validation images every run explains, the scheduling (every n-th validation epoch, never during
Lightning's sanity check) and the logging of a check's results: scalars, W&B tables and curves,
grids of maps, and :func:`output_dir`, where files go. The checks themselves subclass it:
:class:`callbacks.ModelRandomizationCheck` and :class:`callbacks.DataRandomizationCheck`.

Under DDP only global rank 0 computes and logs; no collective call is made on the way, so the
other ranks simply go on.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from roar.attribution.registry import normalize_methods
from roar.sanity.maps import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    CheckResult,
    check_methods,
    check_metrics,
    check_target,
    figure_array,
    map_grid_figure,
    select_batch,
)

Target = Literal["predicted", "label"]

def _is_wandb(logger: Logger) -> bool:
    return isinstance(logger, WandbLogger)


def logged_step(trainer: Trainer) -> int:
    """The step Lightning gives the values a hook logs with ``self.log`` at a validation epoch's end.

    Lightning logs them at the fit loop's count of batches stepped, which during a fit's validation
    does not yet count the epoch's last batch (one less than ``trainer.global_step`` there); tables,
    curves and images logged at ``trainer.global_step`` sat one step right of their epoch's scalars
    on W&B's ``trainer/global_step`` axis. Lightning keeps the count in a private attribute: should
    a release rename it, the media fall back to ``global_step`` (one step off) rather than fail.
    """
    return getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step)


def output_dir(trainer: Trainer) -> Path:
    """Where files go: the first non-W&B logger's ``log_dir`` (else its ``save_dir``); with only
    W&B loggers, the W&B run's files folder (uploaded with the run); else the trainer's
    ``default_root_dir``. (With no logger at all the callbacks write nothing.)

    ``trainer.log_dir`` is not used because it broadcasts from rank 0, a collective call that
    would hang when only rank 0 runs this.
    """
    for logger in trainer.loggers:
        if not _is_wandb(logger):
            folder = getattr(logger, "log_dir", None) or logger.save_dir
            if folder:
                return Path(folder)
    for logger in trainer.loggers:
        if _is_wandb(logger):
            return Path(logger.experiment.dir)
    return Path(trainer.default_root_dir)


class SanityCheckCallback(Callback):
    """What both sanity-check callbacks share: arguments, the fixed batch, scheduling, logging.

    Subclasses implement :meth:`compute`, and may override :meth:`layers_to_log`,
    :meth:`grid_titles` and :meth:`file_tag`. With no logger attached (``logger=False``) nothing
    is logged or written; the latest results stay in :attr:`last_results` (on rank 0).

    Args:
        methods: attribution method names, or definitions as in a benchmark config
            (``{name: deeplift, class_path: captum.attr.DeepLift}``); ``noise`` is the control of Binder et al. 2022.
        metrics: similarity metric names (``spearman``, ``spearman_abs``, ``ssim``, ``hog``).
        num_images: how many validation images form the fixed batch.
        every_n_epochs: run at the end of validation in training epochs n, 2n, ... (1: every epoch).
            Counted in training epochs: with ``check_val_every_n_epoch`` it runs only in epochs both
            select, and under ``val_check_interval < 1`` at each validation of such an epoch.
        log_images: also log a grid of maps (``log_image`` on W&B; a PNG under the log folder
            for other loggers).
        method_params: optional ``{method: {param: value}}``.
        seed: seeds the choice of images, the re-initialisation and the random methods.
        target: ``predicted`` (default): explain the current model's predicted class, kept
            fixed for every compared model; ``label``: the true label.
    """

    def __init__(
        self,
        methods: Sequence[str | Mapping[str, Any]] = DEFAULT_METHODS,
        metrics: Sequence[str] = DEFAULT_METRICS,
        num_images: int = 16,
        every_n_epochs: int = 1,
        log_images: bool = False,
        method_params: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        target: Target = "predicted",
    ) -> None:
        super().__init__()
        methods, method_params = normalize_methods(list(methods) if not isinstance(methods, str) else methods, method_params)
        self.methods = check_methods(methods, method_params)
        self.metrics = check_metrics(metrics)
        for name, value in (("num_images", num_images), ("every_n_epochs", every_n_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.log_images = bool(log_images)
        self.method_params = {k: dict(v or {}) for k, v in (method_params or {}).items()}
        self.seed = seed
        self.target = check_target(target)
        self._batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._layers_logged = False
        self.last_results: list[CheckResult] = []
        """The results of the latest run (on rank 0), for programmatic use."""

    # ------------------------------------------------------------------ to implement
    def compute(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        images: torch.Tensor,
        target: torch.Tensor | None,
        indices: torch.Tensor,
    ) -> list[CheckResult]:
        """Run the check on the fixed batch; ``target`` None means the current model's predictions."""
        raise NotImplementedError

    def layers_to_log(self, pl_module: LightningModule, results: list[CheckResult]) -> dict[str, list[str]]:
        """``{name: lines}`` logged once, at the first run, as hyperparameters and a text file."""
        return {}

    # ------------------------------------------------------------------ the fixed batch
    def fixed_batch(self, trainer: Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The validation images every run explains: chosen once (seeded), then reused.

        Taken from the datamodule's un-augmented validation split (``split_dataset("val")``)
        where there is one, else from the dataset of the first validation loader: the same
        images on every rank and at every epoch, whatever the sampler.
        """
        if self._batch is None:
            datamodule = trainer.datamodule
            if datamodule is not None and callable(getattr(datamodule, "split_dataset", None)):
                dataset = datamodule.split_dataset("val")
            else:
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                if loader is None:
                    raise ValueError(f"{type(self).__name__} needs validation data (a val_dataloader)")
                dataset = loader.dataset
            self._batch = select_batch(dataset, self.num_images, self.seed)
        return tuple(t.to(device) for t in self._batch)  # type: ignore[return-value]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Lightning recommends sync_dist=True for every epoch-level value under DDP; these are
        # computed on rank 0 only, so there is nothing to reduce (and a reduction would hang).
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('sanity/", category=PossibleUserWarning)

    # ------------------------------------------------------------------ scheduling
    def should_run(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Rank 0 only, and nothing in here talks to the other ranks (no broadcast, no barrier,
        # no sync_dist), so they cannot wait on each other.
        if not trainer.is_global_zero or not self.should_run(trainer):
            return
        with torch.inference_mode(False), torch.enable_grad():
            images, labels, indices = self.fixed_batch(trainer, pl_module.device)
            # None: each check takes the predicted class of its own copy of the current model.
            target = labels if self.target == "label" else None
            results = self.compute(trainer, pl_module, images, target, indices)
        self.last_results = results
        if not self._layers_logged:
            self._log_hyperparams(trainer, self.layers_to_log(pl_module, results))
            self._layers_logged = True
        for result in results:
            self.log_result(trainer, pl_module, result, images)

    # ------------------------------------------------------------------ logging
    def scalar_metrics(self, result: CheckResult) -> dict[str, float]:
        """``sanity/<check>/<method>/<metric>`` (last step) and, with more than one step,
        ``.../<step:02d>_<layer>`` for every step."""
        last = max(r.step for r in result.records)
        values = {}
        for record in result.records:
            key = f"sanity/{result.check}/{record.method}/{record.metric}"
            if record.step == last:
                values[key] = record.mean
            if len(result.layers) > 1:
                values[f"{key}/{record.step:02d}_{record.layer}"] = record.mean
        return values

    def log_result(self, trainer: Trainer, pl_module: LightningModule, result: CheckResult, images: torch.Tensor) -> None:
        # Without a logger the values still reach callback_metrics (a ModelCheckpoint may monitor
        # one); logger=True there printed Lightning's "no logger configured" warning once per key.
        to_logger = bool(trainer.loggers)
        for key, value in self.scalar_metrics(result).items():
            # rank_zero_only: only rank 0 gets here, and the value must not be reduced across ranks.
            pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True, logger=to_logger)
        for logger in trainer.loggers:
            if _is_wandb(logger):
                self._log_wandb_curves(logger, trainer, result)
        if self.log_images and result.maps is not None and trainer.loggers:
            self._log_grids(trainer, result, images)

    def _log_hyperparams(self, trainer: Trainer, params: dict[str, Any]) -> None:
        if not params or not trainer.loggers:
            return
        for logger in trainer.loggers:
            logger.log_hyperparams(params)
        folder = output_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"{key}:\n" + "".join(f"  {line}\n" for line in value) for key, value in params.items()]
        (folder / f"sanity_layers_{self.file_tag()}.txt").write_text("".join(lines))

    def file_tag(self) -> str:
        """Names this check's files (``sanity_layers_<tag>.txt``)."""
        return type(self).__name__

    def _log_wandb_curves(self, logger: WandbLogger, trainer: Trainer, result: CheckResult) -> None:
        """A table of every similarity and, per metric, a line plot against the randomised layer."""
        columns = ["step", "layer", "method", "metric", "similarity"]
        rows = [[r.step, r.layer, r.method, r.metric, r.mean] for r in result.records]
        logger.log_table(key=f"sanity/{result.check}/table", columns=columns, data=rows, step=logged_step(trainer))
        import wandb  # only here: W&B is attached, so it is installed

        charts = {}
        for metric in self.metrics:
            data = [[r.step, r.layer, r.method, r.mean] for r in result.records if r.metric == metric]
            table = wandb.Table(columns=["step", "layer", "method", "similarity"], data=data)
            title = f"{result.check}: {metric} vs randomised layer ({', '.join(result.layers)})"
            if len(result.layers) > 1:
                charts[f"sanity/{result.check}/{metric}/curve"] = wandb.plot.line(table, "step", "similarity", stroke="method", title=title)
            else:
                charts[f"sanity/{result.check}/{metric}/bar"] = wandb.plot.bar(table, "method", "similarity", title=f"{result.check}: {metric}")
        logger.log_metrics(charts, step=logged_step(trainer))

    def grid_titles(self, result: CheckResult) -> list[str]:
        return list(result.layers)

    def _log_grids(self, trainer: Trainer, result: CheckResult, images: torch.Tensor) -> None:
        epoch = trainer.current_epoch
        wandb_loggers = [lg for lg in trainer.loggers if _is_wandb(lg)]
        other = len(wandb_loggers) < len(trainer.loggers)
        for method, maps in (result.maps or {}).items():
            title = f"{result.check} check, {method}, epoch {epoch}"
            fig = map_grid_figure(images, maps, self.grid_titles(result), title=title)
            for logger in wandb_loggers:
                logger.log_image(key=f"sanity/{result.check}/{method}/maps", images=[figure_array(fig)], step=logged_step(trainer), caption=[title])
            if other:
                folder = output_dir(trainer) / "sanity"
                folder.mkdir(parents=True, exist_ok=True)
                fig.savefig(folder / f"{result.check}_{method}_epoch{epoch:03d}.png", dpi=100)


__all__ = ["SanityCheckCallback", "Target", "output_dir"]
