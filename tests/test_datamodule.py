import pytest
import torch

from roar.data.datamodule import ImageDataModule, random_crop_flip


@pytest.fixture(scope="module")
def digits():
    return ImageDataModule(source="digits", image_size=16, batch_size=32, val_fraction=0.1, seed=0)


def test_digits_facts(digits):
    assert (digits.num_classes, digits.in_chans, digits.image_size) == (10, 1, 16)
    assert digits.num_train_pool + len(digits.source.test) == 1797 == digits.num_samples
    assert len(digits.train_indices) + len(digits.val_indices) == digits.num_train_pool
    assert not set(digits.train_indices.tolist()) & set(digits.val_indices.tolist())


def test_channel_stats_are_those_of_the_train_split(digits):
    images = digits.source.train.images[digits.train_indices]
    assert digits.channel_mean == pytest.approx(images.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert digits.channel_std == pytest.approx(images.std(dim=(0, 2, 3)).tolist(), abs=1e-5)


def test_splits_are_seeded():
    a = ImageDataModule(source="digits", seed=3)
    b = ImageDataModule(source="digits", seed=3)
    c = ImageDataModule(source="digits", seed=4)
    assert torch.equal(a.val_indices, b.val_indices)
    assert not torch.equal(a.val_indices, c.val_indices)


def test_batches_carry_global_indices(digits):
    images, labels, indices = next(iter(digits.test_dataloader()))
    assert images.shape == (32, 1, 16, 16) and labels.dtype == torch.long
    assert indices.tolist() == list(range(digits.num_train_pool, digits.num_train_pool + 32))
    torch.testing.assert_close(images, digits.source.test.images[:32])
    images, labels, indices = next(iter(digits.val_dataloader()))
    torch.testing.assert_close(images, digits.source.train.images[indices])
    assert torch.equal(labels, digits.source.train.labels[indices])


def test_label_permutation_only_touches_the_train_pool():
    dm = ImageDataModule(source="digits", label_permutation=True, seed=1)
    _, labels, indices = next(iter(dm.train_dataloader()))
    true = dm.source.train.labels[indices]
    assert (labels != true).float().mean() > 0.5
    assert sorted(dm.train_labels.tolist()) == sorted(dm.source.train.labels.tolist())
    _, test_labels, test_indices = next(iter(dm.test_dataloader()))
    assert torch.equal(test_labels, dm.source.test.labels[test_indices - dm.num_train_pool])


def test_crop_and_flip_keep_shape_and_content():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    out = random_crop_flip(images, padding=2, flip=True)
    assert out.shape == images.shape
    # every output is a shifted (possibly mirrored) window of its zero-padded input
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(8):
        found = any(
            torch.equal(out[i], cand[:, y : y + 8, x : x + 8])
            for cand in (padded[i], padded[i].flip(-1))
            for y in range(5)
            for x in range(5)
        )
        assert found
    assert torch.equal(random_crop_flip(images, padding=0, flip=False), images)


def test_augmentation_only_while_training(digits):
    from lightning.pytorch import Trainer

    digits.trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batch = next(iter(digits.train_dataloader()))
    digits.trainer.training = True
    trained = digits.on_after_batch_transfer(batch, 0)[0]
    assert not torch.equal(trained, batch[0]), "random crops while training"
    assert trained.shape == batch[0].shape
    digits.trainer.validating = True
    assert torch.equal(digits.on_after_batch_transfer(batch, 0)[0], batch[0]), "never while evaluating"
    assert digits.augment == "crop"  # digits are not mirror-symmetric
    digits.trainer = None  # the module-scoped datamodule goes back as it was


def test_bad_inputs_name_the_value_and_choices():
    with pytest.raises(ValueError, match="unknown dataset source 'imagenet'.*digits"):
        ImageDataModule(source="imagenet")
    with pytest.raises(ValueError, match="unknown augment 'rotate'.*crop_flip"):
        ImageDataModule(augment="rotate")
    with pytest.raises(ValueError, match="val_fraction"):
        ImageDataModule(val_fraction=1.5)
    with pytest.raises(ValueError, match="stats_samples must be positive .*, got 0"):
        ImageDataModule(stats_samples=0)  # was a NaN channel mean, so NaN losses from the first step
    with pytest.raises(ValueError, match="crop_padding must be >= 0 .*, got -2"):
        ImageDataModule(crop_padding=-2, augment="crop")  # was no crop at all
    with pytest.raises(ValueError, match="num_workers must be >= 0, got -1"):
        ImageDataModule(num_workers=-1)
