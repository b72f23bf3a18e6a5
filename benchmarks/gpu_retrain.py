"""Figure 11: one CIFAR-10 ResNet50 retrain on the device: images/s, MFU, and the grid's GPU-hours.

ROAR's cost is its retrains (Hooker et al., NeurIPS 2019): the paper's CIFAR-10 grid is 14
estimators x 5 thresholds x 5 seeds = 350 ResNet50 trainings per mode. This figure trains the
retrain's model through the real path, :class:`~roar.models.classifier.ImageClassifier` under a
Lightning ``Trainer`` with the settings of ``configs/benchmark/cifar10_resnet50.yaml`` (its
batch size, optimiser, bf16-mixed precision, channels-last, cudnn benchmark), on random images
of CIFAR-10's shape read by the real ``cifar10`` source and :class:`~roar.data.ImageDataModule`
(on-device crop and flip), and reports:

- images/s over ``timed_steps`` steady steps after ``warmup_steps`` (one synchronised interval,
  no per-step synchronisation, so the GPU queue stays full as in a real epoch);
- MFU (:mod:`benchmarks.mfu`) against the device's peak dense bf16 FLOP/s;
- the projection: the grid's retrains x the config's ``max_epochs`` x 50,000 images at that
  speed, in GPU-hours, against the goal of 8 (issue 12), and MFU against 40%;
- the variants (fp32, channels-last off, ``torch.compile``) side by side: which settings pay.

On a CPU the sizes are capped (``cpu_*`` settings) and every number is a smoke number: the
verdict is left empty. No epoch is run in full: 50,000 images are extrapolated from steady steps.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch import Callback

from benchmarks.common import CLOCKS, Settings, describe_device, now, quiet, since, synchronize, write_fake_cifar10
from benchmarks.mfu import (
    EPOCH_IMAGES, GOAL_GPU_HOURS, GOAL_MFU, PAPER_CONFIG, forward_flops_per_image, grid_gpu_hours, mfu,
    needed_images_per_s, peak_bf16_flops, read_grid,
)  # fmt: skip
from benchmarks.options import bounded
from benchmarks.step_floor import time_plain_loop
from benchmarks.timers import keep_cudnn_benchmark, trainer_kwargs

VARIANTS: dict[str, dict[str, Any]] = {
    "config": {},  # the YAML's settings (full precision on a CPU, where bf16 autocast rarely pays)
    "fp32": {"precision": "32-true"},
    "bf16": {"precision": "bf16-mixed"},
    "contiguous": {"channels_last": False},
    "fp32_contiguous": {"precision": "32-true", "channels_last": False},
    "compile": {"compile": True},  # torch.compile's default mode
    "graphs": {"compile": "reduce-overhead"},  # torch.compile with CUDA graphs: no per-kernel launch cost
}
"""Named changes to the config's training settings; each is one row of the figure."""


@dataclass(frozen=True)
class Config:
    warmup_steps: int = bounded(1, default=20)
    timed_steps: int = bounded(1, default=200)
    variants: tuple[str, ...] = ("config", "fp32", "contiguous", "compile", "graphs")
    batch_size: int = bounded(0, note="0: the config's data.batch_size", default=0)
    """0: the config's ``data.batch_size`` (128)."""
    image_size: int = bounded(1, default=32)
    peak_tflops: float = bounded(0, note="0: looked up", default=0.0)
    """The device's peak dense bf16 TFLOP/s, for a GPU the built-in table does not know (0: look it up)."""
    cpu_batch_size: int = bounded(1, default=8)
    cpu_warmup_steps: int = bounded(1, default=1)
    cpu_timed_steps: int = bounded(1, default=3)
    cpu_compile: bool = False
    plain_loop: bool = True
    """Also the config's step in a plain PyTorch loop, eager and (CUDA only) as one whole-step CUDA
    graph: what Lightning and the data path add, and the GPU's own floor (:mod:`benchmarks.step_floor`)."""
    """Compile on a CPU too (minutes of C++ compilation for ResNet50)."""


PRESETS = {
    "smoke": Config(warmup_steps=1, timed_steps=2, variants=("config", "bf16", "contiguous"), batch_size=2, image_size=8),
    "quick": Config(warmup_steps=10, timed_steps=60),
    "full": Config(),
}


class WindowTimer(Callback):
    """Both clocks over training steps ``start < step <= stop``, synchronised at the two ends only."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop
        self.warmup: dict[str, float] = {}
        self.window: dict[str, float] = {}
        self._t0: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        synchronize(pl_module.device)
        self._t0 = now()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = batch_idx + 1
        if step == self.start:
            synchronize(pl_module.device)
            self.warmup = since(self._t0)
            self._t0 = now()
        elif step == self.stop:
            synchronize(pl_module.device)
            self.window = since(self._t0)


def _compile_label(compile: bool | str) -> list[str]:
    if not compile:
        return []
    return ["compile" if compile in (True, "default") else f"compile {compile}"]


def variant_settings(name: str, base: dict[str, Any]) -> dict[str, Any]:
    if name not in VARIANTS:
        raise ValueError(f"unknown gpu variant {name!r}; valid choices: {', '.join(VARIANTS)}")
    return {**base, **VARIANTS[name]}


def train_variant(settings: Settings, grid, dm_args: dict[str, Any], train: dict[str, Any], warmup: int, timed: int) -> dict[str, Any]:
    """Train ``warmup + timed`` steps of the retrain's model with ``train``'s settings; both clocks."""
    from lightning.pytorch import Trainer, seed_everything

    from roar.data.datamodule import ImageDataModule
    from roar.models.classifier import ImageClassifier

    seed_everything(0, verbose=False)
    dm = ImageDataModule(**dm_args)
    model_args = {**grid.model, "channels_last": train["channels_last"], "compile": train["compile"]}
    model = ImageClassifier(
        **model_args, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=dm.image_size,
        channel_mean=dm.channel_mean, channel_std=dm.channel_std,
    )  # fmt: skip
    timer = WindowTimer(warmup, warmup + timed)
    cuda = settings.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(settings.device)
    with quiet(), keep_cudnn_benchmark():
        trainer = Trainer(**trainer_kwargs(
            settings, max_epochs=1, limit_train_batches=warmup + timed, limit_val_batches=0, callbacks=[timer],
            precision=train["precision"], benchmark=bool(grid.trainer.get("benchmark", False)) and cuda,
            log_every_n_steps=int(grid.trainer.get("log_every_n_steps", 50)),
        ))  # fmt: skip
        trainer.fit(model, datamodule=dm)
    if not timer.window:
        raise RuntimeError(f"the run stopped before step {warmup + timed} (the data gave {trainer.num_training_batches} batches)")
    return {
        "window": timer.window, "warmup": timer.warmup,
        "peak_memory_gb": torch.cuda.max_memory_allocated(settings.device) / 1e9 if cuda else None,
    }  # fmt: skip


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or PRESETS[settings.preset]
    for name in cfg.variants:
        variant_settings(name, {})  # every name checked before any training
    if cfg.warmup_steps < 1 or cfg.timed_steps < 1:
        raise ValueError(f"gpu.warmup_steps and gpu.timed_steps must be >= 1, got {cfg.warmup_steps} and {cfg.timed_steps}")
    grid = read_grid(PAPER_CONFIG)
    cuda = settings.device.type == "cuda"
    batch = cfg.batch_size or grid.batch_size
    warmup, timed = cfg.warmup_steps, cfg.timed_steps
    if not cuda:
        batch, warmup, timed = min(batch, cfg.cpu_batch_size), min(warmup, cfg.cpu_warmup_steps), min(timed, cfg.cpu_timed_steps)
    arch = grid.model.get("arch", "resnet50")
    flops = forward_flops_per_image(arch, cfg.image_size)
    device_name = describe_device(settings.device)
    peak = cfg.peak_tflops * 1e12 if cfg.peak_tflops > 0 else (peak_bf16_flops(device_name) if cuda else None)
    base = {
        "precision": grid.trainer.get("precision", "32-true") if cuda else "32-true",
        "channels_last": bool(grid.model.get("channels_last", False)), "compile": grid.model.get("compile", False),
    }  # fmt: skip
    # One pool of random CIFAR-shaped images, large enough that the timed steps lie in one epoch of full batches.
    val_fraction = float(grid.data.get("val_fraction", 0.1))
    n_train = math.ceil((warmup + timed) * batch / (1 - val_fraction)) + batch
    root = write_fake_cifar10(settings.workdir / f"fake-cifar10-gpu-{n_train}", n_train=n_train, n_test=batch)
    dm_args = {
        **{k: v for k, v in grid.data.items() if k not in ("root", "download")},
        "source": "cifar10", "root": str(root), "batch_size": batch, "image_size": cfg.image_size,
    }  # fmt: skip
    rows, measured = [], {}
    for name in cfg.variants:
        train = variant_settings(name, base)
        key = tuple(sorted(train.items()))
        label = ", ".join([train["precision"], "channels_last" if train["channels_last"] else "contiguous", *(_compile_label(train["compile"]))])
        row: dict[str, Any] = {"variant": name, "settings": label, **train}
        if key in measured:
            rows.append({**measured[key], "variant": name, "status": f"same settings as {measured[key]['variant']}"})  # e.g. fp32 on a CPU
            continue
        if train["compile"] and not cuda and not cfg.cpu_compile:
            rows.append({**row, "status": "skipped on CPU (gpu.cpu_compile=true to run it)"})
            continue
        print(f"  [gpu] {arch} {cfg.image_size}px batch {batch}, {name}: {warmup}+{timed} steps", file=sys.stderr, flush=True)
        try:
            took = train_variant(settings, grid, dm_args, train, warmup, timed)
        except Exception as err:  # e.g. torch.compile without a working compiler: a row that says so, not a crash
            rows.append({**row, "status": _failed(err)})
            continue
        _measured(row, took, settings, batch, timed, flops, peak, grid)
        measured[key] = row
        rows.append(row)
    if cfg.plain_loop:
        rows += _plain_loop_rows(settings, grid, base, batch, warmup, timed, flops, peak, cfg.image_size)
    reference = next((r for r in rows if r["variant"] == "config" and r.get("images_per_s")), None)
    for r in rows:
        if reference and r.get("images_per_s"):
            r["vs_config"] = r["images_per_s"] / reference["images_per_s"]
    return _figure(settings, cfg, grid, rows, reference, flops, peak, device_name, batch, warmup, timed)


def _failed(err: Exception) -> str:
    return f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


def _measured(row: dict[str, Any], took: dict[str, Any], settings: Settings, batch: int, timed: int, flops, peak, grid) -> None:
    speed = {clock: timed * batch / took["window"][clock] for clock in CLOCKS}
    ips = speed[settings.clock]
    row.update({
        "status": "measured", "images_per_s": ips, "images_per_s_wall": speed["wall"],
        "step_ms": 1000 * took["window"][settings.clock] / timed, "warmup_s": took["warmup"]["wall"],
        "mfu": mfu(flops, ips, peak), "epoch_s": EPOCH_IMAGES / ips,
        "grid_gpu_hours": grid_gpu_hours(ips, grid.retrains, grid.max_epochs), "peak_memory_gb": took["peak_memory_gb"],
    })  # fmt: skip


def _plain_loop_rows(settings: Settings, grid, base: dict[str, Any], batch, warmup, timed, flops, peak, image_size) -> list[dict[str, Any]]:
    """The config's step in a plain loop, eager and as one whole-step CUDA graph (:mod:`benchmarks.step_floor`)."""
    model_args = {**grid.model, "num_classes": 10, "in_chans": 3, "image_size": image_size, "channel_mean": [0.5] * 3, "channel_std": [0.25] * 3}
    layout = "channels_last" if base["channels_last"] else "contiguous"
    rows = []
    for name, graph in (("plain", False), ("plain_graph", True)):
        row: dict[str, Any] = {
            "variant": name, "settings": f"{base['precision']}, {layout}, plain loop" + (", whole-step CUDA graph" if graph else ""),
            "precision": base["precision"], "channels_last": base["channels_last"], "compile": False,
        }  # fmt: skip
        if graph and settings.device.type != "cuda":
            rows.append({**row, "status": "skipped: CUDA only"})
            continue
        print(f"  [gpu] {grid.model.get('arch')} {image_size}px batch {batch}, {name}: {warmup}+{timed} steps", file=sys.stderr, flush=True)
        try:
            took = time_plain_loop(settings, model_args, base["precision"], batch, warmup, timed, graph)
        except Exception as err:  # e.g. a capture the driver refuses: a row that says so
            rows.append({**row, "status": _failed(err)})
            continue
        _measured(row, took, settings, batch, timed, flops, peak, grid)
        rows.append(row)
    return rows


def _figure(settings, cfg, grid, rows, reference, flops, peak, device_name, batch, warmup, timed) -> dict[str, Any]:
    cuda = settings.device.type == "cuda"
    needed = needed_images_per_s(GOAL_GPU_HOURS, grid.retrains, grid.max_epochs)
    status = []
    if not cuda:
        status.append(
            f"CPU smoke number, not a GPU figure: sizes capped to batch {batch}, {warmup}+{timed} steps, full precision; "
            "MFU not available on a CPU; no verdict. Run with --device cuda for the figure."
        )  # fmt: skip
    elif peak is None:
        status.append(f"MFU not available: no peak bf16 FLOP/s known for {device_name!r}; give it with --set gpu.peak_tflops=...")
    meets = None
    if cuda and reference:
        hours_ok = reference["grid_gpu_hours"] <= GOAL_GPU_HOURS
        meets = bool(hours_ok and (reference["mfu"] is None or reference["mfu"] >= GOAL_MFU))
        status.append(
            f"the paper's grid ({grid.methods} estimators x {grid.thresholds} thresholds x {grid.seeds} seeds = "
            f"{grid.retrains} retrains x {grid.max_epochs} epochs) projects to {reference['grid_gpu_hours']:.1f} GPU-hours "
            f"at the config's settings (goal {GOAL_GPU_HOURS:g}; {grid.modes} modes double it)"
        )  # fmt: skip
    elif cuda:
        status.append("the config's own settings did not run: no projection")
    return {
        "title": "One CIFAR-10 ResNet50 retrain on the device: images/s, MFU, GPU-hours of the paper's grid",
        "target": f"the paper's grid ({grid.retrains} retrains x {grid.max_epochs} epochs) <= {GOAL_GPU_HOURS:g} GPU-hours, "
        f"i.e. >= {needed:,.0f} images/s; MFU >= {GOAL_MFU:.0%} of the peak dense bf16 FLOP/s (CUDA only)",
        "meets_target": meets,
        "status": "; ".join(status),
        "config": {
            **cfg.__dict__, "batch_size": batch, "warmup_steps": warmup, "timed_steps": timed, "arch": grid.model.get("arch"),
            "forward_gflops_per_image": flops / 1e9, "peak_bf16_tflops": peak / 1e12 if peak else None,
            "retrains": grid.retrains, "max_epochs": grid.max_epochs, "epoch_images": EPOCH_IMAGES,
            "needed_images_per_s": needed, "config_file": str(PAPER_CONFIG.name),
        },  # fmt: skip
        "rows": rows,
        "columns": [
            ("variant", "variant"), ("settings", "settings"),
            ("status", "status"), ("images_per_s", f"images/s ({settings.clock})"), ("vs_config", "vs config"),
            ("step_ms", "ms / step"), ("mfu", "MFU (bf16 peak)"), ("epoch_s", "s / epoch"),
            ("grid_gpu_hours", f"grid GPU-h ({grid.retrains} x {grid.max_epochs} ep)"),
            ("warmup_s", f"warm-up s ({warmup} steps)"), ("peak_memory_gb", "peak GB"),
        ],
    }  # fmt: skip
