"""captum classes that need reference images (DeepLiftShap, GradientShap) or draw at random
(GradientShap, KernelShap, Lime), as config entries: ``attribute_args: {baselines: batch}`` and
maps seeded by the batch's sample indices.

Before, DeepLiftShap and GradientShap by class path failed on the probe (``baselines`` missing, and
a config cannot hold images), and the sampling classes gave other ranks on every run.
"""

from __future__ import annotations

import pytest
import torch

from roar.attribution import get_method
from roar.attribution.compute import method_fingerprint
from roar.models.classifier import ImageClassifier

MEAN, STD = 0.3, 0.2


@pytest.fixture(scope="module")
def linear() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(arch="linear", num_classes=3, in_chans=1, image_size=4, channel_mean=[MEAN], channel_std=[STD]).eval()


def test_deeplift_shap_against_the_batch_is_the_difference_from_its_mean_times_the_weight(linear):
    """DeepLift on a linear model is exact, ``(x - r) * grad``; averaged over the references r (the
    batch), ``(x - mean of the batch) * W_c / std``. 20 images: 400 pairs, run in two chunks."""
    x = torch.rand(20, 1, 4, 4)
    target = torch.arange(20) % 3
    maps = get_method("dls", linear, class_path="captum.attr.DeepLiftShap", attribute_args={"baselines": "batch"})(x, target)
    w = linear.net.fc.weight.detach()[target].view(20, 1, 4, 4)
    torch.testing.assert_close(maps, (x - x.mean(0)) / STD * w, atol=1e-5, rtol=1e-4)
    # one image alone is compared with black, as roar's gradient_shap does (itself as reference: a zero map)
    torch.testing.assert_close(get_method("dls", linear, class_path="captum.attr.DeepLiftShap", attribute_args={"baselines": "batch"})(x[:1], target[:1]), x[:1] / STD * w[:1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls, args", [
    ("GradientShap", {"baselines": "batch"}),
    ("KernelShap", {"n_samples": 8}),
    ("ShapleyValueSampling", {"n_samples": 2}),
    ("FeaturePermutation", {}),
])  # fmt: skip
def test_sampling_classes_give_the_same_maps_for_the_same_images(linear, cls, args):
    x = torch.rand(6, 1, 4, 4)
    method = get_method("m", linear, class_path=f"captum.attr.{cls}", attribute_args=args)
    first, indices = method(x, torch.zeros(6, dtype=torch.long), torch.arange(6)), torch.arange(6)
    torch.testing.assert_close(method(x, torch.zeros(6, dtype=torch.long), indices), first, rtol=0, atol=0)
    other = method(x, torch.zeros(6, dtype=torch.long), torch.arange(100, 106))  # other samples draw their own
    assert not torch.equal(other, first)
    state = torch.random.get_rng_state()
    method(x, torch.zeros(6, dtype=torch.long), indices)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random stream is left as it was"


def test_the_batch_as_baselines_puts_the_batch_size_in_the_fingerprint():
    entry = {"class_path": "captum.attr.GradientShap", "attribute_args": {"baselines": "batch"}}
    fingerprint = lambda params, size: method_fingerprint("gs", params, checkpoint_sha="0" * 64, dataset_id={"name": "digits"}, split="test", target="predicted", batch_size=size)  # noqa: E731
    assert fingerprint(entry, 32)["batch_size"] == 32 and fingerprint(entry, "auto")["batch_size"] == 256
    permuted = {"class_path": "captum.attr.FeaturePermutation"}  # features permuted across the batch
    assert fingerprint(permuted, 32)["batch_size"] == 32
    fixed = {"class_path": "captum.attr.IntegratedGradients", "attribute_args": {"baselines": 0.0}}
    assert "batch_size" not in fingerprint(fixed, 32), "a fixed baseline gives the same maps in any batch"


@pytest.mark.parametrize("cls, args, match", [
    ("DeepLiftShap", {}, r"DeepLiftShap attribute_args: it needs 'baselines' \(baselines: batch, the batch's images as the references\)$"),
    ("GradientShap", {"baselines": 0.0}, r"baselines 0.0; it needs several reference images, which a config gives as baselines: batch"),
    ("IntegratedGradients", {"baselines": "batch"}, r"baselines 'batch' is for classes that draw from several references \(DeepLiftShap, GradientShap\); it takes one per image: give a number"),
    ("IntegratedGradients", {"baselines": "black"}, r"baselines 'black' is not one a config can give; give a number \(that value in every pixel\)$"),
])  # fmt: skip
def test_baselines_a_config_cannot_give_are_refused_by_name(linear, cls, args, match):
    with pytest.raises(ValueError, match=match):
        get_method("m", linear, class_path=f"captum.attr.{cls}", attribute_args=args)


def test_occlusion_without_its_window_is_refused_before_the_probe(linear):
    with pytest.raises(ValueError, match=r"Occlusion attribute_args: it needs 'sliding_window_shapes'$"):
        get_method("occ", linear, class_path="captum.attr.Occlusion")


@pytest.fixture(scope="module")
def cnn() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(arch="small_cnn", num_classes=3, in_chans=1, image_size=8, channel_mean=[MEAN], channel_std=[STD]).eval()


@pytest.mark.parametrize("cls, args", [
    # roar calls these without seeding the global RNGs (captum_checks.DRAWS_NOTHING): they must draw nothing
    ("Saliency", {}), ("InputXGradient", {}), ("IntegratedGradients", {"n_steps": 4}), ("GuidedBackprop", {}),
    ("Deconvolution", {}), ("DeepLift", {}), ("DeepLiftShap", {"baselines": "batch"}), ("LRP", {}),
    ("Occlusion", {"sliding_window_shapes": [1, 2, 2]}), ("FeatureAblation", {}), ("LayerGradCam", {}),
    ("LayerIntegratedGradients", {"n_steps": 4}),
    # these draw, from RNGs roar seeds per call and then restores
    ("GradientShap", {"baselines": "batch"}), ("KernelShap", {"n_samples": 8}), ("Lime", {"n_samples": 8}),
    ("ShapleyValueSampling", {"n_samples": 2}), ("FeaturePermutation", {}),
])  # fmt: skip
def test_a_captum_call_leaves_the_callers_random_streams_as_they_were(cnn, cls, args):
    import numpy as np

    x, target = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    method = get_method("m", cnn, class_path=f"captum.attr.{cls}", attribute_args=args)
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    maps = method(x, target, torch.arange(4))
    assert maps.shape == x.shape
    assert torch.equal(torch.random.get_rng_state(), torch_state), f"{cls} drew from torch's global RNG"
    assert np.array_equal(np.random.get_state()[1], numpy_state), f"{cls} drew from NumPy's global RNG"
