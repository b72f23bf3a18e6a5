"""Model FLOPs utilisation and the GPU-hours of a ROAR grid: the arithmetic of figure 11.

ROAR (Hooker et al., NeurIPS 2019) retrains a ResNet50 on CIFAR-10 for every (estimator,
threshold, seed) of its grid: 14 x 5 x 5 = 350 retrains per mode in the paper's setting
(``configs/benchmark/cifar10_resnet50.yaml``). Issue 12 holds us to that grid within 8 GPU-hours
on one H100. This module turns a measured training throughput into that projection, and into
model FLOPs utilisation (MFU, Chowdhery et al. 2022, "PaLM", appendix B):

    MFU = 3 x (forward FLOPs per image) x images/s / (the device's peak dense bf16 FLOP/s)

The factor 3 is one forward and a backward of twice its cost (gradients of activations and of
weights). Forward FLOPs are counted by :func:`benchmarks.flops.count_flops` (torch's formulas) on the meta device (no
compute): convolutions and matrix products, 2 FLOPs per multiply-add, as peaks are quoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.flops import count_flops

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "benchmark" / "cifar10_resnet50.yaml"
EPOCH_IMAGES = 50_000
"""Training images per CIFAR-10 epoch, as the issue counts an epoch (the train split)."""
GOAL_GPU_HOURS = 8.0
GOAL_MFU = 0.40

# Peak dense (no sparsity) bf16 tensor-core FLOP/s, from NVIDIA's datasheets: H100 (SXM5 989.4
# TFLOPS, PCIe 756, NVL 835), H200 (SXM 989.4, NVL 835), A100 (312, SXM4 and PCIe alike). The
# datasheets quote "with sparsity" figures twice these; those are not what a dense ResNet uses.
# Matched as case-insensitive substrings of torch.cuda.get_device_name, most specific first
# ("NVIDIA H100 80GB HBM3" is the SXM part; "NVIDIA GH200 480GB" carries an H100-class GPU).
PEAK_BF16_DENSE: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The peak dense bf16 FLOP/s of a GPU by its name (``torch.cuda.get_device_name``); None if unknown."""
    name = device_name.lower()
    for key, peak in PEAK_BF16_DENSE:
        if key.lower() in name:
            return peak
    return None


def forward_flops_per_image(arch: str, image_size: int, in_chans: int = 3, num_classes: int = 10, channels_last: bool = False) -> float:
    """Forward FLOPs of one image through the classifier a retrain builds (normalisation layer included).

    Counted on the meta device, so nothing is computed or allocated; in eval mode, so one image
    passes BatchNorm at any size (the counted convolutions and products are the same in training). ResNet50 at 224 px (the
    ImageNet stem) gives 8.17e9, twice torchvision's documented 4.09 GMACs; at 32 px (the small
    stem of :mod:`roar.models.factory`) 2.60e9.
    """
    from roar.models.classifier import ImageClassifier

    with torch.device("meta"):
        model = ImageClassifier(arch=arch, num_classes=num_classes, in_chans=in_chans, image_size=image_size, channels_last=channels_last).eval()
        x = torch.empty(1, in_chans, image_size, image_size)
        return float(count_flops(lambda: model(x))["total"])


def mfu(forward_flops: float, images_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation of training: ``3 x forward FLOPs x images/s / peak``; None without a peak."""
    if not peak_flops or not math.isfinite(images_per_s):
        return None
    return 3.0 * forward_flops * images_per_s / peak_flops


@dataclass(frozen=True)
class GridShape:
    """What a grid's GPU-hours depend on, read from its benchmark config."""

    methods: int
    thresholds: int
    seeds: int
    modes: int
    max_epochs: int
    batch_size: int
    model: dict[str, Any]
    trainer: dict[str, Any]
    data: dict[str, Any]

    @property
    def retrains(self) -> int:
        """Retrains of one mode (ROAR): the issue's 350 for the paper's grid."""
        return self.methods * self.thresholds * self.seeds


def read_grid(path: str | Path = PAPER_CONFIG) -> GridShape:
    """The grid's shape, epochs and training settings from a ``configs/benchmark/*.yaml`` file."""
    doc = yaml.safe_load(Path(path).read_text())
    bench, trainer = doc.get("benchmark") or {}, doc.get("trainer") or {}
    data = (doc.get("data") or {}).get("init_args", doc.get("data") or {})
    if "max_epochs" not in trainer:
        raise ValueError(f"{path}: trainer.max_epochs is not set; the projection needs the retrain's epochs")
    seeds = bench.get("seeds", 1)
    return GridShape(
        methods=len(bench.get("methods") or []), thresholds=len(bench.get("thresholds") or []),
        seeds=len(seeds) if isinstance(seeds, list) else int(seeds), modes=len(bench.get("modes") or ["roar"]),
        max_epochs=int(trainer["max_epochs"]), batch_size=int(data.get("batch_size", 128)),
        model=dict(doc.get("model") or {}), trainer=dict(trainer), data=dict(data),
    )  # fmt: skip


def grid_gpu_hours(images_per_s: float, retrains: int, epochs: int, epoch_images: int = EPOCH_IMAGES) -> float:
    """GPU-hours of ``retrains`` trainings of ``epochs`` epochs at ``images_per_s``."""
    if images_per_s <= 0:
        return float("inf")
    return retrains * epochs * epoch_images / images_per_s / 3600.0


def needed_images_per_s(hours: float, retrains: int, epochs: int, epoch_images: int = EPOCH_IMAGES) -> float:
    """The throughput that fits ``retrains x epochs`` epochs in ``hours``."""
    return retrains * epochs * epoch_images / (hours * 3600.0)
