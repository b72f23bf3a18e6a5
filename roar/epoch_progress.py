"""One bar over the epochs of a training the user waits for: the benchmark's base model, the sanity models.

The grid's retrains each get one line when they finish (:mod:`roar.benchmark.progress`), but a
base model (ROAR ranks every image with it, Hooker et al., NeurIPS 2019) or the permuted-label
model of the data randomisation test (Adebayo et al., NeurIPS 2018) can train for minutes before
anything else is printed. Lightning's own bars (``--verbose``) show every batch of every epoch;
this shows where the training is: ``base model: 12/60 epoch [00:41<02:44, val acc 0.912]``.
In a terminal only, and gone when the training ends: the caller's line with the result stays.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from lightning.pytorch import Callback


class EpochProgress(Callback):
    """A transient tqdm bar (the library Lightning's bars use) advanced once per training epoch.

    Args:
        description: what is training, e.g. ``base model``.
        file: where the bar is drawn (default ``sys.stderr``); nothing is drawn unless it is a terminal.
    """

    def __init__(self, description: str, file: IO[str] | None = None) -> None:
        self.description = description
        self.file = file if file is not None else sys.stderr
        self._bar: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not (trainer.is_global_zero and self.file.isatty()) or trainer.max_epochs is None or trainer.max_epochs < 1:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_epochs, initial=trainer.current_epoch, desc=self.description, unit="epoch", leave=False,
            file=self.file, dynamic_ncols=True, mininterval=0, miniters=1,  # an epoch is seconds to hours: draw each one
        )  # fmt: skip

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._bar is None:
            return
        accuracy = trainer.callback_metrics.get("val/acc")  # validation of this epoch has run by now
        if accuracy is not None:
            self._bar.set_postfix_str(f"val acc {float(accuracy):.3f}", refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
