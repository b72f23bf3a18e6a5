"""The batched cascade (stacked weights, one vmapped call) against captum one model at a time,
and sMPRT / eMPRT (Hedström et al. 2023), with a cross-check against Quantus 0.6.

One small CNN is trained on 8 px digits once per module (a few seconds).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from roar.attribution import get_method
from roar.sanity.batched import can_stack, snapshot, stacked_explain
from roar.sanity.maps import build_methods, explained_network, model_randomization
from roar.sanity.randomization import randomization_steps
from roar.sanity.revisited import Smoothing, complexity_rise, discrete_entropy, efficient_mprt

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/conftest.py

STACKED = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 8},
    "gradient_sg": {"nt_samples": 4},
    "input_x_gradient_sg_sq": {"nt_samples": 3},
    "integrated_gradients_var": {"n_steps": 4, "nt_samples": 3},
}


@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize("name", sorted(STACKED))
def test_stacked_maps_equal_captum_one_model_at_a_time(trained, batch, name, order):
    images, _, indices = batch
    network = explained_network(trained)
    target = network(images).argmax(1)
    one_by_one, states = [], []
    for step in randomization_steps(network, order, seed=3, include_original=True):
        method = build_methods(step.model, [name], STACKED, seed=0)[name]
        one_by_one.append(method(images, target, indices))
        states.append(snapshot(step.model))
    assert can_stack(method)
    stacked = stacked_explain(method, step.model, states, images, target, indices)
    expected = torch.stack(one_by_one)
    assert stacked.shape == expected.shape == (6, *images.shape)
    # Per step, within float tolerance of that step's largest attribution.
    for got, want in zip(stacked, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_stack_setting_leaves_every_similarity_unchanged(trained, batch):
    images, _, indices = batch
    methods = ["gradient", "integrated_gradients", "guided_backprop", "noise"]
    params = {"integrated_gradients": {"n_steps": 8}}
    runs = {k: model_randomization(trained, images, "cascading", methods, ["spearman", "ssim"], indices=indices, method_params=params, stack=k)
            for k in (1, 4, 8)}  # fmt: skip
    rows = {k: [(r.method, r.step, r.metric) for r in run.records] for k, run in runs.items()}
    assert rows[1] == rows[4] == rows[8]
    for k in (4, 8):
        for a, b in zip(runs[1].records, runs[k].records):
            if a.method != "noise":
                torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="stack must be .auto. or a positive integer.*got 0"):
        model_randomization(trained, images, "cascading", methods, stack=0)


def test_other_methods_have_no_batched_path(trained):
    network = explained_network(trained)
    for name in ("guided_backprop", "noise"):
        method = build_methods(network, [name])[name]
        assert not can_stack(method)
        with pytest.raises(ValueError, match="no batched path"):
            stacked_explain(method, network, [snapshot(network)], torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long), torch.zeros(1))


# ----------------------------------------------------------------------------- sMPRT and eMPRT


def test_discrete_entropy_of_known_histograms():
    # Two values in equal numbers: two occupied bins of probability 1/2 -> ln 2.
    two = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    # Four distinct, evenly spread values in 4 bins -> ln 4; |a| makes [-1, 1] one bin -> 0.
    four = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    signs = torch.tensor([[-1.0, 1.0, -1.0, 1.0]])
    assert discrete_entropy(two, n_bins=10).item() == pytest.approx(np.log(2))
    assert discrete_entropy(four, n_bins=4).item() == pytest.approx(np.log(4))
    assert discrete_entropy(signs, n_bins=4, absolute=True).item() == pytest.approx(0.0)
    assert discrete_entropy(signs, n_bins=4, absolute=False).item() == pytest.approx(np.log(2))
    rise = complexity_rise(torch.tensor([2.0, 0.0]), torch.tensor([3.0, 1.0]))
    assert rise[0].item() == pytest.approx(0.5) and torch.isnan(rise[1])
    with pytest.raises(ValueError, match="emprt_bins must be a positive integer, got 0"):
        discrete_entropy(two, n_bins=0)


def test_emprt_gradient_rises_and_noise_control_does_not(trained, batch):
    images, _, indices = batch
    result = efficient_mprt(trained, images, ["gradient", "noise"], n_bins=20, indices=indices)
    rows = {(r.method, r.step, r.metric): r for r in result.records}
    assert result.check == "emprt" and result.layers == ["original", "all_layers"]
    for method in ("gradient", "noise"):
        before, after, rise = rows[method, 0, "entropy"], rows[method, 1, "entropy"], rows[method, 1, "complexity_rise"]
        torch.testing.assert_close(rise.values, ((after.values - before.values) / before.values).float())
        assert all(row.row()["batchnorm"] == "reset" for row in (before, after, rise))


def test_smprt_is_mprt_of_noise_averaged_maps(trained, batch):
    images, _, indices = batch
    smooth = model_randomization(trained, images, "cascading", ["gradient"], ["spearman"], indices=indices,
                                 smoothing=Smoothing(nr_samples=6, noise_magnitude=0.1))  # fmt: skip
    # The same as MPRT of SmoothGrad with those copies: sMPRT averages over noisy inputs.
    sg = model_randomization(trained, images, "cascading", ["gradient_sg"], ["spearman"], indices=indices,
                             method_params={"gradient_sg": {"nt_samples": 6, "noise_std": 0.1}})  # fmt: skip
    assert smooth.check == "smprt" and [r.step for r in smooth.records] == [r.step for r in sg.records]
    for a, b in zip(smooth.records, sg.records):
        torch.testing.assert_close(a.values, b.values)
    plain = model_randomization(trained, images, "cascading", ["gradient"], ["spearman"], indices=indices)
    assert not torch.allclose(plain.records[-1].values, smooth.records[-1].values)
    with pytest.raises(ValueError, match="smprt_samples must be a positive integer, got 0"):
        Smoothing(nr_samples=0)
    with pytest.raises(ValueError, match="smprt_noise must be a non-negative number, got -1"):
        Smoothing(noise_magnitude=-1)


# ----------------------------------------------------------------------------- Quantus 0.6


def _deterministic_(module: nn.Module) -> None:
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(torch.sin(torch.arange(p.numel(), dtype=torch.float32) * (1.3 + i) + 0.5).view_as(p) * 0.4)


class _Conv(nn.Conv2d):
    """A conv whose re-initialisation is a fixed pattern: Quantus and we then draw the same weights."""

    def reset_parameters(self) -> None:
        _deterministic_(self)


class _Linear(nn.Linear):
    def reset_parameters(self) -> None:
        _deterministic_(self)


@pytest.fixture(scope="module")
def shared_weights_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(_Conv(1, 4, 3, padding=1), nn.ReLU(), _Conv(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), _Linear(4 * 8 * 8, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def _explain_gradient(model, inputs, targets, **kwargs):
    return get_method("gradient", model)(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()


@pytest.mark.slow
def test_mprt_smprt_and_emprt_agree_with_quantus(shared_weights_model):
    quantus = pytest.importorskip("quantus")
    model = shared_weights_model
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = model(x).argmax(1)
    common = {"disable_warnings": True, "display_progressbar": False}
    call = {"model": model, "x_batch": x.numpy(), "y_batch": t.numpy(), "a_batch": None, "device": "cpu"}

    mprt = quantus.MPRT(layer_order="top_down", abs=False, normalise=False, **common)(explain_func=_explain_gradient, **call)
    ours = model_randomization(model, x, "cascading", ["gradient"], ["spearman"], target=t)
    assert list(mprt) == ours.layers == ["original", "5", "2", "0"]
    for theirs, record in zip(mprt.values(), ours.records):
        np.testing.assert_allclose(record.values.numpy(), theirs, atol=1e-6)

    # Quantus draws sMPRT's noise from NumPy's global stream afresh per model; with zero noise
    # both reduce to averaging the same clean maps, which checks the layer-by-layer pipeline.
    smprt = quantus.SmoothMPRT(layer_order="top_down", abs=False, normalise=False, nr_samples=5, noise_magnitude=0.0, **common)(
        explain_func=quantus.explain, explain_func_kwargs={"method": "Gradient"}, **call
    )
    ours = model_randomization(model, x, "cascading", ["gradient"], ["spearman"], target=t, smoothing=Smoothing(5, 0.0))
    for theirs, record in zip(smprt.values(), ours.records):
        np.testing.assert_allclose(record.values.numpy(), theirs, atol=1e-6)

    emprt = quantus.EfficientMPRT(abs=True, normalise=False, complexity_func_kwargs={"n_bins": 100}, **common)(
        explain_func=_explain_gradient, **call
    )
    ours = efficient_mprt(model, x, ["gradient"], n_bins=100, target=t)
    rise = next(r for r in ours.records if r.metric == "complexity_rise")
    np.testing.assert_allclose(rise.values.numpy(), emprt, atol=1e-6)


def test_auto_stack_is_one_model_at_a_time_on_a_cpu(trained, batch):
    from roar.sanity.maps import resolve_stack

    network = explained_network(trained)
    assert resolve_stack("auto", network, batch[0]) == 1
    assert resolve_stack(4, network, batch[0]) == 4
    with pytest.raises(ValueError, match="stack must be 'auto' or a positive integer.*'eight'"):
        resolve_stack("eight", network, batch[0])


def test_a_users_subclass_of_a_gradient_method_is_explained_by_its_own_code(trained):
    """Our batched and shared paths reproduce the built-in classes' arithmetic only: a subclass
    that changes what it attributes must not be replaced by it."""
    from roar.attribution.gradients import Gradient
    from roar.sanity.shared_forward import can_share

    class Doubled(Gradient):
        def attribute(self, inputs, target):
            return 2 * super().attribute(inputs, target)

    network = explained_network(trained)
    assert can_stack(Gradient(network)) and can_share(Gradient(network))
    assert not can_stack(Doubled(network)) and not can_share(Doubled(network))


@pytest.mark.parametrize("stack", [1, 4])
def test_smprt_of_an_ensemble_method_averages_its_maps(trained, batch, stack):
    # sMPRT of gradient_sg_sq nests two ensembles; with the inner noise at 0 the inner map is the
    # squared gradient, so sMPRT is MPRT of SmoothGrad-Squared over sMPRT's copies (it crashed one
    # model at a time, and the batched path dropped the inner ensemble: the mean, not the square).
    images, _, indices = batch
    nested = model_randomization(trained, images, "cascading", ["gradient_sg_sq"], ["spearman"], indices=indices, stack=stack,
                                 method_params={"gradient_sg_sq": {"nt_samples": 2, "noise_std": 0.0}},
                                 smoothing=Smoothing(nr_samples=3, noise_magnitude=0.1))  # fmt: skip
    squared = model_randomization(trained, images, "cascading", ["gradient_sg_sq"], ["spearman"], indices=indices, stack=stack,
                                  method_params={"gradient_sg_sq": {"nt_samples": 3, "noise_std": 0.1}})  # fmt: skip
    assert [r.step for r in nested.records] == [r.step for r in squared.records]
    for a, b in zip(nested.records, squared.records):
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=0)
    wrapped = Smoothing(nr_samples=2).wrap(build_methods(explained_network(trained), ["gradient_sg"]), None, 0)
    assert not can_stack(wrapped["gradient_sg"])
