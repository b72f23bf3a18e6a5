"""Callbacks that a user could put in a benchmark config's ``trainer.callbacks`` (and a network for
its ``model.arch``); the tests use them to make chosen runs die or fail, from the outside, as a
crash or a bug in user code would."""

import os
from pathlib import Path

from lightning.pytorch import Callback
from torch import nn


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


class DiesOutsideOnce(nn.Module):
    """A tiny CNN (``model.arch: plugins.DiesOutsideOnce``) whose construction makes a process other
    than ``driver_pid`` exit abruptly, once: the first to create ``marker_dir/killed-model`` dies
    (a stacked retrain refuses trainer callbacks, so the kill sits in the network it builds)."""

    def __init__(self, num_classes: int, in_chans: int, driver_pid: int, marker_dir: str) -> None:
        super().__init__()
        if os.getpid() != driver_pid:
            try:
                os.close(os.open(Path(marker_dir) / "killed-model", os.O_CREAT | os.O_EXCL))
            except FileExistsError:  # another process died already
                pass
            else:
                os._exit(137)
        self.net = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.net(x)
