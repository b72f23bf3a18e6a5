"""The model-parameter randomisation test of Adebayo et al. (NeurIPS 2018) as a Lightning callback.

Add it to any fit::

    trainer:
      callbacks:
        - class_path: callbacks.ModelRandomizationCheck
          init_args: {order: cascading, methods: [gradient, guided_backprop, noise]}

At the end of validation in every ``every_n_epochs``-th training epoch it explains a fixed batch of
validation images with the current model, then with copies of it whose layers are
re-initialised one group at a time (:func:`roar.sanity.randomization.randomization_steps`), and
logs the mean similarity of each randomised map to the original map. See
:mod:`roar.sanity.maps` for the protocol, and Binder et al. (arXiv 2211.12486, 2022) for why the
``noise`` control belongs beside the real methods: a low similarity is necessary but not
sufficient.

The model being trained is never touched: every map comes from a deep copy of its network, in
eval mode, so its weights, its train/eval mode, its gradients and the global random state of
the fit stay exactly as they were.

Under DDP only global rank 0 computes and logs; no collective call is made on the way, so the
other ranks simply go on. The fixed batch, the scheduling and the logging are the shared
:class:`callbacks.sanity_callback.SanityCheckCallback` (re-exported here, its old home).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from lightning.pytorch import LightningModule

from callbacks.sanity_callback import SanityCheckCallback, Target, output_dir
from roar.sanity.maps import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    CheckResult,
    check_orders,
    check_stack,
    explained_network,
    model_randomization,
)
from roar.sanity.layer_groups import describe_layers
from roar.sanity.settings import SanitySettings

Order = Literal["cascading", "independent", "bottom_up"]


class ModelRandomizationCheck(SanityCheckCallback):
    """Cascading, independent or bottom-up weight randomisation (Adebayo et al. 2018; Binder et al. 2022).

    Logs, through the trainer's loggers:

    - ``sanity/<order>/<method>/<metric>``: the mean similarity over the fixed images after the
      last randomisation step (every layer, for ``cascading`` and ``bottom_up``);
    - ``sanity/<order>/<method>/<metric>/<step:02d>_<layer>``: the same after each step, step 0
      (``original``) being the unrandomised copy;
    - once, the randomised layers (as hyperparameters ``sanity/<order>/layers`` and in
      ``sanity_layers_<order>.txt`` in the log folder);
    - with a :class:`~lightning.pytorch.loggers.WandbLogger`: a table and, per metric, a line plot
      of similarity against the randomised layer; with ``log_images``, the grid of maps per
      step (W&B image, or a PNG in ``<log folder>/sanity/``).

    Args:
        methods: attribution method names, or definitions as in a benchmark config
            (``{name: deeplift, class_path: captum.attr.DeepLift}``); keep ``noise`` as the control.
        order: ``cascading`` (logits to input, cumulative), ``independent`` (one layer at a time)
            or ``bottom_up`` (input to logits, cumulative).
        metrics: similarity metric names.
        num_images: size of the fixed batch of validation images.
        every_n_epochs: run at the end of validation in training epochs n, 2n, ... (see
            :class:`~callbacks.sanity_callback.SanityCheckCallback`).
        log_images: also log the grid of maps per step.
        method_params: optional ``{method: {param: value}}``.
        seed: seeds the images, the re-initialisation and the random methods.
        target: ``predicted`` (the current model's class, fixed across steps) or ``label``.
        batchnorm: ``reset`` (running statistics too, the default) or ``keep_stats`` (Adebayo et
            al.'s code); see :mod:`roar.sanity.settings`.
        normalization: ``minmax`` (default) or ``percentile`` (99th-percentile clip) before SSIM/HOG.
        reduction: ``sum_abs`` (sum of ``|a|`` over channels, default) or ``abs_sum`` (``|sum a|``).
        stack: randomised models explained per batched call (``auto``: 8 for a small model on CUDA, else 1).
        share: with one model per call, explain the gradient family for every step at once, the
            layers the steps share computed once (:mod:`roar.sanity.shared_forward`); ``False``:
            model by model. The maps are the same within float tolerance.
    """

    def __init__(
        self,
        methods: Sequence[str | Mapping[str, Any]] = DEFAULT_METHODS,
        order: Order = "cascading",
        metrics: Sequence[str] = DEFAULT_METRICS,
        num_images: int = 16,
        every_n_epochs: int = 1,
        log_images: bool = False,
        method_params: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
        target: Target = "predicted",
        batchnorm: Literal["reset", "keep_stats"] = "reset",
        normalization: Literal["minmax", "percentile"] = "minmax",
        reduction: Literal["sum_abs", "abs_sum"] = "sum_abs",
        stack: int | Literal["auto"] = "auto",
        share: bool = True,
    ) -> None:
        super().__init__(methods, metrics, num_images, every_n_epochs, log_images, method_params, seed, target)
        self.settings = SanitySettings(batchnorm, normalization, reduction)
        self.stack = check_stack(stack)
        if not isinstance(share, bool):
            raise ValueError(f"share must be true or false, got {share!r}")
        self.share = share
        self.order = check_orders(order)[0] if isinstance(order, str) else None
        if self.order is None:
            raise ValueError(f"order must be one string, got {order!r}; add one callback per order")

    @property
    def state_key(self) -> str:
        # Several instances (one per order) may sit in one trainer.
        return self._generate_state_key(order=self.order, methods=tuple(self.methods))

    def file_tag(self) -> str:
        return self.order

    def compute(self, trainer, pl_module, images, target, indices) -> list[CheckResult]:
        return [
            model_randomization(
                pl_module,
                images,
                self.order,
                self.methods,
                self.metrics,
                target=target,
                indices=indices,
                method_params=self.method_params,
                seed=self.seed,
                keep_maps=self.log_images,
                settings=self.settings,
                stack=self.stack,
                share=self.share,
            )
        ]

    def layers_to_log(self, pl_module: LightningModule, results: list[CheckResult]) -> dict[str, list[str]]:
        """The layer groups in the order they are randomised, with their types and sizes."""
        described = {line.split(":", 1)[0]: line for line in describe_layers(explained_network(pl_module))}
        return {f"sanity/{self.order}/layers": [described.get(layer, layer) for layer in results[0].layers[1:]]}


__all__ = ["ModelRandomizationCheck", "SanityCheckCallback", "output_dir"]
