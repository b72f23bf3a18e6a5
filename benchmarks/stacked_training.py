"""Figure 9: N grid cells trained as one stacked model against the same N trained one by one.

ROAR (Hooker et al., NeurIPS 2019) retrains one architecture for every cell of its grid; a small
network leaves the device idle. ``benchmark.stack: N`` (:mod:`roar.benchmark.stacked_runner`)
trains N cells as one ``vmap``'d model (:class:`~roar.models.stacked.StackedNetworks`). Two
measurements, the same work on both sides (N models, the same batches, the same steps):

- *train steps*: N plain training steps (forward, backward, SGD) of N separate networks against
  one step of the stacked networks, on random batches of the case's shape, interleaved rounds:
  both ways a stack runs (``vmap``'s batched kernels, and a loop over the members' slices) and
  the device's default (``vmap`` on CUDA, the loop on CPU) as the verdict;
- *grid runs* (small_cnn on the embedded digits only): ``execute_run`` of N reference cells one
  after another (each its own Trainer) against ``execute_stack`` of the same N cells: what a
  grid with ``stack: N`` gains, fixed per-run costs included.

images/s counts every member's images: N x batch x steps over the time taken.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import CLOCKS, Settings, interleaved, median, quiet, ratio
from benchmarks.options import bounded
from roar.models.factory import build_model
from roar.models.stacked import StackedNetworks

TARGET = 1.0
"""Stacked training at least as fast as separate training (images/s)."""


@dataclass(frozen=True)
class Case:
    arch: str
    in_chans: int = bounded(1)
    image_size: int = bounded(1)
    batch_size: int = bounded(1)
    members: int = bounded(1)


@dataclass(frozen=True)
class Config:
    cases: tuple[Case, ...]
    steps: int = bounded(1, default=5)
    """Training steps per timed call (train-step measurement)."""
    grid_members: int = bounded(0, note="0 leaves the grid run out", default=0)
    """Cells of the grid-run measurement (small_cnn on digits); 0 leaves it out."""
    grid_epochs: int = bounded(1, default=1)


PRESETS = {
    "smoke": Config(cases=(Case("small_cnn", 1, 8, 32, 2),), steps=2, grid_members=2, grid_epochs=1),
    "quick": Config(cases=(Case("small_cnn", 1, 8, 64, 4),), steps=5, grid_members=3, grid_epochs=1),
    "full": Config(
        cases=(Case("small_cnn", 1, 8, 64, 4), Case("small_cnn", 3, 32, 128, 4), Case("resnet18", 3, 32, 128, 4)),
        steps=5, grid_members=4, grid_epochs=2,
    ),  # fmt: skip
}


def _networks(case: Case, device: torch.device) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_model(case.arch, num_classes=10, in_chans=case.in_chans, image_size=case.image_size).to(device) for _ in range(case.members)]


def train_step_speeds(case: Case, settings: Settings, cfg: Config) -> dict[str, dict[str, list[float]]]:
    """Seconds per ``cfg.steps`` steps of N separate networks and of their stack, interleaved."""
    device = settings.device
    nets = _networks(case, device)
    stacks = {way: StackedNetworks(nets, vectorize=way == "vmap").to(device) for way in ("vmap", "loop")}
    separate_opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9, nesterov=True) for n in nets]
    stacked_opts = {way: torch.optim.SGD(list(stack.params.values()), lr=0.01, momentum=0.9, nesterov=True) for way, stack in stacks.items()}
    x = torch.rand(case.members, case.batch_size, case.in_chans, case.image_size, case.image_size, device=device)
    y = torch.randint(0, 10, (case.members, case.batch_size), device=device)

    def separate() -> None:
        for _ in range(cfg.steps):
            for i, (net, opt) in enumerate(zip(nets, separate_opts, strict=True)):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x[i]), y[i]).backward()
                opt.step()

    def stacked(way: str) -> None:
        for _ in range(cfg.steps):
            stacked_opts[way].zero_grad(set_to_none=True)
            logits = stacks[way](x)
            sum(F.cross_entropy(logits[i], y[i]) for i in range(case.members)).backward()
            stacked_opts[way].step()

    return interleaved({"separate": separate, "vmap": lambda: stacked("vmap"), "loop": lambda: stacked("loop")}, settings.repeats, device)


def grid_run_speeds(settings: Settings, cfg: Config) -> dict[str, dict[str, float]]:
    """Wall and CPU seconds of N digits reference cells run one by one and as one stack."""
    from benchmarks.common import now, since
    from roar.benchmark.config import BenchmarkConfig
    from roar.benchmark.plan import RunSpec
    from roar.benchmark.runner import execute_run
    from roar.benchmark.stacked_runner import execute_stack

    accelerator = "gpu" if settings.device.type == "cuda" else "cpu"
    bench = BenchmarkConfig.from_dict(dict(
        data={"source": "digits", "image_size": 8, "batch_size": 64, "seed": 0}, model={"arch": "small_cnn"},
        trainer={"max_epochs": cfg.grid_epochs, "accelerator": accelerator}, logger="none", save_checkpoints=False,
    ))  # fmt: skip
    specs = [RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, seed) for seed in range(cfg.grid_members)]
    out, base = settings.workdir / "stacked-grid", settings.workdir / "stacked-grid" / "base.ckpt"
    times = {}
    with quiet():
        start = now()
        for spec in specs:
            execute_run(spec, bench, out / "separate", base, progress=False)
        times["separate"] = since(start)
        start = now()
        execute_stack(specs, bench, out / "stacked", base)
        times["stacked"] = since(start)
    return times


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    cfg = cfg or PRESETS[settings.preset]
    clock = settings.clock
    rows = []
    default = "vmap" if settings.device.type == "cuda" else "loop"  # what StackedNetworks picks on this device
    for case in cfg.cases:
        print(f"  [stacked] {case.arch} {case.in_chans}x{case.image_size}px x{case.members}", file=sys.stderr, flush=True)
        times = train_step_speeds(case, settings, cfg)
        images = case.members * case.batch_size * cfg.steps
        speed = {side: {c: images / median(times[side][c]) for c in CLOCKS} for side in times}
        rows.append({
            "what": "train steps", "arch": case.arch, "shape": f"{case.in_chans}x{case.image_size}x{case.image_size}",
            "members": case.members, "batch_size": case.batch_size,
            "separate_images_per_s": speed["separate"][clock], "stacked_images_per_s": speed[default][clock],
            "speedup": ratio(speed[default][clock], speed["separate"][clock]),
            "speedup_wall": ratio(speed[default]["wall"], speed["separate"]["wall"]),
            "speedup_vmap": ratio(speed["vmap"][clock], speed["separate"][clock]),
            "speedup_loop": ratio(speed["loop"][clock], speed["separate"][clock]),
        })  # fmt: skip
    if cfg.grid_members > 1:
        print(f"  [stacked] digits grid runs x{cfg.grid_members}", file=sys.stderr, flush=True)
        times = grid_run_speeds(settings, cfg)
        from roar.data.datamodule import ImageDataModule

        train = len(ImageDataModule(source="digits", image_size=8, seed=0).train_indices)
        images = cfg.grid_members * train * cfg.grid_epochs
        rows.append({
            "what": "grid runs (execute_run vs execute_stack)", "arch": "small_cnn", "shape": "1x8x8",
            "members": cfg.grid_members, "batch_size": 64,
            "separate_images_per_s": images / times["separate"][clock], "stacked_images_per_s": images / times["stacked"][clock],
            "speedup": ratio(times["separate"][clock], times["stacked"][clock]),
            "speedup_wall": ratio(times["separate"]["wall"], times["stacked"]["wall"]),
        })  # fmt: skip
    return {
        "title": "N grid cells trained as one stacked model against one by one",
        "target": f"stacked images/s >= {TARGET}x separate",
        "meets_target": all(row["speedup"] >= TARGET for row in rows),
        "config": {"steps": cfg.steps, "grid_members": cfg.grid_members, "grid_epochs": cfg.grid_epochs},
        "rows": rows,
        "columns": [
            ("what", "measured"), ("arch", "model"), ("shape", "image"), ("members", "N"), ("batch_size", "B"),
            ("separate_images_per_s", f"separate img/s ({clock})"), ("stacked_images_per_s", f"stacked img/s ({clock})"),
            ("speedup", f"speed-up ({clock})"), *([("speedup_wall", "speed-up (wall)")] if clock != "wall" else []),
            ("speedup_vmap", f"vmap ({clock})"), ("speedup_loop", f"loop ({clock})"),
        ],
    }
