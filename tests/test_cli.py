"""The training CLI as a user drives it: `python train.py fit --config configs/digits.yaml ...`."""

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


def test_rerun_into_the_same_folder_does_not_fail_on_saved_config(tmp_path):
    args = fit_args(tmp_path, "--trainer.fast_dev_run", "true", "--trainer.logger.init_args.version", "fixed")
    main(args)
    main(args)


@pytest.mark.parametrize(
    "override,message",
    [
        (["--data.init_args.source", "imagenet"], "digits"),
        (["--model.arch", "vgg"], "resnet50"),
        (["--seed_everything", "abc"], "abc"),
        (["--data.init_args.batch_size", "many"], "many"),
        (["--data.init_args.augment", "rotate"], "crop_flip"),
    ],
)
def test_bad_cli_values_fail_at_parse_time(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        main(fit_args(tmp_path, *override))
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_image_size_the_model_cannot_take_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="image_size=2"):
        main(fit_args(tmp_path, "--data.init_args.image_size", "2"))


@pytest.mark.slow
def test_default_digits_config_reaches_95_percent(tmp_path):
    cli = main(["fit", "--config", DIGITS, "--trainer.logger", str(ROOT / "configs/logger/csv.yaml"),
                "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert cli.trainer.callback_metrics["test/acc"].item() >= 0.95
