"""RoarDataModule: masks from the store, looked up by global index, on the device, before augmentation."""

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from roar.attribution import StoreRanks
from roar.attribution.compute import compute_ranks, load_classifier
from roar.data.masking import num_masked
from roar.data.ranks import FreshRandomRanks
from roar.data.roar import RoarDataModule
from roar.models.classifier import ImageClassifier
from train import main

ROOT = Path(__file__).resolve().parents[1]


RANKING = ("method", "store", "base_checkpoint", "method_params", "granularity", "score", "target", "tie_seed")


def roar_dm(tmp_path, random_mask="fixed", **kwargs):
    """A RoarDataModule masked by the store's ranks (or fresh random ones), as the benchmark builds it."""
    args = dict(source="digits", image_size=8, batch_size=50, store=str(tmp_path / "store"), method="sobel", threshold=0.3)
    args.update(kwargs)
    ranking = {k: args.pop(k) for k in RANKING if k in args}
    if "ranks" in args:
        ranks = args.pop("ranks")
    elif random_mask == "fresh":
        ranks = FreshRandomRanks(granularity=ranking.get("granularity", "element"))
    else:
        ranks = StoreRanks(**ranking)
    return RoarDataModule(**args, ranks=ranks)


def masked_batch(dm, loader="test"):
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(getattr(dm, f"{loader}_dataloader")()))
    return batch, dm.on_after_batch_transfer(batch, 0)


@pytest.mark.parametrize("mode", ["roar", "kar"])
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_exactly_k_features_replaced_by_the_channel_mean(tmp_path, mode, threshold):
    dm = roar_dm(tmp_path, method="random", threshold=threshold, mode=mode)
    (images, _, indices), (masked, _, _) = masked_batch(dm)
    k = num_masked(threshold, 64)
    changed_expected = k if mode == "roar" else 64 - k
    mean = dm.channel_mean[0]
    replaced = (masked == mean).flatten(1)
    assert torch.all(replaced.sum(1) >= changed_expected)
    # pixels equal to the mean by chance aside, exactly the expected set differs from the input
    changed = (masked != images).flatten(1)
    assert torch.all(changed.sum(1) <= changed_expected)
    assert torch.all(masked.flatten(1)[changed] == mean)


def test_masks_follow_the_stored_ranks_of_each_global_index(tmp_path):
    dm = roar_dm(tmp_path, threshold=0.5)
    (images, _, indices), (masked, _, _) = masked_batch(dm)
    ranks = compute_ranks(dm, "sobel", tmp_path / "store", progress=False)
    k = num_masked(0.5, 64)
    local = (indices - dm.num_train_pool).numpy()  # test samples follow the train pool
    expected_mask = torch.from_numpy(np.asarray(ranks["test"])[local].astype(np.int64) < k).view(-1, 1, 8, 8)
    expected = torch.where(expected_mask, torch.tensor(dm.channel_mean[0]), images)
    torch.testing.assert_close(masked, expected)


def test_masks_are_identical_across_instances_and_reads(tmp_path):
    a = masked_batch(roar_dm(tmp_path, method="random"), "val")[1][0]
    b = masked_batch(roar_dm(tmp_path, method="random"), "val")[1][0]
    dm = roar_dm(tmp_path, method="random")
    c1 = masked_batch(dm, "val")[1][0]
    c2 = masked_batch(dm, "val")[1][0]
    assert torch.equal(a, b) and torch.equal(c1, c2) and torch.equal(a, c1)


def test_fresh_random_masks_change_between_reads(tmp_path):
    dm = roar_dm(tmp_path, method="random", random_mask="fresh", threshold=0.5)
    batch = next(iter(dm.val_dataloader()))
    first = dm.on_after_batch_transfer(batch, 0)[0]
    second = dm.on_after_batch_transfer(batch, 0)[0]
    assert not torch.equal(first, second)
    assert not (tmp_path / "store").exists()  # nothing to store for fresh masks


def test_threshold_zero_is_the_unmasked_data(tmp_path):
    (images, _, _), (masked, _, _) = masked_batch(roar_dm(tmp_path, threshold=0.0))
    assert torch.equal(images, masked)


def test_pixel_granularity_masks_whole_pixels(tmp_path):
    from formats import write_cifar10

    # 3-channel images: a pixel is masked in all its channels or in none
    write_cifar10(tmp_path / "cifar", n_train_per_batch=6, n_test=8)
    dm = roar_dm(tmp_path, source="cifar10", root=str(tmp_path / "cifar"), batch_size=8, store=str(tmp_path / "s"), method="random", threshold=0.5, granularity="pixel")
    (images, _, _), (masked, _, _) = masked_batch(dm)
    fill = torch.tensor(dm.channel_mean).view(1, 3, 1, 1).expand_as(images)
    replaced = torch.isclose(masked, fill) & ~torch.isclose(images, fill)
    pixel_masked = (masked == fill).all(dim=1)  # (B, H, W): every channel holds the fill
    assert (pixel_masked.flatten(1).sum(1) == num_masked(0.5, 64)).all(), "exactly round(t * H * W) pixels per image"
    assert (replaced.any(dim=1) <= pixel_masked).all(), "no channel is replaced without the rest of its pixel"
    assert torch.equal(masked[~pixel_masked.unsqueeze(1).expand_as(masked)], images[~pixel_masked.unsqueeze(1).expand_as(images)])


def test_image_mean_fill(tmp_path):
    dm = roar_dm(tmp_path, method="random", fill="image_mean", threshold=0.5)
    (images, _, indices), (masked, _, _) = masked_batch(dm)
    ranks = compute_ranks(dm, "random", tmp_path / "store", progress=False)["test"]
    top = torch.from_numpy(np.asarray(ranks)[(indices - dm.num_train_pool).numpy()].astype(np.int64) < num_masked(0.5, 64)).view(-1, 1, 8, 8)
    per_image_mean = images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    # exactly the top half of each image's features, by its own ranks, take its own mean; the rest are untouched
    torch.testing.assert_close(masked, torch.where(top, per_image_mean, images))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"threshold": 1.0}, "threshold must be in"),
        ({"threshold": -0.1}, "threshold must be in"),
        ({"mode": "drop"}, "roar"),
        ({"granularity": "patch"}, "element"),
        ({"fill": "zero"}, "channel_mean"),
        ({"method": "lime"}, "integrated_gradients_sg_sq"),
        ({"ranks": None}, "ranks are needed"),
    ],
)
def test_bad_settings_fail_before_any_training(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        roar_dm(tmp_path, **kwargs)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    dm = RoarDataModule(source="digits", image_size=8, threshold=0.0)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, channel_mean=dm.channel_mean, channel_std=dm.channel_std)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    path = folder / "base.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_model_ranks_need_a_fitting_checkpoint(tmp_path, base_checkpoint):
    # refused when the config is read (StoreRanks), not in prepare_data, where DDP's other process waits at a barrier
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such file"):
        roar_dm(tmp_path, method="gradient", base_checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match=r"image_size=8 \(expected 16\)"):
        load_classifier(base_checkpoint, image_size=16)
    with pytest.raises(ValueError, match=r"num_classes=10 \(expected 2\)"):
        compute_ranks(roar_dm(tmp_path, source="synthetic_linear"), "gradient", tmp_path / "s", checkpoint=base_checkpoint, progress=False)
    with pytest.raises(ValueError, match="no base_checkpoint is given"):
        roar_dm(tmp_path, method="gradient")
    with pytest.raises(ValueError, match="give the base checkpoint"):
        compute_ranks(roar_dm(tmp_path, method="sobel"), "gradient", tmp_path / "s", progress=False)
    roar_dm(tmp_path, method="sobel", base_checkpoint=str(tmp_path / "missing.ckpt"))  # sobel reads no model: no file needed


def test_roar_retrain_through_the_cli(tmp_path, base_checkpoint):
    cli = main([
        "fit", "--config", str(ROOT / "configs/digits.yaml"), "--config", str(ROOT / "configs/roar/digits.yaml"),
        "--trainer", str(ROOT / "configs/trainer/debug.yaml"), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
        "--data.image_size", "8", "--data.ranks.store", str(tmp_path / "store"), "--data.ranks.base_checkpoint", str(base_checkpoint),
        "--data.ranks.method", "gradient", "--data.threshold", "0.5", "--data.mode", "kar", "--seed_everything", "3",
    ])  # fmt: skip
    assert isinstance(cli.datamodule, RoarDataModule)
    assert cli.datamodule.mode == "kar" and cli.datamodule.method == "gradient"
    assert "test/acc" in cli.trainer.callback_metrics
    assert len(list((tmp_path / "store" / "gradient").iterdir())) == 2  # train and test ranks
    # the run's logged hyperparameters (hparams.yaml here, the W&B run's config) say which ranking masked its
    # data and under which seed: they held neither, only the data split's `seed: 0`, whatever --seed_everything
    logged = yaml.safe_load((Path(cli.trainer.logger.log_dir) / "hparams.yaml").read_text())
    assert logged["ranks"]["method"] == "gradient" and logged["ranks"]["granularity"] == "element"
    assert logged["seed_everything"] == 3 and logged["threshold"] == 0.5 and logged["mode"] == "kar"


def test_the_data_package_never_imports_the_attribution_package():
    """The package graph flows one way (data -> attribution): the masking datamodule receives its ranks."""
    code = (
        "import pkgutil, importlib, sys, roar.data\n"
        "for m in pkgutil.iter_modules(roar.data.__path__): importlib.import_module('roar.data.' + m.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('roar.attribution')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_retrain_reads_the_ranks_the_demo_wrote():
    """README, "Everyday use": the one-retrain command names the demo's store, so its ranking must be
    the demo's (method parameters, protocol, image size); otherwise StoreRanks silently computes
    another entry (minutes for integrated_gradients_sg_sq at its default 50 steps x 25 samples)."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("python train.py fit --config configs/digits.yaml --config configs/roar/digits.yaml")
    command = readme[start:readme.index("\n\n", start)].replace("\\\n", " ")
    args = shlex.split(command)[2:]  # after `python train.py`
    out = subprocess.run([sys.executable, "train.py", *args, "--print_config"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(out)["data"]["init_args"]
    ranking = data["ranks"]["init_args"]
    demo = yaml.safe_load((ROOT / "configs/benchmark/digits_demo.yaml").read_text())
    bench = demo["benchmark"]
    assert ranking["method"] in bench["methods"]
    assert ranking["store"] == "runs/digits_demo/attributions" and ranking["base_checkpoint"] == "runs/digits_demo/base.ckpt"
    assert (ranking["method_params"] or {}) == bench.get("method_params", {}).get(ranking["method"], {})
    for key in ("granularity", "score", "target", "tie_seed"):
        assert ranking[key] == bench["protocol"][key], key
    assert data["image_size"] == demo["data"]["init_args"]["image_size"]


def test_reused_ranks_are_announced_once_per_run(tmp_path, capfd):
    """train.py fit then tests: Lightning calls prepare_data for both, and the store's
    'reusing cached attribution ranks' lines came twice per split."""
    roar_dm(tmp_path, method="sobel").prepare_data()  # computes the entries
    capfd.readouterr()
    dm = roar_dm(tmp_path, method="sobel")
    dm.prepare_data()  # fit
    dm.prepare_data()  # test after fit
    out = capfd.readouterr().err
    assert out.count("reusing cached attribution ranks") == 2, out  # train and test entries, once each
    assert f"reusing cached attribution ranks {tmp_path / 'store' / 'sobel'}" in out  # one line, not cut at 80 columns in a log


@pytest.mark.parametrize(("params", "message"), [
    ({"noise_mode": "abs"}, "unknown noise_mode 'abs'; valid choices: relative, absolute"),
    ({"nt_samples": 0}, "nt_samples must be a positive integer"),
    ({"noise_std": -0.1}, "noise_std"),
])  # fmt: skip
def test_bad_ensemble_settings_of_a_retrain_are_refused_when_read(tmp_path, params, message):
    # the Protocol table's ensemble settings: train.py fit printed a traceback from inside trainer.fit before
    with pytest.raises(ValueError, match=message):
        StoreRanks(method="gradient_sg", store=str(tmp_path), method_params=params)
