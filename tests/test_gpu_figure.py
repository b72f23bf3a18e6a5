"""The arithmetic of benchmark figure 11 (benchmarks/mfu.py): FLOPs, peaks, the grid's GPU-hours.

The figure itself runs in tests/test_benchmarks_smoke.py; here only its pure parts, with numbers
known independently of our code.
"""

import math

import pytest
import yaml

from benchmarks.gpu_retrain import Config, run, variant_settings
from benchmarks.mfu import (
    PAPER_CONFIG, forward_flops_per_image, grid_gpu_hours, mfu, needed_images_per_s, peak_bf16_flops, read_grid,
)  # fmt: skip


def test_resnet50_forward_flops_match_the_published_count():
    # torchvision documents ResNet50 (224 px, ImageNet stem) at 4.09 GMACs: 8.18 GFLOPs at 2 per multiply-add.
    assert forward_flops_per_image("resnet50", 224) == pytest.approx(8.18e9, rel=0.01)
    # The small-image stem (3x3 stride 1, no max-pool) keeps layer1 at 32x32 instead of 56x56 of 224 px:
    # about (32/56)^2 of the ImageNet count, less the 7x7 stem's 0.24 GFLOPs.
    small = forward_flops_per_image("resnet50", 32)
    assert small == pytest.approx((8.18e9 - 0.236e9) * (32 / 56) ** 2, rel=0.02)
    assert 2.5e9 < small < 2.7e9
    # Below the stem nothing depends on the side but the number of pixels.
    assert forward_flops_per_image("resnet50", 64) / small == pytest.approx(4.0, rel=0.01)


def test_peak_lookup_by_device_name():
    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12  # SXM
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H100 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H200") == 989.4e12
    assert peak_bf16_flops("nvidia a100-sxm4-80gb") == 312e12
    assert peak_bf16_flops("NVIDIA A100-PCIE-40GB") == 312e12
    assert peak_bf16_flops("Tesla T4") is None
    assert peak_bf16_flops("AMD EPYC 7B13 (2 logical cores visible)") is None


def test_mfu_and_projection_arithmetic():
    # 2.6 GFLOPs forward -> 7.8 GFLOPs per trained image; 10,000 images/s on a 989.4 TFLOP/s peak.
    assert mfu(2.6e9, 10_000, 989.4e12) == pytest.approx(7.8e13 / 989.4e12)
    assert mfu(2.6e9, 10_000, None) is None
    # 350 retrains x 60 epochs x 50,000 images = 1.05e9 images: at 36,458.3 images/s, 8 hours.
    assert needed_images_per_s(8.0, 350, 60) == pytest.approx(1.05e9 / 28_800)
    assert grid_gpu_hours(1.05e9 / 28_800, 350, 60) == pytest.approx(8.0)
    assert grid_gpu_hours(10_000, 350, 60) == pytest.approx(1.05e9 / 10_000 / 3600)
    assert grid_gpu_hours(0.0, 350, 60) == math.inf


def test_grid_shape_is_read_from_the_config(tmp_path):
    grid = read_grid(PAPER_CONFIG)
    assert (grid.methods, grid.thresholds, grid.seeds, grid.retrains) == (14, 5, 5, 350)
    assert grid.max_epochs == yaml.safe_load(PAPER_CONFIG.read_text())["trainer"]["max_epochs"]
    assert grid.batch_size == 128 and grid.trainer["precision"] == "bf16-mixed" and grid.model["channels_last"] is True
    # Half the epochs in the file: half the GPU-hours.
    doc = yaml.safe_load(PAPER_CONFIG.read_text())
    doc["trainer"]["max_epochs"] = 30
    (tmp_path / "half.yaml").write_text(yaml.safe_dump(doc))
    half = read_grid(tmp_path / "half.yaml")
    assert grid_gpu_hours(1000, half.retrains, half.max_epochs) == pytest.approx(grid_gpu_hours(1000, grid.retrains, grid.max_epochs) / 2)
    del doc["trainer"]["max_epochs"]
    (tmp_path / "none.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="max_epochs"):
        read_grid(tmp_path / "none.yaml")


def test_bad_variant_is_refused_before_any_training(tmp_path):
    assert variant_settings("fp32", {"precision": "bf16-mixed", "channels_last": True})["precision"] == "32-true"
    with pytest.raises(ValueError, match="unknown gpu variant 'fp16'; valid choices: config, fp32"):
        run(None, Config(variants=("config", "fp16")))  # no settings needed: refused before anything runs


def test_the_gpu_command_settings_parse():
    # benchmarks/README.md's one GPU command sets figure 1's batches and can set figure 9's cases.
    from benchmarks.attribution_cost import ModelCase
    from benchmarks.run import figure_config
    from benchmarks.stacked_training import Case

    attribution = figure_config("attribution", "full", ["attribution.models=small_cnn:32:256,resnet50:32:32"])
    assert attribution.models == (ModelCase("small_cnn", 32, 256), ModelCase("resnet50", 32, 32))
    stacked = figure_config("stacked", "full", ["stacked.cases=resnet18:3:32:128:8"])
    assert stacked.cases == (Case("resnet18", 3, 32, 128, 8),)
    assert "resnet18" in {case.arch for case in figure_config("stacked", "full", []).cases}
    gpu = figure_config("gpu", "full", ["gpu.variants=config,compile", "gpu.peak_tflops=989.4"])
    assert gpu.variants == ("config", "compile") and gpu.peak_tflops == 989.4
    with pytest.raises(ValueError, match="arch:in_chans:image_size:batch_size:members"):
        figure_config("stacked", "full", ["stacked.cases=resnet18:32:128"])
