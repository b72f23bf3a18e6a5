"""What a benchmark report must warn about before anyone reads its rankings.

* **Too few seeds.** Hooker et al. (NeurIPS 2019) retrain every point five times; a percentile
  bootstrap over two seeds is only their min and max, and over one seed no interval exists. A
  report of fewer than :data:`~roar.statistics.MIN_SEEDS` seeds per retraining
  evaluation says so.
* **A reference that does not match the base model.** The retrained unmasked reference (the
  start of every ROAR curve) is trained with the retraining settings; the base model, whose
  attributions rank the features, may be trained for longer. When the two differ by more than
  :data:`REFERENCE_GAP` in test accuracy, the retrained models are weaker (or stronger) than the
  model that was explained, and the curves measure that as well as the ranking.
* **Masks that leak.** When the mask-leakage probe (Rong, Leemann et al., ICML 2022) reads the
  class off a method's masks where ``random``'s masks tell nothing
  (:func:`~roar.benchmark.leakage_report.leakage_caveats`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from roar.benchmark.evaluations import Evaluation
from roar.benchmark.leakage_report import LEAKAGE_CSV, leakage_caveats, read_rows
from roar.benchmark.plan import REFERENCE_METHOD, REFERENCE_MODE
from roar.statistics import DEFAULT_LEVEL, MIN_SEEDS

REFERENCE_GAP = 0.05  # test accuracy: 5 points


def _done(row: dict[str, Any]) -> bool:
    return (row.get("status") or "done") == "done" and row.get("test_acc") not in (None, "")


def base_accuracies(rows: Iterable[dict[str, Any]], out_dir: str | Path | None = None) -> dict[tuple[str, str], tuple[float, str]]:
    """``{(dataset, model): (base model test accuracy, where it was read)}``.

    The base model's accuracy is the noretrain reference row (the base model on the unmasked test
    set); without noretrain runs, the test accuracy that training recorded inside ``base.ckpt``.
    """
    found: dict[tuple[str, str], tuple[float, str]] = {}
    pairs = set()
    for row in rows:
        pairs.add((str(row["dataset"]), str(row["model"])))
        if _done(row) and row["method"] == REFERENCE_METHOD and row["mode"] == "noretrain":
            found[(str(row["dataset"]), str(row["model"]))] = (float(row["test_acc"]), "the noretrain reference run")
    checkpoint = Path(out_dir) / "base.ckpt" if out_dir is not None else None
    if len(pairs) == 1 and not found and checkpoint is not None and checkpoint.is_file():
        try:  # torch only here: a report of a folder without base.ckpt never imports it
            from roar.models.checkpoint import provenance

            recorded = (provenance(checkpoint) or {}).get("test_acc")
        except Exception:  # an unreadable checkpoint leaves the check out; the report itself still matters
            recorded = None
        if recorded is not None:
            found[next(iter(pairs))] = (float(recorded), "base.ckpt")
    return found


def caveats(rows: list[dict[str, Any]], analysed: Iterable[Evaluation], out_dir: str | Path | None = None, level: float = DEFAULT_LEVEL) -> list[str]:
    """One sentence per thing to distrust in the report (empty when there is none)."""
    lines = []
    for ev in analysed:
        n = min(len(ev.seeds), ev.fewest_seeds)  # a point of fewer seeds makes the curve's interval that weak
        if n >= MIN_SEEDS:
            continue
        fewest = f" at some of its points (of {len(ev.seeds)}: an unfinished grid?)" if n < len(ev.seeds) else ""
        if "noretrain" in ev.mode and n == 1:
            lines.append(
                f"`{ev.name}` on {ev.dataset}/{ev.model} evaluates the one base model once: its intervals over seeds are undefined (shown as `[–]`)."
            )
        elif n == 1:
            lines.append(f"`{ev.name}` on {ev.dataset}/{ev.model} ran 1 seed{fewest}: no confidence interval exists, and no difference from random or ranking can be called real. Run at least {MIN_SEEDS} seeds.")
        else:
            lines.append(f"`{ev.name}` on {ev.dataset}/{ev.model} ran only {n} seeds{fewest}: its intervals are the range of {n} values, too narrow to trust. Run at least {MIN_SEEDS} seeds.")
    references: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if _done(row) and row["method"] == REFERENCE_METHOD and row["mode"] == REFERENCE_MODE:
            references[(str(row["dataset"]), str(row["model"]))].append(float(row["test_acc"]))
    bases = base_accuracies(rows, out_dir)
    for pair, values in sorted(references.items()):
        if pair not in bases:
            continue
        reference, (base, where) = statistics.fmean(values), bases[pair]
        if abs(reference - base) > REFERENCE_GAP:
            lines.append(
                f"On {pair[0]}/{pair[1]} the retrained unmasked reference reaches {reference:.3f} test accuracy ({'one seed' if len(values) == 1 else f'mean of {len(values)} seeds'}) "
                f"but the base model {base:.3f} ({where}): {abs(reference - base) * 100:.1f} points apart (more than {REFERENCE_GAP * 100:.0f}). "
                "The retrained models are not the model that was explained; train the retrains as the base (trainer.max_epochs) before reading the curves."
            )
    if out_dir is not None:  # masks that tell the class while random's do not (roar.benchmark.leakage_report)
        lines += leakage_caveats(read_rows(Path(out_dir) / LEAKAGE_CSV), level)
    return lines
