"""Callbacks that a user could put in a benchmark config's ``trainer.callbacks``; the tests use them
to make chosen runs die or fail, from the outside, as a crash or a bug in user code would."""

import os
from pathlib import Path

from lightning.pytorch import Callback


def _run_folder(trainer) -> str:
    # <out>/runs/<mode>/<method>/t<threshold>-s<seed>: the benchmark's run folders
    return Path(trainer.default_root_dir).as_posix()


class KillOnce(Callback):
    """The process running the run whose folder ends with ``run`` exits abruptly (like SIGKILL), once:
    a marker file in ``marker_dir`` remembers it, so the retried run lives."""

    def __init__(self, run: str, marker_dir: str) -> None:
        self.run, self.marker = run, Path(marker_dir) / f"killed-{run.replace('/', '_')}"

    def on_fit_end(self, trainer, pl_module) -> None:
        if _run_folder(trainer).endswith(self.run) and not self.marker.exists():
            self.marker.touch()
            os._exit(137)  # no cleanup, no exception, no result


class FailWhen(Callback):
    """Raise in every run whose folder contains ``part`` (a bug in a user's callback, say)."""

    def __init__(self, part: str) -> None:
        self.part = part

    def on_train_start(self, trainer, pl_module) -> None:
        if self.part in _run_folder(trainer):
            raise RuntimeError(f"planted failure in {_run_folder(trainer)}")


class CountFits(Callback):
    """Appends one line per fit to ``log``: counts the trainings a benchmark really ran."""

    def __init__(self, log: str) -> None:
        self.path = Path(log)

    def on_fit_start(self, trainer, pl_module) -> None:
        with self.path.open("a") as fh:
            fh.write(_run_folder(trainer) + "\n")
