"""One cell of a ROAR/KAR grid: build its datamodule, model, loggers and Trainer; train; test; record.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019).
Every cell is a pure function of the benchmark config, its :class:`RunSpec` and the paths on
disk (:func:`execute_run`), so it runs the same in the driver (:mod:`roar.benchmark.runner`),
in a local worker process or as a Ray task (:mod:`roar.benchmark.launchers`). Both of those
import this module; neither imports the other back.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import WandbLogger

from roar.attribution.ranks import StoreRanks
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import NORETRAIN_ORDER, RunSpec, format_threshold
from roar.benchmark.provenance import TRAINER_DEFAULTS, GridProvenance
from roar.benchmark.results import ResultsStore
from roar.data.datamodule import ImageDataModule
from roar.data.ranks import FreshRandomRanks, RankProvider
from roar.data.roar import RoarDataModule
from roar.models.checkpoint import load_classifier
from roar.models.classifier import ImageClassifier
from roar.registry import import_object

log = logging.getLogger(__name__)

STORE_DIR = "attributions"
RUNS_DIR = "runs"


def config_from_dict(data: dict[str, Any]) -> BenchmarkConfig:
    """Rebuild a :class:`BenchmarkConfig` from ``to_dict()``: how workers and Ray tasks receive it."""
    return BenchmarkConfig.from_dict(data)


def instantiate(value: Any, what: str) -> Any:
    """An object from a ``{class_path, init_args}`` config entry (objects pass through)."""
    if not (isinstance(value, dict) and "class_path" in value):
        return value
    cls = import_class(value["class_path"], what)
    init_args = dict(value.get("init_args") or {})
    try:
        return cls(**init_args)
    except TypeError as err:
        raise ValueError(f"{what} {value['class_path']} does not take {sorted(init_args)}: {err}") from None


def import_class(path: str, what: str) -> Any:
    """The class at a config's ``class_path`` (one import helper for every config entry: :func:`roar.registry.import_object`)."""
    return import_object(path, f"{what} class_path")


def _as_list(value: Any) -> list[Any]:
    if value is None or value is False:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _user_loggers(cfg: BenchmarkConfig, run_dir: Path) -> list[Any]:
    """The config's own ``trainer.logger`` entries, one fresh instance per run, under the run's folder
    (a relative ``save_dir`` is taken from the run's folder, as ``train.py`` takes it from ``default_root_dir``)."""
    loggers = []
    for entry in _as_list(cfg.trainer.get("logger")):
        if entry is True:
            continue  # Lightning's default logger: ours (cfg.logger) stand in for it
        if isinstance(entry, dict) and "class_path" in entry:
            cls = import_class(entry["class_path"], "trainer.logger")
            init_args = dict(entry.get("init_args") or {})
            if "save_dir" in inspect.signature(cls.__init__).parameters:
                # each run logs under its own folder: a relative save_dir is taken from there (an absolute one is kept)
                save_dir = init_args.get("save_dir")
                if save_dir is None or not Path(str(save_dir)).is_absolute():
                    init_args["save_dir"] = str(run_dir / (save_dir or ""))
            entry = {"class_path": entry["class_path"], "init_args": init_args}
        loggers.append(instantiate(entry, "trainer.logger"))
    return loggers


def _trainer(cfg: BenchmarkConfig, run_dir: Path, *, logger: Any, max_epochs: int | None = None, progress: bool = True) -> Trainer:
    kwargs: dict[str, Any] = dict(TRAINER_DEFAULTS)
    kwargs.update({k: v for k, v in cfg.trainer.items() if k not in ("callbacks", "logger")})
    if max_epochs is not None:
        kwargs["max_epochs"] = max_epochs
    # The user's callbacks are kept (fresh instances per run), the framework's progress bar added.
    callbacks = [instantiate(c, "trainer.callbacks") for c in _as_list(cfg.trainer.get("callbacks"))]
    if progress:  # --verbose: each run's bars below the grid's
        callbacks.append(TQDMProgressBar(process_position=1, leave=False))
    kwargs.update(
        default_root_dir=str(run_dir),
        logger=[*logger, *_user_loggers(cfg, run_dir)],
        enable_checkpointing=any(c.__class__.__name__ == "ModelCheckpoint" for c in callbacks),
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=callbacks,
    )
    return Trainer(**kwargs)


def _loggers(cfg: BenchmarkConfig, out: Path, run_dir: Path, name: str, job_type: str, config: dict[str, Any]) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    # A folder left by an earlier attempt (Ctrl-C, a crash, a retry) holds no finished run's files;
    # emptied here, Lightning's CSVLogger does not warn at every rerun that it will overwrite them.
    # That attempt's W&B run leaves the sync glob with it (wandb_runs.retire_run).
    from roar.benchmark.wandb_runs import retire_run

    retire_run(out, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers: list[Any] = []
    if cfg.logger == "none":
        return loggers
    loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    if cfg.logger == "wandb":
        from roar.benchmark.wandb_runs import RetrainWandbLogger, remember_run, start_retrain_run

        os.environ.setdefault("WANDB_SILENT", "true")
        # our own wandb.init: one run per retrain even when a stack's members are open at once, with
        # lean settings (no pip freeze, stats sampling, console capture, git probing)
        run = start_retrain_run(name=name, project=cfg.wandb_project, group=cfg.name, job_type=job_type, dir=str(out), config=config, offline=cfg.wandb_offline)
        remember_run(run_dir, run, out)
        loggers.append(RetrainWandbLogger(name=name, project=cfg.wandb_project, save_dir=str(out), offline=cfg.wandb_offline, experiment=run))
    return loggers


def _finish_loggers(loggers: list[Any], failed: bool = False) -> None:
    """Close a run's W&B run; one that raised is finished with exit code 1, which W&B shows as failed
    (a finish without one marked a crashed retrain "finished", as if its result were in results.db)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=1 if failed else 0)


def _datamodule(cfg: BenchmarkConfig, out: Path, base_ckpt: Path, *, method: str | None, threshold: float, mode: str, fill: str) -> ImageDataModule:
    """A run's data: unmasked for the references, else masked by ``method``'s ranks under the run's own ``fill``
    (its spec's: ``mode@fill``, or ``protocol.fill``), with the protocol's settings of that fill."""
    if method is None or threshold == 0:
        return ImageDataModule(**cfg.data)
    p = cfg.protocol
    return RoarDataModule(
        **cfg.data, ranks=rank_provider(cfg, out, base_ckpt, method), threshold=threshold, mode=mode, ranks_progress=False,
        fill=fill, fill_sigma=p.fill_sigma, fill_noise_std=p.fill_noise_std, fill_tol=p.fill_tol,
        fill_max_iter=p.fill_max_iter, fill_seed=p.tie_seed,
    )  # fmt: skip


def rank_provider(cfg: BenchmarkConfig, out: Path, base_ckpt: Path, method: str) -> RankProvider:
    """Where a retrain's masks come from: the method's stored ranks, or random ranks drawn at every read."""
    p = cfg.protocol
    if method == "random" and p.random_mask == "fresh":
        return FreshRandomRanks(granularity=p.granularity, tie_seed=p.tie_seed)
    return StoreRanks(
        method, store=str(out / STORE_DIR), base_checkpoint=str(base_ckpt), method_params=cfg.method_params.get(method, {}),
        granularity=p.granularity, score=p.score, target=p.target, tie_seed=p.tie_seed,
        batch_size=cfg.attribution_batch_size, device=cfg.attribution_device,
        memory_budget=cfg.attribution_memory_budget,
    )  # fmt: skip


def _classifier(cfg: BenchmarkConfig, dm: ImageDataModule) -> ImageClassifier:
    return ImageClassifier(
        **cfg.model, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std,
    )  # fmt: skip


def run_directory(out: Path, spec: RunSpec) -> Path:
    # runs/noretrain@noisy_linear/...: one folder per mode and fill, as the run id
    return out / RUNS_DIR / spec.evaluation / spec.method / f"t{format_threshold(spec.threshold)}-s{spec.seed}"


def run_config(cfg: BenchmarkConfig, spec: RunSpec) -> dict[str, Any]:
    """The full configuration a result row records: protocol choices move results."""
    return {**spec.to_dict(), "benchmark": cfg.to_dict()}


def execute_run(spec: RunSpec, cfg: BenchmarkConfig, out: Path, base_ckpt: Path, progress: bool = True) -> dict[str, Any]:
    """One cell of the grid: a retrain from scratch (reference, roar, kar) or a no-retrain evaluation.

    Returns:
        ``test_acc``, ``epochs``, ``seconds`` and ``checkpoint`` (None unless kept).
    """
    start = time.perf_counter()
    run_dir = run_directory(out, spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    method = None if spec.method == "unmasked" else spec.method
    mode = NORETRAIN_ORDER.get(spec.mode, "roar" if spec.mode == "reference" else spec.mode)
    seed_everything(spec.seed, workers=True, verbose=False)
    dm = _datamodule(cfg, out, base_ckpt, method=method, threshold=spec.threshold, mode=mode, fill=spec.fill)
    loggers = _loggers(cfg, out, run_dir, spec.name, spec.mode, run_config(cfg, spec))
    checkpoint, failed = None, True
    try:
        if spec.mode in NORETRAIN_ORDER:
            model = load_classifier(base_ckpt, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size, arch=cfg.model.get("arch", "small_cnn"))
            trainer = _trainer(cfg, run_dir, logger=loggers, progress=progress)
            epochs = 0
        else:
            model = _classifier(cfg, dm)
            trainer = _trainer(cfg, run_dir, logger=loggers, progress=progress)
            trainer.fit(model, datamodule=dm)
            epochs = trainer.current_epoch
        # Scored at the last epoch: picking the best epoch on the test set would leak it into the result.
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
        if cfg.save_checkpoints and spec.mode not in NORETRAIN_ORDER:
            checkpoint = str(run_dir / "last.ckpt")
            trainer.save_checkpoint(checkpoint, weights_only=False)
        failed = False
    finally:
        _finish_loggers(loggers, failed)
    return {"test_acc": float(metrics["test/acc"]), "epochs": epochs, "seconds": time.perf_counter() - start, "checkpoint": checkpoint}


def attempt_run(spec: RunSpec, cfg: BenchmarkConfig, out: Path, base_ckpt: Path, progress: bool = True) -> dict[str, Any]:
    """Run one spec with ``cfg.retries`` retries of a crashing run; record nothing.

    Returns:
        The outcome: ``status`` (``done`` or ``failed``), then :func:`execute_run`'s fields when
        done or ``error`` (the last traceback) when failed. Plain data, so a worker process or a
        Ray task can return it to the driver.
    """
    error = None
    for attempt in range(cfg.retries + 1):
        try:
            outcome = execute_run(spec, cfg, out, base_ckpt, progress=progress)
        except Exception:  # a crashed run is recorded and the grid goes on; Ctrl-C still stops it
            error = traceback.format_exc(limit=20)
            _say_failure(spec, attempt, cfg.retries + 1, error)
            continue
        return {"status": "done", **outcome}
    return {"status": "failed", "error": error}


_SHOWN_ERRORS: dict[str, str] = {}
"""The last line of each error whose traceback this process printed, and the run it came from."""


def _say_failure(spec: RunSpec, attempt: int, attempts: int, error: str) -> None:
    """A failure's traceback once per distinct error; the same error again is one line.

    A grid whose runs share a bug (a user's callback, a full disk) would otherwise print the same
    30-line traceback per run; each is still recorded in full (``results.db``, ``report.md``).
    """
    last = error.rstrip().splitlines()[-1] if error.strip() else "no traceback"
    if last not in _SHOWN_ERRORS:
        _SHOWN_ERRORS[last] = spec.run_id
        log.warning("run %s failed (attempt %d/%d):\n%s", spec.run_id, attempt + 1, attempts, error)
    else:
        first = _SHOWN_ERRORS[last]
        log.warning("run %s failed (attempt %d/%d): %s (traceback as for %s; all in report.md)", spec.run_id, attempt + 1, attempts, last, first)


def record_outcome(results: ResultsStore, spec: RunSpec, cfg: BenchmarkConfig, outcome: dict[str, Any], provenance: GridProvenance | None = None) -> None:
    """Record an :func:`attempt_run` outcome as one row (one transaction), with its fingerprint."""
    fields = {k: v for k, v in outcome.items() if k != "status"}
    fingerprint = provenance.for_run(spec) if provenance is not None else None
    results.record(spec, status=outcome["status"], config=run_config(cfg, spec), provenance=fingerprint, **fields)


def execute_and_record(
    spec: RunSpec, cfg: BenchmarkConfig, out: Path, base_ckpt: Path, results: ResultsStore, progress: bool = True, provenance: GridProvenance | None = None
) -> bool:
    """Run one spec with retries and record it as done or failed; True when done."""
    outcome = attempt_run(spec, cfg, out, base_ckpt, progress=progress)
    record_outcome(results, spec, cfg, outcome, provenance)
    return outcome["status"] == "done"
