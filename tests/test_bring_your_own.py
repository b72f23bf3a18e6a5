"""Issue "Bring your own": a user's methods, models and data, from a config alone.

Tiny runs (8 px digits, one epoch of four batches); the user's code lives in tests/user_code.py
and is named by import path, as a package of the user's would be.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from roar.__main__ import main as roar_main
from roar.attribution.store import AttributionStore
from roar.benchmark.results import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")
TINY = [
    "--config", DEMO, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--benchmark.base.max_epochs", "1",
    "--benchmark.base.min_accuracy", "0", "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.modes", "[roar]",
    "--benchmark.noretrain", "false", "--benchmark.logger", "none", "--progress", "false",
]  # fmt: skip


def benchmark(out: Path, *extra: str) -> int:
    return roar_main(["benchmark", *TINY, *extra, "--out", str(out)])


def done_methods(out: Path) -> set[str]:
    return {r["method"] for r in ResultsStore(out / "results.db").rows() if r["status"] == "done"}


def ranks(out: Path, method: str, split: str = "test") -> np.ndarray:
    store = AttributionStore(out / "attributions")
    (entry,) = [e for e in store.entries() if e.method == method and e.split == split]
    return np.asarray(store.load(entry.fingerprint))


# ----------------------------------------------------------------------------------- methods
def test_captum_classes_a_function_and_a_registered_class_run_through_a_benchmark(tmp_path):
    out = tmp_path / "out"
    methods = (
        "[gradient, random, {name: deeplift, class_path: captum.attr.DeepLift},"
        " {name: occlusion, class_path: captum.attr.Occlusion, attribute_args: {sliding_window_shapes: [1, 2, 2], strides: [1, 2, 2]}},"
        " {name: doubled, function: 'user_code:gradient_times_two'}, {name: centred0, method: center_weighted_gradient, power: 0},"
        " {name: gradcam_sg, class_path: captum.attr.LayerGradCam, layer: net.conv3, ensemble: sg, nt_samples: 2}]"
    )
    assert benchmark(out, "--benchmark.imports", "[user_code]", "--benchmark.methods", methods) == 0
    names = {"gradient", "random", "deeplift", "occlusion", "doubled", "centred0", "gradcam_sg"}
    assert done_methods(out) == names | {"unmasked"}
    report = (out / "report.md").read_text()
    assert all(f"| `{name}` |" in report for name in names)
    # Ranking is scale-invariant: 2 x gradient, and the registered class with power 0 (weight 1), rank as the gradient does.
    np.testing.assert_array_equal(ranks(out, "doubled"), ranks(out, "gradient"))
    np.testing.assert_array_equal(ranks(out, "centred0"), ranks(out, "gradient"))
    # A layer method is upsampled to the input: every channel value gets a rank, and 2x2 occlusion patches tie in pairs.
    assert ranks(out, "gradcam_sg").shape == ranks(out, "gradient").shape
    fingerprint = next(e.fingerprint for e in AttributionStore(out / "attributions").entries() if e.method == "occlusion")
    assert fingerprint["params"]["class_path"] == "captum.attr.Occlusion" and len(fingerprint["params"]["source_sha256"]) == 64


def test_roar_attribute_ranks_a_captum_class_by_path(tmp_path):
    out = tmp_path / "out"
    assert benchmark(out, "--benchmark.methods", "[random]") == 0
    assert roar_main(["attribute", *TINY, "--benchmark.methods", "[{name: ixg, class_path: captum.attr.InputXGradient}]", "--out", str(out)]) == 0
    assert ranks(out, "ixg", "train").shape[0] > ranks(out, "ixg", "test").shape[0] > 0


def _attribute(tmp_path: Path, out: Path, function: str = "mymethod:explain") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "tests")])}
    command = [sys.executable, "-m", "roar", "attribute", *TINY, "--benchmark.methods", f"[{{name: mine, function: '{function}'}}]", "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_editing_a_methods_source_recomputes_its_ranks(tmp_path):
    out = tmp_path / "out"
    assert benchmark(out, "--benchmark.methods", "[random]") == 0
    source = tmp_path / "mymethod.py"
    source.write_text("import torch\n\ndef explain(model, inputs, target):\n    return inputs.clone()\n")
    assert _attribute(tmp_path, out).returncode == 0
    first = ranks(out, "mine")
    assert _attribute(tmp_path, out).returncode == 0
    assert len([e for e in AttributionStore(out / "attributions").entries() if e.method == "mine"]) == 2, "unchanged source: reused"
    source.write_text("import torch\n\ndef explain(model, inputs, target):\n    return 1 - inputs\n")
    result = _attribute(tmp_path, out)
    assert result.returncode == 0, result.stderr
    entries = [e for e in AttributionStore(out / "attributions").entries() if e.method == "mine"]
    assert len(entries) == 4, "an edited method gets new entries, next to the old ones"
    test_entries = [e for e in entries if e.split == "test"]
    maps = [np.asarray(AttributionStore(out / "attributions").load(e.fingerprint)) for e in test_entries]
    assert not np.array_equal(maps[0], maps[1]) and any(np.array_equal(m, first) for m in maps)


@pytest.mark.slow  # tests/test_source_files.py covers the fingerprint in a second; this is the same through `roar attribute`
def test_editing_a_helper_the_method_imports_recomputes_its_ranks(tmp_path):
    out = tmp_path / "out"
    assert benchmark(out, "--benchmark.methods", "[random]") == 0
    (tmp_path / "helped.py").write_text("from edge_helpers import edges\n\ndef explain(model, inputs, target):\n    return edges(inputs)\n")
    helper = tmp_path / "edge_helpers.py"
    helper.write_text("def edges(x):\n    return x - x.roll(1, dims=-1)\n")
    assert _attribute(tmp_path, out, "helped:explain").returncode == 0
    helper.write_text("def edges(x):\n    return x - x.roll(1, dims=-2)\n")  # the method's own file is unchanged
    result = _attribute(tmp_path, out, "helped:explain")
    assert result.returncode == 0, result.stderr
    entries = [e for e in AttributionStore(out / "attributions").entries() if e.method == "mine" and e.split == "test"]
    assert len(entries) == 2, "ranks of the old helper are not reused"
    maps = [np.asarray(AttributionStore(out / "attributions").load(e.fingerprint)) for e in entries]
    assert not np.array_equal(maps[0], maps[1])


def test_an_entry_point_plugin_is_found_by_name(tmp_path, monkeypatch):
    plugin = tmp_path / "site"
    (plugin / "edge_plugin").mkdir(parents=True)
    (plugin / "edge_plugin" / "__init__.py").write_text(
        "import torch\n\ndef edges(model, inputs, target):\n    return inputs - inputs.roll(1, dims=-1)\n"
    )
    info = plugin / "edge_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edge-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[roar.methods]\nedge_plugin_method = edge_plugin:edges\n")
    monkeypatch.syspath_prepend(str(plugin))
    out = tmp_path / "out"
    assert benchmark(out, "--benchmark.methods", "[random, edge_plugin_method]") == 0
    assert done_methods(out) == {"random", "edge_plugin_method", "unmasked"}


def test_a_registered_method_runs_in_the_sanity_checks_through_imports(tmp_path, monkeypatch):
    # README: `methods` of a sanity config mixes the same entries as a benchmark's, `imports:` included
    (tmp_path / "sanity_plugin.py").write_text(
        "import torch\nfrom roar.attribution import register_method\n\n"
        "@register_method('sanity_plugin_gradient')\ndef explain(model, inputs, target):\n"
        "    (grad,) = torch.autograd.grad(model(inputs).gather(1, target[:, None]).sum(), inputs)\n    return grad\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sanity = ["sanity", "--config", str(ROOT / "configs/sanity/digits.yaml"), "--data.image_size", "8", "--sanity.epochs", "1",
              "--sanity.data_check", "false", "--sanity.num_images", "2", "--sanity.orders", "[cascading]", "--sanity.progress", "false"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        roar_main([*sanity, "--sanity.imports", "[no_such_plugin]", "--out", str(tmp_path / "never")])
    assert exit_info.value.code == 2 and not (tmp_path / "never").exists()
    out = tmp_path / "out"
    methods = "[gradient, sanity_plugin_gradient]"
    assert roar_main([*sanity, "--sanity.imports", "[sanity_plugin]", "--sanity.methods", methods, "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "sanity.csv").open()))
    mean = {m: {(r["layer"], r["metric"]): float(r["mean"]) for r in rows if r["method"] == m} for m in ("gradient", "sanity_plugin_gradient")}
    # the plugin is the gradient under another name: the same maps at every randomised layer, so the same similarities
    assert len(mean["gradient"]) > 4 and mean["sanity_plugin_gradient"].keys() == mean["gradient"].keys()
    for key, value in mean["gradient"].items():
        assert mean["sanity_plugin_gradient"][key] == pytest.approx(value, abs=1e-4), key


# ------------------------------------------------------------------------------ models, data
def test_a_timm_model_and_a_class_path_module_train_through_the_benchmark(tmp_path):
    for arch, extra in (("timm/resnet10t", []), ("user_code.TwoLayerNet", ["--model.arch_args", "{hidden: 16}"])):
        out = tmp_path / arch.replace("/", "_")
        assert benchmark(out, "--model.arch", arch, *extra, "--benchmark.methods", "[gradient]") == 0
        rows = ResultsStore(out / "results.db").rows()
        assert {r["status"] for r in rows} == {"done"} and rows[0]["model"] == arch.replace("/", ":")


@pytest.mark.parametrize("arch", ["timm/resnet10t", "user_code.TwoLayerNet"])
def test_a_timm_model_and_a_class_path_module_train_through_train_py(tmp_path, arch):
    from train import main

    cli = main(["fit", "--config", str(ROOT / "configs/digits.yaml"), "--model.arch", arch, "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
                "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
                "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.model.hparams.arch == arch and "test/acc" in cli.trainer.callback_metrics


def test_train_py_and_sanity_refuse_an_arch_arg_the_network_does_not_take(capsys):
    from train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs/digits.yaml"), "--model.arch", "user_code.TwoLayerNet", "--model.arch_args", "{hiden: 16}"])
    assert exit_info.value.code == 2
    assert "model.arch_args of user_code.TwoLayerNet has no 'hiden' (did you mean hidden?)" in capsys.readouterr().err
    sanity = ["sanity", "--config", str(ROOT / "configs/sanity/digits.yaml"), "--model.arch", "user_code.TwoLayerNet", "--model.arch_args", "{hiden: 16}"]
    assert roar_main(sanity) == 2
    assert "model.arch_args of user_code.TwoLayerNet has no 'hiden' (did you mean hidden?)" in capsys.readouterr().err


def test_train_py_given_a_users_datamodule_says_in_one_line_how_to_wrap_it_and_the_wrapped_one_trains(tmp_path, capsys):
    from train import main

    fit = ["fit", "--config", str(ROOT / "configs/digits.yaml"), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
           "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]",
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([*fit, "--data", "{class_path: user_code.TinyDigits}"])
    assert exit_info.value.code == 2
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error.startswith("error: --data: user_code.TinyDigits is not a subclass of ImageDataModule; ")
    wrapped = error.rpartition(" --data ")[2].strip("'").replace("init_args: {...}", "init_args: {batch_size: 32}")
    cli = main([*fit, "--data", wrapped])  # the hint, as printed: 8 px digits of the user's datamodule
    assert cli.model.hparams.image_size == 8 and "test/acc" in cli.trainer.callback_metrics


NET = (
    "from torch import nn\n\nclass EditedNet(nn.Module):\n    def __init__(self, num_classes, in_chans, image_size):\n        super().__init__()\n"
    "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * image_size**2, 16), nn.{act}(), nn.Linear(16, num_classes))\n\n"
    "    def forward(self, x):\n        return self.body(x)\n"
)


def test_editing_a_class_path_networks_source_is_not_reused(tmp_path, capsys, monkeypatch):
    # ReLU -> Tanh keeps every weight's shape, so the old base.ckpt still loads: only the source's hash tells them apart
    (tmp_path / "edited_net.py").write_text(NET.format(act="ReLU"))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    arch = ["--model.arch", "edited_net.EditedNet", "--benchmark.methods", "[random]"]
    assert benchmark(out, *arch) == 0
    assert benchmark(out, *arch) == 0, "unchanged source: resumed"
    (tmp_path / "edited_net.py").write_text(NET.format(act="Tanh"))
    assert benchmark(out, *arch) == 2
    assert "model.source_sha256" in capsys.readouterr().err


def test_the_sanity_models_of_an_edited_network_or_datamodule_are_not_reused(tmp_path, monkeypatch):
    from roar.data.datamodule import datamodule_arguments
    from roar.sanity.report_config import SanityReportConfig
    from roar.sanity.trained_models import _training_record

    (tmp_path / "sanity_edited_net.py").write_text(NET.format(act="ReLU"))
    (tmp_path / "edited_data.py").write_text("from user_code import TinyDigits\n\nclass EditedDigits(TinyDigits):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = datamodule_arguments({"class_path": "edited_data.EditedDigits"})
    cfg = SanityReportConfig(data=data, model={"arch": "sanity_edited_net.EditedNet"})
    before = _training_record(cfg, permuted=False)
    assert _training_record(cfg, permuted=False) == before
    (tmp_path / "sanity_edited_net.py").write_text(NET.format(act="Tanh"))
    assert _training_record(cfg, permuted=False)["model"]["source_sha256"] != before["model"]["source_sha256"]
    (tmp_path / "edited_data.py").write_text("from user_code import TinyDigits\n\nclass EditedDigits(TinyDigits):\n    test_every = 4\n")
    assert _training_record(cfg, permuted=False)["data"]["source_sha256"] != before["data"]["source_sha256"]


def test_a_users_lightning_datamodule_runs_a_roar_retrain(tmp_path):
    out = tmp_path / "out"
    assert benchmark(out, "--data", "{class_path: user_code.TinyDigits, init_args: {batch_size: 32}}", "--benchmark.methods", "[gradient]") == 0
    rows = ResultsStore(out / "results.db").rows()
    assert {(r["method"], r["mode"], r["status"]) for r in rows} == {("gradient", "roar", "done"), ("unmasked", "reference", "done")}
    entry = next(e for e in AttributionStore(out / "attributions").entries() if e.split == "test")
    identity = entry.fingerprint["dataset"]["identity"]
    assert identity["class_path"] == "user_code.TinyDigits" and entry.fingerprint["dataset"]["num_test"] == 360
    assert entry.shape == (360, 64), "every 5th of 1,797 digits, 8x8 x 1 channel"


def test_a_users_datamodule_wrapped_in_roars_takes_roars_data_settings(tmp_path):
    # roar's own data settings (here a first look on part of the data) apply to any datamodule
    # once it is the `lightning` source of an ImageDataModule, the form the error below suggests
    out = tmp_path / "out"
    wrapped = "{class_path: roar.data.ImageDataModule, init_args: {source: lightning, limit_test: 50, batch_size: 32, source_options: {class_path: user_code.TinyDigits}}}"
    assert benchmark(out, "--data", wrapped, "--benchmark.methods", "[gradient]") == 0
    assert {r["status"] for r in ResultsStore(out / "results.db").rows()} == {"done"}
    entry = next(e for e in AttributionStore(out / "attributions").entries() if e.split == "test")
    assert entry.fingerprint["dataset"]["identity"]["class_path"] == "user_code.TinyDigits"
    assert entry.shape == (50, 64), "50 of the datamodule's 360 test digits"


def test_model_weights_start_the_base_model_and_a_foreign_head_is_left_fresh(tmp_path):
    from roar.models.classifier import ImageClassifier

    pretrained = ImageClassifier(arch="small_cnn", num_classes=3, in_chans=1, image_size=8).net.state_dict()
    path = tmp_path / "pretrained.pt"
    torch.save(pretrained, path)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, weights=str(path))
    torch.testing.assert_close(model.net.conv1.weight, pretrained["conv1.weight"])
    assert model.net.fc2.weight.shape == (10, 128), "the 3-class head did not fit: left freshly initialised"


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "override,message",
    [
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.NotAClass}]"], "captum.attr has no 'NotAClass'"),
        (["--benchmark.methods", "[{name: x, class_path: torch.nn.Linear}]"], "not a captum Attribution class"),
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.Occlusion, attribute_args: {window: 3}}]"], "does not take 'window'"),
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.Occlusion}]"], "Occlusion attribute_args: it needs 'sliding_window_shapes'"),
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.DeepLiftShap}]"], "it needs 'baselines' (baselines: batch, the batch's images"),
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.NoiseTunnel}]"], "NoiseTunnel wraps another method, which roar's ensembles do"),
        (["--benchmark.methods", "[{name: x, class_path: captum.attr.NeuronGradient}]"], "explains one neuron of a layer; roar ranks features by the target"),
        (["--benchmark.methods", "[{name: x, function: 'nowhere.module:explain'}]"], "does not import"),
        (["--benchmark.methods", "[{name: x, function: 'torch.nn.functional:relu'}]"], "method 'x': function 'torch.nn.functional:relu': attribution function relu must take (model, inputs, target"),
        (["--benchmark.methods", "[gradeint]"], "did you mean gradient"),
        (["--benchmark.methods", "[{name: x, method: random, ensemble: sg}]"], "reads no model"),
        (["--model.arch", "timm/resnet10x"], "close matches: timm/resnet10t"),
        (["--model.arch", "user_code.NoSuchNet"], "user_code has no 'NoSuchNet'"),
        (["--model.arch", "user_code.TwoLayerNet", "--model.arch_args", "{hiden: 16}"], "'hiden' (did you mean hidden?); it takes"),
        (["--model.arch", "linear", "--model.arch_args", "{width: 16}"], "linear takes no arch_args"),
        (["--data.imgsize", "8"], "did you mean image_size"),
        (["--config", "{model: {learning_rate: 0.1}}"], "valid keys: arch, arch_args"),
        (["--config", "{trainer: {max_epoch: 3}}"], "did you mean max_epochs"),
        (["--data", "{class_path: user_code.DigitPairs}"], "--data: user_code.DigitPairs is not a subclass of LightningDataModule"),
        (["--data", "{class_path: user_code.TinyDigits}", "--data.init_args.limit_train", "100"], "wrap user_code.TinyDigits to use it"),
    ],
)
def test_bad_input_fails_at_config_time_naming_the_value(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        benchmark(tmp_path / "out", *override)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "base.ckpt").exists()


def test_a_model_path_that_names_a_module_not_a_class_says_so(tmp_path, capsys, monkeypatch):
    # the package does not import its submodule: the path must still be read as that module, not as "mypkg has no 'nets'"
    (tmp_path / "byo_nets_pkg").mkdir()
    (tmp_path / "byo_nets_pkg" / "__init__.py").write_text("")
    (tmp_path / "byo_nets_pkg" / "nets.py").write_text("from torch import nn\n\nclass MyNet(nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit):
        benchmark(tmp_path / "out", "--model.arch", "byo_nets_pkg.nets")
    err = capsys.readouterr().err
    assert "model.arch 'byo_nets_pkg.nets' is <module 'byo_nets_pkg.nets'" in err and "not an nn.Module class" in err
    assert not (tmp_path / "out").exists()


def _refused_before_training(tmp_path, capsys, methods: str) -> str:
    """The benchmark's error for ``--benchmark.methods methods``, checked to come before the base model."""
    out = tmp_path / "out"
    assert benchmark(out, "--benchmark.methods", methods) == 2
    assert not (out / "base.ckpt").exists()
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "function,message",
    [("wrong_shape", "returned shape (2, 8, 8)"), ("not_finite", "non-finite values"), ("raises", "RuntimeError: my method is broken")],
)
def test_a_method_failing_on_the_probe_batch_is_refused_before_training(tmp_path, capsys, function, message):
    err = _refused_before_training(tmp_path, capsys, f"[random, {{name: bad, function: 'user_code:{function}'}}]")
    assert "'bad'" in err and message in err


@pytest.mark.parametrize(
    "layer,message",
    [("conv2", "did you mean net.conv2?"), ("net.conv9", "its modules under net are: net.conv1, net.relu1, net.conv2"), ("net.conv3.wieght", "net.conv3 has no children")],
)
def test_a_layer_that_does_not_exist_is_refused_naming_the_layers_there_are(tmp_path, capsys, layer, message):
    err = _refused_before_training(tmp_path, capsys, f"[{{name: cam, class_path: captum.attr.LayerGradCam, layer: {layer}}}]")
    assert f"no layer {layer!r}" in err and message in err


def test_the_sanity_checks_refuse_a_method_returning_the_wrong_shape_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    sanity = ["sanity", "--config", str(ROOT / "configs/sanity/digits.yaml"), "--data.image_size", "8", "--sanity.progress", "false"]
    assert roar_main([*sanity, "--sanity.methods", "[gradient, {name: bad, function: 'user_code:wrong_shape'}]", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'bad'" in err and "returned shape (2, 8, 8)" in err
    assert not (out / "model.ckpt").exists()


def test_a_datamodule_that_does_not_yield_image_label_pairs_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert benchmark(out, "--data", "{class_path: user_code.TripletDigits}", "--benchmark.methods", "[random]") == 2
    assert "TripletDigits's train dataset yields dict, not (image, label)" in capsys.readouterr().err
    assert not (out / "base.ckpt").exists()


def test_a_weights_file_that_does_not_fit_is_refused(tmp_path):
    from roar.models.checkpoint import CheckpointError
    from roar.models.classifier import ImageClassifier

    path = tmp_path / "mlp.pt"
    torch.save(ImageClassifier(arch="mlp", num_classes=10, in_chans=1, image_size=8).net.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"do not fit the model.*fc1.weight"):
        ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, weights=str(path))


def test_a_wrapped_datamodule_of_another_image_size_says_how_to_leave_it_unset():
    # digits_demo.yaml states image_size 8; a user's 8 px datamodule under a config saying 16 must learn the null
    from roar.data import ImageDataModule

    with pytest.raises(ValueError, match=r"yields 8 px images but image_size is 16; .*--data.init_args.image_size null"):
        ImageDataModule(source="lightning", source_options={"class_path": "user_code.TinyDigits"}, image_size=16).setup("fit")


def test_a_path_into_a_module_without_public_names_says_so(tmp_path, monkeypatch):
    from roar.registry import import_object

    (tmp_path / "empty_user_module.py").write_text('"""A module that defines nothing yet."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"empty_user_module has no 'Net' \(it defines no public names\)$"):
        import_object("empty_user_module.Net", what="model.arch")
