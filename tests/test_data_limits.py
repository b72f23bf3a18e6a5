"""data.limit_train / data.limit_test: a seeded, class-stratified part of the data, fingerprinted downstream."""

import inspect
from pathlib import Path

import pytest
import torch

from roar.__main__ import main as roar_main
from roar.attribution.compute import rank_entry_keys
from roar.benchmark.config import BaseModel, BenchmarkConfig
from roar.benchmark.provenance import ConfigChangedError, base_training, grid_settings
from roar.benchmark.prepare import train_base
from roar.benchmark.results import ResultsStore
from roar.data.datamodule import ImageDataModule
from roar.data.roar import RoarDataModule
from roar.models.checkpoint import provenance

DIGITS = {"source": "digits", "image_size": 8}
DEMO = str(Path(__file__).resolve().parents[1] / "configs/benchmark/digits_demo.yaml")


def test_a_part_keeps_each_class_in_proportion():
    full = ImageDataModule(**DIGITS)
    part = ImageDataModule(**DIGITS, limit_train=0.2, limit_test=90)
    n_full, n_part = len(full.source.train), len(part.source.train)
    assert n_part == round(0.2 * n_full) and len(part.source.test) == 90
    for whole, kept, n in ((full.source.train.labels, part.source.train.labels, n_part), (full.source.test.labels, part.source.test.labels, 90)):
        expected = torch.bincount(whole).double() * n / len(whole)
        counts = torch.bincount(kept, minlength=len(expected)).double()
        assert counts.sum() == n
        assert (counts - expected).abs().max() < 1, (counts, expected)  # the floor or the ceiling of each class's share


def test_the_kept_images_are_the_full_sets_and_fixed_by_the_seed():
    full = ImageDataModule(**DIGITS)
    a = ImageDataModule(**DIGITS, limit_train=100, seed=3)
    b = ImageDataModule(**DIGITS, limit_train=100, seed=3)
    c = ImageDataModule(**DIGITS, limit_train=100, seed=4)
    assert torch.equal(a.source.train.images, b.source.train.images)
    assert not torch.equal(a.source.train.images, c.source.train.images)
    # every kept image is one of the source's, with its own label
    flat = full.source.train.images.flatten(1)
    match = (a.source.train.images.flatten(1)[:, None, :] == flat[None]).all(-1)
    assert match.any(1).all()
    assert torch.equal(full.source.train.labels[match.float().argmax(1)], a.source.train.labels)
    # the test split is untouched without limit_test; global indices follow the smaller train pool
    assert len(a.source.test) == len(full.source.test) and a.num_train_pool == 100


def test_a_limit_that_keeps_everything_is_no_limit():
    full, whole = ImageDataModule(**DIGITS), ImageDataModule(**DIGITS, limit_train=1.0, limit_test=len(ImageDataModule(**DIGITS).source.test))
    assert whole.dataset_id == full.dataset_id and "limit" not in whole.dataset_id


@pytest.mark.parametrize("value", [0, -3, 1.5, 0.0, True, "half", 10**6])
def test_bad_limits_are_refused_naming_the_value(value):
    with pytest.raises(ValueError, match=rf"limit_train.*{value!r}|limit_train={value!r}"):
        ImageDataModule(**DIGITS, limit_train=value)


def test_the_limit_is_in_the_fingerprint_of_ranks_base_model_and_results():
    full, part, other = ({**DIGITS, **extra} for extra in ({}, {"limit_train": 200}, {"limit_train": 200, "seed": 1}))
    ids = [ImageDataModule(**data).dataset_id for data in (full, part, other)]
    assert ids[0] != ids[1] != ids[2] != ids[0]
    keys = [rank_entry_keys(ImageDataModule(**data), "gradient", checkpoint_sha="abc") for data in (full, part, other)]
    assert len({k["train"] for k in keys}) == 3
    cfgs = [BenchmarkConfig(data=data, methods=["random"], logger="none") for data in (full, part)]
    assert base_training(cfgs[0]) != base_training(cfgs[1]) and grid_settings(cfgs[0]) != grid_settings(cfgs[1])
    assert "limit_train" not in base_training(cfgs[0])["data"]  # fingerprints of the whole data are as before limits existed


def test_a_base_model_of_one_part_is_refused_for_another_and_retrained_with_force(tmp_path):
    def config(limit):
        data = {**DIGITS, "limit_train": limit, "limit_test": 40}
        return BenchmarkConfig(data=data, methods=["random"], logger="none", trainer={"max_epochs": 1, "accelerator": "cpu"}, base=BaseModel(max_epochs=1, min_accuracy=0.0))

    path = train_base(config(120), tmp_path, progress=False)
    assert provenance(path)["dataset"]["limit"] == {"train": 120, "test": 40, "seed": 0, "stratified": "by class"}
    assert train_base(config(120), tmp_path, progress=False) == path  # the same part: reused
    with pytest.raises(ConfigChangedError, match="limit_train"):
        train_base(config(150), tmp_path, progress=False)
    train_base(config(150), tmp_path, progress=False, force=True)
    assert provenance(path)["dataset"]["limit"]["train"] == 150


def test_the_masked_datamodule_takes_every_setting_of_the_plain_one():
    # The grid builds each retrain's RoarDataModule from the data section the base model was trained
    # with: a setting only the plain module takes fails every masked run (limit_train once did).
    plain, masked = inspect.signature(ImageDataModule).parameters, inspect.signature(RoarDataModule).parameters
    assert [name for name in plain if name not in masked] == []
    assert {name: masked[name].default for name in plain} == {name: p.default for name, p in plain.items()}


def test_a_grid_on_a_part_retrains_every_masked_run_on_that_part(tmp_path):
    out = tmp_path / "part"
    args = [
        "benchmark", "--config", DEMO, "--data.image_size", "8", "--data.init_args.limit_train", "200", "--data.init_args.limit_test", "60",
        "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "2", "--benchmark.base.min_accuracy", "0", "--benchmark.methods", "[gradient]",
        "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.modes", "[roar, kar]", "--benchmark.noretrain", "false",
        "--benchmark.logger", "none", "--progress", "false", "--out", str(out),
    ]  # fmt: skip
    assert roar_main(args) == 0
    rows = ResultsStore(out / "results.db").rows()
    assert sorted((r["mode"], r["status"]) for r in rows) == [("kar", "done"), ("reference", "done"), ("roar", "done")]
    for row in rows:
        data = row["provenance"]["settings"]["data"]
        assert (data["limit_train"], data["limit_test"]) == (200, 60)
