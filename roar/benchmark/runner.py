"""Run a ROAR/KAR benchmark: base model, ranks, the retraining grid, the report.

Hooker et al., "A Benchmark for Interpretability Methods in Deep Neural Networks" (NeurIPS 2019).
Every run of the grid is a pure function of the benchmark config, the run spec and the paths
on disk (:func:`execute_run`), so it can run here, in a worker process, or as a Ray task
(:mod:`roar.benchmark.launchers`: ``--workers N`` on one machine, ``--launcher ray`` on a cluster).
Results go to SQLite one transaction per finished run: an interrupted benchmark resumes by
running the same command again. The base model and the ranks every run reads are prepared first,
once, by :mod:`roar.benchmark.prepare` (its names are re-exported here, their old home).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import seed_everything

from roar.attribution.compute import probe_methods
from roar.attribution.store import checkpoint_sha256
from roar.benchmark.auto_workers import resolve_workers
from roar.benchmark.cell import (
    STORE_DIR, _classifier, attempt_run, config_from_dict, execute_and_record,
    execute_run, record_outcome, run_config,
)  # fmt: skip
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.launchers import LaunchOptions
from roar.benchmark.local_pool import run_local_pool
from roar.benchmark.ray_launcher import ray_cluster, run_ray
from roar.benchmark.lock import FolderLock
from roar.benchmark.plan import RunSpec, build_plan
from roar.benchmark.prepare import (  # the base model and the ranks; their old home re-exports them
    BASE_CHECKPOINT as BASE_CHECKPOINT,
    BaseModelError as BaseModelError,
    base_checkpoint_path as base_checkpoint_path,
    check_store_matches,
    check_user_checkpoint,
    min_base_accuracy as min_base_accuracy,
    prepare_ranks,
    train_base,
)
from roar.benchmark.progress import GridProgress
from roar.benchmark.provenance import GridProvenance, check_recorded_rows, grid_fills, grid_settings, kept_rows_line, earlier_failures_line, method_identity, stale_fill_lines
from roar.benchmark.results import ResultsStore
from roar.benchmark.stacked_jobs import run_stacks
from roar.benchmark.stack_settings import resolve_stack, stack_groups, unstackable_reason
from roar.benchmark.wandb_runs import wandb_service
from roar.data.datamodule import ImageDataModule
from roar.data.masking import num_features, num_masked
from roar.data.sources import reuse_loaded_sources
from roar.fingerprint import fingerprint_key
from roar.quiet import quiet_third_party, say

log = logging.getLogger(__name__)

__all__ = [  # execute_run and friends live in roar.benchmark.cell; named here too for existing callers
    "attempt_run", "config_from_dict", "execute_and_record", "execute_run", "record_outcome", "run_benchmark", "run_config",
]  # fmt: skip


def grid_provenance(cfg: BenchmarkConfig, base_ckpt: Path, rank_keys: dict[str, dict[str, str]]) -> GridProvenance:
    """The fingerprints of this grid's runs, once the base model and the ranks exist."""
    sha = checkpoint_sha256(base_ckpt)
    methods = {m: {**method_identity(cfg, m), "ranks": rank_keys[m]} for m in cfg.methods}
    return GridProvenance(grid_settings(cfg, sha), sha, methods, grid_fills(cfg))


def check_distinct_thresholds(cfg: BenchmarkConfig, dm: ImageDataModule) -> None:
    """Two thresholds that mask the same number of features would be the same runs twice."""
    features = num_features((dm.in_chans, dm.image_size, dm.image_size), cfg.protocol.granularity)
    seen: dict[int, float] = {}
    for t in sorted(cfg.thresholds):
        k = num_masked(t, features)
        if k == 0 or k == features:
            raise ValueError(f"threshold {t} masks {k} of {features} features, the same as the unmasked reference or everything; choose a threshold in ({1 / features:.4g}, 1)")
        if k in seen:
            raise ValueError(f"thresholds {seen[k]} and {t} both mask {k} of {features} features ({cfg.protocol.granularity} granularity); keep one")
        seen[k] = t


def pending_runs(cfg: BenchmarkConfig, results: ResultsStore, provenance: GridProvenance | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """The whole plan and the runs it still needs (done runs are skipped; failed ones retried).

    With ``provenance``, a done run whose recorded fingerprint is not its fingerprint now is
    needed too (:func:`~roar.benchmark.provenance.check_recorded_rows` lets through only those
    whose fill settings changed).
    """
    dataset = cfg.data.get("source", "digits")
    model = str(cfg.model.get("arch", "small_cnn")).replace("/", ":")  # timm/convnext_atto -> timm:convnext_atto in run ids
    plan = build_plan(
        dataset, model, cfg.methods, thresholds=cfg.thresholds, seeds=cfg.seed_list, modes=tuple(cfg.modes), noretrain=cfg.noretrain, fill=cfg.protocol.fill,
    )  # fmt: skip
    if provenance is None:
        done = results.finished_ids()
    else:
        recorded = {row["run_id"]: row.get("fingerprint") for row in results.rows(status="done")}
        done = {s.run_id for s in plan if s.run_id in recorded and recorded[s.run_id] == fingerprint_key(provenance.for_run(s))}
    return plan, [spec for spec in plan if spec.run_id not in done]


def run_benchmark(
    cfg: BenchmarkConfig,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    verbose: bool = False,
    report: bool = True,
    launch: LaunchOptions | None = None,
    config_yaml: str | None = None,
) -> ResultsStore:
    """The whole benchmark, resumable and never mixed: see the module docstring and README, "Reruns".

    Args:
        cfg: the benchmark config (validated here, before any training).
        out: the output folder; held under a lock while this runs (:mod:`roar.benchmark.lock`).
        force: forget the recorded results and retrain a base model made with other settings
            (ranks are keyed by fingerprint, so stale ones are simply not used).
        progress: the grid's progress bar and one line per finished run (:mod:`roar.benchmark.progress`).
        verbose: each run's own progress bars and Lightning's banners too (off: :mod:`roar.quiet`).
        report: write the report at the end.
        launch: where the runs go (:class:`~roar.benchmark.launchers.LaunchOptions`): this
            process (the default), ``workers`` local processes, or a Ray cluster. The base model
            and the ranks are always prepared here first, so workers only read them.
        config_yaml: the command's full config, saved as ``<out>/benchmark.yaml`` once the
            folder is locked and the config, base model and ranks are accepted (so a refused command, a second one on a busy folder
            or one with a changed config, cannot overwrite the config its results were made with).

    Raises:
        ConfigChangedError: ``out`` holds results or a base model of other settings (and not ``force``).
        FolderBusyError: another benchmark is running on ``out``.
    """
    cfg.validate()
    launch = (launch or LaunchOptions()).validate()
    out = Path(out)
    with ExitStack() as stack:
        # The grid's datamodules all read one dataset: it is loaded once (reuse_loaded_sources), and
        # first, so a missing or unreadable dataset is refused before anything is written to ``out``.
        stack.enter_context(quiet_third_party(verbose))
        stack.enter_context(reuse_loaded_sources())
        dm = ImageDataModule(**cfg.data)
        # Bad input is refused before ``out`` is made (after it, a fresh folder was left holding an empty results.db):
        # thresholds masking the same features, a bad model setting (label_smoothing 1.5), a user's method that
        # raises, returns the wrong shape or NaN on the probe (named now, not after the base model).
        check_distinct_thresholds(cfg, dm)
        seed_everything(cfg.base.seed, workers=True, verbose=False)
        blank = _classifier(cfg, dm)
        probe_methods(dm, cfg.methods, cfg.method_params, model=blank)
        check_user_checkpoint(cfg, dm, out)  # missing, unsafe or of another model
        # A fresh folder's grid is all to run: a missing Ray (or cluster) is refused before the folder is made.
        fresh = not (out / "results.db").exists()
        if launch.launcher == "ray" and fresh:
            stack.enter_context(ray_cluster(cfg, launch))
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(FolderLock(out, "benchmark"))
        # One W&B service for the whole grid, workers included (wandb_service), torn down after the report.
        stack.enter_context(wandb_service(cfg.logger == "wandb"))
        results = ResultsStore(out / "results.db", replace_unreadable=force)
        if force:
            from roar.benchmark.leakage_report import discard
            from roar.benchmark.wandb_runs import retire_grid_runs

            results.clear()
            discard(out)  # the mask-leakage probes of those results go with them
            retire_grid_runs(out)  # ... and their W&B runs leave `wandb sync`'s glob (the base model's stays while it is reused)
        where = str(out / "results.db")
        check_recorded_rows(results.rows(), cfg, where)  # a changed config is refused before any training
        check_store_matches(out / STORE_DIR, dm)
        tell = say if progress else None
        if launch.launcher == "ray" and not fresh and pending_runs(cfg, results)[1]:  # joined now, not after the base model and ranks
            stack.enter_context(ray_cluster(cfg, launch))
        base_ckpt = train_base(cfg, out, progress=verbose, force=force, say=tell)
        provenance = grid_provenance(cfg, base_ckpt, prepare_ranks(cfg, out, base_ckpt, progress=progress, say=tell))
        plan, _ = pending_runs(cfg, results)
        # the same base model and ranks, too; a run whose fill settings alone changed is run again
        rows = results.rows()
        check_recorded_rows(rows, cfg, where, provenance, planned={spec.run_id for spec in plan})
        if config_yaml is not None:  # only now: a refused command (a changed config or base model, other ranks, no cluster) keeps the one its results were made with
            (out / "benchmark.yaml").write_text(config_yaml)
        plan, todo = pending_runs(cfg, results, provenance)
        parameters = sum(p.numel() for p in blank.net.parameters())  # how workers and stacks are sized
        if todo:  # a finished grid starts no workers, so it has no worker count to print
            launch = resolve_workers(launch, cfg, parameters, len(todo))
        if len(todo) < len(plan):
            print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {out / 'results.db'} (same fingerprint)")
        for line in stale_fill_lines(rows, provenance, plan):
            print(line)
        for line in (kept_rows_line(rows, plan, cfg.protocol.fill), earlier_failures_line(rows, plan, cfg.protocol.fill)):
            if line:
                print(line)
        with GridProgress(len(plan), len(plan) - len(todo), progress, pending=todo, parallel=_runs_at_once(cfg, launch, todo, parameters)) as bar:
            if not launch.parallel and launch.threads:
                torch.set_num_threads(launch.threads)
            if not launch.parallel:
                todo = run_stacks(todo, cfg, out, base_ckpt, results, provenance, bar)  # benchmark.stack: cells trained together
                for spec in todo:
                    bar.started(spec)
                    outcome = attempt_run(spec, cfg, out, base_ckpt, progress=verbose)
                    record_outcome(results, spec, cfg, outcome, provenance)
                    bar.finished(spec, outcome)
            elif launch.launcher == "ray" and todo:  # a finished grid joins no cluster
                run_ray(todo, cfg, out, base_ckpt, results, options=launch, on_finished=bar.finished, provenance=provenance)
            elif todo:  # ... and starts no workers
                run_local_pool(
                    todo, cfg, out, base_ckpt, results, workers=launch.workers, worker_retries=launch.worker_retries,
                    on_finished=bar.finished, provenance=provenance, threads=launch.threads,
                )  # fmt: skip
        if cfg.leakage:  # ROAD's critique of ROAR: a model trained on the masks alone (leakage.csv; the report reads it)
            from roar.benchmark.leakage import run_leakage_probe

            run_leakage_probe(cfg, out, base_ckpt, provenance, progress=progress, verbose=verbose)
        if report:
            write_benchmark_report(cfg, out, results)
    return results


def _runs_at_once(cfg: BenchmarkConfig, launch: LaunchOptions, todo: list[RunSpec], parameters: int) -> int:
    """Runs trained at the same time: this machine's workers (a Ray cluster's size is unknown here: 1)
    times the members of the largest stack (of a model of ``parameters``)."""
    workers = launch.workers if launch.parallel and launch.launcher == "local" and isinstance(launch.workers, int) else 1
    size = resolve_stack(cfg, parameters)
    stacked = 1 if size == 1 or unstackable_reason(cfg) else max((len(g) for g in stack_groups(todo, size)), default=1)
    return workers * stacked


def failed_runs(cfg: BenchmarkConfig, results: ResultsStore) -> list[dict[str, Any]]:
    """The runs of this config's plan that are recorded as failed."""
    plan, _ = pending_runs(cfg, results)
    ids = {spec.run_id for spec in plan}
    return [row for row in results.failures() if row["run_id"] in ids]


def write_benchmark_report(cfg: BenchmarkConfig, out: Path, results: ResultsStore, print_table: bool = True) -> dict[str, Path]:
    """results.csv, summary.csv, curves, report.md, and the W&B summary run."""
    from roar.benchmark.report import log_summary_to_wandb, summarize, write_report

    plan, _ = pending_runs(cfg, results)
    paths = write_report(
        out, results, title=f"ROAR/KAR benchmark: {cfg.name}", config=cfg.to_dict(), print_table=print_table,
        level=cfg.confidence_level, resamples=cfg.bootstrap_resamples, planned={spec.run_id for spec in plan},
    )  # fmt: skip
    if cfg.logger == "wandb":
        try:
            # the report's level, resamples and default fill: the dashboard's numbers are report.md's
            summary = summarize(results.rows(), cfg.confidence_level, cfg.bootstrap_resamples, cfg.protocol.fill)
            log_summary_to_wandb(
                out, summary, group=cfg.name, config={"benchmark": cfg.to_dict()}, project=cfg.wandb_project,
                mode="offline" if cfg.wandb_offline else "online", default_fill=cfg.protocol.fill,
            )  # fmt: skip
            if cfg.wandb_offline and print_table:  # the grid's runs print nothing: say once where they are, as train.py does
                print(f"W&B runs saved offline in {out / 'wandb'}; upload them with: wandb sync {out / 'wandb'}/offline-run-*", flush=True)
        except Exception as err:  # the report on disk is what matters; a dashboard hiccup must not lose it
            log.warning("W&B summary not logged: %s", err)
    return paths
