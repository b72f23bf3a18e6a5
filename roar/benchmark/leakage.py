"""The mask-leakage probe: can a model tell the class from the ROAR mask alone?

Rong, Leemann et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods"
(ICML 2022) point out that ROAR's retrained model sees *where* features were removed: when the
shape of the mask depends on the class (a saliency map outlines the object), the mask itself is
a feature, and a retrained model can score above chance on images with every informative pixel
removed. That inflates the accuracy a ROAR curve keeps (the ranking looks worse than it is) or,
for KAR, flatters it.

The probe measures this directly: for each method, threshold and masking order, the same kind of
classifier is trained (same model and trainer settings as the retrains) on the 0/1 masks alone, the
image replaced by the mask of its removed features. Its test accuracy above chance is the class
information the mask shape carries. ``random`` is the reference: its masks are drawn independently
of the image, so its probe stays at chance. ROAR and KAR masks of one threshold are complements,
so they carry the same information; both are probed so each curve has its own number.

Written as ``leakage.csv`` beside the report; the report's section, ``leakage.png`` and the
warnings are built from it by :mod:`roar.benchmark.leakage_report` whenever the report is.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

import torch

from roar.benchmark.cell import RUNS_DIR, _classifier, _trainer, rank_provider
from roar.benchmark.leakage_report import COLUMNS, LEAKAGE_CSV, LEAKAGE_TITLE, leakage_section, read_rows
from roar.benchmark.plan import NORETRAIN_ORDER, RETRAIN_MODES, RunSpec
from roar.benchmark.progress import outcome_text
from roar.data.masking import feature_mask
from roar.data.roar import RoarDataModule
from roar.fingerprint import fingerprint_key
from roar.quiet import say


class MaskOnlyDataModule(RoarDataModule):
    """A :class:`RoarDataModule` whose images are replaced by their masks: 1 where a feature is removed, else 0.

    The ranks, threshold and order (``mode``) are those of the ROAR/KAR retrain the probe stands
    beside; the fill is irrelevant (nothing of the image is left). A pixel-granularity mask is
    broadcast over the channels, so the input has the image's shape and any model of the
    benchmark takes it unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.threshold == 0:
            raise ValueError("threshold 0 removes nothing, so every mask is empty; give a threshold in (0, 1)")
        # The classifier standardises its input with these: a 0/1 mask is centred at 0.5 whatever the images' statistics.
        self.channel_mean = [0.5] * self.in_chans
        self.channel_std = [0.5] * self.in_chans

    def mask(self, images: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        removed = feature_mask(self.batch_ranks(images, indices), self.threshold, self.mode)
        b, c, h, w = images.shape
        shape = (b, c, h, w) if self.granularity == "element" else (b, 1, h, w)
        return removed.view(shape).expand(b, c, h, w).to(images.dtype).contiguous()


def probe_accuracy(dm: MaskOnlyDataModule, model: torch.nn.Module, trainer: Any) -> float:
    """Train ``model`` on the masks of ``dm`` and return its test accuracy (scored at the last epoch, as the retrains)."""
    trainer.fit(model, datamodule=dm)
    return float(trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"])


def tested_images(dm: MaskOnlyDataModule, trainer: Any) -> int:
    """How many test images the last ``trainer.test`` scored: the ``n`` of the accuracy's binomial interval.

    The whole test split, unless ``trainer.limit_test_batches`` cut it to fewer batches.
    """
    size = len(dm.split_dataset("test"))
    batches = trainer.num_test_batches[0] if trainer.num_test_batches else math.inf
    return int(min(size, batches * dm.batch_size))


def chance_accuracy(dm: MaskOnlyDataModule, n_test: int) -> float:
    """The best test accuracy of a probe blind to its input: the share of the most frequent class
    among the ``n_test`` scored test images (``1 / num_classes`` on a balanced test set).

    A mask that carries nothing still lets the probe learn the class prior, so on imbalanced data
    chance is the majority share, not ``1 / num_classes``: with the latter, every method's probe,
    ``random``'s too, would be marked as leaking on a 90/10 dataset.
    """
    labels = torch.as_tensor(dm.source.test.labels[:n_test]).long()
    return float(torch.bincount(labels, minlength=dm.num_classes).max()) / max(len(labels), 1)


def probe_orders(modes: list[str]) -> list[str]:
    """The masking orders whose curves the benchmark draws: ``roar`` and/or ``kar`` (no-retrain modes mask in their order)."""
    orders = {mode if mode in RETRAIN_MODES else NORETRAIN_ORDER[mode] for mode in modes}
    return [order for order in RETRAIN_MODES if order in orders]


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)  # atomic: an interrupted probe never leaves a half-written table
    return path


def run_leakage_probe(cfg: Any, out: Path, base_ckpt: Path, provenance: Any, *, progress: bool = True, verbose: bool = False) -> list[dict[str, Any]]:
    """One probe per (method, threshold, order) with ``cfg.leakage_seed``, written to ``<out>/leakage.csv``.

    A probe already in ``leakage.csv`` with the same fingerprint (that of the retrain it stands
    beside: settings, base model, ranks) is kept, so a rerun trains only what is missing. With
    ``progress``, one line per trained probe, as the grid's; ``verbose`` adds each probe's own bars.
    The report (written after the probes) reads the file.
    """
    from lightning.pytorch import seed_everything

    path = out / LEAKAGE_CSV
    done = {row["fingerprint"]: row for row in read_rows(path)}
    # the names of the grid's run ids (runner.pending_runs): the probe's fingerprint is its retrain's
    dataset, model_name = cfg.data.get("source", "digits"), str(cfg.model.get("arch", "small_cnn")).replace("/", ":")
    seed = cfg.leakage_seed
    plan = [
        (spec, fingerprint_key({"leakage": provenance.for_run(spec)}))
        for order in probe_orders(cfg.mode_names)  # masks do not depend on the fill: one probe per order
        for threshold in sorted(cfg.thresholds)
        for spec in (RunSpec(dataset, model_name, method, order, threshold, seed) for method in cfg.methods)
    ]
    count = sum(key in done for _, key in plan)
    rows = []
    for spec, key in plan:
        if key in done:
            rows.append(done[key])
            continue
        start = time.perf_counter()
        seed_everything(seed, workers=True, verbose=False)
        dm = MaskOnlyDataModule(**cfg.data, ranks=rank_provider(cfg, out, base_ckpt, spec.method), threshold=spec.threshold, mode=spec.mode, ranks_progress=False)
        run_dir = out / RUNS_DIR / "leakage" / spec.mode / spec.method / f"t{spec.threshold:g}-s{seed}"
        trainer = _trainer(cfg, run_dir, logger=[], progress=verbose)
        acc = probe_accuracy(dm, _classifier(cfg, dm), trainer)
        seconds = time.perf_counter() - start
        n_test = tested_images(dm, trainer)
        rows.append({
            "dataset": dataset, "model": model_name, "method": spec.method, "order": spec.mode, "threshold": spec.threshold, "seed": seed,
            "test_acc": acc, "n_test": n_test, "chance": chance_accuracy(dm, n_test), "epochs": trainer.current_epoch,
            "seconds": seconds, "fingerprint": key,
        })  # fmt: skip
        write_rows(rows, path)  # after every probe: an interrupted run keeps what it trained
        count += 1
        if progress:
            say(f"[{count}/{len(plan)}] leakage probe {spec.mode} {spec.method} t={spec.threshold:g}: {outcome_text({'status': 'done', 'test_acc': acc, 'seconds': seconds})}")
    write_rows(rows, path)
    return rows


__all__ = ["COLUMNS", "LEAKAGE_CSV", "LEAKAGE_TITLE", "MaskOnlyDataModule", "chance_accuracy", "leakage_section", "probe_accuracy", "probe_orders", "read_rows", "run_leakage_probe", "tested_images"]
