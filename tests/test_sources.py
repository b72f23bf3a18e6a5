"""Dataset sources: real file formats round-trip exactly, and every bad input fails naming what is wrong."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from formats import idx_bytes, write_cifar10, write_image_folder, write_mnist
from PIL import Image

from roar.data.sources import (
    FASHION_MNIST_CLASSES,
    SOURCES,
    ImageFileDataset,
    TensorImageDataset,
    list_sources,
    load_source,
    make_synthetic_linear,
)


def as_unit(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def test_registry_lists_every_source():
    assert list_sources() == sorted(["digits", "synthetic_linear", "cifar10", "mnist", "fashion_mnist", "image_folder", "lightning"])
    assert set(SOURCES) == set(list_sources())


def test_unknown_source_lists_valid_names():
    with pytest.raises(ValueError, match="imagenet_typo.*cifar10.*digits"):
        load_source("imagenet_typo")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_image_size_is_refused(bad):
    with pytest.raises(ValueError, match="image_size"):
        load_source("digits", image_size=bad)


# ------------------------------------------------------------------------------------------ digits


def test_digits_split_is_stratified_and_complete():
    src = load_source("digits")
    assert len(src.train) + len(src.test) == 1797
    assert (src.num_classes, src.in_chans, src.image_size) == (10, 1, 8)
    assert src.class_names == [str(d) for d in range(10)] and src.in_memory
    train_y, test_y = src.train.labels.numpy(), src.test.labels.numpy()
    for cls in range(10):
        n = (train_y == cls).sum() + (test_y == cls).sum()
        assert (test_y == cls).sum() == round(0.2 * n)
    images = torch.cat([src.train.images, src.test.images])
    assert images.dtype == torch.float32 and images.shape[1:] == (1, 8, 8)
    assert images.min() == 0 and images.max() == 1
    # Together the splits are exactly scikit-learn's images, each once.
    from sklearn.datasets import load_digits

    original = torch.from_numpy(load_digits().images.astype(np.float32) / 16).flatten(1)
    key = lambda rows: sorted(map(tuple, rows.tolist()))  # noqa: E731
    assert key(images.flatten(1)) == key(original)


def test_digits_split_deterministic_per_seed():
    a, b, c = load_source("digits"), load_source("digits"), load_source("digits", split_seed=1)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.test.images, c.test.images)


def test_digits_upsampled():
    src = load_source("digits", image_size=32)
    assert src.image_size == 32 and src.train.images.shape[1:] == (1, 32, 32)
    assert src.train.images.min() >= 0 and src.train.images.max() <= 1
    native = load_source("digits")
    # Area-averaging the upsampled image back down recovers a smoothed copy of the original.
    down = torch.nn.functional.avg_pool2d(src.train.images[:50], 4).flatten()
    assert torch.corrcoef(torch.stack([down, native.train.images[:50].flatten()]))[0, 1] > 0.95


# -------------------------------------------------------------------------------- synthetic_linear


def test_synthetic_linear_structure():
    src = load_source("synthetic_linear", n_train=600, n_test=200, seed=3)
    a = src.extras["informative_weights"]
    assert a.shape == (1, 4, 4) and int((a != 0).sum()) == 4
    assert src.train.images.shape == (600, 1, 4, 4) and src.test.images.shape == (200, 1, 4, 4)
    assert (src.num_classes, src.in_chans, src.image_size) == (2, 1, 4)
    x, y, a_flat, _ = make_synthetic_linear(600, 200, seed=3)
    assert torch.equal(src.train.images.flatten(1), x[:600]) and torch.equal(src.test.labels, y[600:])
    assert torch.equal(a.flatten(), a_flat)


def test_synthetic_linear_labels_follow_informative_features_only():
    from sklearn.linear_model import LogisticRegression

    x, y, a, _ = make_synthetic_linear(3000, 1000, seed=0)
    x, y = x.numpy(), y.numpy()
    assert 0.4 < y.mean() < 0.6
    informative = a.numpy() != 0

    def accuracy(cols: np.ndarray) -> float:
        model = LogisticRegression(max_iter=1000).fit(x[:3000, cols], y[:3000])
        return model.score(x[3000:, cols], y[3000:])

    # All 16 features let a linear model cancel the shared noise and read z's sign; the 12
    # uninformative features alone carry nothing about y = 1(z > 0).
    assert accuracy(np.ones(16, bool)) > 0.75
    assert accuracy(~informative) < 0.58


def test_synthetic_linear_seeded():
    a, b = load_source("synthetic_linear", n_train=50, n_test=10, seed=7), load_source("synthetic_linear", n_train=50, n_test=10, seed=7)
    c = load_source("synthetic_linear", n_train=50, n_test=10, seed=8)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.extras["informative_weights"], b.extras["informative_weights"])
    assert not torch.equal(a.train.images, c.train.images)


# ----------------------------------------------------------------------------------------- cifar10


def test_cifar10_round_trip(tmp_path):
    written = write_cifar10(tmp_path, n_train_per_batch=6, n_test=6, seed=1)
    src = load_source("cifar10", root=tmp_path)
    assert isinstance(src.train, TensorImageDataset) and src.in_memory
    assert src.train.images.shape == (30, 3, 32, 32) and src.test.images.shape == (6, 3, 32, 32)
    assert src.train.images.dtype == torch.float32
    assert (src.num_classes, src.in_chans, src.image_size) == (10, 3, 32)
    assert src.class_names[0] == "airplane" and src.class_names[-1] == "truck"
    assert torch.equal(src.train.images, as_unit(written.train_images))
    assert torch.equal(src.test.images, as_unit(written.test_images))
    assert src.train.labels.tolist() == written.train_labels.tolist()
    assert src.test.labels.tolist() == written.test_labels.tolist()
    # Rows are red, green, blue planes: check one channel value against the raw bytes.
    row = written.train_images[7].reshape(-1)
    image, label = src.train[7]
    assert image[1, 0, 5] == row[1024 + 5] / 255 and label == written.train_labels[7]


def test_cifar10_resized_and_download_flag_reuses_files(tmp_path):
    write_cifar10(tmp_path)
    # download=True must not touch the network when the files are already there (none here).
    src = load_source("cifar10", root=str(tmp_path), download=True, image_size=16)
    assert src.image_size == 16 and src.train.images.shape == (30, 3, 16, 16)
    assert 0 <= src.train.images.min() and src.train.images.max() <= 1


def test_cifar10_missing_files(tmp_path):
    with pytest.raises(ValueError, match="root"):
        load_source("cifar10")
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1.*download: true"):
        load_source("cifar10", root=tmp_path / "nowhere")
    folder = write_cifar10(tmp_path).path
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks test_batch.*download"):
        load_source("cifar10", root=tmp_path)


def _rewrite_batch(path: Path, changes: dict) -> None:
    batch = pickle.loads(path.read_bytes())
    batch.update(changes)
    path.write_bytes(pickle.dumps(batch, protocol=2))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p.write_bytes(b"not a pickle at all"), "not a readable CIFAR-10"),
        (lambda p: p.write_bytes(pickle.dumps([1, 2, 3])), "pickled dict"),
        (lambda p: _rewrite_batch(p, {b"data": np.zeros((6, 100), np.uint8)}), r"\(N, 3072\)"),
        (lambda p: _rewrite_batch(p, {b"labels": [0, 1]}), "6 images but labels"),
        (lambda p: _rewrite_batch(p, {b"labels": [0, 1, 2, 3, 4, 10]}), r"labels .* must lie in \[0, 10\)"),
        # A pickle that names any global beyond numpy's arrays is refused, never run.
        (lambda p: p.write_bytes(pickle.dumps({b"data": Path("x")})), "refusing to load global"),
    ],
)
def test_cifar10_malformed_batch(tmp_path, corrupt, message):
    folder = write_cifar10(tmp_path).path
    corrupt(folder / "data_batch_3")
    with pytest.raises(ValueError, match=message) as info:
        load_source("cifar10", root=tmp_path)
    assert "data_batch_3" in str(info.value)


def test_cifar10_unknown_option(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="test_splt"):
        load_source("cifar10", root=tmp_path, test_splt="x")


# ---------------------------------------------------------------------------- mnist, fashion_mnist


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_round_trip(tmp_path, name, folder, gz):
    written = write_mnist(tmp_path, n_train=12, n_test=5, gz=gz, folder=folder, seed=2)
    src = load_source(name, root=tmp_path)
    assert src.train.images.shape == (12, 1, 28, 28) and src.test.images.shape == (5, 1, 28, 28)
    assert src.train.images.dtype == torch.float32 and src.in_memory
    assert (src.num_classes, src.in_chans, src.image_size) == (10, 1, 28)
    assert torch.equal(src.train.images, as_unit(written.train_images))
    assert torch.equal(src.test.images, as_unit(written.test_images))
    assert src.train.labels.tolist() == written.train_labels.tolist()
    assert src.test.labels.tolist() == written.test_labels.tolist()
    expected_names = [str(d) for d in range(10)] if name == "mnist" else FASHION_MNIST_CLASSES
    assert src.class_names == expected_names


def test_idx_real_magic_numbers(tmp_path):
    raw = write_mnist(tmp_path, gz=False).path
    assert (raw / "train-images-idx3-ubyte").read_bytes()[:4] == b"\x00\x00\x08\x03"
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8] == b"\x00\x00\x08\x01" + (6).to_bytes(4, "big")


def test_mnist_resized(tmp_path):
    write_mnist(tmp_path, gz=True)
    src = load_source("mnist", root=tmp_path, image_size=32)
    assert src.image_size == 32 and src.test.images.shape[1:] == (1, 32, 32)
    assert 0 <= src.test.images.min() and src.test.images.max() <= 1


def test_mnist_missing_files(tmp_path):
    write_mnist(tmp_path, folder="FashionMNIST")  # the other dataset's folder does not count
    with pytest.raises(FileNotFoundError, match=r"MNIST/raw.*train-images-idx3-ubyte.*download: true"):
        load_source("mnist", root=tmp_path)
    raw = write_mnist(tmp_path, gz=True).path
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="missing t10k-labels-idx1-ubyte"):
        load_source("mnist", root=tmp_path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        # Labels where images belong: the magic number gives it away.
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros(12, np.uint8))), "magic number 0x00000801; expected 0x00000803"),
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((12, 28, 28), np.uint8))[:-10]), "bytes follow"),
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00"), "too short"),
        (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(11, np.uint8))), "12 images but .* 11 labels"),
        (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(12, 10, np.uint8))), r"\[0, 10\)"),
        (lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((12, 28, 20), np.uint8))), "square"),
    ],
)
def test_mnist_malformed(tmp_path, corrupt, message):
    raw = write_mnist(tmp_path, n_train=12).path
    corrupt(raw)
    with pytest.raises(ValueError, match=message) as info:
        load_source("mnist", root=tmp_path)
    assert "train-" in str(info.value)


def test_mnist_bad_gzip(tmp_path):
    raw = write_mnist(tmp_path, gz=True).path
    (raw / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"abc")[:-6])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
        load_source("mnist", root=tmp_path)


# ------------------------------------------------------------------------------------ image_folder


def test_image_folder_round_trip_lazy(tmp_path):
    written = write_image_folder(tmp_path, classes=["zebra", "ant", "moth"], per_class=2, size=8)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".hidden").mkdir()
    src = load_source("image_folder", root=tmp_path, image_size=8)
    assert isinstance(src.train, ImageFileDataset) and not src.in_memory
    assert src.class_names == ["ant", "moth", "zebra"] and src.num_classes == 3
    assert (src.in_chans, src.image_size) == (3, 8)
    assert len(src.train) == 6 and len(src.test) == 6
    assert src.extras["test_split"] == "test"
    by_path = {path: (label, pixels) for path, label, pixels in written["train"]}
    for i, (path, label) in enumerate(src.train.samples):
        image, got_label = src.train[i]
        expected_label, pixels = by_path[path]
        assert got_label == label == expected_label == src.class_names.index(path.parent.name)
        assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
        assert torch.equal(image, as_unit(pixels).permute(2, 0, 1))
    assert src.train.labels.tolist() == [label for _, label in src.train.samples]


def test_loader_workers_are_at_most_the_cores_this_process_may_use(tmp_path):
    # imagenet_resnet50.yaml asks for 16 per loader; on a 2-core machine that was 16 processes and torch's warning
    import warnings

    from roar.cpus import available_cores
    from roar.data import ImageDataModule

    write_image_folder(tmp_path, per_class=4, size=8)
    datamodule = ImageDataModule(source="image_folder", root=str(tmp_path), image_size=8, num_workers=10_000, val_fraction=0.0)
    datamodule.setup("fit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "will create 10000 worker processes in total"
        loader = datamodule.train_dataloader()
    assert 1 <= loader.num_workers == available_cores() < 10_000


def test_image_folder_resizes_short_side_and_centre_crops(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    # 24 wide, 8 high: blue | red | green thirds. The centre 8 x 8 crop is exactly the red third.
    wide = np.zeros((8, 24, 3), np.uint8)
    wide[:, :8, 2], wide[:, 8:16, 0], wide[:, 16:, 1] = 255, 255, 255
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(np.full((30, 10), 128, np.uint8)).save(folder / "grey_tall.png")  # mode L
    Image.fromarray(np.full((9, 13, 3), 200, np.uint8)).save(folder / "odd.jpg", quality=95)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(wide).save(tmp_path / "val" / "a" / "v.png")

    src = load_source("image_folder", root=tmp_path, image_size=8)
    assert src.extras["test_split"] == "val"  # no test/ folder, so val/ stands in
    images = {path.name: src.train[i][0] for i, (path, _) in enumerate(src.train.samples)}
    red = torch.zeros(3, 8, 8)
    red[0] = 1
    assert torch.equal(images["wide.png"], red)
    assert images["grey_tall.png"].shape == (3, 8, 8)
    assert torch.allclose(images["grey_tall.png"], torch.full((3, 8, 8), 128 / 255))
    assert images["odd.jpg"].shape == (3, 8, 8)
    assert (images["odd.jpg"] - 200 / 255).abs().max() < 0.03  # JPEG is lossy

    default = load_source("image_folder", root=tmp_path)
    assert default.image_size == 224 and default.test[0][0].shape == (3, 224, 224)


def test_image_folder_mixed_sizes_and_named_test_split(tmp_path):
    write_image_folder(tmp_path, classes=["b", "a"], per_class=3, size=[(5, 7), (40, 20), (16, 16)], splits=("train", "holdout"), ext="jpg")
    src = load_source("image_folder", root=tmp_path, image_size=12, test_split="holdout")
    assert src.extras["test_split"] == "holdout" and len(src.test) == 6
    for dataset in (src.train, src.test):
        for i in range(len(dataset)):
            image, _ = dataset[i]
            assert image.shape == (3, 12, 12) and 0 <= image.min() and image.max() <= 1


def test_image_folder_test_may_lack_classes(tmp_path):
    write_image_folder(tmp_path, classes=["a", "b", "c"], per_class=1, splits=("train",))
    write_image_folder(tmp_path, classes=["c"], per_class=2, splits=("test",))
    src = load_source("image_folder", root=tmp_path, image_size=4)
    assert src.num_classes == 3 and src.test.labels.tolist() == [2, 2]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*<split>/<class>"):
        load_source("image_folder", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="cannot download"):
        load_source("image_folder", root=tmp_path, download=True)
    with pytest.raises(ValueError, match="root"):
        load_source("image_folder")

    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=r"no class folders in .*train"):
        load_source("image_folder", root=tmp_path)

    write_image_folder(tmp_path, classes=["a", "b"], per_class=1)
    write_image_folder(tmp_path, classes=["stray"], per_class=1, splits=("test",))
    with pytest.raises(ValueError, match=r"\['stray'\] that are not in the training split.*\['a', 'b'\]"):
        load_source("image_folder", root=tmp_path)

    with pytest.raises(FileNotFoundError, match=r"holdout"):
        load_source("image_folder", root=tmp_path, test_split="holdout")
    with pytest.raises(ValueError, match="test_slpit.*valid options: train_split, test_split"):
        load_source("image_folder", root=tmp_path, test_slpit="test")


def test_image_folder_missing_splits_and_empty_classes(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=1, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"tried .*test or .*val"):
        load_source("image_folder", root=tmp_path)
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"test split .*test holds no images"):
        load_source("image_folder", root=tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"\['empty'\] in .*train hold no images"):
        load_source("image_folder", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no training split folder .*nope"):
        load_source("image_folder", root=tmp_path, train_split="nope")


def test_image_folder_unreadable_image_names_file(tmp_path):
    write_image_folder(tmp_path, classes=["a"], per_class=1)
    bad = tmp_path / "test" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    src = load_source("image_folder", root=tmp_path, image_size=4)
    index = [path for path, _ in src.test.samples].index(bad)
    with pytest.raises(ValueError, match="broken.png"):
        src.test[index]


def test_cifar10_reads_numpy1_pickles(tmp_path):
    # The distributed files name numpy 1's module path, numpy.core.multiarray; numpy 2 moved it.
    written = write_cifar10(tmp_path)
    path = written.path / "data_batch_1"
    old = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in old
    path.write_bytes(old)
    src = load_source("cifar10", root=tmp_path)
    assert torch.equal(src.train.images[:6], as_unit(written.train_images[:6]))


@pytest.mark.parametrize("name, dataset_class", [("cifar10", "CIFAR10"), ("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_failed_download_is_one_line_naming_root_and_what_to_do(tmp_path, monkeypatch, name, dataset_class):
    # A machine without internet, made real: torchvision's own downloader meets a refused connection
    # (nothing listens on port 9 of this machine), so nothing is fetched whatever the network.
    import torchvision.datasets

    cls = getattr(torchvision.datasets, dataset_class)
    if dataset_class == "CIFAR10":
        monkeypatch.setattr(cls, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    else:
        monkeypatch.setattr(cls, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(FileNotFoundError) as info:
        load_source(name, root=tmp_path / "data", download=True)
    message = str(info.value)
    assert "\n" not in message  # torchvision's MNIST error spans five lines
    assert f"could not download {name} into {tmp_path / 'data'}" in message
    assert "refused" in message.lower()  # the reason stays
    assert "put the files there yourself" in message
