"""Quiet output: what a grid of hundreds of trainings prints is ours, not Lightning's.

A ROAR grid (Hooker et al., NeurIPS 2019) retrains the same model hundreds of times; every
``Trainer`` greets the user with the same banners ("GPU available", TPU lines, a litlogger tip,
"`weights_only` was not set") and a few third-party deprecation warnings. One run's banner is
useful; a grid's hundred copies bury the results. :func:`quiet_third_party` silences exactly
those for the runs inside it; ``--verbose`` leaves them on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
"""Lightning's info-level banners (device lines, tips, "`weights_only` was not set") log here."""

KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch 2.10 deprecated LeafSpec; Lightning's _pytree still uses it (not ours to fix)
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # an epoch shorter than log_every_n_steps (a first look on data.limit_train): harmless, and said every run
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning),
)
"""Third-party warnings that say nothing about the user's run (message regex, category)."""

BANNER_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)
"""Where Lightning logs the banners of :data:`BANNERS` (and useful lines, which stay)."""

BANNERS = re.compile(
    r"^(\[rank: \d+\] )?(GPU available|TPU available|HPU available|💡 Tip|Loading `train_dataloader`|Seed set to)"
    r"|`weights_only` was not set"
)
"""Lightning's greetings that say nothing about a run: the devices it did not use, an ad, a default
(under DDP with the ``[rank: N]`` prefix of the process that says it)."""

WIDE_LOG_COLUMNS = 200
"""Width of rich tables written to a file or a pipe (rich's default there is 80, which wraps method names)."""


def silence_third_party() -> None:
    """Silence the known banners and warnings for the rest of this process (a worker's, or the CLI's)."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    ignore_known_warnings()


def ignore_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` for the rest of this process (``train.py`` also :func:`drop_banners`)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not BANNERS.search(record.getMessage())


_DROP_BANNERS = _DropBanners()


def drop_banners() -> None:
    """Drop :data:`BANNERS` for the rest of this process and keep Lightning's other lines.

    For ``train.py``: one fit's info lines ("Restoring states from the checkpoint", "`Trainer.fit`
    stopped") and its model summary are the user's, the greetings are not. Idempotent.
    """
    for name in BANNER_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_BANNERS not in logger.filters:
            logger.addFilter(_DROP_BANNERS)


@contextlib.contextmanager
def quiet_third_party(verbose: bool = False) -> Iterator[None]:
    """Within the block: Lightning's info banners off and :data:`KNOWN_WARNINGS` ignored (unless ``verbose``).

    Log levels and warning filters are restored on exit, so a library caller keeps its own settings.
    """
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    with warnings.catch_warnings():
        silence_third_party()
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def wide_tables_in_logs() -> None:
    """Let rich tables printed to a file or pipe be as wide as their content (up to :data:`WIDE_LOG_COLUMNS`).

    rich reads ``COLUMNS`` when its console is not a terminal; a width the user set is kept.
    """
    if not sys.stdout.isatty():
        os.environ.setdefault("COLUMNS", str(WIDE_LOG_COLUMNS))


def error_line(err: BaseException) -> str:
    """An error's own message, without the worker traceback torch's DataLoader wraps around it.

    An error in a loader worker (``num_workers > 0``, e.g. an unreadable image of an ImageNet
    folder) comes back as ``Caught ValueError in DataLoader worker process 0.`` plus the worker's
    whole traceback as the message; its last line is the error the user must act on.
    """
    message = str(err)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        prefix = f"{type(err).__name__}: "
        return f"{last.removeprefix(prefix)} (in a DataLoader worker)"
    return message


def say(line: str) -> None:
    """One line for the user, above the grid's progress bar when there is one (``tqdm.write``)."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()
