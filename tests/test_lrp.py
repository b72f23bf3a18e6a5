"""captum's LRP (Bach et al., PLoS ONE 2015) on roar's classifiers: ``class_path: captum.attr.LRP``.

captum refused every roar model (``Normalize`` and ``nn.Flatten`` have no rule), and deleted the
rules a user set on their own modules after the first batch.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr._utils.lrp_rules import EpsilonRule
from torch import nn

from roar.__main__ import main as roar_main
from roar.attribution import get_method
from roar.benchmark.results import ResultsStore
from roar.models.classifier import ImageClassifier

MEAN, STD = 0.3, 0.2


def classifier(arch: str, image_size: int = 4) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(arch=arch, num_classes=3, in_chans=1, image_size=image_size, channel_mean=[MEAN], channel_std=[STD]).eval()


def test_lrp_of_a_linear_classifier_is_its_weight_times_the_standardised_input():
    """LRP-epsilon on ``f(x) = W (x - mean) / std + b`` gives ``R_j = a_j W_cj`` (a: the standardised
    input); the bias keeps the rest of the logit. Normalize passes relevance on unchanged (identity rule)."""
    model = classifier("linear")
    x = torch.rand(5, 1, 4, 4)
    target = torch.tensor([0, 1, 2, 1, 0])
    method = get_method("lrp", model, class_path="captum.attr.LRP")
    maps = method(x, target)
    w = model.net.fc.weight.detach()[target].view(5, 1, 4, 4)
    torch.testing.assert_close(maps, (x - MEAN) / STD * w, atol=1e-5, rtol=1e-4)
    logits = model(x).detach()[torch.arange(5), target]
    torch.testing.assert_close(maps.flatten(1).sum(1), logits - model.net.fc.bias.detach()[target], atol=1e-5, rtol=1e-4)
    # a pixel at the channel mean (ROAR's fill) gets no relevance, not a division by zero
    x[:, :, 0, 0] = MEAN
    assert torch.all(method(x, target)[:, :, 0, 0] == 0)


@pytest.mark.parametrize("arch, size", [("small_cnn", 4), ("mlp", 4), ("resnet18", 16)])
def test_lrp_runs_on_the_built_in_networks_batch_after_batch(arch, size):
    """resnet18 has nn.Identity modules (timm's drop_block, aa): captum's identity rule hooked its
    input and output, one tensor, and failed with KeyError: device(type='cpu')."""
    model = classifier(arch, size)
    method = get_method("lrp", model, class_path="captum.attr.LRP")
    x = torch.rand(4, 1, size, size)
    first = method(x, torch.zeros(4, dtype=torch.long))
    again = method(x, torch.zeros(4, dtype=torch.long))  # captum deletes rules after a call: the second must not be refused
    assert first.shape == x.shape and torch.isfinite(first).all() and first.abs().sum() > 0
    torch.testing.assert_close(first, again)
    assert not any(hasattr(m, "rule") for m in model.modules()), "roar's rules are gone after the call"


class Scaled(nn.Module):
    """A user's layer captum knows no rule for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class UsersNet(nn.Module):
    """A network whose unknown layer carries the user's own rule."""

    def __init__(self, num_classes: int, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.scaled = Scaled()
        self.scaled.rule = EpsilonRule()
        self.fc = nn.Linear(in_chans * image_size * image_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.scaled(self.flatten(x)))


def test_a_users_rule_holds_for_every_batch_and_an_unknown_layer_without_one_is_named():
    model = classifier(f"{__name__}.UsersNet")
    method = get_method("lrp", model, class_path="captum.attr.LRP")
    x, target = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    w = model.net.fc.weight.detach()[target].view(2, 1, 4, 4)
    for _ in range(2):  # captum deleted the user's rule after the first batch: the second was refused
        torch.testing.assert_close(method(x, target), (x - MEAN) / STD * 2 * w, atol=1e-5, rtol=1e-4)
    assert isinstance(model.net.scaled.rule, EpsilonRule), "the user's rule is left as it was"
    del model.net.scaled.rule
    with pytest.raises(ValueError, match=r"LRP has no rule for layer 'net.scaled' \(Scaled\); give it one"):
        get_method("lrp", model, class_path="captum.attr.LRP")(x, target)


def test_lrp_and_layer_lrp_run_through_a_benchmark(tmp_path):
    methods = "[random, {name: lrp, class_path: captum.attr.LRP}, {name: lrp_conv2, class_path: captum.attr.LayerLRP, layer: net.conv2}]"
    grid = [
        "--config", "configs/benchmark/digits_demo.yaml", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
        "--benchmark.base.max_epochs", "1", "--benchmark.base.min_accuracy", "0", "--benchmark.thresholds", "[0.5]",
        "--benchmark.seeds", "1", "--benchmark.modes", "[roar]", "--benchmark.noretrain", "false", "--benchmark.logger", "none",
        "--progress", "false", "--benchmark.methods", methods, "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    assert roar_main(["benchmark", *grid]) == 0
    rows = ResultsStore(tmp_path / "out" / "results.db").rows()
    assert {r["method"] for r in rows if r["status"] == "done"} == {"unmasked", "random", "lrp", "lrp_conv2"}


# ------------------------------------------------------------------------------ rules: in the entry
def test_an_entrys_rules_set_epsilon_by_layer_class_or_name_and_leave_the_model_as_it_was():
    """LRP-epsilon on ``z = W a + b``: ``R_j = a_j W_cj z / (z + eps sign z)`` (Bach et al. 2015, eq. 58)."""
    model = classifier("linear")
    x, target = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    a, w = (x - MEAN) / STD, model.net.fc.weight.detach()[target].view(5, 1, 4, 4)
    z = model(x).detach()[torch.arange(5), target].view(5, 1, 1, 1)
    for key in ("Linear", "net.fc"):
        maps = get_method("lrp_eps", model, class_path="captum.attr.LRP", rules={key: {"epsilon": 1.0}})(x, target)
        torch.testing.assert_close(maps, a * w * z / (z + torch.sign(z)), atol=1e-5, rtol=1e-4)
    # the model's modules carry no rule afterwards: plain LRP on the same model is epsilon 1e-9 again
    assert not any(hasattr(m, "rule") for m in model.modules())
    torch.testing.assert_close(get_method("lrp", model, class_path="captum.attr.LRP")(x, target), a * w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["epsilon", "pass"])
def test_a_layer_without_a_rule_takes_one_from_the_entry(rule):
    """``fc(2 a)``: fc gives ``R = 2 a W_c``; epsilon and pass both hand it on unchanged through the
    doubling (pass skips its derivative, as captum does for ReLU; the gradient would double it again)."""
    model = classifier(f"{__name__}.UsersNet")
    del model.net.scaled.rule
    x, target = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    w = model.net.fc.weight.detach()[target].view(2, 1, 4, 4)
    maps = get_method("lrp", model, class_path="captum.attr.LRP", rules={"Scaled": rule})(x, target)
    torch.testing.assert_close(maps, (x - MEAN) / STD * 2 * w, atol=1e-5, rtol=1e-4)


def test_an_lrp_entry_without_rules_keeps_its_fingerprint():
    from roar.attribution.registry import resolved_params

    assert "rules" not in resolved_params("lrp", {"class_path": "captum.attr.LRP"})
    assert resolved_params("lrp", {"class_path": "captum.attr.LRP", "rules": {"Conv2d": "gamma"}})["rules"] == {"Conv2d": "gamma"}


@pytest.mark.parametrize("entry, match", [
    ({"class_path": "captum.attr.Saliency", "rules": {"Linear": "epsilon"}}, r"Saliency takes no rules; rules: sets LRP's propagation rules"),
    ({"class_path": "captum.attr.LRP", "rules": {"Linear": "zplus"}}, r"rules: Linear: 'zplus' is not a rule; rules: epsilon, gamma, alpha1_beta0, identity, pass"),
    ({"class_path": "captum.attr.LRP", "rules": {"Linear": {"alpha1_beta0": 1}}}, r"rules: Linear: alpha1_beta0 takes no value"),
    ({"class_path": "captum.attr.LRP", "rules": {"Linear": {"gamma": -1}}}, r"rules: Linear: gamma takes a number >= 0, got -1"),
    ({"class_path": "captum.attr.LRP", "rules": ["Linear"]}, r"rules must map module names or classes to rules"),
])  # fmt: skip
def test_bad_rules_are_refused_at_config_time(entry, match):
    from roar.attribution.registry import resolved_params

    with pytest.raises(ValueError, match=match):
        resolved_params("m", entry)


def test_rules_for_a_layer_the_model_lacks_name_the_classes_it_has():
    with pytest.raises(ValueError, match=r"rules: 'Conv3d' names no layer of the model; its layer classes are .*Flatten, Linear, MulticlassAccuracy, Normalize"):
        get_method("lrp", classifier("linear"), class_path="captum.attr.LRP", rules={"Conv3d": "gamma"})


def test_a_sanity_config_checks_rules_syntax_up_front_and_their_layer_names_on_the_model():
    """The sanity checks try every method on a small probe network before training: rules naming the real
    model's layers (net.conv1) were refused there, as 'names no layer of the model'."""
    from roar.sanity.arguments import check_methods
    from roar.sanity.explaining import build_methods

    entry = {"class_path": "captum.attr.LRP", "rules": {"Conv2d": {"gamma": 0.25}, "net.conv1": "alpha1_beta0"}}
    assert check_methods(["lrp"], {"lrp": entry}) == ["lrp"]
    with pytest.raises(ValueError, match="'zplus' is not a rule"):
        check_methods(["lrp"], {"lrp": {**entry, "rules": {"Conv2d": "zplus"}}})
    model = classifier("small_cnn", 8)
    maps = build_methods(model, ["lrp"], {"lrp": entry})["lrp"](torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    assert maps.shape == (2, 1, 8, 8) and torch.isfinite(maps).all()
