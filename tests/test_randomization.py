"""Model-parameter randomisation (Adebayo et al. 2018; Binder et al. 2022) on copies of the model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roar.models.classifier import ImageClassifier
from roar.models.factory import build_model
from roar.sanity.randomization import (
    ORDERS,
    ORIGINAL,
    LayerGroup,
    describe_layers,
    group_seed,
    layer_groups,
    randomization_steps,
    reinitialize_,
)

RESNET18_GROUPS = ["conv1", "bn1"] + [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)] + ["fc"]
EXPECTED_GROUPS = {
    "resnet18": RESNET18_GROUPS,
    "small_cnn": ["conv1", "conv2", "conv3", "fc1", "fc2"],
    "mlp": ["fc1", "fc2", "fc3"],
    "linear": ["fc"],
}


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and buffer values no initialiser produces, as training would.

    A fresh batch norm already has weight 1, bias 0 and default running statistics, so
    resetting it would change nothing and the "changed exactly" checks could not see it.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            else:
                tensor.fill_(7)
    return model


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed_keys(model: nn.Module, reference: dict[str, torch.Tensor]) -> set[str]:
    state = model.state_dict()
    assert state.keys() == reference.keys()
    return {k for k, v in state.items() if not torch.equal(v, reference[k])}


def _group_keys(reference: dict[str, torch.Tensor], groups: list[LayerGroup], names: list[str]) -> set[str]:
    paths = [m for g in groups if g.name in names for m in g.modules]
    return {k for k in reference if any(k.startswith(p + ".") for p in paths)}


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(build_model("resnet18", num_classes=3, in_chans=1, image_size=8))


@pytest.fixture
def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(build_model("small_cnn", num_classes=3, in_chans=1, image_size=8))


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_layer_groups(name, resnet18):
    model = resnet18 if name == "resnet18" else build_model(name, num_classes=3, in_chans=1, image_size=8)
    groups = layer_groups(model)
    assert [g.name for g in groups] == EXPECTED_GROUPS[name]
    assert all(g.modules == [g.name] for g in groups)
    # Every parameter belongs to exactly one group.
    grouped = [p for g in groups for m in g.modules for p in model.get_submodule(m).parameters()]
    assert len(grouped) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}
    lines = describe_layers(model)
    assert len(lines) == len(groups)
    assert lines[0].startswith(f"{groups[0].name}: ")


def test_layer_groups_resnet50_expands_stages():
    names = [g.name for g in layer_groups(build_model("resnet50", num_classes=3, in_chans=1, image_size=8))]
    assert names == ["conv1", "bn1"] + [f"layer{s}.{b}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)] + ["fc"]


def test_layer_groups_of_wrapped_classifier():
    classifier = ImageClassifier(arch="small_cnn", num_classes=3, in_chans=1, image_size=8)
    groups = layer_groups(classifier)
    assert [g.name for g in groups] == EXPECTED_GROUPS["small_cnn"]
    assert [g.modules for g in groups] == [[f"net.{n}"] for n in EXPECTED_GROUPS["small_cnn"]]
    assert layer_groups(classifier, root="net") == groups
    # root="" takes the wrapper itself: the network is then one block.
    assert layer_groups(classifier, root="") == [LayerGroup("net", ["net"])]
    with pytest.raises(ValueError, match="root 'body' is not a submodule.*net"):
        layer_groups(classifier, root="body")
    # Randomising the wrapper's copy changes exactly the named layer, under its qualified name.
    original = _snapshot(classifier)
    step = next(randomization_steps(classifier, "cascading"))
    assert (step.layer, step.randomized) == ("fc2", ["fc2"])
    assert _changed_keys(step.model, original) == {"net.fc2.weight", "net.fc2.bias"}
    assert step.model(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    # A wrapped linear model stops at its single layer.
    linear = ImageClassifier(arch="linear", num_classes=3, in_chans=1, image_size=8)
    assert layer_groups(linear) == [LayerGroup("fc", ["net.fc"])]


def test_cascading_changes_exactly_the_reported_layers(resnet18):
    original = _snapshot(resnet18)
    groups = layer_groups(resnet18)
    steps = list(
        (s.step, s.layer, list(s.randomized), _changed_keys(s.model, original), s.model)
        for s in randomization_steps(resnet18, "cascading", seed=0)
    )
    assert [layer for _, layer, *_ in steps] == RESNET18_GROUPS[::-1]
    for step, layer, randomized, changed, _ in steps:
        assert randomized == RESNET18_GROUPS[::-1][:step]
        assert changed == _group_keys(original, groups, randomized), layer
    # The original is bit-identical, BN running statistics and counters included.
    assert all(torch.equal(v, original[k]) for k, v in resnet18.state_dict().items())
    assert resnet18.training


def test_bottom_up_and_independent_change_the_right_groups(small_cnn):
    original = _snapshot(small_cnn)
    groups = layer_groups(small_cnn)
    names = EXPECTED_GROUPS["small_cnn"]
    bottom_up = [(s.layer, s.randomized, _changed_keys(s.model, original)) for s in randomization_steps(small_cnn, "bottom_up")]
    assert [layer for layer, *_ in bottom_up] == names
    for i, (layer, randomized, changed) in enumerate(bottom_up):
        assert randomized == names[: i + 1]
        assert changed == _group_keys(original, groups, randomized)
    independent = [(s.layer, s.randomized, _changed_keys(s.model, original)) for s in randomization_steps(small_cnn, "independent")]
    assert [layer for layer, *_ in independent] == names[::-1]
    for layer, randomized, changed in independent:
        assert randomized == [layer]
        assert changed == _group_keys(original, groups, [layer])
    assert _changed_keys(small_cnn, original) == set()


def test_copy_is_eval_mode_on_same_device_and_original_untouched(small_cnn):
    small_cnn.train()
    original = _snapshot(small_cnn)
    steps = randomization_steps(small_cnn, "cascading", include_original=True)
    first = next(steps)
    assert (first.step, first.layer, first.randomized) == (0, ORIGINAL, [])
    assert first.model is not small_cnn
    assert not first.model.training and small_cnn.training
    assert _changed_keys(first.model, original) == set()
    assert next(first.model.parameters()).device == next(small_cnn.parameters()).device
    # The cumulative orders mutate one copy in place.
    second = next(steps)
    assert second.model is first.model and second.step == 1
    # Forward passes through the copy work and do not touch BN/ReLU state of the original.
    second.model(torch.rand(2, 1, 8, 8))
    assert _changed_keys(small_cnn, original) == set()


def test_independent_restores_the_group_when_stopped_early(small_cnn):
    original = _snapshot(small_cnn)
    steps = randomization_steps(small_cnn, "independent")
    step = next(steps)
    assert _changed_keys(step.model, original) != set()
    steps.close()
    assert _changed_keys(step.model, original) == set()


def _states(model: nn.Module, order: str, seed: int) -> list[dict[str, torch.Tensor]]:
    return [_snapshot(s.model) for s in randomization_steps(model, order, seed=seed)]


@pytest.mark.parametrize("order", ORDERS)
def test_reproducible_under_a_seed_and_different_under_another(small_cnn, order):
    first, again, other = _states(small_cnn, order, 3), _states(small_cnn, order, 3), _states(small_cnn, order, 4)
    for a, b, c in zip(first, again, other):
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_group_gets_the_same_random_weights_in_every_order(small_cnn):
    # fc2 is step 1 of cascading and independent (inspected before the independent order
    # restores it), and the last step of bottom-up.
    cascading = next(randomization_steps(small_cnn, "cascading", seed=1)).model.fc2.weight.detach().clone()
    steps = randomization_steps(small_cnn, "independent", seed=1)  # kept alive: closing it restores fc2
    independent = next(steps).model.fc2.weight.detach().clone()
    *_, last = randomization_steps(small_cnn, "bottom_up", seed=1)
    assert torch.equal(cascading, independent)
    assert torch.equal(cascading, last.model.fc2.weight)
    assert not torch.equal(cascading, small_cnn.fc2.weight)
    assert len({group_seed(1, "fc2"), group_seed(1, "fc1"), group_seed(2, "fc2")}) == 3


def test_global_rng_state_is_not_disturbed(small_cnn):
    layer = nn.Linear(3, 3)  # built first: construction itself draws from the global RNG
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    for _ in randomization_steps(small_cnn, "bottom_up", seed=0):
        pass
    reinitialize_(layer, generator_seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_reinitialize_resets_batch_norm_and_is_seeded():
    bn = _trained_like(nn.BatchNorm2d(4))
    reinitialize_(bn, generator_seed=0)
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
    assert torch.equal(bn.running_mean, torch.zeros(4)) and torch.equal(bn.running_var, torch.ones(4))
    assert bn.num_batches_tracked.item() == 0
    a, b, c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
    reinitialize_([a], generator_seed=9)
    reinitialize_(b, generator_seed=9)
    reinitialize_(c, generator_seed=10)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_errors():
    model = build_model("mlp", num_classes=3, in_chans=1, image_size=4)
    with pytest.raises(ValueError, match="unknown randomisation order 'top_down'.*cascading, independent, bottom_up"):
        randomization_steps(model, "top_down")
    with pytest.raises(ValueError, match="seed"):
        randomization_steps(model, "cascading", seed=-1)
    with pytest.raises(ValueError, match="no child modules holding parameters"):
        layer_groups(nn.Sequential(nn.ReLU()))

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match=r"no reset_parameters\(\): \(root\) \(Scale\)"):
        reinitialize_(Scale(), generator_seed=0)
    with pytest.raises(ValueError, match="reset_parameters"):
        randomization_steps(nn.Sequential(nn.Linear(2, 2), Scale()), "cascading")


def test_keep_stats_keeps_the_trained_running_statistics():
    """Adebayo et al.'s code re-initialises trainable variables only: the running statistics stay."""
    bn = _trained_like(nn.BatchNorm2d(4))
    trained = {k: v.clone() for k, v in bn.state_dict().items()}
    reinitialize_(bn, generator_seed=0, batchnorm="keep_stats")
    assert torch.equal(bn.weight, torch.ones(4)) and torch.equal(bn.bias, torch.zeros(4))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), trained[name])


@pytest.mark.parametrize("batchnorm", ["reset", "keep_stats"])
def test_batchnorm_setting_through_a_whole_cascade(resnet18, batchnorm):
    trained = _snapshot(resnet18)
    stats = [k for k in trained if k.endswith(("running_mean", "running_var"))]
    assert stats
    *_, last = randomization_steps(resnet18, "cascading", seed=0, batchnorm=batchnorm)
    state = last.model.state_dict()
    for key in stats:
        if batchnorm == "keep_stats":
            assert torch.equal(state[key], trained[key]), key
        else:
            assert torch.equal(state[key], torch.zeros_like(state[key]) if "mean" in key else torch.ones_like(state[key])), key
    weights = [k for k in trained if k.endswith("weight")]
    assert all(not torch.equal(state[k], trained[k]) for k in weights)


def test_unknown_batchnorm_mode_names_the_choices(small_cnn):
    with pytest.raises(ValueError, match="unknown batchnorm 'frozen'; valid choices: reset, keep_stats"):
        randomization_steps(small_cnn, "cascading", batchnorm="frozen")
    with pytest.raises(ValueError, match="unknown batchnorm 'frozen'"):
        reinitialize_(nn.BatchNorm2d(2), generator_seed=0, batchnorm="frozen")
