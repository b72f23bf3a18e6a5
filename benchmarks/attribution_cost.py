"""Figure 1: each attribution method's cost against the forward+backward passes it must do.

A gradient-based map cannot cost less than the passes through the network it needs: one
forward+backward for ``gradient``, ``n_steps`` of them for Integrated Gradients (Sundararajan et
al. 2017), ``n_samples`` for GradientSHAP (Lundberg & Lee 2017), ``nt_samples`` for a SmoothGrad /
SmoothGrad-Squared / VarGrad ensemble (Smilkov et al. 2017; Hooker et al. 2019; Adebayo et al.
2018) and ``nt_samples x n_steps`` for an ensemble of Integrated Gradients. Guided Grad-CAM
(Selvaraju et al. 2017) adds one forward for its Grad-CAM half. The *floor* is those passes
measured as plain PyTorch, ``model(x)[range(B), target].sum().backward()`` on one batch of the
same effective size (``B x passes``), with the same model; the figure is the ratio of the
method's time to its floor. Everything above 1 is overhead: captum's bookkeeping, noise
generation, per-sample seeding, the reduction of an ensemble.

The model's parameters are frozen (``requires_grad=False``), so ``backward()`` computes the
input gradient only, which is all a saliency method needs (captum asks autograd for the input
gradient only). ``random`` and ``sobel`` need no pass at all; their ratio is against one
forward+backward, i.e. what fraction of the cheapest gradient map they cost.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import CLOCKS, Settings, interleaved, median, ratio
from benchmarks.options import bounded
from roar.attribution.registry import ENSEMBLE_SUFFIXES, get_method
from roar.models.classifier import ImageClassifier

METHODS = (
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "guided_gradcam",
    "gradient_shap",
    "gradient_sg",
    "gradient_sg_sq",
    "gradient_var",
    "integrated_gradients_sg",
    "random",
    "sobel",
)
TARGET = 1.3
"""Every method within 1.3x of its floor."""

MODEL_FREE = ("random", "sobel")


@dataclass(frozen=True)
class ModelCase:
    """One model the methods are timed on."""

    arch: str
    image_size: int = bounded(1)
    batch_size: int = bounded(1)
    in_chans: int = bounded(1, default=3)
    num_classes: int = bounded(1, default=10)


@dataclass(frozen=True)
class Config:
    """Sizes of figure 1. Method parameters are reduced from the defaults (50 steps, 25 samples)
    to fit a CPU budget; the ratio is per pass, so it does not depend much on them."""

    models: tuple[ModelCase, ...]
    n_steps: int = bounded(1)
    nt_samples: int = bounded(1)
    n_samples: int = bounded(1)
    methods: tuple[str, ...] = METHODS
    min_seconds: float = bounded(0, default=1.0)
    """Cheap calls are repeated until each side has run this long (see ``interleaved``)."""


PRESETS = {
    "smoke": Config(models=(ModelCase("small_cnn", 8, 2),), n_steps=2, nt_samples=2, n_samples=2, min_seconds=0.0),
    "quick": Config(models=(ModelCase("small_cnn", 32, 8), ModelCase("resnet50", 8, 1)), n_steps=4, nt_samples=2, n_samples=2, min_seconds=0.3),
    "full": Config(models=(ModelCase("small_cnn", 32, 8), ModelCase("resnet50", 32, 1)), n_steps=8, nt_samples=4, n_samples=4),
}


def split_method(name: str) -> tuple[str, str | None]:
    """``integrated_gradients_sg`` -> (``integrated_gradients``, ``sg``); no suffix -> (name, None)."""
    for suffix in sorted(ENSEMBLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix[1:]
    return name, None


def method_params(name: str, cfg: Config) -> dict[str, Any]:
    base, ensemble = split_method(name)
    params: dict[str, Any] = {}
    if base == "integrated_gradients":
        params["n_steps"] = cfg.n_steps
    if base == "gradient_shap":
        params["n_samples"] = cfg.n_samples
    if ensemble is not None:
        params["nt_samples"] = cfg.nt_samples
    return params


def passes(name: str, cfg: Config) -> tuple[int, int]:
    """``(forward+backward passes, extra forward passes)`` per image the method cannot avoid."""
    base, ensemble = split_method(name)
    if base in MODEL_FREE:
        return 0, 0
    per_copy = {"integrated_gradients": cfg.n_steps, "gradient_shap": cfg.n_samples}.get(base, 1)
    extra_forward = 1 if base == "guided_gradcam" else 0
    copies = cfg.nt_samples if ensemble is not None else 1
    return per_copy * copies, extra_forward * copies


def build_frozen_classifier(case: ModelCase, device: torch.device) -> ImageClassifier:
    """The Lightning classifier (normalisation layer included) that compute_ranks explains, frozen, in eval mode."""
    model = ImageClassifier(
        arch=case.arch, num_classes=case.num_classes, in_chans=case.in_chans, image_size=case.image_size,
        channel_mean=[0.5] * case.in_chans, channel_std=[0.25] * case.in_chans,
    )  # fmt: skip
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class Floor:
    """Plain-PyTorch passes on batches of a given effective size, inputs made once per size."""

    def __init__(self, model: torch.nn.Module, case: ModelCase, device: torch.device) -> None:
        self.model, self.case, self.device = model, case, device
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n not in self._inputs:
            gen = torch.Generator().manual_seed(n)
            c, s = self.case.in_chans, self.case.image_size
            x = torch.rand((n, c, s, s), generator=gen).to(self.device)
            target = torch.randint(0, self.case.num_classes, (n,), generator=gen).to(self.device)
            self._inputs[n] = (x, target)
        return self._inputs[n]

    def run(self, fwd_bwd: int, fwd: int) -> None:
        if fwd_bwd:
            x, target = self._batch(fwd_bwd)
            x = x.detach().requires_grad_(True)
            self.model(x)[torch.arange(len(x), device=x.device), target].sum().backward()
        if fwd:
            # Grad-CAM's forward keeps the graph to its layer; a forward with autograd on matches it.
            x, _ = self._batch(fwd)
            self.model(x.detach().requires_grad_(True))


def run(settings: Settings, cfg: Config | None = None) -> dict[str, Any]:
    """Time every method of ``cfg`` on every model against its floor."""
    cfg = cfg or PRESETS[settings.preset]
    rows = []
    for case in cfg.models:
        model = build_frozen_classifier(case, settings.device)
        floor = Floor(model, case, settings.device)
        gen = torch.Generator().manual_seed(0)
        b = case.batch_size
        x = torch.rand((b, case.in_chans, case.image_size, case.image_size), generator=gen).to(settings.device)
        target = torch.randint(0, case.num_classes, (b,), generator=gen).to(settings.device)
        indices = torch.arange(b)
        for name in cfg.methods:
            print(f"  [attribution] {case.arch} {case.image_size}px B={b}: {name}", file=sys.stderr, flush=True)
            params = method_params(name, cfg)
            method = get_method(name, model=model, **params)
            n_fb, n_f = passes(name, cfg)
            reference = (n_fb, n_f) if n_fb else (1, 0)  # model-free: against one forward+backward
            times = interleaved(
                {
                    "method": lambda method=method: method(x, target, indices),
                    "floor": lambda reference=reference: floor.run(reference[0] * b, reference[1] * b),
                },
                settings.repeats,
                settings.device,
                min_seconds=cfg.min_seconds,
            )
            ratios = {clock: ratio(median(times["method"][clock]), median(times["floor"][clock])) for clock in CLOCKS}
            r = ratios[settings.clock]
            rows.append({
                "model": case.arch, "image_size": case.image_size, "batch_size": b, "method": name, "params": params,
                "floor": _floor_label(n_fb, n_f), "effective_batch": reference[0] * b,
                "s_per_image": median(times["method"][settings.clock]) / b,
                "images_per_s": b / median(times["method"][settings.clock]),
                "floor_s_per_image": median(times["floor"][settings.clock]) / b,
                "ratio": r, "ratio_wall": ratios["wall"], "ratio_cpu": ratios["cpu"], "meets_target": bool(r <= TARGET),
                "times": times,
            })  # fmt: skip
    return {
        "title": "Attribution cost against its forward+backward floor",
        "target": f"every method <= {TARGET}x its floor",
        "meets_target": all(row["meets_target"] for row in rows),
        "config": {"n_steps": cfg.n_steps, "nt_samples": cfg.nt_samples, "n_samples": cfg.n_samples},
        "rows": rows,
        "columns": [
            ("model", "model"), ("image_size", "px"), ("batch_size", "B"), ("method", "method"), ("floor", "floor passes / image"),
            ("s_per_image", f"s / image ({settings.clock})"), ("images_per_s", f"images / s ({settings.clock})"),
            ("floor_s_per_image", f"floor s / image ({settings.clock})"),
            ("ratio", f"ratio ({settings.clock})"),
            *([("ratio_wall", "ratio (wall)")] if settings.clock != "wall" else []),  # not the same column twice
            ("meets_target", f"<= {TARGET}x"),
        ],
    }  # fmt: skip


def _floor_label(n_fb: int, n_f: int) -> str:
    if n_fb == 0:
        return "0 (ratio vs 1 fwd+bwd)"
    return f"{n_fb} fwd+bwd" + (f" + {n_f} fwd" if n_f else "")
