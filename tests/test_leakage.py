"""The mask-leakage probe (Rong, Leemann et al., ICML 2022): a model trained on ROAR's masks alone.

Masks drawn independently of the image (``random``), or the same for every image (the
``ground_truth`` oracle: |w| is one ranking for the whole synthetic set), carry no class
information, so the probe must sit at chance. A mask whose shape follows the class (the ranking of
the label class's own weights of a linear model, through the real gradient method with
``target: label``) must leak: the probe reads the label off the mask.

Chance margin: the synthetic labels are ``1(z > 0)`` with ``z`` standard normal, so a probe that
learns nothing predicts labels independent of the test labels and its accuracy over ``n`` test
images is a binomial proportion around 1/2 with standard error ``sqrt(0.25 / n)`` (0.011 at
n = 2000); the tests allow 4 standard errors (a 6e-5 two-sided false alarm rate).
"""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from roar.attribution import StoreRanks
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.leakage import LEAKAGE_TITLE, MaskOnlyDataModule, chance_accuracy, probe_accuracy, probe_orders
from roar.benchmark.leakage_report import leaks
from roar.benchmark.results import ResultsStore
from roar.benchmark.runner import run_benchmark, write_benchmark_report
from roar.data.datamodule import ImageDataModule
from roar.data.masking import feature_mask
from roar.models.classifier import ImageClassifier

N_TRAIN, N_TEST = 2000, 2000
MARGIN = 4 * math.sqrt(0.25 / N_TEST)
PROBE_LINE = re.compile(r"^\[[12]/2\] leakage probe roar (random|gradient) t=0.25: test acc [01]\.\d{3} \([\d.]+ s\)$")
SOURCE = {"source": "synthetic_linear", "batch_size": 1000, "val_fraction": 0.0, "source_options": {"n_train": N_TRAIN, "n_test": N_TEST}}


def _trainer(epochs: int = 10) -> Trainer:
    return Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0)  # fmt: skip


def _linear(dm: ImageDataModule) -> ImageClassifier:
    return ImageClassifier(arch="linear", num_classes=2, in_chans=1, image_size=4, channel_mean=dm.channel_mean, channel_std=dm.channel_std,
                           optimizer="adamw", lr=0.05, weight_decay=0.0, warmup_epochs=0)  # fmt: skip


def _probe(ranks: StoreRanks, threshold: float = 0.25, mode: str = "roar") -> tuple[float, MaskOnlyDataModule]:
    seed_everything(0, verbose=False)
    dm = MaskOnlyDataModule(**SOURCE, ranks=ranks, threshold=threshold, mode=mode, ranks_progress=False)
    return probe_accuracy(dm, _linear(dm), _trainer()), dm


@pytest.fixture(scope="module")
def linear_base(tmp_path_factory):
    """A linear model of the synthetic set: its two classes' weight vectors rank the features differently."""
    seed_everything(0, verbose=False)
    dm = ImageDataModule(**SOURCE)
    model = _linear(dm)
    trainer = _trainer(epochs=5)
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_random_and_oracle_masks_leak_nothing(tmp_path):
    acc, dm = _probe(StoreRanks("random", store=str(tmp_path)))
    labels = dm.source.test.labels
    assert abs(labels.float().mean().item() - 0.5) < MARGIN  # the chance the margin is about
    assert abs(acc - 0.5) < MARGIN, f"random masks leak: probe accuracy {acc:.3f}"
    # the masks the probe saw are the real ones: a quarter of the 16 features, different per image
    masks = torch.stack([dm.mask(dm.source.test.images[:64], torch.arange(64) + dm.num_train_pool)])[0]
    assert masks.flatten(1).sum(1).eq(4).all() and masks.flatten(1).unique(dim=0).shape[0] > 32
    # the oracle ranks every image alike, so its mask is one constant picture: nothing to learn
    acc, dm = _probe(StoreRanks("ground_truth", store=str(tmp_path)))
    assert abs(acc - 0.5) < MARGIN, f"a constant oracle mask leaks: probe accuracy {acc:.3f}"


def test_class_shaped_masks_leak(tmp_path, linear_base):
    ranks = StoreRanks("gradient", store=str(tmp_path), base_checkpoint=str(linear_base), target="label", score="raw")
    acc, dm = _probe(ranks)
    # The gradient of the label's logit is that class's weight row: the mask is a function of the label.
    index = torch.arange(N_TEST) + dm.num_train_pool
    removed = feature_mask(dm.batch_ranks(dm.source.test.images, index), 0.25, "roar")
    y = dm.source.test.labels
    assert not torch.equal(removed[y == 0][0], removed[y == 1][0])
    assert (removed[y == 0] == removed[y == 0][0]).all() and (removed[y == 1] == removed[y == 1][0]).all()
    assert acc > 0.95, f"class-shaped masks should give the label away, probe accuracy {acc:.3f}"
    # KAR's mask of the same threshold is the complement: the same information, so one probe speaks for both
    kar = MaskOnlyDataModule(**SOURCE, ranks=ranks, threshold=0.25, mode="kar", ranks_progress=False)
    assert torch.equal(kar.mask(dm.source.test.images, index), 1 - dm.mask(dm.source.test.images, index))


def test_benchmark_records_leakage_beside_the_report(tmp_path, capsys):
    cfg = BenchmarkConfig(
        data={**SOURCE, "source_options": {"n_train": 1000, "n_test": 1000}}, model={"arch": "linear", "lr": 0.05, "warmup_epochs": 0},
        methods=["random", "gradient"], thresholds=[0.25], seeds=1, logger="none", trainer={"max_epochs": 5, "accelerator": "cpu"},
        protocol={"target": "label", "score": "raw"}, leakage=True, save_checkpoints=False, base={"max_epochs": 5},
    )  # fmt: skip
    cfg = BenchmarkConfig.from_dict(cfg.to_dict())
    out = tmp_path / "bench"
    capsys.readouterr()
    run_benchmark(cfg, out, progress=True)
    # one line per probe, as the grid's run lines; no probe's own epochs or banners
    printed = capsys.readouterr()
    probe_lines = [line for line in printed.out.splitlines() if "leakage probe" in line]
    assert len(probe_lines) == 2 and all(PROBE_LINE.match(line) for line in probe_lines), probe_lines
    assert "Epoch" not in printed.out + printed.err
    rows = list(csv.DictReader((out / "leakage.csv").open()))
    acc = {(r["method"], r["order"]): float(r["test_acc"]) for r in rows}
    assert sorted(acc) == [("gradient", "roar"), ("random", "roar")]
    assert acc[("gradient", "roar")] > 0.95 and abs(acc[("random", "roar")] - 0.5) < 4 * math.sqrt(0.25 / 1000)
    labels = ImageDataModule(**cfg.data).source.test.labels
    majority = torch.bincount(labels).max().item() / len(labels)  # about 0.5: two classes drawn at random
    assert 0.5 < majority < 0.5 + MARGIN and all(float(r["chance"]) == majority and int(r["n_test"]) == 1000 for r in rows)
    assert leaks(next(r for r in rows if r["method"] == "gradient")) and not leaks(next(r for r in rows if r["method"] == "random"))
    report = (out / "report.md").read_text()
    assert report.count(LEAKAGE_TITLE) == 1 and "| `gradient` | " in report and (out / "leakage.png").is_file()
    assert "ROAR masks of `gradient` leak at threshold 0.25" in report.split("## Warnings")[1]
    # a rerun trains nothing new: the probes are found by fingerprint and kept as they were
    run_benchmark(cfg, out, progress=True, report=False)
    assert "leakage probe" not in capsys.readouterr().out
    assert list(csv.DictReader((out / "leakage.csv").open())) == rows
    # the report rebuilt from the results (`python -m roar report`) has the section once, as before
    write_benchmark_report(cfg, out, ResultsStore(out / "results.db", read_only=True), print_table=False)
    assert (out / "report.md").read_text() == report


def test_orders_and_bad_settings():
    assert probe_orders(["roar"]) == ["roar"]
    assert probe_orders(["noretrain_kar", "roar"]) == ["roar", "kar"]
    with pytest.raises(ValueError, match="leakage_seed must be a non-negative integer, got -1"):
        BenchmarkConfig(leakage=True, leakage_seed=-1).validate()
    with pytest.raises(ValueError, match="threshold 0 removes nothing"):
        MaskOnlyDataModule(**SOURCE, threshold=0.0)


def test_force_discards_the_probes_of_the_discarded_results(tmp_path):
    # --force starts afresh: probes of the old base model must not head the new report as warnings
    def config(leakage: bool, base_epochs: int) -> BenchmarkConfig:
        cfg = BenchmarkConfig(
            data={**SOURCE, "source_options": {"n_train": 1000, "n_test": 1000}}, model={"arch": "linear", "lr": 0.05, "warmup_epochs": 0},
            methods=["random", "gradient"], thresholds=[0.25], seeds=1, logger="none", trainer={"max_epochs": 5, "accelerator": "cpu"},
            protocol={"target": "label", "score": "raw"}, leakage=leakage, save_checkpoints=False, base={"max_epochs": base_epochs},
        )  # fmt: skip
        return BenchmarkConfig.from_dict(cfg.to_dict())

    out = tmp_path / "bench"
    run_benchmark(config(True, 5), out, progress=False)
    assert "ROAR masks of `gradient` leak" in (out / "report.md").read_text()
    run_benchmark(config(False, 3), out, progress=False, force=True)  # another base model, no probe asked
    report = (out / "report.md").read_text()
    assert LEAKAGE_TITLE not in report and "leak" not in report.split("## Warnings")[-1].split("\n## ")[0]
    assert not (out / "leakage.csv").exists() and not (out / "leakage.png").exists()


def test_chance_is_the_majority_share_of_the_scored_test_images(tmp_path):
    """A probe blind to the mask still learns the class prior: on 10 cats and 2 dogs it scores 10/12, not 1/2."""
    from formats import write_image_folder

    write_image_folder(tmp_path / "pets", per_class=10, size=8)
    for path in sorted((tmp_path / "pets/test/dog").iterdir())[:8]:
        path.unlink()
    dm = ImageDataModule(source="image_folder", root=str(tmp_path / "pets"), val_fraction=0.0)
    assert dm.num_classes == 2 and len(dm.source.test.labels) == 12
    assert chance_accuracy(dm, 12) == pytest.approx(10 / 12)
    assert chance_accuracy(dm, 2) == pytest.approx(1.0)  # only the images scored count (limit_test_batches)
    digits = ImageDataModule(source="digits")
    assert 0.1 <= chance_accuracy(digits, len(digits.source.test.labels)) < 0.11  # ten classes, nearly balanced
