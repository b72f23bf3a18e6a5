"""What a grid prints: one progress bar with an ETA, and one line per finished run.

A ROAR/KAR grid (Hooker et al., NeurIPS 2019) is hundreds of retrains; the user wants to see how
far it is and what each run scored, not each run's epochs. In a terminal the bar (tqdm, the
library Lightning's own bars use) stays at the bottom and the run lines scroll above it; in a log
file there is no bar (it would only add carriage returns) and each line carries the ETA instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from roar.benchmark.plan import NORETRAIN_ORDER, RunSpec
from roar.quiet import say


def run_label(spec: RunSpec) -> str:
    """``roar gradient t=0.5 seed 1``: the cell as a person reads it (``noretrain@noisy_linear ...`` under another fill than the paper's)."""
    return f"{spec.evaluation} {spec.method} t={spec.threshold:g} seed {spec.seed}"


def outcome_text(outcome: dict[str, Any]) -> str:
    """``test acc 0.823 (3.1 s)``, or ``FAILED: <the error's last line>``."""
    if outcome.get("status") == "done" and "test_acc" not in outcome:
        return f"done ({outcome.get('note', 'recorded')})"
    if outcome.get("status") == "done":
        return f"test acc {outcome['test_acc']:.3f} ({outcome['seconds']:.1f} s)"
    lines = (outcome.get("error") or "").strip().splitlines()
    return f"FAILED: {lines[-1] if lines else 'no error recorded'}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class GridProgress:
    """The grid's bar and its run lines: ``[12/78] roar gradient t=0.5 seed 1: test acc 0.823 (3.1 s)``.

    No-retrain evaluations (the base model scored on masked test data: a second each, and dozens of
    them) get one line together when the last of them finishes; a failed one still gets its own.

    Args:
        total: runs in the plan.
        done: runs already recorded (a resumed grid starts there).
        enabled: print anything at all.
        pending: the runs still to do (to know when the last no-retrain evaluation is in).
        parallel: runs trained at once (local workers times stack members): no ETA until more are in.
    """

    def __init__(self, total: int, done: int, enabled: bool = True, pending: list[RunSpec] | None = None, parallel: int = 1) -> None:
        self.total, self.count, self.enabled = total, done, enabled
        # Runs that started together finish together: until more runs are in than ran at once,
        # the rate is not known (one run over its duration made the first line of a 2-worker,
        # 2-seed-stack grid say 2:48 for a grid 1.5 min from done; counting the runs in flight as
        # done said 0:45, as their own seconds leave out each job's recording and logging), so
        # those lines carry no ETA.
        self._parallel = max(1, parallel)
        self._start = time.perf_counter()
        self._evaluations_left = sum(spec.mode in NORETRAIN_ORDER for spec in pending or [])
        self._evaluations_done = 0
        self._evaluation_seconds = 0.0
        # Evaluations finished but not yet on a line: the numbers of the lines skip them until the
        # line that sums them up, so a retrain's line never jumps over a number no line shows.
        self._unprinted = 0
        # The ETA counts retrains only: a no-retrain evaluation costs a fraction of a second, and
        # the demo's 31 of them, counted as runs, made its ETA twice too long while retrains ran
        # (and too short just after the evaluations, run first one at a time).
        # Without the plan (pending None) every run counts.
        self._timed_evaluations = pending is None
        self._timed_left = total - done if pending is None else sum(self._timed(spec) for spec in pending)
        self._timed_done = 0  # a stack's members all at once
        # The ETA's clock starts when the first finished run started (its finish less its own
        # seconds), not when the grid did: starting workers (seconds of imports) is paid once, and
        # counted as part of the first run it made the first lines' ETA several times too long.
        self._clock: float | None = None
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=done, desc="ROAR grid", unit="run", leave=False, dynamic_ncols=True)

    def __enter__(self) -> GridProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()

    def started(self, spec: RunSpec) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(run_label(spec))

    def finished_together(self, specs: list[RunSpec], outcomes: list[dict[str, Any]]) -> None:
        """Runs that ended at the same moment (the members of a stack): one line each, and every
        line's ETA counts all of them as done, so it does not swing with each member's line."""
        self._timed_done += sum(self._timed(spec) for spec in specs)
        for spec, outcome in zip(specs, outcomes, strict=True):
            self._finished(spec, outcome, credited=True)

    def finished(self, spec: RunSpec, outcome: dict[str, Any]) -> None:
        self._finished(spec, outcome, credited=False)

    def _timed(self, spec: RunSpec) -> bool:
        """Whether the ETA counts ``spec``: a retrain, or any run when the plan is unknown."""
        return self._timed_evaluations or spec.mode not in NORETRAIN_ORDER

    def _eta(self) -> float | None:
        """Seconds left at the rate so far (per retrain when the plan is known, else per run)."""
        if not self._timed_done or (self._parallel > 1 and self._timed_done <= self._parallel):
            return None
        elapsed = time.perf_counter() - (self._clock if self._clock is not None else self._start)
        return elapsed / self._timed_done * max(0, self._timed_left - self._timed_done)

    def _finished(self, spec: RunSpec, outcome: dict[str, Any], credited: bool) -> None:
        if self._clock is None:
            self._clock = max(self._start, time.perf_counter() - float(outcome.get("seconds") or 0.0))
        self.count += 1
        if not credited and self._timed(spec):
            self._timed_done += 1
        if not self.enabled:
            return
        line = f"[{self.count - self._unprinted}/{self.total}] {run_label(spec)}: {outcome_text(outcome)}"
        if spec.mode in NORETRAIN_ORDER and self._evaluations_left:
            self._evaluations_left -= 1
            if outcome.get("status") == "done":
                self._evaluations_done += 1
                self._evaluation_seconds += float(outcome.get("seconds") or 0.0)
                if self._evaluations_left:
                    self._unprinted += 1
                    if self._bar is not None:
                        self._bar.update(1)
                    return
                self._unprinted = 0
                line = (f"[{self.count}/{self.total}] no retraining: {self._evaluations_done} evaluations of the base model on "
                        f"masked test data ({self._evaluation_seconds:.1f} s; accuracies in report.md)")  # fmt: skip
        if self._bar is None and self.count < self.total and (left := self._eta()) is not None:  # a log file: the ETA
            line += f", eta {_duration(left)}"
        say(line)
        if self._bar is not None:
            self._bar.update(1)
