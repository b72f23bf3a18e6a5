"""Stacked training with parallel launchers: a job is a stack of cells (or one run), recorded member by member.

Hooker et al. (NeurIPS 2019) retrain every (method, threshold, seed, mode) cell from scratch.
``benchmark.stack`` trains the seeds of one cell together as one batched model
(:mod:`roar.benchmark.stacked_runner`); with ``--workers N`` each worker process trains whole
stacks, so a grid can use both the cores (workers) and the small models' idle arithmetic
(stacks). A stack's members are recorded one row each, with the fingerprint and config a separate
run would have, in the driver (:func:`run_stacks`), in a worker (:func:`run_job`) or, for a Ray
task's outcomes, in the driver again (:func:`train_job` trains, the Ray launcher records); a stack
that fails is run member by member, with the usual retries and records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roar.benchmark.cell import attempt_run, record_outcome
from roar.benchmark.plan import RunSpec
from roar.benchmark.results import ResultsStore
from roar.benchmark.progress import GridProgress
from roar.benchmark.stack_settings import resolve_stack, stack_groups, unstackable_reason
from roar.benchmark.stacked_runner import execute_stack

log = logging.getLogger(__name__)


def stacks_of(todo: list[RunSpec], cfg: Any) -> list[list[RunSpec]]:
    """The stacks ``benchmark.stack`` makes of ``todo``: groups of two or more (a lone run gains
    nothing from a stack); none when the setting is 1 or the trainer settings cannot be stacked."""
    size = resolve_stack(cfg)
    if size == 1:
        return []
    reason = unstackable_reason(cfg)
    if reason:
        log.info("benchmark.stack=%s: running one by one, since %s", cfg.stack, reason)
        return []
    return [group for group in stack_groups(todo, size) if len(group) > 1]


def train_stack(group: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path) -> list[dict[str, Any]] | None:
    """Train ``group`` as one stack; each member's ``done`` outcome, or None when the stack failed
    (the members are then for the one-by-one path). Records nothing."""
    try:
        outcomes = execute_stack(group, cfg, out, base_ckpt)
    except Exception as err:  # the members run one by one instead, with the usual retries and records
        log.warning("stack of %d runs (%s...) failed, running them one by one: %s", len(group), group[0].run_id, err)
        return None
    return [{"status": "done", **outcome} for outcome in outcomes]


def train_and_record_stack(
    group: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path, results: Any, provenance: Any = None
) -> list[dict[str, Any]] | None:
    """Train ``group`` as one stack and record each member as its own ``done`` row, with the
    fingerprint a separate run would have (the stack changes how fast, not what); the outcomes,
    or None when the stack failed (nothing recorded: the members are for the one-by-one path)."""
    done = train_stack(group, cfg, out, base_ckpt)
    for spec, outcome in zip(group, done or [], strict=False):
        record_outcome(results, spec, cfg, outcome, provenance)
    return done


def run_stacks(todo: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path, results: Any, provenance: Any = None, bar: GridProgress | None = None) -> list[RunSpec]:
    """Train and record the stackable runs of ``todo`` in stacks of ``benchmark.stack``; return the rest, in order.

    A stack that fails leaves its runs to the one-by-one path, which retries and records them as usual.
    """
    done: set[str] = set()
    for group in stacks_of(todo, cfg):
        if bar is not None:
            bar.started(group[0])
        outcomes = train_and_record_stack(group, cfg, out, base_ckpt, results, provenance)
        if outcomes is None:  # failed as a stack: its runs go one by one
            continue
        done.update(spec.run_id for spec in group)
        if bar is not None:
            bar.finished_together(group, outcomes)
    return [spec for spec in todo if spec.run_id not in done]


def plan_jobs(todo: list[RunSpec], cfg: Any) -> list[list[RunSpec]]:
    """The grid's jobs: stacks of ``benchmark.stack`` retrains first (the longest jobs), then the other runs one each.

    Without stacking (``stack: 1``, ``auto`` on a large model, or trainer settings a stack does not
    reproduce) every run is its own job, as before.
    """
    stacks = stacks_of(todo, cfg)
    stacked = {spec.run_id for group in stacks for spec in group}
    return stacks + [[spec] for spec in todo if spec.run_id not in stacked]


OnOutcome = Callable[[RunSpec, dict[str, Any]], None]


def train_job(group: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path, on_outcome: OnOutcome | None = None) -> list[dict[str, Any]]:
    """One job (:func:`plan_jobs`): a stack, or if it fails its members one by one with ``cfg.retries``,
    or a single run. Returns the outcomes in ``group``'s order; ``on_outcome(spec, outcome)`` is
    called as each is known, so a worker records a finished run before the next one can kill it.
    A Ray task passes none and returns the outcomes for the driver to record."""
    stacked = train_stack(group, cfg, out, base_ckpt) if len(group) > 1 else None
    outcomes = []
    for index, spec in enumerate(group):
        outcomes.append(stacked[index] if stacked is not None else attempt_run(spec, cfg, out, base_ckpt, progress=False))
        if on_outcome is not None:
            on_outcome(spec, outcomes[-1])
    return outcomes


def run_job(group: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path, results: ResultsStore, provenance: Any = None) -> list[dict[str, Any]]:
    """One job of a worker: :func:`train_job`, every outcome recorded in ``results`` as it is known."""
    return train_job(group, cfg, out, base_ckpt, lambda spec, outcome: record_outcome(results, spec, cfg, outcome, provenance))
