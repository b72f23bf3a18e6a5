"""One W&B run per retrain, at little cost: one ``wandb-core`` service per grid, lean run settings.

A ROAR/KAR grid (Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural
Networks", NeurIPS 2019) is hundreds of short retrains, each logged as its own W&B run (grouped
by ``group=<benchmark name>``, ``job_type=<mode>``). What W&B does for a run besides logging its
metrics is paid hundreds of times, so a grid

* starts the W&B service once (:func:`wandb_service`, ``wandb.setup()``) before the base model,
  and tears it down after the report: every retrain's run and the summary run go through it, and
  the ``--workers`` processes, spawned with its token in their environment, connect to it instead
  of each starting their own;
* starts each retrain's run with :func:`retrain_settings`: no ``requirements.txt`` (a ``pip
  freeze`` of the environment per run: most of a run's start-up, measured by figure 10 of
  ``benchmarks/``), no system-metrics sampling, console capture, code saving or git probing. The
  run's config, metrics, summary, name, group and job type are the same, and offline runs sync
  with ``wandb sync`` as before; the grid's summary run keeps W&B's defaults, so the environment
  is still recorded once per grid.

A run of the grid logged again (a retried failure, a rerun after its fingerprint changed,
``--force``) leaves its earlier W&B run in ``<out>/wandb``, where ``wandb sync
<out>/wandb/offline-run-*`` would upload it beside the new one under the same name: a dashboard
charting results that ``results.db`` no longer holds. The W&B run of each run folder's latest
attempt is remembered (:func:`remember_run`, under ``<out>/wandb/attempts/``), and the next attempt
moves it to ``<out>/wandb/replaced/`` (:func:`retire_run`): kept on disk, out of the sync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.loggers import WandbLogger

RETRAIN_SETTINGS: dict[str, Any] = {
    "x_save_requirements": False,  # the environment's package list: the summary run records it once
    "x_disable_stats": True,  # CPU/GPU/memory sampling threads: a retrain of seconds gets no useful sample
    "console": "off",  # stdout/stderr capture: inner runs print nothing (roar.quiet)
    "save_code": False,
    "disable_code": True,
    "disable_git": True,  # the commit is the same for every run of a grid
}
"""``wandb.Settings`` fields of every retrain's run (fields the installed wandb lacks are left out)."""


def retrain_settings() -> Any:
    """The ``wandb.Settings`` of one retrain's run, or None where the installed wandb has none of our fields."""
    import wandb

    known = getattr(wandb.Settings, "model_fields", None)
    if known is None:  # wandb < 0.19: not a pydantic model; its defaults are kept
        return None
    return wandb.Settings(**{k: v for k, v in RETRAIN_SETTINGS.items() if k in known})


def start_retrain_run(*, offline: bool, **init: Any) -> Any:
    """Start one retrain's W&B run (``wandb.init(**init)``) with :func:`retrain_settings`.

    Each call is a new run even while another is open: the members of a stack
    (:mod:`roar.benchmark.stacked_runner`) are open side by side, and Lightning's ``WandbLogger``
    would log them all into whichever run is ``wandb.run``. ``mode`` is given explicitly: once
    :func:`wandb_service` has set W&B up, a ``WANDB_MODE`` exported later is not read.
    """
    import wandb

    init = {**init, "mode": "offline" if offline else init.get("mode")}
    if (settings := retrain_settings()) is not None:
        init["settings"] = settings
    try:
        run = wandb.init(**init, reinit="create_new")
    except (TypeError, ValueError):  # wandb < 0.19.10 knows only booleans (and one run at a time)
        run = wandb.init(**init, reinit=True)
    # Lightning's WandbLogger does this for the runs it starts: metrics plotted against its step
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    return run


class RetrainWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` on a retrain's own run, which keeps the config it started with.

    The run's config is complete at :func:`start_retrain_run` (the run spec and the benchmark's
    settings). Lightning would then log the model's and the datamodule's hyperparameters into it,
    flat, and the datamodule's data-split ``seed`` overwrote the retrain's ``seed`` on every
    unstacked run, so a dashboard grouped by seed showed every run as seed 0.
    """

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:  # the run's config is set at its start
        return None


ATTEMPTS_DIR = "attempts"
"""Under ``<out>/wandb``: per grid run folder, the name of the W&B run its latest attempt logged to
(``attempts/runs/roar/random/t0.500-s0.txt``). Not in the run folder itself, whose logger warns
about a folder that is not empty."""
REPLACED_DIR = "replaced"
"""Under ``<out>/wandb``: W&B runs of earlier attempts, out of ``wandb sync <out>/wandb/offline-run-*``."""


def _record(out: Path, run_dir: Path) -> Path:
    return Path(out) / "wandb" / ATTEMPTS_DIR / f"{Path(run_dir).relative_to(out)}.txt"


def remember_run(run_dir: Path, run: Any, out: Path) -> None:
    """Remember ``run``'s folder (``<out>/wandb/offline-run-...``) as that of ``run_dir``'s latest attempt."""
    folder = Path(run.dir).parent  # run.dir is <out>/wandb/<run folder>/files
    if folder.parent.resolve() == (Path(out) / "wandb").resolve():
        record = _record(out, run_dir)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(folder.name + "\n")


def retire_run(out: Path, run_dir: Path) -> None:
    """Move the W&B run an earlier attempt of ``run_dir``'s run logged to ``<out>/wandb/replaced/``."""
    record = _record(out, run_dir)
    try:
        name = record.read_text().strip()
    except OSError:  # never logged to W&B
        return
    source = Path(out) / "wandb" / name
    if name and "/" not in name and source.is_dir():
        target = Path(out) / "wandb" / REPLACED_DIR
        target.mkdir(exist_ok=True)
        source.rename(target / name)
    record.unlink()


def retire_grid_runs(out: Path, keep: tuple[str, ...] = ("base",)) -> None:
    """``--force``: retire the W&B runs of every grid run under ``<out>/runs`` (not ``keep``'s)."""
    records = Path(out) / "wandb" / ATTEMPTS_DIR / "runs"
    folders = [Path(out) / "runs" / p.relative_to(records).with_suffix("") for p in records.glob("**/*.txt")]
    folders = [f for f in folders if f.relative_to(Path(out) / "runs").parts[:1] not in [(k,) for k in keep]]
    for folder in folders:
        retire_run(out, folder)


@contextmanager
def wandb_service(enabled: bool) -> Iterator[None]:
    """Start W&B's service for a grid and tear it down at the end (a no-op when ``enabled`` is False).

    A service this process did not start (the user's ``wandb.setup()``, or the driver's, inherited
    by a worker through ``WANDB_SERVICE``) is used and left running.
    """
    if not enabled:
        yield
        return
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")  # read once, here: no banners from the runs
    owned = not os.environ.get("WANDB_SERVICE")
    wandb.setup()
    try:
        yield
    finally:
        if owned:
            wandb.teardown()  # finishes a run a crash left open, then waits for the service to write everything
