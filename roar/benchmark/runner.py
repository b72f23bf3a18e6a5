"""Run a ROAR/KAR benchmark: base model, ranks, the retraining grid, the report.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019).
Every run of the grid is a pure function of the benchmark config, the run spec and the paths
on disk (:func:`execute_run`), so it can run here, in a worker process, or as a Ray task
(:mod:`roar.benchmark.launchers`: ``--workers N`` on one machine, ``--launcher ray`` on a cluster).
Results go to SQLite one transaction per finished run: an interrupted benchmark resumes by
running the same command again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import TQDMProgressBar

from roar.attribution.compute import compute_ranks, load_classifier
from roar.benchmark.config import BaseModel, BenchmarkConfig, Protocol
from roar.benchmark.launchers import LaunchOptions, run_local_pool, run_ray
from roar.benchmark.plan import RunSpec, build_plan, format_threshold
from roar.benchmark.results import ResultsStore
from roar.data.datamodule import ImageDataModule
from roar.data.roar import RoarDataModule
from roar.models.classifier import ImageClassifier

log = logging.getLogger(__name__)

BASE_CHECKPOINT = "base.ckpt"
STORE_DIR = "attributions"
RUNS_DIR = "runs"


def config_from_dict(data: dict[str, Any]) -> BenchmarkConfig:
    """Rebuild a :class:`BenchmarkConfig` from ``to_dict()``: how workers and Ray tasks receive it."""
    data = dict(data)
    data["base"] = BaseModel(**data.get("base", {}))
    data["protocol"] = Protocol(**data.get("protocol", {}))
    return BenchmarkConfig(**data)


def base_checkpoint_path(cfg: BenchmarkConfig, out: Path) -> Path:
    return Path(cfg.base.checkpoint) if cfg.base.checkpoint else out / BASE_CHECKPOINT


def _trainer(cfg: BenchmarkConfig, run_dir: Path, *, logger: Any, max_epochs: int | None = None, progress: bool = True) -> Trainer:
    kwargs: dict[str, Any] = {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10}
    kwargs.update(cfg.trainer)
    if max_epochs is not None:
        kwargs["max_epochs"] = max_epochs
    kwargs.update(
        default_root_dir=str(run_dir),
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        # the grid's overall bar sits at position 0; each run's bars below it
        callbacks=[TQDMProgressBar(process_position=1, leave=False)] if progress else [],
    )
    return Trainer(**kwargs)


def _loggers(cfg: BenchmarkConfig, out: Path, run_dir: Path, name: str, job_type: str, config: dict[str, Any]) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if cfg.logger == "none":
        return loggers
    loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    if cfg.logger == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(
            WandbLogger(
                name=name, project=cfg.wandb_project, group=cfg.name, job_type=job_type, save_dir=str(out),
                offline=cfg.wandb_offline, config=config, reinit=True,
            )  # fmt: skip
        )
    return loggers


def _finish_loggers(loggers: list[Any]) -> None:
    for logger in loggers:
        if logger.__class__.__name__ == "WandbLogger":
            logger.experiment.finish()


def _datamodule(cfg: BenchmarkConfig, out: Path, base_ckpt: Path, *, method: str | None, threshold: float, mode: str) -> ImageDataModule:
    if method is None or threshold == 0:
        return ImageDataModule(**cfg.data)
    p = cfg.protocol
    return RoarDataModule(
        **cfg.data, method=method, threshold=threshold, mode=mode, store=str(out / STORE_DIR),
        base_checkpoint=str(base_ckpt), granularity=p.granularity, score=p.score, fill=p.fill,
        random_mask=p.random_mask, target=p.target, tie_seed=p.tie_seed,
        method_params=cfg.method_params.get(method, {}), attribution_batch_size=cfg.attribution_batch_size,
        attribution_device=cfg.attribution_device, attribution_progress=False,
    )  # fmt: skip


def _classifier(cfg: BenchmarkConfig, dm: ImageDataModule) -> ImageClassifier:
    return ImageClassifier(
        **cfg.model, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std,
    )  # fmt: skip


def train_base(cfg: BenchmarkConfig, out: Path, progress: bool = True) -> Path:
    """Train the base model (or reuse its checkpoint) and return the checkpoint's path."""
    path = base_checkpoint_path(cfg, out)
    if path.is_file():
        log.info("reusing base checkpoint %s", path)
        return path
    if cfg.base.checkpoint:
        raise FileNotFoundError(f"base.checkpoint {path} does not exist; remove base.checkpoint to train a base model into {out}")
    seed_everything(cfg.base.seed, workers=True, verbose=False)
    dm = ImageDataModule(**cfg.data)
    model = _classifier(cfg, dm)
    run_dir = out / RUNS_DIR / "base"
    loggers = _loggers(cfg, out, run_dir, "base", "base", {**cfg.to_dict(), "run": "base"})
    trainer = _trainer(cfg, run_dir, logger=loggers, max_epochs=cfg.base.max_epochs, progress=progress)
    try:
        trainer.fit(model, datamodule=dm)
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    finally:
        _finish_loggers(loggers)
    tmp = path.with_suffix(".ckpt.tmp")
    trainer.save_checkpoint(tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written base model that looks usable
    log.info("base model: test/acc %.4f -> %s", metrics["test/acc"], path)
    return path


def check_store_matches(store_dir: Path, dm: ImageDataModule) -> None:
    """Refuse an attribution store that holds ranks of another dataset: a wrong --out, most likely."""
    from roar.attribution.store import AttributionStore

    if not store_dir.is_dir():
        return
    for entry in AttributionStore(store_dir).entries():
        theirs = entry.fingerprint.get("dataset", {})
        if theirs.get("source") != dm.dataset_id["source"] or theirs.get("image_size") != dm.dataset_id["image_size"]:
            raise ValueError(
                f"the attribution store {store_dir} holds ranks of dataset {theirs.get('source')!r} at "
                f"{theirs.get('image_size')} px ({entry.path}), but this benchmark is {dm.dataset_id['source']!r} at "
                f"{dm.dataset_id['image_size']} px; use another --out"
            )


def prepare_ranks(cfg: BenchmarkConfig, out: Path, base_ckpt: Path, methods: list[str] | None = None, progress: bool = True) -> None:
    """Compute (or reuse) every method's ranks of every train and test image, once."""
    dm = ImageDataModule(**cfg.data)
    check_store_matches(out / STORE_DIR, dm)
    model = load_classifier(base_ckpt, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size)
    p = cfg.protocol
    for method in methods or cfg.methods:
        if method == "random" and p.random_mask == "fresh":
            continue  # drawn afresh at every read: nothing to store
        compute_ranks(
            dm, method, out / STORE_DIR, checkpoint=base_ckpt, model=model,
            method_params=cfg.method_params.get(method, {}), granularity=p.granularity, score=p.score,
            target=p.target, tie_seed=p.tie_seed, batch_size=cfg.attribution_batch_size,
            device=cfg.attribution_device, progress=progress,
        )  # fmt: skip


def run_directory(out: Path, spec: RunSpec) -> Path:
    return out / RUNS_DIR / spec.mode / spec.method / f"t{format_threshold(spec.threshold)}-s{spec.seed}"


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
    mode = "roar" if spec.mode in ("noretrain", "reference") else spec.mode
    seed_everything(spec.seed, workers=True, verbose=False)
    dm = _datamodule(cfg, out, base_ckpt, method=method, threshold=spec.threshold, mode=mode)
    loggers = _loggers(cfg, out, run_dir, spec.name, spec.mode, run_config(cfg, spec))
    checkpoint = None
    try:
        if spec.mode == "noretrain":
            model = load_classifier(base_ckpt, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size)
            trainer = _trainer(cfg, run_dir, logger=loggers, progress=progress)
            epochs = 0
        else:
            model = _classifier(cfg, dm)
            trainer = _trainer(cfg, run_dir, logger=loggers, progress=progress)
            trainer.fit(model, datamodule=dm)
            epochs = trainer.current_epoch
        # Scored at the last epoch: picking the best epoch on the test set would leak it into the result.
        metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
        if cfg.save_checkpoints and spec.mode != "noretrain":
            checkpoint = str(run_dir / "last.ckpt")
            trainer.save_checkpoint(checkpoint)
    finally:
        _finish_loggers(loggers)
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
            log.warning("run %s failed (attempt %d/%d):\n%s", spec.run_id, attempt + 1, cfg.retries + 1, error)
            continue
        return {"status": "done", **outcome}
    return {"status": "failed", "error": error}


def record_outcome(results: ResultsStore, spec: RunSpec, cfg: BenchmarkConfig, outcome: dict[str, Any]) -> None:
    """Record an :func:`attempt_run` outcome as one row (one transaction)."""
    fields = {k: v for k, v in outcome.items() if k != "status"}
    results.record(spec, status=outcome["status"], config=run_config(cfg, spec), **fields)


def execute_and_record(spec: RunSpec, cfg: BenchmarkConfig, out: Path, base_ckpt: Path, results: ResultsStore, progress: bool = True) -> bool:
    """Run one spec with retries and record it as done or failed; True when done."""
    outcome = attempt_run(spec, cfg, out, base_ckpt, progress=progress)
    record_outcome(results, spec, cfg, outcome)
    return outcome["status"] == "done"


def pending_runs(cfg: BenchmarkConfig, results: ResultsStore) -> tuple[list[RunSpec], list[RunSpec]]:
    """The whole plan and the runs it still needs (done runs are skipped; failed ones retried)."""
    dataset = cfg.data.get("source", "digits")
    model = cfg.model.get("arch", "small_cnn")
    plan = build_plan(dataset, model, cfg.methods, thresholds=cfg.thresholds, seeds=cfg.seed_list, modes=tuple(cfg.modes), noretrain=cfg.noretrain)
    done = results.finished_ids()
    return plan, [spec for spec in plan if spec.run_id not in done]


def _overall_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="ROAR grid", unit="run", position=0, leave=True, dynamic_ncols=True)


def run_benchmark(
    cfg: BenchmarkConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    report: bool = True,
    launch: LaunchOptions | None = None,
) -> ResultsStore:
    """The whole benchmark, resumable: see the module docstring.

    Args:
        cfg: the benchmark config (validated here, before any training).
        out: the output folder.
        force: forget recorded results and rerun every cell (the base model and the ranks are
            kept: they are verified by checkpoint hash and fingerprint, never silently stale).
        progress: progress bars.
        report: write the report at the end.
        launch: where the runs go (:class:`~roar.benchmark.launchers.LaunchOptions`): this
            process (the default), ``workers`` local processes, or a Ray cluster. The base model
            and the ranks are always prepared here first, so workers only read them.
    """
    cfg.validate()
    launch = (launch or LaunchOptions()).validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = ResultsStore(out / "results.db")
    if force:
        results.clear()
    check_store_matches(out / STORE_DIR, ImageDataModule(**cfg.data))  # before any training
    base_ckpt = train_base(cfg, out, progress=progress)
    prepare_ranks(cfg, out, base_ckpt, progress=progress)
    plan, todo = pending_runs(cfg, results)
    if len(todo) < len(plan):
        print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out / 'results.db'}")
    with _overall_bar(len(plan), len(plan) - len(todo), progress) as bar:
        if not launch.parallel:
            for spec in todo:
                if bar is not None:
                    bar.set_postfix_str(spec.name + f" [{spec.mode}]")
                execute_and_record(spec, cfg, out, base_ckpt, results, progress=progress)
                if bar is not None:
                    bar.update(1)
        elif todo:  # a finished grid starts no workers and joins no cluster

            def on_finished(spec: RunSpec, done: bool) -> None:
                if bar is not None:
                    bar.set_postfix_str(f"{'done' if done else 'FAILED'}: {spec.name} [{spec.mode}]")
                    bar.update(1)

            if launch.launcher == "ray":
                run_ray(todo, cfg, out, base_ckpt, results, options=launch, on_finished=on_finished)
            else:
                run_local_pool(todo, cfg, out, base_ckpt, results, workers=launch.workers, worker_retries=launch.worker_retries, on_finished=on_finished)
    if report:
        write_benchmark_report(cfg, out, results)
    return results


def write_benchmark_report(cfg: BenchmarkConfig, out: Path, results: ResultsStore, print_table: bool = True) -> dict[str, Path]:
    """results.csv, summary.csv, curves, report.md, and the W&B summary run."""
    from roar.benchmark.report import log_summary_to_wandb, summarize, write_report

    paths = write_report(out, results, title=f"ROAR/KAR benchmark: {cfg.name}", config=cfg.to_dict(), print_table=print_table)
    if cfg.logger == "wandb":
        try:
            log_summary_to_wandb(out, summarize(results.rows()), group=cfg.name, config=cfg.to_dict(), project=cfg.wandb_project, mode="offline" if cfg.wandb_offline else "online")
        except Exception as err:  # the report on disk is what matters; a dashboard hiccup must not lose it
            log.warning("W&B summary not logged: %s", err)
    return paths
