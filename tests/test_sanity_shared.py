"""The shared-layer path of the randomisation checks (:mod:`roar.sanity.shared_forward`) against
captum one model at a time: the same maps for every order and gradient method, the unchanged
layers computed once, and everything else (other methods, untraceable networks) as before.

One small CNN is trained on 8 px digits once per module (a few seconds).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roar.sanity.maps import build_methods, explained_network, model_randomization
from roar.sanity.randomization import ORDERS, randomization_steps
from roar.sanity.shared_forward import SharedSteps, can_share

pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures: tests/conftest.py

SHARED = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 6},
    "gradient_sg": {"nt_samples": 3},
    "integrated_gradients_var": {"n_steps": 3, "nt_samples": 3},
    # The methods' own memory bounds split the rows into chunks (13 // 6 steps = 2 rows at once).
    "input_x_gradient_sg_sq": {"nt_samples": 3, "max_batch_size": 13},
}


def _one_by_one(network, order, names, params, images, target, indices):
    """captum's maps, model by model, in step order: ``{method: [maps]}``."""
    out = {name: [] for name in names}
    for step in randomization_steps(network, order, 0, include_original=True):
        built = build_methods(step.model, names, params, 0)
        for name in names:
            out[name].append(built[name](images, target, indices))
    return out


def _shared(network, order, names, params, images, target, indices, channels_last=False):
    recorder, built = None, None
    for step in randomization_steps(network, order, 0, include_original=True):
        if recorder is None:
            recorder = SharedSteps.for_network(step.model, channels_last=channels_last)
            built = build_methods(step.model, names, params, 0)
        recorder.record(step)
    return {name: recorder.explain(built[name], images, target, indices) for name in names}


def _close(expected, got):
    for step, (a, b) in enumerate(zip(expected, got, strict=True)):
        scale = a.abs().amax().clamp_min(1e-12)
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(scale)), f"step {step}: max diff {float((a - b).abs().max())} of {float(scale)}"


@pytest.mark.parametrize("order", ORDERS)
def test_shared_maps_equal_captum_model_by_model(trained, batch, order):
    images, _, indices = batch
    network = explained_network(trained)
    target = network(images).argmax(1)
    names = list(SHARED)
    expected = _one_by_one(network, order, names, SHARED, images, target, indices)
    got = _shared(network, order, names, SHARED, images, target, indices)
    for name in names:
        assert len(got[name]) == 6  # the trained copy and one step per layer group of small_cnn
        _close(expected[name], got[name])
    # Randomising changes the maps: the check compares different things, not one map with itself.
    assert not torch.allclose(got["gradient"][0], got["gradient"][-1])


def test_cascade_computes_the_unchanged_bottom_once(trained, batch):
    """small_cnn's cascade (fc2, fc1, conv3, conv2, conv1): conv1 runs for the trained bottom and
    once randomised; conv3 for the trained model and the three steps that change it or a layer below."""
    images, _, indices = batch
    network = explained_network(trained)
    target = network(images).argmax(1)
    calls = {"conv1": 0, "conv3": 0, "fc2": 0}
    recorder, built = None, None
    for step in randomization_steps(network, "cascading", 0, include_original=True):
        if recorder is None:
            recorder = SharedSteps.for_network(step.model)
            built = build_methods(step.model, ["gradient"])
            for name in calls:
                step.model.net.get_submodule(name).register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
        recorder.record(step)
    recorder.explain(built["gradient"], images, target, indices)
    assert calls == {"conv1": 2, "conv3": 4, "fc2": 6}


def test_default_path_equals_one_by_one_on_the_check(trained, batch):
    """model_randomization's default (shared layers, channels_last on a CPU) against share=False.

    channels_last sums in another order, so a max-pool window whose two largest values agree to
    about 1e-7 can route its gradient to the other pixel; the maps agree elsewhere and the
    similarity curves to the third decimal.
    """
    images, _, indices = batch
    kwargs = dict(methods=["integrated_gradients", "gradient", "noise"], metrics=["spearman"],
                  method_params=SHARED, stack=1, keep_maps=True, indices=indices)  # fmt: skip
    for order in ORDERS:
        shared = model_randomization(trained, images, order, **kwargs)
        plain = model_randomization(trained, images, order, share=False, **kwargs)
        for name in ("integrated_gradients", "gradient"):
            for a, b in zip(plain.maps[name], shared.maps[name], strict=True):
                off = (a - b).abs() > 1e-4 * a.abs().amax()
                assert off.float().mean() < 0.01
        for r, s in zip(plain.records, shared.records, strict=True):
            assert (r.method, r.step, r.layer) == (s.method, s.step, s.layer)
            if r.method != "noise":
                assert abs(r.mean - s.mean) < 1e-3
        assert shared.final()[("gradient", "spearman")] < 0.5  # fully randomised: the map has changed


class _TwoBranches(nn.Module):
    """In-place ops (``add_``, ``ReLU(inplace=True)`` as timm's ResNets have) on an activation
    that steps share: ``h.add_(block(x))`` would add every step's branch into the one cached ``stem(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.block = nn.Conv2d(1, 4, 5, padding=2)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h.add_(self.block(x))
        return self.head(self.act(h).flatten(1))


class _ReadsAfterOverwrite(_TwoBranches):
    """``h.mul_(2)`` then reads ``h``: the graph does not say that ``h`` changed, so no sharing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h.mul_(2.0)
        return self.head(h.flatten(1))


def test_in_place_ops_do_not_leak_between_steps(batch):
    images, _, indices = batch
    torch.manual_seed(0)
    network = _TwoBranches().eval()
    target = network(images).argmax(1)
    names = ["gradient", "integrated_gradients"]
    for order in ORDERS:
        expected = _one_by_one(network, order, names, SHARED, images, target, indices)
        got = _shared(network, order, names, SHARED, images, target, indices)
        for name in names:
            _close(expected[name], got[name])


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        if h.sum() > 0:
            h = h.relu()
        return self.fc2(h)


def test_untraceable_networks_and_other_methods_go_model_by_model(trained, batch):
    images, _, indices = batch
    assert SharedSteps.for_network(_Branchy()) is None
    assert SharedSteps.for_network(_ReadsAfterOverwrite()) is None
    torch.manual_seed(0)
    branchy, overwriting = _Branchy().eval(), _ReadsAfterOverwrite().eval()
    for model in (branchy, overwriting, trained):
        kwargs = dict(methods=["gradient", "guided_backprop", "user_saliency"], metrics=["spearman"], stack=1, keep_maps=True,
                      method_params={"user_saliency": {"class_path": "captum.attr.Saliency"}}, indices=indices)  # fmt: skip
        shared = model_randomization(model, images, "cascading", **kwargs)
        plain = model_randomization(model, images, "cascading", share=False, **kwargs)
        for name in ("guided_backprop", "user_saliency"):  # not shareable: the very same computation
            for a, b in zip(plain.maps[name], shared.maps[name], strict=True):
                assert torch.equal(a, b)
        if model is not trained:  # not shared: the gradient too is computed model by model
            assert all(torch.equal(a, b) for a, b in zip(plain.maps["gradient"], shared.maps["gradient"]))
    user = build_methods(explained_network(trained), ["user_saliency", "guided_backprop", "gradient"],
                         {"user_saliency": {"class_path": "captum.attr.Saliency"}})  # fmt: skip
    assert [can_share(user[n]) for n in user] == [False, False, True]
    recorder = SharedSteps.for_network(explained_network(trained))
    with pytest.raises(ValueError, match="no shared-layer path"):
        recorder.explain(user["guided_backprop"], images, images.new_zeros(len(images), dtype=torch.long), indices)


def test_pooling_before_relu_keeps_values_and_gradients_with_ties():
    """The rewrite max_pool(relu(x)) -> relu(max_pool(x)) on inputs full of exact ties (blank
    pixels, repeated grey levels, a conv whose weights are all equal): bit-for-bit the same."""
    from roar.models.factory import build_model

    torch.manual_seed(0)
    network = build_model("small_cnn", num_classes=10, in_chans=1, image_size=8).eval()
    with torch.no_grad():
        network.conv2.weight.fill_(0.01)  # every window of a flat region ties exactly
    images = (torch.rand(16, 1, 8, 8) * 3).floor() / 2 * (torch.rand(16, 1, 1, 1) > 0.3)
    rewritten = SharedSteps.for_network(network, channels_last=False).graph.module
    assert "relu2_pooled" in rewritten.code and "relu3_pooled" in rewritten.code
    grads = []
    for net in (network, rewritten):
        x = images.clone().requires_grad_()
        logits = net(x)
        grads.append((logits, torch.autograd.grad(logits[:, 3].sum(), x)[0]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])
    assert grads[0][1].abs().sum() > 0
