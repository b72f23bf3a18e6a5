"""Figure 11's floor: the retrain's network and optimiser in a plain PyTorch loop, eager and as one CUDA graph.

No Lightning, data loader, masking or augmentation: one fixed batch already on the device, and the
step a retrain takes (forward under the config's precision, cross-entropy, backward, SGD). Run
eagerly it says what Lightning and the data path add to a step. Captured whole as one CUDA graph
(PyTorch's "whole-network capture": forward, backward and optimiser step in one graph, replayed)
it launches no kernel from the host at all: its time is the GPU's own time for the step, the floor
no setting of the framework can go under at this batch size.

On an H100 (2026-11-25, a scratch version of this loop) a CIFAR ResNet50 step at batch 128 took
27.8 ms eager, every millisecond of it spent enqueueing kernels, and 11.4 ms as one graph: 8.9% of
the bf16 peak. That floor, not the framework, keeps the paper's grid above 8 GPU-hours.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Settings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_plain_loop(settings: Settings, model_args: dict[str, Any], precision: str, batch: int, warmup: int, timed: int, graph: bool) -> dict[str, Any]:
    """Both clocks over ``timed`` steps after ``warmup``; ``graph``: replay one captured whole step (CUDA only)."""
    from roar.models.classifier import ImageClassifier, build_optimizer

    device = settings.device
    if graph and device.type != "cuda":
        raise ValueError("a whole-step CUDA graph needs --device cuda")
    torch.manual_seed(0)
    model = ImageClassifier(**{**model_args, "compile": False}).to(device)
    model.configure_model()  # channels_last weights, as the Trainer does
    model.train()
    optimizer, _ = build_optimizer(model.net.named_parameters(), model.hparams, total_steps=warmup + timed, max_epochs=1)
    size, chans = model.hparams.image_size, model.hparams.in_chans
    images = torch.rand(batch, chans, size, size, device=device)
    labels = torch.randint(0, model.hparams.num_classes, (batch,), device=device)
    bf16 = precision.startswith("bf16")

    def step() -> None:
        # autocast's weight cache must stay off inside a graph capture (the casts are replayed instead)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=not graph):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if not graph:
            optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run = step
    if graph:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(captured):
            step()
        run = captured.replay
    for _ in range(warmup):
        run()
    _sync(device)
    warmup_s = time.perf_counter() - start
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(timed):
        run()
    _sync(device)
    window = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return {"window": window, "warmup": {"wall": warmup_s}, "peak_memory_gb": peak}
