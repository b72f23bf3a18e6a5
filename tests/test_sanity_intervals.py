"""Bootstrap intervals of sanity-check similarities over images and randomisation seeds."""

from __future__ import annotations

import math

import pytest
import torch

from roar.sanity.intervals import interval_rows
from roar.sanity.maps import SimilarityRecord


def _record(values, method="gradient", step=5) -> SimilarityRecord:
    return SimilarityRecord(method, "cascading", step, "conv1", "ssim", torch.tensor(values, dtype=torch.float32))


def test_interval_over_images():
    values = [0.10, 0.30, 0.20, 0.40, 0.25, 0.15]
    [row] = interval_rows([_record(values)])
    assert (row["method"], row["check"], row["step"], row["layer"], row["metric"], row["n"]) == ("gradient", "cascading", 5, "conv1", "ssim", 6)
    assert row["mean"] == pytest.approx(0.2333333) and row["std"] == pytest.approx(torch.tensor(values).std().item(), rel=1e-6)
    assert min(values) <= row["ci_low"] < row["mean"] < row["ci_high"] <= max(values)
    assert interval_rows([_record(values)]) == [row]  # seeded: the same interval every time
    [single] = interval_rows([_record([0.5])])  # one image: no interval, no error
    assert single["mean"] == 0.5 and math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])


def test_several_randomisation_seeds_are_one_row_resampled_two_way():
    images = [0.20, 0.22, 0.18, 0.21, 0.19, 0.20]
    shifted = [[v + shift for v in images] for shift in (-0.1, 0.0, 0.1)]  # the seed moves every image alike
    rows = interval_rows([_record(v) for v in shifted] + [_record(images, method="noise")])
    assert [(r["method"], r["n"]) for r in rows] == [("gradient", 18), ("noise", 6)]
    seeds, one = rows
    assert seeds["mean"] == pytest.approx(0.2, abs=1e-6)
    # the seed-to-seed spread (0.1) widens the interval far beyond the images' spread alone
    assert seeds["ci_high"] - seeds["ci_low"] > 3 * (one["ci_high"] - one["ci_low"])
