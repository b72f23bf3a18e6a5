"""Attribution methods and their registry: exact values on a linear model, every key on real nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import filters
from torch import nn

from roar.attribution import TARGETS, get_method, list_methods, resolve_target
from roar.attribution.registry import accepted_params
from roar.attribution.captum_adapter import find_last_conv_block
from roar.models.factory import build_model

GRADIENT_METHODS = [
    "gradient",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "guided_gradcam",
    "gradient_shap",
]
MODEL_FREE = ["random", "sobel", "noise", "ground_truth", "inverted"]

# Small settings keep every key fast on a shared 2-core CPU.
FAST = {"nt_samples": 2, "n_steps": 3, "n_samples": 2}


def fast_params(name: str, inputs: torch.Tensor) -> dict:
    """The subset of FAST a method accepts, plus oracle weights of one input's shape."""
    if name in ("ground_truth", "inverted"):
        return {"weights": torch.linspace(-1, 1, inputs[0].numel()).view(inputs.shape[1:])}
    params = {}
    if name.endswith(("_sg", "_sg_sq", "_var")):
        params["nt_samples"] = FAST["nt_samples"]
    if name.startswith("integrated_gradients"):
        params["n_steps"] = FAST["n_steps"]
    if name.startswith("gradient_shap"):
        params["n_samples"] = FAST["n_samples"]
    return params


@pytest.fixture(scope="module")
def linear():
    """f(x) = W vec(x) + b on 1x4x4 inputs, with the weight map of class 1 as a (1, 4, 4) tensor."""
    torch.manual_seed(0)
    model = build_model("linear", num_classes=2, in_chans=1, image_size=4)
    w = model.fc.weight[1].detach().view(1, 4, 4)
    x = torch.rand(3, 1, 4, 4)
    return model, w, x


LINEAR_EXPECTED = {
    "gradient": lambda x, w: w.expand_as(x),
    "input_x_gradient": lambda x, w: x * w,
    "integrated_gradients": lambda x, w: x * w,
    "gradient_sg": lambda x, w: w.expand_as(x),
    "gradient_sg_sq": lambda x, w: (w**2).expand_as(x),
    "gradient_var": lambda x, w: torch.zeros_like(x),
    "guided_backprop": lambda x, w: w.expand_as(x),  # no ReLU: guided backprop is the gradient
}


@pytest.mark.parametrize("name", sorted(LINEAR_EXPECTED))
def test_linear_model_closed_forms(linear, name):
    model, w, x = linear
    params = {"nt_samples": 4} if name.endswith(("_sg", "_sg_sq", "_var")) else {}
    maps = get_method(name, model, **params)(x, torch.ones(3, dtype=torch.long))
    torch.testing.assert_close(maps, LINEAR_EXPECTED[name](x, w), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_with_an_image_baseline(linear):
    model, w, x = linear
    baseline = torch.full((1, 4, 4), 0.5)
    maps = get_method("integrated_gradients", model, baseline=baseline, n_steps=8)(x, 1)
    torch.testing.assert_close(maps, (x - baseline) * w, atol=1e-5, rtol=1e-4)


def test_gradient_shap_with_one_black_reference_is_input_x_gradient(linear):
    model, w, x = linear
    maps = get_method("gradient_shap", model, baselines=torch.zeros(1, 1, 4, 4), n_samples=3)(x, 1)
    torch.testing.assert_close(maps, x * w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_vargrad_of_input_x_gradient_matches_the_noise_variance(linear, mode):
    # For f linear, (x + eps) * w has variance sigma^2 w^2 per feature: this pins the noise scale.
    model, w, x = linear
    method = get_method("input_x_gradient_var", model, nt_samples=4000, noise_std=0.2, noise_mode=mode)
    maps = method(x, torch.ones(3, dtype=torch.long))
    flat = x.flatten(1)
    sigma = 0.2 * (flat.amax(1) - flat.amin(1)) if mode == "relative" else torch.full((3,), 0.2)
    expected = sigma.view(-1, 1, 1, 1) ** 2 * w**2
    torch.testing.assert_close(maps, expected, rtol=0.15, atol=1e-7)


def test_zero_noise_smoothgrad_is_the_base_method(linear):
    model, w, x = linear
    maps = get_method("input_x_gradient_sg", model, nt_samples=3, noise_std=0.0)(x, 1)
    torch.testing.assert_close(maps, x * w, atol=1e-6, rtol=1e-5)


def test_registry_has_every_documented_key():
    # In a fresh interpreter: other test modules register users' methods into the same process-wide registry.
    import json
    import subprocess
    import sys

    code = "import json; from roar.attribution import list_methods; print(json.dumps(list_methods()))"
    names = json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    expected = {f"{m}{s}" for m in GRADIENT_METHODS for s in ("", "_sg", "_sg_sq", "_var")} | set(MODEL_FREE)
    assert set(names) == expected
    assert names == sorted(names)


@pytest.fixture(scope="module")
def nets():
    """One small_cnn and one resnet18 per channel count, built once for the whole module."""
    torch.manual_seed(0)
    return {
        (arch, chans): build_model(arch, num_classes=3, in_chans=chans, image_size=8)
        for arch in ("small_cnn", "resnet18")
        for chans in (1, 3)
    }


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
@pytest.mark.parametrize("name", list_methods())
def test_every_method_gives_finite_deterministic_maps(nets, name, arch, chans):
    model = nets[(arch, chans)]
    model.train()  # attribution must switch to eval and switch back
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    x = torch.rand(2, chans, 8, 8)
    target, indices = torch.tensor([0, 2]), torch.tensor([11, 4])
    params = fast_params(name, x)

    if "seed" in accepted_params(name):
        params["seed"] = 3
    first = get_method(name, model, **params)
    maps = first(x, target, indices)
    assert maps.shape == x.shape and maps.dtype == torch.float32 and not maps.requires_grad
    assert torch.isfinite(maps).all()

    # Same name, params and seed: the same maps (for `noise`, the same first draw).
    second = get_method(name, model, **params)
    torch.testing.assert_close(second(x, target, indices), maps, rtol=0, atol=0)
    if name != "noise":
        torch.testing.assert_close(first(x, target, indices), maps, rtol=0, atol=0)

    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_sobel_equals_skimage_per_channel():
    rng = np.random.default_rng(0)
    images = rng.random((2, 3, 9, 7)).astype(np.float32)  # non-square: catches swapped axes
    maps = get_method("sobel")(torch.from_numpy(images)).numpy()
    expected = np.stack([[filters.sobel(channel) for channel in image] for image in images])
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_sobel_ignores_model_and_labels(nets):
    x = torch.rand(2, 3, 8, 8)
    plain = get_method("sobel")(x)
    torch.testing.assert_close(get_method("sobel", nets[("small_cnn", 3)])(x, torch.tensor([1, 0])), plain)


def test_random_is_fixed_per_index_across_batchings():
    method = get_method("random", seed=7)
    x = torch.rand(4, 3, 5, 5)
    whole = method(x, indices=torch.tensor([3, 10, 42, 0]))
    # Different batches, different order, different image content: the same map per index.
    part = method(torch.zeros(2, 3, 5, 5), indices=torch.tensor([42, 3]))
    torch.testing.assert_close(part, whole[[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(get_method("random", seed=7)(x[:1], indices=torch.tensor([10])), whole[1:2], rtol=0, atol=0)
    assert not torch.equal(whole[0], whole[1])
    assert not torch.equal(get_method("random", seed=8)(x, indices=torch.tensor([3, 10, 42, 0])), whole)


def test_smoothgrad_is_independent_of_batching_and_chunking(nets):
    model = nets[("small_cnn", 1)]
    x, target, indices = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]), torch.tensor([5, 9, 2])
    whole = get_method("gradient_sg", model, nt_samples=3, seed=1)(x, target, indices)
    one_at_a_time = get_method("gradient_sg", model, nt_samples=3, seed=1, max_batch_size=1)
    split = torch.cat([one_at_a_time(x[i : i + 1], target[i : i + 1], indices[i : i + 1]) for i in (0, 1, 2)])
    torch.testing.assert_close(split, whole, atol=1e-6, rtol=1e-5)
    other_seed = get_method("gradient_sg", model, nt_samples=3, seed=2)(x, target, indices)
    assert not torch.allclose(other_seed, whole)


def test_noise_is_fresh_each_call_and_standard_normal():
    method = get_method("noise", seed=0)
    x = torch.rand(64, 1, 16, 16)
    first, second = method(x), method(x)
    assert not torch.equal(first, second)
    assert abs(first.mean().item()) < 0.05 and abs(first.std().item() - 1) < 0.05
    # No pixel-wise covariance: neighbouring pixels are uncorrelated.
    corr = np.corrcoef(first[:, 0, :, :-1].flatten().numpy(), first[:, 0, :, 1:].flatten().numpy())[0, 1]
    assert abs(corr) < 0.05


def test_oracles_rank_by_true_weight_magnitude():
    weights = torch.tensor([0.0, -3.0, 1.0, 0.5]).view(1, 2, 2)
    x = torch.rand(2, 1, 2, 2)
    truth = get_method("ground_truth", weights=weights)(x)
    inverted = get_method("inverted", weights=weights)(x)
    torch.testing.assert_close(truth, weights.abs().expand_as(x))
    torch.testing.assert_close(inverted, (3.0 - weights.abs()).expand_as(x))
    assert inverted[0].flatten().argmax() == weights.abs().flatten().argmin()
    with pytest.raises(ValueError, match="weights"):
        get_method("ground_truth")
    with pytest.raises(ValueError, match="shape"):
        get_method("inverted", weights=weights)(torch.rand(2, 1, 3, 3))


def test_default_gradcam_layer_is_the_last_conv_block(nets):
    assert find_last_conv_block(nets[("resnet18", 3)], torch.rand(1, 3, 8, 8)) == "layer4"
    assert find_last_conv_block(nets[("small_cnn", 1)], torch.rand(1, 1, 8, 8)) == "conv3"

    class Wrapped(nn.Module):  # like the Lightning classifier: the backbone's output is logits
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    assert find_last_conv_block(Wrapped(nets[("resnet18", 3)]), torch.rand(1, 3, 8, 8)) == "net.layer4"
    method = get_method("guided_gradcam", nets[("small_cnn", 1)])
    method(torch.rand(1, 1, 8, 8), 0)
    assert method.layer == "conv3"


def test_resolve_target(nets):
    model = nets[("small_cnn", 3)]
    x, labels = torch.rand(4, 3, 8, 8), torch.tensor([2, 0, 1, 1])
    predicted = resolve_target(model, x)
    model.eval()
    with torch.no_grad():
        assert torch.equal(predicted, model(x).argmax(1))
    assert predicted.dtype == torch.long
    assert torch.equal(resolve_target(None, x, labels, target="label"), labels)
    assert TARGETS == ("predicted", "label")
    # A model-based method with no target explains the predicted class.
    grad = get_method("gradient", model)
    torch.testing.assert_close(grad(x), grad(x, predicted))
    with pytest.raises(ValueError, match="predicted, label"):
        resolve_target(model, x, labels, target="true")
    with pytest.raises(ValueError, match="labels"):
        resolve_target(model, x, target="label")
    with pytest.raises(ValueError, match="needs a model"):
        resolve_target(None, x)


def test_works_inside_inference_mode(linear):
    model, w, x = linear
    with torch.inference_mode():
        maps = get_method("gradient", model)(x.clone(), 1)
    torch.testing.assert_close(maps, w.expand_as(x))


def test_errors_name_the_problem_and_the_choices(linear):
    model, _, x = linear
    with pytest.raises(ValueError, match=r"unknown attribution method 'gradeint'.*gradient_sg_sq.*gradient_var"):
        get_method("gradeint", model)
    with pytest.raises(ValueError, match="needs a model"):
        get_method("gradient_sg")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'n_step'.*n_steps"):
        get_method("integrated_gradients", model, n_step=3)
    with pytest.raises(ValueError, match="'nt_samples'"):
        get_method("gradient", model, nt_samples=3)
    with pytest.raises(ValueError, match="n_steps must be a positive integer"):
        get_method("integrated_gradients", model, n_steps=0)
    with pytest.raises(ValueError, match="noise_mode.*relative, absolute"):
        get_method("gradient_sg", model, noise_mode="gaussian")
    with pytest.raises(ValueError, match="nt_samples"):
        get_method("gradient_var", model, nt_samples=-1)
    with pytest.raises(ValueError, match="seed"):
        get_method("random", seed=-1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        get_method("gradient", model)(x[0], 1)
    with pytest.raises(ValueError, match="target"):
        get_method("gradient", model)(x, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="indices"):
        get_method("random")(x, indices=torch.tensor([0]))
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        get_method("guided_gradcam", model, layer="layer9")
    with pytest.raises(ValueError, match="convolutional layer"):
        get_method("guided_gradcam", model)(x, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["gradient", "gradient_sg", "gradient_shap", "guided_gradcam", "random", "sobel", "noise"])
def test_maps_stay_on_the_inputs_device(name):
    model = build_model("small_cnn", num_classes=3, in_chans=3, image_size=8).cuda()
    x = torch.rand(2, 3, 8, 8, device="cuda")
    params = {"nt_samples": 2} if name.endswith("_sg") else {}
    maps = get_method(name, model, **params)(x, torch.tensor([0, 1], device="cuda"), torch.tensor([4, 5]))
    assert maps.device == x.device and maps.shape == x.shape and torch.isfinite(maps).all()
    if name in ("random", "sobel", "noise"):  # model-free maps do not depend on the device
        cpu = get_method(name)(x.cpu(), indices=torch.tensor([4, 5]))
        torch.testing.assert_close(maps.cpu(), cpu, atol=1e-6, rtol=1e-5)
