"""What a grid reuses between its runs (the loaded dataset) changes no result: same ids, same accuracies."""

import torch

from roar.benchmark.cell import execute_run
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.data.datamodule import ImageDataModule
from roar.data.sources import load_source, reuse_loaded_sources


def test_inside_the_block_a_dataset_is_loaded_once_per_set_of_arguments():
    with reuse_loaded_sources():
        a, b = load_source("digits", image_size=8), load_source("digits", image_size=8)
        c = load_source("digits", image_size=12)
        assert a is b and c.image_size == 12 and c.train.images.shape[-1] == 12
    assert load_source("digits", image_size=8) is not load_source("digits", image_size=8)  # outside: loaded afresh


def test_a_limited_datamodule_does_not_change_the_shared_data():
    with reuse_loaded_sources():
        whole = ImageDataModule(source="digits", image_size=8)
        before = whole.source.train.images.clone()
        ImageDataModule(source="digits", image_size=8, limit_train=50, label_permutation=True)
        again = ImageDataModule(source="digits", image_size=8)
        assert again.source is whole.source and torch.equal(again.source.train.images, before)


def test_a_run_scores_the_same_alone_and_after_other_runs_of_a_grid(tmp_path):
    cfg = BenchmarkConfig(
        data={"source": "digits", "image_size": 8, "limit_train": 150, "limit_test": 60}, methods=["random"],
        logger="none", trainer={"max_epochs": 1, "accelerator": "cpu"},
    )  # fmt: skip
    spec = RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 1)
    alone = execute_run(spec, cfg, tmp_path / "alone", tmp_path / "unused.ckpt", progress=False)
    with reuse_loaded_sources():
        execute_run(RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 0), cfg, tmp_path / "grid", tmp_path / "unused.ckpt", progress=False)
        in_grid = execute_run(spec, cfg, tmp_path / "grid", tmp_path / "unused.ckpt", progress=False)
    assert (in_grid["test_acc"], in_grid["epochs"]) == (alone["test_acc"], alone["epochs"])
