"""The data randomisation test of Adebayo et al. (NeurIPS 2018) as a Lightning callback.

A model trained on randomly permuted labels can only memorise; if a saliency method gives it the
same maps as the model being trained on the true labels, the maps do not reflect what the model
learned from the labels. Train the reference once::

    python train.py fit --config configs/digits.yaml --data.init_args.label_permutation true \\
        --data.init_args.augment none --trainer.max_epochs 60

(a small CNN on 16 px digits memorises the permuted training labels in about 40 of those 60
epochs, with test accuracy at chance), then add to any fit::

    trainer:
      callbacks:
        - class_path: callbacks.DataRandomizationCheck
          init_args: {reference_checkpoint: runs/roar/version_0/checkpoints/last.ckpt}

It logs ``sanity/data/<method>/<metric>``: the mean similarity between the current model's maps
and the reference's maps of a fixed batch of validation images, both explaining the current
model's predicted class. A low similarity is necessary, not sufficient: the ``noise`` control
scores low too (Binder et al., arXiv 2211.12486, 2022).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from torch import nn

from callbacks.sanity_callback import SanityCheckCallback, Target
from roar.models.checkpoint import load_classifier
from roar.sanity.maps import DATA_CHECK, DEFAULT_METHODS, DEFAULT_METRICS, CheckResult, data_randomization
from roar.sanity.settings import SanitySettings


class DataRandomizationCheck(SanityCheckCallback):
    """Compare the maps of the model being trained with those of a permuted-label reference model.

    Args:
        reference_checkpoint: checkpoint of an :class:`~roar.models.classifier.ImageClassifier`
            trained on permuted labels (``--data.init_args.label_permutation true``), with the
            same architecture, classes and input size.
        methods: attribution method names, or definitions as in a benchmark config
            (``{name: deeplift, class_path: captum.attr.DeepLift}``); keep ``noise`` as the control.
        metrics: similarity metric names.
        num_images: size of the fixed batch of validation images.
        every_n_epochs: run at the end of validation in training epochs n, 2n, ... (see
            :class:`~callbacks.sanity_callback.SanityCheckCallback`).
        log_images: also log, per method, the grid input | current model's map | reference's map.
        method_params: optional ``{method: {param: value}}``.
        seed: seeds the images and the random methods.
        target: ``predicted`` (the current model's class, for both models) or ``label``.
        normalization: ``minmax`` (default) or ``percentile`` (99th-percentile clip) before SSIM/HOG,
            as ``python -m roar sanity``'s data check.
        reduction: ``sum_abs`` (sum of ``|a|`` over channels, default) or ``abs_sum`` (``|sum a|``).

    Raises:
        FileNotFoundError: if ``reference_checkpoint`` does not exist (checked at construction,
            before any training).
        roar.models.checkpoint.CheckpointError: (a ``ValueError``) at the fit's setup, before any
            training, if the reference's class count, channel count or image size differs from
            the model's.
    """

    def __init__(
        self,
        reference_checkpoint: str,
        methods: Sequence[str | Mapping[str, Any]] = DEFAULT_METHODS,
        metrics: Sequence[str] = DEFAULT_METRICS,
        num_images: int = 16,
        every_n_epochs: int = 1,
        log_images: bool = False,
        method_params: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        target: Target = "predicted",
        normalization: Literal["minmax", "percentile"] = "minmax",
        reduction: Literal["sum_abs", "abs_sum"] = "sum_abs",
    ) -> None:
        super().__init__(methods, metrics, num_images, every_n_epochs, log_images, method_params, seed, target)
        # no weights are re-initialised here, so batchnorm has nothing to choose
        self.settings = SanitySettings(normalization=normalization, reduction=reduction)
        path = Path(reference_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"reference_checkpoint not found: {str(path)!r}; train one on permuted labels with "
                "`python train.py fit --config configs/digits.yaml --data.init_args.label_permutation true`"
            )
        self.reference_checkpoint = path
        self._reference: nn.Module | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(reference=str(self.reference_checkpoint), methods=tuple(self.methods))

    def file_tag(self) -> str:
        return DATA_CHECK

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Load the reference before any training, refusing one the model's images do not fit.

        A reference of another image size, channel or class count failed only at the first
        validation epoch's end, after a whole epoch of training, with a shape error from inside
        its network.
        """
        super().setup(trainer, pl_module, stage)
        hparams = getattr(pl_module, "hparams", {})
        self._load_reference({k: hparams.get(k) for k in ("num_classes", "in_chans", "image_size")})

    def _load_reference(self, expected: Mapping[str, Any]) -> nn.Module:
        if self._reference is None:
            # The restricted unpickler: a checkpoint from elsewhere cannot run code (roar.models.checkpoint).
            self._reference = load_classifier(self.reference_checkpoint, **expected)
            # Nothing ever trains it; no parameter needs a gradient buffer.
            self._reference.requires_grad_(False)
        return self._reference

    def reference(self, device) -> nn.Module:
        """The permuted-label model, loaded once, in eval mode, on ``device``."""
        return self._load_reference({}).to(device)

    def compute(self, trainer: Trainer, pl_module: LightningModule, images, target, indices) -> list[CheckResult]:
        return [
            data_randomization(
                pl_module,
                self.reference(pl_module.device),
                images,
                self.methods,
                self.metrics,
                target=target,
                indices=indices,
                method_params=self.method_params,
                seed=self.seed,
                keep_maps=self.log_images,
                settings=self.settings,
            )
        ]

    def layers_to_log(self, pl_module: LightningModule, results: list[CheckResult]) -> dict[str, list[str]]:
        return {"sanity/data/reference": [str(self.reference_checkpoint)]}

    def grid_titles(self, result: CheckResult) -> list[str]:
        return ["true labels", "permuted labels"]
