"""ROAD (Rong, Leemann et al., ICML 2022) and the blur control as benchmark settings, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from roar.__main__ import main as roar_main
from roar.benchmark.config import BenchmarkConfig, Protocol
from roar.benchmark.results import ResultsStore
from roar.data.masking import mask_images, ranks_from_scores

ROOT = Path(__file__).resolve().parents[1]
ROAD = str(ROOT / "configs/benchmark/road_digits.yaml")


def test_road_digits_config_runs_both_orders_without_retraining(tmp_path):
    # the config's ROAD-only variant (its comment): ROAD's MoRF and LeRF, nothing trained but the base model
    out = tmp_path / "road"
    args = [
        "benchmark", "--config", ROAD, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "3",
        "--benchmark.methods", "[sobel, random]", "--benchmark.thresholds", "[0.5, 0.9]", "--benchmark.logger", "none",
        "--benchmark.modes", "[noretrain@noisy_linear, noretrain_kar@noisy_linear]", "--benchmark.noretrain", "false",
        "--progress", "false", "--out", str(out),
    ]  # fmt: skip
    assert roar_main(args) == 0
    rows = ResultsStore(out / "results.db").rows()
    assert {r["mode"] for r in rows} == {"noretrain", "noretrain_kar"}  # only the base model was trained
    assert len(rows) == 1 + 2 * 2 + 2 * 2 and all(r["status"] == "done" and r["epochs"] == 0 for r in rows)
    assert {r["fill"] for r in rows if r["method"] != "unmasked"} == {"noisy_linear"}
    protocol = rows[0]["config"]["benchmark"]["protocol"]
    assert (protocol["fill_noise_std"], protocol["granularity"]) == (0.01, "pixel")
    masked = next(r for r in rows if r["method"] != "unmasked")
    assert masked["provenance"]["fill"] == {"fill": "noisy_linear", "fill_noise_std": 0.01, "fill_tol": 1e-5, "fill_max_iter": 1000}
    acc = {(r["method"], r["mode"], r["threshold"]): r["test_acc"] for r in rows}
    base = acc[("unmasked", "noretrain", 0.0)]
    # removing 90% of the pixels (MoRF) costs accuracy; keeping 90% (LeRF) costs less than keeping 50%
    assert acc[("random", "noretrain", 0.9)] < base - 0.2
    assert acc[("random", "noretrain_kar", 0.9)] > acc[("random", "noretrain_kar", 0.5)] - 0.02
    for name in ("noretrain@noisy_linear.png", "noretrain_kar@noisy_linear.png", "report.md"):
        assert (out / name).is_file()


@pytest.mark.parametrize(("protocol", "message"), [
    ({"fill": "blur", "fill_sigma": 0.0}, "fill_sigma must be a finite number > 0 \\(pixels\\), got 0.0"),
    ({"fill": "noisy_linear", "fill_tol": -1e-3}, "fill_tol must be a finite number > 0, got -0.001"),
    ({"fill": "noisy_linear", "fill_max_iter": 0}, "fill_max_iter must be a positive integer, got 0"),
    ({"fill": "zero"}, "unknown protocol.fill 'zero'; valid choices: channel_mean, image_mean, noisy_linear, blur"),
])  # fmt: skip
def test_bad_fill_settings_fail_before_training(protocol, message):
    cfg = BenchmarkConfig.from_dict({"methods": ["random"], "protocol": protocol})
    with pytest.raises(ValueError, match=message):
        cfg.validate()


def test_bad_fill_settings_fail_on_the_command_line_before_training(tmp_path):
    out = tmp_path / "bad"
    with pytest.raises((SystemExit, ValueError)):
        roar_main(["benchmark", "--config", ROAD, "--benchmark.protocol.fill_sigma", "-1", "--benchmark.protocol.fill", "blur", "--out", str(out)])
    assert not (out / "base.ckpt").exists()


def test_fill_settings_enter_the_fingerprint_only_with_their_fill():
    # constant fills keep the fingerprint they had before the imputing fills existed
    assert set(Protocol().fingerprint()) == {"granularity", "score", "fill", "random_mask", "target", "tie_seed"}
    assert Protocol(fill_sigma=5.0).fingerprint() == Protocol().fingerprint()
    blur = Protocol(fill="blur", fill_sigma=1.5).fingerprint()
    assert blur["fill_sigma"] == 1.5 and "fill_tol" not in blur
    road = Protocol(fill="noisy_linear").fingerprint()
    assert (road["fill_noise_std"], road["fill_tol"], road["fill_max_iter"]) == (0.01, 1e-5, 1000) and "fill_sigma" not in road


@pytest.mark.parametrize("granularity", ["element", "pixel"])
def test_mask_images_with_the_imputing_fills(granularity):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=gen)
    features = 3 * 64 if granularity == "element" else 64
    ranks = ranks_from_scores(torch.rand(4, features, generator=gen), torch.arange(4))
    removed = (ranks < 32).view(4, -1, 8, 8).expand_as(images)
    road = mask_images(images, ranks, 32 / features, "roar", "noisy_linear", granularity, indices=torch.arange(4), fill_options={"noise_std": 0.0})
    assert torch.equal(road[~removed], images[~removed]) and not torch.equal(road[removed], images[removed])
    assert road.min() >= images.min() - 1e-6 and road.max() <= images.max() + 1e-6  # a weighted mean stays in range
    blur = mask_images(images, ranks, 32 / features, "roar", "blur", granularity, fill_options={"sigma": 1e-3})
    assert torch.equal(blur, images)
