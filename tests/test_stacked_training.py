"""Stacked training (benchmark.stack) equals separate training, member by member.

Each member of a stack must be the run that ``execute_run`` makes of its spec alone (Hooker et
al. 2019 retrain every cell from scratch with its own seed): same initialisation, data order,
masks, augmentation and optimiser steps. Only the floating-point order of batched kernels may
differ, so weights agree to float tolerance and test accuracies to within one image.
"""

import os

import pytest
import torch

from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec
from roar.benchmark.runner import execute_run, run_benchmark
from roar.benchmark.stack_settings import resolve_stack, stack_groups
from roar.benchmark.stacked_runner import execute_stack
from roar.models.checkpoint import load_checkpoint, load_classifier
from roar.models.factory import build_model
from roar.models.stacked import StackedNetworks

DATA = {"source": "digits", "image_size": 8, "batch_size": 32, "val_fraction": 0.5, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; small models on a shared machine: one thread each is fastest (threads contending stall every step)


def config(**overrides) -> BenchmarkConfig:
    fields = dict(
        data=DATA, model={"arch": "small_cnn", "lr": 0.05, "warmup_epochs": 0}, trainer={"max_epochs": 2, "accelerator": "cpu"},
        logger="none", methods=["random"], thresholds=[0.5], seeds=2, modes=["roar"],
    )  # fmt: skip
    fields.update(overrides)
    return BenchmarkConfig.from_dict(fields)


def spec(method: str, mode: str, threshold: float, seed: int) -> RunSpec:
    return RunSpec("digits", "small_cnn", method, mode, threshold, seed)


def weights(outcome: dict) -> dict[str, torch.Tensor]:
    return load_checkpoint(outcome["checkpoint"])["state_dict"]


def initial_weights(cfg: BenchmarkConfig, seed: int) -> dict[str, torch.Tensor]:
    """The weights a run of this seed starts from (execute_run seeds, then builds the classifier)."""
    from lightning.pytorch import seed_everything

    from roar.benchmark.runner import _classifier
    from roar.data.datamodule import ImageDataModule

    seed_everything(seed, verbose=False)
    return _classifier(cfg, ImageDataModule(**cfg.data)).state_dict()


def relative_difference(a: dict, b: dict, start: dict) -> float:
    """|a - b| over how far training moved the weights, |a - start|, across every parameter."""
    names = [k for k in a if k.startswith("net.")]
    apart = sum(float((a[k] - b[k]).pow(2).sum()) for k in names) ** 0.5
    moved = sum(float((a[k] - start[k]).pow(2).sum()) for k in names) ** 0.5
    return apart / moved


def assert_same_run(separate: dict, stacked: dict, start: dict, test_images: int, tolerance: float) -> None:
    a, b = weights(separate), weights(stacked)
    assert a.keys() == b.keys()
    assert relative_difference(a, b, start) < tolerance
    assert abs(separate["test_acc"] - stacked["test_acc"]) <= 1.0 / test_images + 1e-9
    assert separate["epochs"] == stacked["epochs"] == 2


@pytest.fixture(scope="module")
def separate_and_stacked(tmp_path_factory):
    """Three cells (the reference, a ROAR and a KAR cell: three mask sets), each with its own seed,
    trained one by one by the normal path and as one stack."""
    out = tmp_path_factory.mktemp("stack")
    cfg = config(modes=["roar", "kar"])
    specs = [spec("unmasked", "reference", 0.0, 0), spec("random", "roar", 0.5, 1), spec("random", "kar", 0.5, 2)]
    base = out / "base.ckpt"  # random ranks need no base model
    separate = [execute_run(s, cfg, out / "separate", base, progress=False) for s in specs]
    # both ways of running a stack: vmap's batched kernels (CUDA's default) and a loop over members (CPU's)
    stacked = {vectorize: execute_stack(specs, cfg, out / f"stacked-{vectorize}", base, vectorize=vectorize) for vectorize in (True, False)}
    return cfg, specs, separate, stacked, out


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_stacked_cells_equal_separate_runs(separate_and_stacked, vectorize):
    cfg, specs, separate, stacked, _ = separate_and_stacked
    stacked = stacked[vectorize]
    from roar.data.datamodule import ImageDataModule

    test_images = len(ImageDataModule(**cfg.data).source.test)
    for s, one, together in zip(specs, separate, stacked, strict=True):
        # vmap: float tolerance (a grouped convolution sums in another order than N single ones);
        # the loop runs each member's own kernels: equal up to rounding of the stacked optimiser step
        assert_same_run(one, together, initial_weights(cfg, s.seed), test_images, tolerance=1e-2 if vectorize else 1e-6)
    # the cells learnt different things (masks, seeds): equality above is not three copies of one run
    accs = [o["test_acc"] for o in separate]
    assert len({round(a, 6) for a in accs}) == 3, accs
    assert max(accs) > 0.2, accs  # learning happened (chance is 0.1)


def test_a_stacked_accuracy_is_recorded_as_a_separate_run_records_it(separate_and_stacked):
    """The same correct count is the same number in results.csv, to the bit: a separate run records
    torchmetrics' float32 ``correct / n``; the stack recorded it in float64 (0.6573816155988857 beside
    0.6573815941810608 for 236 of 359), so summary.csv and report.md of ``--benchmark.stack 2`` differed
    from the serial grid's in the 8th digit though every prediction was the same."""
    cfg, _, separate, stacked, _ = separate_and_stacked
    from roar.data.datamodule import ImageDataModule

    n = len(ImageDataModule(**cfg.data).source.test)
    for one, together in zip(separate, stacked[False], strict=True):  # the loop: each member's own kernels
        assert round(one["test_acc"] * n) == round(together["test_acc"] * n)  # the same predictions...
        assert together["test_acc"] == one["test_acc"]  # ...give the same recorded accuracy


def test_a_member_does_not_depend_on_the_others(separate_and_stacked):
    cfg, specs, separate, _, out = separate_and_stacked
    # the same first member beside another seed: its result is unchanged, the changed member's is not
    other = [specs[0], spec("random", "roar", 0.5, 7)]
    stacked = execute_stack(other, cfg, out / "other", out / "base.ckpt", vectorize=True)
    assert relative_difference(weights(separate[0]), weights(stacked[0]), initial_weights(cfg, specs[0].seed)) < 1e-2
    assert relative_difference(weights(separate[1]), weights(stacked[1]), initial_weights(cfg, specs[1].seed)) > 0.5


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_stacked_networks_compute_each_member_alone(vectorize):
    torch.manual_seed(0)
    nets = [build_model("small_cnn", num_classes=10, in_chans=1, image_size=8) for _ in range(3)]
    x = torch.rand(3, 5, 1, 8, 8)
    stacked = StackedNetworks(nets, vectorize=vectorize)
    out = stacked(x)
    for i, net in enumerate(nets):
        assert torch.allclose(out[i], net(x[i]), atol=1e-5)
    state = stacked.member_state(1)
    assert all(torch.equal(state[k], v) for k, v in nets[1].state_dict().items())
    with pytest.raises(ValueError, match="inputs stack 2 batches for 3 networks"):
        stacked(x[:2])
    with pytest.raises(ValueError, match="only networks of one architecture"):
        StackedNetworks([nets[0], build_model("mlp", num_classes=10, in_chans=1, image_size=8)])


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "loop"])
def test_batchnorm_statistics_are_per_member(vectorize):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()) for _ in range(2)]
    x = torch.stack([torch.rand(6, 1, 5, 5), 3 + 2 * torch.rand(6, 1, 5, 5)])
    stacked = StackedNetworks(nets, vectorize=vectorize)
    out = stacked(x)  # training mode: batch statistics, running statistics updated in place per member
    for i, net in enumerate(nets):
        net.train()
        assert torch.allclose(out[i], net(x[i]), atol=1e-5)
        for name, value in net.state_dict().items():
            assert torch.allclose(stacked.member_state(i)[name].to(value.dtype), value, atol=1e-6), (i, name)
    assert not torch.allclose(stacked.buffers["1.running_mean"][0], stacked.buffers["1.running_mean"][1])


def test_stack_setting_is_checked_and_resolved():
    with pytest.raises(ValueError, match="benchmark.stack must be a positive integer or 'auto', got 0"):
        config(stack=0).validate()
    with pytest.raises(ValueError, match="gradient_clip_val are not reproduced by stacked training"):
        config(stack=2, trainer={"max_epochs": 1, "gradient_clip_val": 1.0}).validate()
    config(stack="auto", trainer={"max_epochs": 1, "gradient_clip_val": 1.0}).validate()  # auto falls back to one by one
    assert resolve_stack(config(stack="auto", seeds=3), num_parameters=10_000) == 3
    assert resolve_stack(config(stack="auto", seeds=3), num_parameters=50_000_000) == 1
    specs = [spec("random", "roar", 0.5, s) for s in (1, 0)] + [spec("unmasked", "noretrain", 0.0, 0), spec("random", "kar", 0.5, 0)]
    # retrains only, the seeds of one cell side by side; noretrain evaluations are left to the one-by-one path
    assert stack_groups(specs, 2) == [[specs[3], specs[1]], [specs[0]]]


@pytest.mark.slow
def test_stacked_benchmark_records_the_same_experiment(tmp_path):
    """A grid with stack: 2 records one row per member, each with the fingerprint (and, within
    float tolerance, the accuracy) of the same grid run one by one, and the stack in its config."""
    common = dict(base={"max_epochs": 2, "seed": 0, "min_accuracy": 0.0}, noretrain=False)
    rows = {}
    for stack in (1, 2):
        results = run_benchmark(config(stack=stack, **common), tmp_path / f"stack{stack}", progress=False, report=False)
        rows[stack] = {r["run_id"]: r for r in results.rows()}
    assert rows[1].keys() == rows[2].keys() and len(rows[1]) == 4  # 2 references + 2 roar runs
    for run_id, one in rows[1].items():
        together = rows[2][run_id]
        assert together["status"] == "done"
        assert together["fingerprint"] == one["fingerprint"]
        assert one["config"]["benchmark"]["stack"] == 1 and together["config"]["benchmark"]["stack"] == 2
        assert abs(together["test_acc"] - one["test_acc"]) <= 0.01, run_id
        assert load_checkpoint(together["checkpoint"]).get("stacked") == 2  # trained in a stack of two
        load_classifier(together["checkpoint"], arch="small_cnn")  # a checkpoint like any other run's
    assert (tmp_path / "stack2" / "runs" / "roar" / "random" / "t0.500-s1").is_dir()


def test_a_stack_applies_trainer_deterministic_as_a_trainer_does(tmp_path):
    """``trainer.deterministic: true`` is a setting a stack accepts, so it must act as under
    ``Trainer`` (torch's deterministic algorithms, cuDNN autotuning off): a stack in a worker process,
    where no Trainer ever ran, trained with CUDA's nondeterministic kernels though the config asked
    for deterministic ones."""
    previous, workspace = torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.use_deterministic_algorithms(False)  # what a fresh worker process starts with
    try:
        execute_stack([spec("random", "roar", 0.5, 0)], config(trainer={"max_epochs": 1, "accelerator": "cpu", "deterministic": True}), tmp_path, tmp_path / "base.ckpt")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(previous)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)  # set with deterministic algorithms for cuBLAS
