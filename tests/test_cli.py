"""The training CLI as a user drives it: `python train.py fit --config configs/digits.yaml ...`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
DEBUG = str(ROOT / "configs" / "trainer" / "debug.yaml")


def fit_args(tmp_path, *extra):
    return [
        "fit", "--config", DIGITS, "--trainer", DEBUG,
        "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


def test_fit_fast_dev_run(tmp_path):
    cli = main(fit_args(tmp_path, "--trainer.fast_dev_run", "true"))
    assert cli.model.net.__class__.__name__ == "SmallCNN"
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_chans == 1


def test_fit_shows_no_known_third_party_deprecation(tmp_path):
    # Lightning's own use of a deprecated torch API (roar.quiet.KNOWN_WARNINGS) says nothing about the user's run
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(fit_args(tmp_path, "--trainer.fast_dev_run", "true"))
    assert [str(w.message) for w in caught if "LeafSpec" in str(w.message)] == []


def test_links_pass_data_facts_to_the_model(tmp_path):
    cli = main(fit_args(tmp_path, "--trainer.fast_dev_run", "true", "--data.init_args.image_size", "12"))
    assert cli.model.hparams.image_size == 12
    assert cli.model.hparams.channel_mean == pytest.approx(cli.datamodule.channel_mean)
    torch.testing.assert_close(cli.model.normalize.mean.flatten(), torch.tensor(cli.datamodule.channel_mean))


def test_compose_resnet50(tmp_path):
    cli = main(fit_args(tmp_path, "--config", str(ROOT / "configs/model/resnet50.yaml"), "--trainer.fast_dev_run", "true"))
    assert cli.model.hparams.arch == "resnet50"
    assert cli.model.net.conv1.kernel_size == (3, 3)


def test_print_config_shows_the_resolved_config():
    out = subprocess.run(
        [sys.executable, "train.py", "fit", "--config", DIGITS, "--config", "configs/model/resnet50.yaml", "--print_config"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    config = yaml.safe_load(out)
    assert config["model"]["arch"] == "resnet50"
    assert config["data"]["init_args"]["source"] == "digits"
    assert config["seed_everything"] == 0


def test_compile_takes_a_mode_from_the_command_line(tmp_path, capsys):
    # reduce-overhead (CUDA graphs) is the mode that pays for a CIFAR ResNet50 on a GPU (benchmarks, figure 11)
    with pytest.raises(SystemExit):
        main(fit_args(tmp_path, "--model.compile", "reduce-overhead", "--print_config"))
    assert yaml.safe_load(capsys.readouterr().out)["model"]["compile"] == "reduce-overhead"
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--model.compile", "fast"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "fast" in err and "reduce-overhead" in err


def test_fit_then_test_from_checkpoint_reaches_95_percent(tmp_path):
    # native 8 px keeps it fast; the default 16 px config is checked by the slow test below
    cli = main(fit_args(tmp_path, "--trainer.max_epochs", "12", "--data.init_args.image_size", "8"))
    fitted_acc = cli.trainer.callback_metrics["test/acc"].item()
    assert fitted_acc >= 0.95
    log_dir = Path(cli.trainer.log_dir)
    assert (log_dir / "config.yaml").exists() and (log_dir / "metrics.csv").exists()
    ckpt = log_dir / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    tested = main(["test", "--config", str(log_dir / "config.yaml"), "--ckpt_path", str(ckpt)])
    assert tested.trainer.callback_metrics["test/acc"].item() == pytest.approx(fitted_acc, abs=1e-6)


def test_testing_a_checkpoint_does_not_warn_about_its_checkpoint_folder(tmp_path):
    """README's `train.py test --ckpt_path .../last.ckpt` writes a new version folder; Lightning then warned
    that the ModelCheckpoint's dirpath changed and its best-k state "won't be reloaded", which a test never uses."""
    import warnings

    one_step = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--test_after_fit", "false"]
    fitted = main(fit_args(tmp_path, *one_step))
    ckpt = Path(fitted.trainer.log_dir) / "checkpoints" / "last.ckpt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tested = main(["test", "--config", DIGITS, "--trainer", DEBUG, "--trainer.logger.init_args.save_dir", str(tmp_path),
                       "--trainer.enable_progress_bar", "false", "--ckpt_path", str(ckpt)])  # fmt: skip
    assert "test/acc" in tested.trainer.callback_metrics
    assert [str(w.message) for w in caught if "dirpath has changed" in str(w.message)] == []


def test_rerun_into_the_same_folder_does_not_fail_on_saved_config(tmp_path):
    one_step = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--test_after_fit", "false"]
    args = fit_args(tmp_path, *one_step, "--trainer.logger.init_args.version", "fixed")
    main(args)
    saved = tmp_path / "roar" / "fixed" / "config.yaml"
    assert yaml.safe_load(saved.read_text())["data"]["init_args"]["batch_size"] == 64  # configs/data/digits.yaml
    second = main([*args, "--data.init_args.batch_size", "32"])
    assert second.trainer.global_step == 1, "the second run trained"
    assert yaml.safe_load(saved.read_text())["data"]["init_args"]["batch_size"] == 32, "its config replaced the first"


def test_default_root_dir_holds_every_checkpoint_of_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written relative to the working directory would land here
    root = tmp_path / "elsewhere"
    cli = main(["fit", "--config", DIGITS, "--trainer", DEBUG, "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "1",
                "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints and all(root in p.parents for p in checkpoints), checkpoints
    assert not (tmp_path / "runs").exists()
    assert Path(cli.trainer.log_dir).is_relative_to(root)


def test_a_checkpoint_of_another_model_is_refused_by_test(tmp_path, capsys):
    from roar.models.classifier import ImageClassifier

    mlp = ImageClassifier(arch="mlp", num_classes=10, in_chans=1, image_size=16)
    torch.save({"state_dict": mlp.state_dict(), "hyper_parameters": dict(mlp.hparams)}, tmp_path / "mlp.ckpt")
    with pytest.raises(SystemExit):
        main(["test", "--config", DIGITS, "--ckpt_path", str(tmp_path / "mlp.ckpt")])
    assert "holds a 'mlp' model but the config's model.arch is 'small_cnn'" in capsys.readouterr().err


def test_a_checkpoint_for_other_data_is_refused_by_name(tmp_path, capsys):
    from roar.models.classifier import ImageClassifier

    small = ImageClassifier(arch="small_cnn", num_classes=3, in_chans=1, image_size=16)
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, tmp_path / "three.ckpt")
    with pytest.raises(SystemExit):  # a one-line error, not a CheckpointError traceback
        main(["test", "--config", DIGITS, "--ckpt_path", str(tmp_path / "three.ckpt"), "--trainer.logger", "false"])
    assert "num_classes=3 (the data has 10)" in capsys.readouterr().err


def test_a_callbacks_reference_checkpoint_for_other_data_is_one_error_line(tmp_path, capsys):
    """README's DataRandomizationCheck given a permuted-label model of 8 px for 16 px data: refused at setup,
    before training, in one line (it was the CheckpointError's traceback)."""
    from roar.models.classifier import ImageClassifier

    small = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8)
    torch.save({"state_dict": small.state_dict(), "hyper_parameters": dict(small.hparams)}, tmp_path / "eight.ckpt")
    check = ["--trainer.callbacks+=callbacks.DataRandomizationCheck", "--trainer.callbacks.reference_checkpoint", str(tmp_path / "eight.ckpt")]
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *check))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {tmp_path / 'eight.ckpt'} does not fit this data/model: image_size=8 (expected 16)" in err
    assert not list(tmp_path.rglob("*.ckpt"))[1:], "nothing was trained"


def test_a_missing_checkpoint_is_refused_before_the_trainer_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):  # was Lightning's FileNotFoundError traceback, after building the trainer
        main(["test", "--config", DIGITS, "--ckpt_path", str(tmp_path / "gone.ckpt"), "--trainer.logger", "false"])
    assert "--ckpt_path " + str(tmp_path / "gone.ckpt") + ": no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,message",
    [
        (["--data.init_args.source", "imagenet"], "digits"),
        (["--model.arch", "vgg"], "resnet50"),
        (["--seed_everything", "abc"], "error: --seed_everything 'abc': expected bool or int\n"),
        (["--model.lr", "fast"], "error: --model.lr 'fast': expected float\n"),
        (["--data.init_args.limit_train", "half"], "error: --data.limit_train 'half': expected int or float or null (roar.data.datamodule.ImageDataModule)\n"),
        # a bad value of the data class: one line naming the key, the value and what it takes
        (["--data.init_args.batch_size", "many"], "error: --data.batch_size 'many': expected int (roar.data.datamodule.ImageDataModule)\n"),
        (["--data.init_args.augment", "rotate"], "error: --data.augment 'rotate': expected one of auto, none, crop, crop_flip (roar.data"),
        (["--config", str(ROOT / "configs" / "roar" / "digits.yaml"), "--data.fill", "foo"],
         "error: --data.fill 'foo': expected one of channel_mean, image_mean, noisy_linear, blur (roar.data.RoarDataModule)\n"),
        # a prefix of max_epochs is a misspelling, not an abbreviation argparse may take for it
        # a bad value checked by a class nested in the config (StoreRanks): the option is named, with the close match
        (["--config", str(ROOT / "configs" / "roar" / "digits.yaml"), "--data.ranks.score", "sqaure"],
         "error: --data.ranks.score: unknown score 'sqaure' (did you mean square?); valid choices: abs, square, raw\n"),
        (["--model.optimizer", "adamm"], "error: --model.optimizer 'adamm': expected one of sgd, adamw (did you mean adamw?)\n"),
        (["--trainer.max_epoch", "3"], "'max_epoch' is not a valid key (did you mean max_epochs"),
        (["--traner.max_epochs", "3"], "error: --traner.max_epochs: 'traner' is not a valid key (did you mean --trainer.max_epochs?); valid keys: "),
        (["--data.init_args.imgsize", "3"], "error: --data: 'imgsize' is not a valid key of roar.data.datamodule.ImageDataModule (did you mean image_size?)"),
        # a logger file that is not there, a logger or callback class that does not exist: one line naming it
        (["--trainer.logger", "configs/logger/wandbx.yaml"],
         "error: --trainer.logger 'configs/logger/wandbx.yaml': no such file, nor a class path; expected a config file, "
         "a class path of a lightning.pytorch.loggers.logger.Logger, a list of them, bool or null\n"),
        (["--trainer.callbacks+=callbacks.ModelRandomCheck"],
         "error: --trainer.callbacks 'callbacks.ModelRandomCheck': no such file, and module 'callbacks' has no attribute "
         "'ModelRandomCheck' (did you mean ModelRandomizationCheck?); its lightning.pytorch.callbacks.callback.Callback "
         "classes: DataRandomizationCheck, ModelRandomizationCheck, SanityCheckCallback\n"),
    ],
)
def test_bad_cli_values_fail_at_parse_time(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *override))
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Union subtypes" not in err


@pytest.mark.parametrize(
    "text,message",
    [
        ("model: {learning_rate: 0.1}\n", "'learning_rate' is not a valid key; valid keys: arch, arch_args, channels_last,"),
        ("seed_everithing: 3\n", "'seed_everithing' is not a valid key (did you mean seed_everything?); valid keys: ckpt_path, config, data, model, "),
        ("modl: {lr: 0.1}\n", "error: modl.lr: 'modl' is not a valid key (did you mean model.lr?); valid keys: ckpt_path, config, data, model, "),
    ],
)
def test_a_misspelled_key_in_a_config_file_lists_the_valid_keys(tmp_path, capsys, text, message):
    """README, "Configs": a misspelled key anywhere is refused with the valid keys listed; in a file given to
    train.py fit it said only "Subcommand 'fit' does not accept option 'model.learning_rate'"."""
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--config", str(tmp_path / "typo.yaml")))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_image_size_the_model_cannot_take_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--data.init_args.image_size", "2"))
    assert exit_info.value.code == 2
    assert "error: small_cnn needs images of at least 4 px, got image_size=2" in capsys.readouterr().err


def test_a_data_root_without_its_files_is_one_error_line(tmp_path, capsys):
    # The datamodule's FileNotFoundError, not jsonargparse's "Does not validate against any of the
    # Union subtypes" traceback around it.
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--data", str(ROOT / "configs/data/cifar10.yaml"), "--data.init_args.root", str(tmp_path / "nowhere")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: no CIFAR-10 folder at {tmp_path / 'nowhere' / 'cifar-10-batches-py'}" in err
    assert "Union subtypes" not in err and "Given value" not in err


def test_a_retrain_whose_base_checkpoint_is_missing_is_one_error_line(tmp_path, capsys):
    # configs/roar/digits.yaml points at runs/digits_demo/base.ckpt; before the demo has run it is not
    # there, and prepare_data raised a traceback (under DDP the other process hung at a barrier first).
    gone = tmp_path / "base.ckpt"
    retrain = ["--config", str(ROOT / "configs/roar/digits.yaml"), "--data.ranks.method", "gradient"]
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *retrain, "--data.ranks.store", str(tmp_path / "store"), "--data.ranks.base_checkpoint", str(gone)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: base_checkpoint {gone}: no such file; method 'gradient' ranks with the base model" in err
    assert "--data.ranks.base_checkpoint PATH" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists(), "refused before any rank was computed"


@pytest.mark.parametrize(
    "option,value,message",
    [
        # a store that is a file (or under one) was a NotADirectoryError traceback in prepare_data
        ("store", "{file}", "error: store {file} is an existing file, not a folder"),
        ("store", "{file}/sub", "error: store {file}/sub is under {file}, which is a file, not a folder"),
        # 'gpu' was torch's RuntimeError traceback once the ranks were computed
        ("device", "gpu", "error: --data.ranks.device: unknown device 'gpu'; valid choices: auto, cpu, cuda"),
        # a CUDA device torch cannot see was its traceback from prepare_data ("Torch not compiled with CUDA enabled")
        pytest.param(
            "device", "cuda", "error: attribution device 'cuda' needs CUDA, but torch sees no CUDA device; use auto",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_a_bad_ranks_store_or_device_is_one_error_line(tmp_path, capsys, option, value, message):
    file = tmp_path / "notes.txt"
    file.write_text("not a store")
    retrain = ["--config", str(ROOT / "configs/roar/digits.yaml"), "--data.ranks.method", "random", "--data.ranks.store", str(tmp_path / "store")]
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *retrain, f"--data.ranks.{option}", value.format(file=file)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message.format(file=file) in err and "Traceback" not in err
    assert not (tmp_path / "store").exists(), "refused before any rank was computed"


def test_an_unreadable_image_is_one_error_line_naming_it(tmp_path, capsys):
    # Ours wraps PIL's OSError: the message printed is ours (the file named), not PIL's nor a traceback.
    from formats import write_image_folder

    write_image_folder(tmp_path / "images", classes=["a", "b"], per_class=2, ext="jpg")
    truncated = tmp_path / "images" / "train" / "a" / "cut.jpg"
    truncated.write_bytes((tmp_path / "images" / "train" / "a" / "0.jpg").read_bytes()[:200])
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--data", str(ROOT / "configs/data/image_folder.yaml"), "--data.init_args.root", str(tmp_path / "images"),
                      "--data.init_args.image_size", "8", "--data.init_args.num_workers", "0"))  # fmt: skip
    assert exit_info.value.code == 2
    assert f"error: cannot read image {truncated}" in capsys.readouterr().err


@pytest.mark.slow
def test_default_digits_config_reaches_95_percent(tmp_path):
    cli = main(["fit", "--config", DIGITS, "--trainer.logger", str(ROOT / "configs/logger/csv.yaml"),
                "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert cli.trainer.callback_metrics["test/acc"].item() >= 0.95


def test_fit_prints_its_own_output_not_lightnings_or_wandbs_banners(tmp_path):
    """The README's first command: the model summary, the bars, the test table, one W&B line; no greetings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # the user's default, not CI's silence
    env["PYTHONPATH"] = str(ROOT)
    command = [
        sys.executable, str(ROOT / "train.py"), "fit", "--config", DIGITS,
        "--data.limit_train", "100", "--data.limit_test", "50", "--trainer.max_epochs", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    for banner in ("GPU available", "TPU available", "litlogger", "Seed set", "anonymous setting", "wandb:"):
        assert banner not in text, f"{banner!r} printed:\n{text}"
    assert "`Trainer.fit` stopped" in text and "test/acc" in text  # Lightning's lines about this run stay
    [line] = [line for line in text.splitlines() if line.startswith("W&B run")]
    folder = line.removeprefix("W&B run saved offline in ").split(";")[0]
    assert line.endswith(f"upload it with: wandb sync {folder}")
    assert list((tmp_path / folder).glob("*.wandb")), f"{folder} holds no W&B run"


@pytest.mark.slow  # 15 s: a second train.py subprocess; the W&B line itself is checked by the banners test above
def test_the_wandb_line_names_a_folder_outside_the_working_directory_absolutely(tmp_path):
    """docs/scale.md's runs under another root: the line printed ../../../tmp/... before."""
    (tmp_path / "work").mkdir()
    elsewhere = tmp_path / "elsewhere"
    command = [
        sys.executable, str(ROOT / "train.py"), "fit", "--config", DIGITS, "--trainer.default_root_dir", str(elsewhere),
        "--data.limit_train", "100", "--data.limit_test", "50", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}  # CI's WANDB_SILENT would silence the line
    done = subprocess.run(command, cwd=tmp_path / "work", env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("W&B run")]
    folder = line.removeprefix("W&B run saved offline in ").split(";")[0]
    assert folder.startswith(str(elsewhere / "wandb" / "offline-run-")), line
    assert list(Path(folder).glob("*.wandb")), f"{folder} holds no W&B run"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_is_one_error_line(tmp_path, capsys, accelerator):
    # The README's GPU command on a CPU-only machine: Lightning's "No supported gpu backend found!" traceback before.
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, "--trainer.accelerator", accelerator))
    assert exit_info.value.code == 2
    assert f"error: trainer.accelerator '{accelerator}' needs a GPU, but torch sees none" in capsys.readouterr().err


def test_logging_turned_off_takes_the_default_learning_rate_monitor_with_it(tmp_path):
    # configs/trainer/default.yaml adds a LearningRateMonitor; Lightning refuses one without a logger
    cli = main(fit_args(tmp_path, "--trainer.fast_dev_run", "true", "--trainer.logger", "false"))
    assert cli.trainer.loggers == []
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)
    assert any(type(c).__name__ == "ModelCheckpoint" for c in cli.trainer.callbacks)


def test_a_bad_value_of_a_nested_generic_names_its_whole_type(capsys):
    # YAML reads '{ig:{n_steps:4}}' (no space after the colons) as a string. The message names the
    # type whole: splitting the subtypes at every comma printed "expected a typing.Any]] or null".
    from roar.sanity.report import main as sanity_main

    with pytest.raises(SystemExit) as exit_info:
        sanity_main(["--sanity.method_params", "{integrated_gradients:{n_steps:4}}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--sanity.method_params '{integrated_gradients:{n_steps:4}}': expected dict[str, dict[str, typing.Any]] or null\n" in err


def test_the_model_summary_counts_the_networks_flops(tmp_path):
    """Lightning's summary (printed by ``train.py fit``) said "Total FLOPs: 0": it measures on the model's
    example input, which the classifier lacked. small_cnn on 16 px digits, multiply-adds x 2: conv1
    16*16*32*9, conv2 16*16*64*32*9, conv3 8*8*64*64*9, fc1 1024*128, fc2 128*10."""
    from lightning.pytorch.utilities.model_summary import ModelSummary

    cli = main(fit_args(tmp_path, "--trainer.fast_dev_run", "true"))
    macs = 16 * 16 * 32 * 9 + 16 * 16 * 64 * 32 * 9 + 8 * 8 * 64 * 64 * 9 + 1024 * 128 + 128 * 10
    assert ModelSummary(cli.model).total_flops == 2 * macs
