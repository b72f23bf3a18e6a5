"""Fixtures of the sanity-path tests (test_sanity_batched, test_sanity_shared): one small CNN trained
on 8 px digits once per module (a few seconds) and a fixed batch of its test images; modules opt in
to ``one_thread`` with ``pytestmark = pytest.mark.usefixtures("one_thread")``. A module's own
fixture of the same name takes precedence, as pytest resolves names."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from roar.data.datamodule import ImageDataModule
from roar.models.classifier import ImageClassifier
from roar.sanity.maps import select_batch


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits() -> ImageDataModule:
    return ImageDataModule(source="digits", image_size=8, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def trained(digits) -> ImageClassifier:
    L.seed_everything(0, verbose=False)
    dm = digits
    model = ImageClassifier(arch="small_cnn", num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
                            channel_mean=dm.channel_mean, channel_std=dm.channel_std)  # fmt: skip
    L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(model, dm)  # fmt: skip
    return model.eval()


@pytest.fixture(scope="module")
def batch(digits):
    return select_batch(digits.split_dataset("test"), 8, seed=0)


@pytest.fixture
def run_benchmarks(tmp_path):
    """``python -m benchmarks.run ARGS --device cpu`` in-process, into ``tmp_path``: returns (exit code, results.json).

    The command pins the thread count for its figures; the suite gets its own back after.
    """
    from benchmarks.run import main

    def run(*argv: str) -> tuple[int, dict]:
        threads, out = torch.get_num_threads(), tmp_path / "results.json"
        try:
            code = main([*argv, "--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "work")])
        finally:
            torch.set_num_threads(threads)
        return code, json.loads(out.read_text())

    return run
