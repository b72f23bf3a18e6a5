"""AttributionStore: compute once, verify, reuse; resume after interruption; refuse bad entries."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
import torch

from roar.attribution.store import (
    AttributionStore,
    StoreError,
    checkpoint_sha256,
    complete_fingerprint,
    fingerprint_key,
    ranks_dtype,
)
from roar.data.ranking import attribution_scores, ranks_from_scores
from roar.data.sources import TensorImageDataset

N, C, H, W = 23, 2, 3, 3
SETTINGS = {"granularity": "element", "score": "abs", "tie_seed": 3}


@pytest.fixture
def dataset() -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    # Values on a coarse grid so attributions tie often and the tie-breaking is exercised too.
    images = torch.randint(0, 3, (N, C, H, W), generator=gen).float() / 2
    return TensorImageDataset(images, torch.randint(0, 2, (N,), generator=gen))


@pytest.fixture
def weights() -> torch.Tensor:
    return torch.linspace(-1, 1, C * H * W).view(1, C, H, W).round(decimals=1)


class CountingAttribution:
    """x * w, an input-x-gradient of a linear model; counts calls and can fail after some."""

    def __init__(self, weights: torch.Tensor, fail_after: int | None = None) -> None:
        self.weights, self.fail_after, self.calls, self.seen = weights, fail_after, 0, []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.seen.extend(indices.tolist())
        assert labels.shape == indices.shape
        return images * self.weights


def fingerprint(**overrides) -> dict:
    fp = {"checkpoint_sha256": "a" * 64, "method": "input_x_gradient", "params": {}, "dataset": "toy", "split": "train", "target": "label"}
    return {**fp, **overrides}


def compute(store, dataset, fn, fp=None, **kwargs):
    options = {**SETTINGS, "batch_size": 4, "chunk_size": 8, "device": "cpu", "progress": False, **kwargs}
    return store.get_or_compute(fp or fingerprint(), dataset, fn, **options)


def direct_ranks(dataset, weights, granularity="element", score="abs", seed=3) -> np.ndarray:
    attributions = dataset.images * weights
    return ranks_from_scores(attribution_scores(attributions, score, granularity), torch.arange(len(dataset)), seed).numpy()


def test_round_trip_matches_the_masking_functions(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    ranks = compute(store, dataset, CountingAttribution(weights))
    assert isinstance(ranks, np.memmap)
    assert ranks.shape == (N, C * H * W) and ranks.dtype == np.uint16
    np.testing.assert_array_equal(ranks, direct_ranks(dataset, weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    entry = store.find(full)
    assert entry is not None and entry.parent.name == "input_x_gradient"
    assert entry.name == f"train-{fingerprint_key(full)[:16]}"
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["fingerprint"] == full and meta["shape"] == [N, C * H * W] and meta["dtype"] == "uint16"
    assert meta["num_chunks"] == 3 and set(meta["versions"]) >= {"torch", "captum", "roar"}
    np.testing.assert_array_equal(store.load(full), ranks)
    assert [e.path for e in store.entries()] == [entry]
    assert store.entries()[0].method == "input_x_gradient"


def test_pixel_granularity_and_raw_score(tmp_path, dataset, weights):
    ranks = compute(AttributionStore(tmp_path), dataset, CountingAttribution(weights), granularity="pixel", score="raw")
    assert ranks.shape == (N, H * W)
    np.testing.assert_array_equal(ranks, direct_ranks(dataset, weights, "pixel", "raw"))


def test_batching_does_not_change_the_ranks(tmp_path, dataset, weights):
    a = compute(AttributionStore(tmp_path / "a"), dataset, CountingAttribution(weights), batch_size=1, chunk_size=5)
    b = compute(AttributionStore(tmp_path / "b"), dataset, CountingAttribution(weights), batch_size=16, chunk_size=100)
    np.testing.assert_array_equal(a, b)


def test_second_call_reuses_the_entry(tmp_path, dataset, weights, caplog):
    store = AttributionStore(tmp_path)
    fn = CountingAttribution(weights)
    first = np.array(compute(store, dataset, fn))
    assert fn.calls == 6 and sorted(fn.seen) == list(range(N))  # 3 chunks of 8 -> batches 4,4 | 4,4 | 4,3
    with caplog.at_level(logging.INFO, logger="roar.attribution.store"):
        second = compute(store, dataset, fn)
    assert fn.calls == 6
    assert "reusing" in caplog.text
    np.testing.assert_array_equal(second, first)


@pytest.mark.parametrize(
    ("change", "settings"),
    [
        ({"checkpoint_sha256": "b" * 64}, {}),
        ({"params": {"n_samples": 5}}, {}),
        ({"split": "test"}, {}),
        ({}, {"tie_seed": 4}),
        ({}, {"score": "square"}),
    ],
)
def test_a_different_fingerprint_computes_a_new_entry(tmp_path, dataset, weights, change, settings):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    fn = CountingAttribution(weights)
    compute(store, dataset, fn, fingerprint(**change), **settings)
    assert fn.calls == 6
    assert len(store.entries()) == 2


def test_resume_after_interruption(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    failing = CountingAttribution(weights, fail_after=3)  # dies in the second chunk's second batch
    with pytest.raises(KeyboardInterrupt):
        compute(store, dataset, failing)
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    assert store.find(full) is None and store.entries() == []
    with pytest.raises(StoreError, match="unfinished"):
        store.load(full)

    resumed = CountingAttribution(weights)
    ranks = compute(store, dataset, resumed)
    assert sorted(resumed.seen) == list(range(8, N)), "only the chunks not finished are recomputed"
    np.testing.assert_array_equal(ranks, direct_ranks(dataset, weights))
    assert not any(p.name.startswith(".") for p in (tmp_path / "input_x_gradient").iterdir())


def test_resume_with_another_chunk_size_starts_over(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        compute(store, dataset, CountingAttribution(weights, fail_after=3))
    fn = CountingAttribution(weights)
    ranks = compute(store, dataset, fn, chunk_size=10)
    assert sorted(fn.seen) == list(range(N))
    np.testing.assert_array_equal(ranks, direct_ranks(dataset, weights))


def test_nan_attributions_are_rejected_and_nothing_is_completed(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)

    def nan_at_13(images, labels, indices):
        out = images * weights
        out[indices == 13] = float("nan")
        return out

    with pytest.raises(StoreError, match=r"input_x_gradient.*\[13\]"):
        compute(store, dataset, nan_at_13)
    assert store.entries() == []
    # A fixed method then resumes from the chunks that were fine.
    fn = CountingAttribution(weights)
    np.testing.assert_array_equal(compute(store, dataset, fn), direct_ranks(dataset, weights))
    assert min(fn.seen) == 8


def test_truncated_ranks_file_is_rejected(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    ranks_path = store.find(full) / "ranks.npy"
    ranks_path.write_bytes(ranks_path.read_bytes()[:-10])
    with pytest.raises(StoreError, match="truncated") as err:
        store.load(full)
    assert str(store.find(full)) in str(err.value)
    fn = CountingAttribution(weights)
    with pytest.raises(StoreError, match="truncated"):
        compute(store, dataset, fn)  # refused, not silently recomputed or reused
    assert fn.calls == 0


def test_corrupted_header_and_missing_files_are_rejected(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    entry = store.find(full)
    (entry / "ranks.npy").write_bytes(b"not a numpy file at all")
    with pytest.raises(StoreError, match="not a valid .npy"):
        store.load(full)
    np.save(entry / "ranks.npy", np.zeros((N, 5), dtype=np.uint16))
    with pytest.raises(StoreError, match="meta.json records"):
        store.load(full)
    (entry / "ranks.npy").unlink()
    with pytest.raises(StoreError, match="no ranks.npy"):
        store.load(full)
    with pytest.raises(StoreError, match="no attribution entry"):
        store.load(fingerprint(checkpoint_sha256="c" * 64))


def test_meta_with_another_fingerprint_is_rejected(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    meta_path = store.find(full) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["checkpoint_sha256"] = "f" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"another fingerprint \(differs in: checkpoint_sha256\)"):
        store.load(full)
    meta_path.write_text("{broken")
    with pytest.raises(StoreError, match="unreadable"):
        store.load(full)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_flipped_bytes_in_a_ranks_file_are_detected(tmp_path, dataset, weights, where):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    ranks_path = store.find(full) / "ranks.npy"
    data = bytearray(ranks_path.read_bytes())
    # a byte of the array itself: size and header stay intact, only the content tells
    offset = {"first": len(data) - N * C * H * W * 2, "middle": len(data) - N * C * H * W, "last": len(data) - 1}[where]
    data[offset] ^= 0x01
    ranks_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupted: its sha256") as err:
        store.load(full)
    assert str(ranks_path) in str(err.value)


def test_rows_that_are_not_permutations_are_detected_even_with_a_matching_checksum(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    entry = store.find(full)
    ranks = np.load(entry / "ranks.npy")
    ranks[3, 0] = ranks[3, 1]  # a duplicate rank: row 3 is no permutation
    np.save(entry / "ranks.npy", ranks)
    meta = json.loads((entry / "meta.json").read_text())
    meta["ranks_sha256"] = hashlib.sha256((entry / "ranks.npy").read_bytes()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="not permutations"):
        store.load(full)


def test_an_edited_key_in_meta_is_detected(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    full = complete_fingerprint(fingerprint(), **SETTINGS)
    meta_path = store.find(full) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["fingerprint"]["params"] = {"edited": True}
    meta["key"] = fingerprint_key(full)  # the key left as it was: the fingerprint no longer hashes to it
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="another fingerprint"):
        store.load(full)
    meta["fingerprint"] = full
    meta["key"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="was edited"):
        store.load(full)


def test_test_split_draws_use_global_indices(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    fn = CountingAttribution(weights)
    store.get_or_compute(fingerprint(split="test"), dataset, fn, batch_size=5, index_offset=100, **SETTINGS)
    assert fn.seen == list(range(100, 100 + N)), "attribution sees the samples' global indices"
    meta = json.loads(next(tmp_path.glob("*/test-*/meta.json")).read_text())
    assert meta["fingerprint"]["index_offset"] == 100


def test_dataset_of_another_length_is_refused(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    compute(store, dataset, CountingAttribution(weights))
    shorter = TensorImageDataset(dataset.images[:10], dataset.labels[:10])
    with pytest.raises(StoreError, match="23 samples but the dataset has 10"):
        compute(store, shorter, CountingAttribution(weights))


def test_single_channel_maps_are_broadcast_over_channels(tmp_path, dataset):
    ranks = compute(AttributionStore(tmp_path), dataset, lambda x, y, i: x.sum(dim=1, keepdim=True), granularity="pixel")
    broadcast = dataset.images.sum(dim=1, keepdim=True).expand(-1, C, -1, -1)
    expected = ranks_from_scores(attribution_scores(broadcast, "abs", "pixel"), torch.arange(N), 3)
    np.testing.assert_array_equal(ranks, expected.numpy())


def test_bad_arguments(tmp_path, dataset, weights):
    store = AttributionStore(tmp_path)
    fn = CountingAttribution(weights)
    with pytest.raises(ValueError, match="'method'"):
        compute(store, dataset, fn, {"split": "train"})
    with pytest.raises(ValueError, match="JSON"):
        compute(store, dataset, fn, fingerprint(params={"f": object()}))
    with pytest.raises(ValueError, match="'patch'.*element, pixel"):
        compute(store, dataset, fn, granularity="patch")
    with pytest.raises(ValueError, match="tie_seed=3 but tie_seed=4"):
        compute(store, dataset, fn, fingerprint(tie_seed=3), tie_seed=4)
    with pytest.raises(ValueError, match="chunk_size"):
        compute(store, dataset, fn, chunk_size=0)
    with pytest.raises(StoreError, match=r"returned shape \(4, 9\)"):
        compute(store, dataset, lambda x, y, i: x.flatten(1)[:, :9])
    assert fn.calls == 0


def test_ranks_dtype_choice():
    assert ranks_dtype(16) == np.uint16
    assert ranks_dtype(3 * 32 * 32) == np.uint16
    assert ranks_dtype(65536) == np.uint16
    assert ranks_dtype(65537) == np.int32
    assert ranks_dtype(3 * 224 * 224) == np.int32


def test_large_feature_count_is_stored_as_int32(tmp_path):
    images = torch.rand(2, 1, 257, 256)  # 65,792 features: ranks no longer fit in uint16
    data = TensorImageDataset(images, torch.zeros(2))
    ranks = compute(AttributionStore(tmp_path), data, lambda x, y, i: x, batch_size=2)
    assert ranks.dtype == np.int32
    np.testing.assert_array_equal(np.sort(ranks, axis=1), np.broadcast_to(np.arange(257 * 256), ranks.shape))


def test_checkpoint_sha256(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"abc" * 1000)
    assert checkpoint_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert checkpoint_sha256(path, chunk_bytes=7) == checkpoint_sha256(path)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        checkpoint_sha256(tmp_path / "missing.ckpt")
