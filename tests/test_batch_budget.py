"""``attribution_batch_size: auto``: the largest power of two within a memory budget (issue 12, item 3).

ROAR (Hooker et al., NeurIPS 2019) ranks every image once with the base model; the batch size of
that pass is memory only, so ``auto`` must give the ranks of any integer batch size and reuse them
both ways, except for GradientSHAP without baselines, whose maps depend on the batch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from roar.__main__ import main as roar_main
from roar.attribution import StoreRanks
from roar.attribution.batch_budget import (
    CPU_MAX_AUTO_BATCH, DEFAULT_BATCH_SIZE, MAX_AUTO_BATCH, auto_batch_size, check_batch_size, check_budget, choose_batch_size, estimate_cost,
    parse_size,
)  # fmt: skip
from roar.attribution.compute import compute_ranks, rank_entry_keys
from roar.attribution.store import AttributionStore, checkpoint_sha256
from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MiB, GiB = 2**20, 2**30
TINY = [
    "--config", str(ROOT / "configs/benchmark/digits_demo.yaml"), "--benchmark.methods", "[gradient]",
    "--benchmark.logger", "none", "--progress", "false",
]  # fmt: skip


# ------------------------------------------------------------------------------------ the choice
def test_the_largest_power_of_two_whose_predicted_peak_fits():
    assert choose_batch_size(1 * MiB, 100 * MiB, num_images=10_000) == 64  # 128 MiB > 100 MiB
    assert choose_batch_size(1 * MiB, 128 * MiB, num_images=10_000) == 128  # exactly the budget fits
    assert choose_batch_size(1 * MiB, 100 * MiB, num_images=10_000, fixed_bytes=40 * MiB) == 32  # 40 + 64 > 100
    # ResNet50 at 32 px measured ~9 MiB per image for a gradient; half of an H100's 78 GiB free: 4096 cap.
    assert choose_batch_size(9 * MiB, 39 * GiB, num_images=45_000) == 4096 == MAX_AUTO_BATCH
    assert choose_batch_size(9 * MiB, 39 * GiB, num_images=45_000, cap=CPU_MAX_AUTO_BATCH) == 256
    assert choose_batch_size(300 * MiB, 39 * GiB, num_images=45_000) == 128  # IG with 25 steps at 224 px
    assert choose_batch_size(1 * GiB, 10 * MiB, num_images=100) == 1  # nothing fits: one image at a time
    assert choose_batch_size(1, GiB, num_images=100) == 100  # a small dataset is one batch
    assert choose_batch_size(1 * MiB, GiB, num_images=3) == 3
    assert choose_batch_size(1 * MiB, GiB, num_images=1) == 1


def test_sizes_and_budgets_parse_to_bytes_and_fractions():
    assert parse_size("8GiB") == 8 * GiB
    assert parse_size("512 MiB") == 512 * MiB
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5kib") == 1536
    assert check_budget("8GiB") == 8 * GiB
    assert check_budget(0.5) == check_budget("0.5") == 0.5
    assert check_budget(1) == 1.0
    assert check_batch_size("auto") == "auto" and check_batch_size(7) == 7


@pytest.mark.parametrize(
    ("value", "message"),
    [("big", r"got 'big'"), (0, r"got 0"), (-4, r"got -4"), (True, r"got True"), (2.5, r"got 2.5")],
)
def test_a_bad_batch_size_is_named_with_the_choices(value, message):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer or 'auto'.*" + message):
        check_batch_size(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, r"fraction in \(0, 1\].*got 0"), (1.5, r"fraction in \(0, 1\].*got 1.5"), ("-0.1", r"got -0.1"),
        ("8 parsecs", r"'8 parsecs'.*valid units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB.*fraction in \(0, 1\]"),
        ("GiB", r"'GiB'.*valid units"), ("0GiB", r"'0GiB'.*zero"),
    ],
)  # fmt: skip
def test_a_bad_budget_is_named_with_the_choices(value, message):
    with pytest.raises(ValueError, match=message):
        check_budget(value)


def test_bad_settings_are_refused_before_any_compute(tmp_path, capsys):
    dm = ImageDataModule(source="digits", image_size=8)
    with pytest.raises(ValueError, match="'big'"):
        compute_ranks(dm, "sobel", tmp_path / "store", batch_size="big", progress=False)
    with pytest.raises(ValueError, match="got 2"):
        compute_ranks(dm, "sobel", tmp_path / "store", batch_size="auto", memory_budget=2, progress=False)
    assert not (tmp_path / "store").exists()  # refused before the store was opened
    with pytest.raises(ValueError, match="'lots'"):
        StoreRanks("sobel", batch_size="lots")
    with pytest.raises(ValueError, match="'8 parsecs'"):
        StoreRanks("sobel", batch_size="auto", memory_budget="8 parsecs")
    with pytest.raises(SystemExit):  # the config: parse-time refusal, before the checkpoint is even looked for
        roar_main(["attribute", *TINY, "--benchmark.attribution_memory_budget", "8 parsecs", "--out", str(tmp_path / "out")])
    assert "attribution_memory_budget '8 parsecs'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the probe
def test_the_cpu_probe_counts_the_bytes_each_image_adds():
    def step(n: int) -> torch.Tensor:
        x = torch.ones(n, 1000)  # 4000 bytes per image
        x.add_(1).view(n, 10, 100).transpose(1, 2)  # in place and views: nothing new
        return x.sum(1) + torch.zeros(10).sum()  # the sum and the addition: one float per image each; zeros(10) and its sum fixed

    per_image, fixed = estimate_cost(step, 1000, torch.device("cpu"))
    assert per_image == 4000 + 4 + 4
    assert fixed == 40 + 4


def test_the_cpu_probe_of_a_real_model_sees_its_backward():
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8).eval()

    def step(n: int) -> torch.Tensor:
        x = torch.rand(n, 1, 8, 8, requires_grad=True)
        return torch.autograd.grad(model(x)[:, 0].sum(), x)[0]

    per_image, fixed = estimate_cost(step, 1000, torch.device("cpu"))
    assert per_image > 2 * 4 * 64  # more than the input and its gradient: the activations and their gradients
    batch, line = auto_batch_size(step, 1000, torch.device("cpu"), budget=int(fixed + 100 * per_image))  # bytes
    assert batch == 64 and line.startswith("attribution batch: 64 (auto, budget ")


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    L.seed_everything(0, verbose=False)
    dm = ImageDataModule(source="digits", image_size=8, batch_size=64, seed=0)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, channel_mean=dm.channel_mean, channel_std=dm.channel_std)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("base") / "base.ckpt"
    trainer.save_checkpoint(path)
    return path


def attribute(out: Path, ckpt: Path, batch: str) -> int:
    return roar_main(["attribute", *TINY, "--benchmark.attribution_batch_size", batch, "--ckpt", str(ckpt), "--out", str(out)])


def entries(out: Path) -> dict[str, tuple[np.ndarray, int]]:
    """``{split: (ranks, the batch size recorded in meta.json)}`` of the store's gradient entries."""
    store = AttributionStore(out / "attributions")
    found = {}
    for entry in store.entries():
        meta = json.loads((entry.path / "meta.json").read_text())
        found[entry.split] = (np.asarray(store.load(entry.fingerprint)), meta["batch_size"])
    return found


def test_auto_gives_the_ranks_of_an_integer_batch_and_reuses_them_both_ways(tmp_path, base_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="roar.attribution")
    assert attribute(tmp_path / "fixed", base_checkpoint, "16") == 0
    assert attribute(tmp_path / "auto", base_checkpoint, "auto") == 0
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attribution batch:")]
    assert len(chosen) == 1 and "(auto, budget 0.5 of " in chosen[0]  # measured once, for both splits
    fixed, auto = entries(tmp_path / "fixed"), entries(tmp_path / "auto")
    assert set(fixed) == set(auto) == {"train", "test"}
    batch = auto["train"][1]
    assert chosen[0].startswith(f"attribution batch: {batch} (auto")
    assert batch == CPU_MAX_AUTO_BATCH and auto["test"][1] == batch and fixed["train"][1] == 16  # a few MiB per image: the CPU cap
    for split in ("train", "test"):
        np.testing.assert_array_equal(auto[split][0], fixed[split][0])

    caplog.clear()  # auto reuses ranks of batch 16, and 7 reuses those of auto: nothing is measured or recomputed
    assert attribute(tmp_path / "fixed", base_checkpoint, "auto") == 0
    assert attribute(tmp_path / "auto", base_checkpoint, "7") == 0
    assert not [r for r in caplog.records if r.getMessage().startswith("attribution batch:")]
    assert sum("reusing cached attribution ranks" in r.getMessage() for r in caplog.records) == 4
    assert {s: b for s, (_, b) in entries(tmp_path / "fixed").items()} == {"train": 16, "test": 16}
    assert {s: b for s, (_, b) in entries(tmp_path / "auto").items()} == {"train": batch, "test": batch}


def test_auto_is_the_fixed_default_for_a_method_whose_maps_depend_on_the_batch(tmp_path, base_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="roar.attribution")
    dm = ImageDataModule(source="digits", image_size=8, seed=0)
    sha = checkpoint_sha256(base_checkpoint)
    keys = {b: rank_entry_keys(dm, "gradient_shap", checkpoint_sha=sha, batch_size=b) for b in ("auto", DEFAULT_BATCH_SIZE, 16)}
    assert keys["auto"] == keys[DEFAULT_BATCH_SIZE] != keys[16]  # the machine's memory never enters its fingerprint
    params = {"n_samples": 2}
    auto = compute_ranks(dm, "gradient_shap", tmp_path, checkpoint=base_checkpoint, method_params=params, batch_size="auto", splits=("test",), progress=False)
    assert any(r.getMessage() == "attribution batch: 256 (auto is the fixed default for gradient_shap: its maps depend on the batch)" for r in caplog.records)
    again = compute_ranks(dm, "gradient_shap", tmp_path, checkpoint=base_checkpoint, method_params=params, batch_size=256, splits=("test",), progress=False)
    assert len(AttributionStore(tmp_path).entries()) == 1  # batch 256 found auto's entry
    np.testing.assert_array_equal(auto["test"], again["test"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_chosen_batch_peaks_within_the_budget():
    device = torch.device("cuda")
    model = ImageClassifier(arch="resnet18", num_classes=10, in_chans=3, image_size=32).to(device).eval()

    def step(n: int) -> torch.Tensor:
        x = torch.rand(n, 3, 32, 32, device=device, requires_grad=True)
        return torch.autograd.grad(model(x).max(1).values.sum(), x)[0]

    batch, line = auto_batch_size(step, 50_000, device, budget=1 * GiB)
    assert 1 <= batch <= MAX_AUTO_BATCH and "budget 1.0 GiB" in line
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step(batch)
    assert torch.cuda.max_memory_allocated() - before <= 1 * GiB
    if batch < MAX_AUTO_BATCH:  # the next power of two would not have fitted (with a 20% margin for the linear model)
        torch.cuda.reset_peak_memory_stats()
        step(2 * batch)
        assert torch.cuda.max_memory_allocated() - before > 0.8 * GiB


def test_the_grid_says_the_batch_auto_chose_on_the_methods_line(tmp_path, base_checkpoint, capsys):
    argv = [a for a in TINY if a not in ("--progress", "false")]
    assert roar_main(["attribute", *argv, "--benchmark.attribution_batch_size", "auto", "--ckpt", str(base_checkpoint), "--out", str(tmp_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ranks of gradient: ready")]
    assert len(lines) == 1 and f"; attribution batch: {CPU_MAX_AUTO_BATCH} (auto, budget 0.5 of " in lines[0], lines


def test_attribute_under_fresh_random_masks_names_only_the_stored_ranks(tmp_path, base_checkpoint, capsys):
    # protocol.random_mask fresh: random's masks are drawn at every read, so nothing of it is in the store
    argv = ["--benchmark.methods", "[gradient, random]", "--benchmark.protocol.random_mask", "fresh", "--ckpt", str(base_checkpoint), "--out", str(tmp_path)]
    assert roar_main(["attribute", *TINY, *argv]) == 0
    assert sorted(p.name for p in (tmp_path / "attributions").iterdir()) == ["gradient"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"ranks of gradient are in {tmp_path / 'attributions'}; random: drawn afresh at every read (random_mask fresh), nothing stored", last
