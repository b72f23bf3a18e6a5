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
