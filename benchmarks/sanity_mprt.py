"""Figure 7: the cascading randomisation check against Quantus 0.6's MPRT, side by side.

The same work on both sides: the model-parameter randomisation test of Adebayo et al. (NeurIPS
2018) with Integrated Gradients (captum, Gauss-Legendre, ``n_steps``), top-down cumulative
randomisation of every layer of small_cnn, the same digits images and target classes, Spearman
similarity to the original map. Quantus gets our IG as its ``explain_func``, so both compute the
same maps; it explains one randomised model after another, as does our ``share=False`` path.
Our default on a CPU (``stack=1``, ``share=True``, :mod:`roar.sanity.shared_forward`) computes
the layers the steps share once (the cascade's unchanged bottom is the trained model's), runs
the conv net in ``channels_last`` and max-pools before the ReLUs (the same values). Our batched
path (``stack=K``, :mod:`roar.sanity.batched`) explains the K models of the cascade in one
vmapped call over their stacked weights. Issue 12's target: the default path >= 3x faster than
Quantus's MPRT.

On a CPU the work is compute-bound: sharing saves forward passes, but every step still needs its
own backward pass through every layer (its upstream gradient differs), and batching saves only
per-call overhead; the batched path pays off where one small model leaves a GPU idle. So the figure
also counts each way's FLOPs (:mod:`benchmarks.flops`) and measures the device's fastest dense
kernel: the shared path does each layer's forward once per version of its weights and one
input-gradient backward per model, the least direct convolutions can do, and the status line says
what share of that kernel's rate, over the whole check, the target would need.

Quantus is a benchmark-only dependency (``pip install quantus==0.6.0``); without it
the Quantus row says so and the figure has no verdict.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import Settings, interleaved, median, quiet, ratio
from benchmarks.flops import count_flops, dense_ceiling
from benchmarks.options import bounded

TARGET = 3.0
TARGET_NOTE = "default cascade (shared layers) >= 3x faster than Quantus 0.6 MPRT (same model, images, IG)"
SHARED = "ours, shared layers (stack=1, the default on CPU)"


@dataclass(frozen=True)
class Config:
    image_size: int = bounded(1, default=16)
    num_images: int = bounded(1, default=16)
    n_steps: int = bounded(1, default=16)
    arch: str = "small_cnn"
    stack: int = bounded(1, default=8)


PRESETS = {"smoke": Config(image_size=8, num_images=2, n_steps=2), "quick": Config(), "full": Config(num_images=32, n_steps=32)}


def _setup(settings: Settings, cfg: Config):
    from roar.data.datamodule import ImageDataModule
    from roar.models.factory import build_model
    from roar.sanity.maps import select_batch

    dm = ImageDataModule(source="digits", image_size=cfg.image_size, batch_size=64, seed=0)
    images, _, _ = select_batch(dm.split_dataset("test"), cfg.num_images, seed=0, device=settings.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(cfg.arch, num_classes=dm.num_classes, in_chans=dm.in_chans, image_size=cfg.image_size)
    model = model.to(settings.device).eval()
    with torch.no_grad():
        target = model(images).argmax(1)
    return model, images, target


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    from roar.attribution import get_method
    from roar.sanity.maps import model_randomization

    cfg = cfg or PRESETS[settings.preset]
    model, images, target = _setup(settings, cfg)
    params = {"integrated_gradients": {"n_steps": cfg.n_steps}}

    def ours(stack: int, share: bool = True):
        return lambda: model_randomization(model, images, "cascading", ["integrated_gradients"], ["spearman"], target=target,
                                           method_params=params, stack=stack, share=share)  # fmt: skip

    calls = {"ours, one model at a time (stack=1, share=False)": ours(1, share=False), SHARED: ours(1),
             f"ours, batched (stack={cfg.stack})": ours(cfg.stack)}  # fmt: skip
    status = None
    try:
        import quantus
    except ImportError:
        quantus = None
        status = "Quantus not installed (pip install quantus==0.6.0 to compare); our three paths only, no verdict"
    if quantus is not None:
        def explain(model, inputs, targets, **kwargs):
            x = torch.as_tensor(inputs, device=settings.device)
            return get_method("integrated_gradients", model, n_steps=cfg.n_steps)(x, torch.as_tensor(targets, device=settings.device)).cpu().numpy()

        def quantus_mprt():
            metric = quantus.MPRT(layer_order="top_down", abs=False, normalise=False, disable_warnings=True, display_progressbar=False)
            return metric(model=model, x_batch=images.cpu().numpy(), y_batch=target.cpu().numpy(), a_batch=None,
                          explain_func=explain, device=str(settings.device))  # fmt: skip

        calls = {"Quantus 0.6 MPRT": quantus_mprt, **calls}
    print(f"  [mprt] {len(calls)} ways x {settings.repeats} repeats", file=sys.stderr, flush=True)
    with quiet():
        times = interleaved(calls, settings.repeats, settings.device)
        flops = {name: count_flops(call)["total"] for name, call in calls.items()}
    ceiling = dense_ceiling(settings.device)
    seconds = {name: median(t[settings.clock]) for name, t in times.items()}
    reference = seconds.get("Quantus 0.6 MPRT")
    rows = [
        {"way": name, "seconds": s, "speedup": ratio(reference, s) if reference else float("nan"),
         "gflop": flops[name] / 1e9, "gflops": flops[name] / 1e9 / s, "samples": times[name]}
        for name, s in seconds.items()
    ]  # fmt: skip
    shared = next(r for r in rows if r["way"] == SHARED)
    # The most the shared path could gain doing the work it counts, every FLOP at the fastest dense
    # kernel's rate and every other op free; and the share of that rate the target asks for.
    reach = ratio(reference, flops[SHARED] / ceiling) if reference else float("nan")
    needed = flops[SHARED] / (reference / TARGET) if reference else float("nan")
    bound = None if reference is None else (f"the shared path counts {flops[SHARED] / 1e9:.1f} GFLOP; this device's fastest dense float32 kernel runs "
             f"{ceiling / 1e9:.0f} GFLOP/s, so at best {reach:.2f}x Quantus; {TARGET:g}x needs {needed / 1e9:.0f} GFLOP/s over the "
             f"whole check ({needed / ceiling:.0%} of that kernel's rate)")  # fmt: skip
    return {
        "title": "Cascading randomisation check vs Quantus 0.6 MPRT (IG, small_cnn on digits)",
        "target": TARGET_NOTE,
        "status": "; ".join(filter(None, [status, bound])),
        "meets_target": None if reference is None else bool(shared["speedup"] >= TARGET),
        "config": dict(cfg.__dict__),
        "rows": rows,
        "columns": [("way", "way"), ("seconds", f"s per check ({settings.clock})"), ("speedup", "x faster than Quantus"),
                    ("gflop", "GFLOP per check"), ("gflops", "GFLOP/s")],  # fmt: skip
        "ceiling_gflops": ceiling / 1e9,
        "reachable_speedup": reach,
    }
