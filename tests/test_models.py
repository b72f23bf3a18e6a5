import pytest
import torch
from torch import nn

from roar.models import build_model, list_models
from roar.models.classifier import ImageClassifier


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_chans", [1, 3])
def test_factory_output_shape(name, in_chans):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_chans=in_chans, image_size=16)
    out = model(torch.rand(2, in_chans, 16, 16))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_relus_are_neither_inplace_nor_shared(name):
    model = build_model(name, num_classes=3, in_chans=3, image_size=16)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert all(not m.inplace for m in relus)
    named = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(named) == len({id(m) for m in relus})


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_small_image_stem(name):
    small = build_model(name, num_classes=10, in_chans=3, image_size=32)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = build_model(name, num_classes=10, in_chans=3, image_size=96)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)


def test_resnet50_is_timm_bottleneck_resnet():
    model = build_model("resnet50", num_classes=10, in_chans=1, image_size=16)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert model.fc.out_features == 10 and model.conv1.in_channels == 1


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="valid: linear, mlp, resnet18, resnet50, small_cnn"):
        build_model("vgg", 10, 3, 32)


@pytest.mark.parametrize("name,size", [("small_cnn", 2), ("resnet18", 4)])
def test_too_small_image_is_rejected(name, size):
    with pytest.raises(ValueError, match=f"image_size={size}"):
        build_model(name, 10, 3, size)


def test_bad_num_classes_is_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", 0, 3, 8)


def test_classifier_normalises_with_given_statistics():
    model = ImageClassifier(arch="linear", num_classes=2, in_chans=3, image_size=4, channel_mean=[0.1, 0.2, 0.3], channel_std=[2.0, 2.0, 4.0])
    x = torch.full((5, 3, 4, 4), 0.5)
    # by hand: (0.5 - 0.1) / 2, (0.5 - 0.2) / 2, (0.5 - 0.3) / 4
    by_hand = torch.tensor([0.2, 0.15, 0.05]).view(1, 3, 1, 1).expand(5, 3, 4, 4)
    torch.testing.assert_close(model.normalize(x), by_hand)
    torch.testing.assert_close(model(x), model.net(by_hand))
    assert not torch.allclose(model(x), model.net(x)), "the network sees normalised inputs, not raw pixels"
    # the channel mean maps to exactly zero: masked features carry no signal into the network
    mean_image = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert model.normalize(mean_image).abs().max() == 0


def test_classifier_rejects_bad_choices():
    with pytest.raises(ValueError, match="valid choices: sgd, adamw"):
        ImageClassifier(optimizer="adam")
    with pytest.raises(ValueError, match="channel_mean has 1 values for in_chans=3"):
        ImageClassifier(in_chans=3, channel_mean=[0.5], channel_std=[0.5])
    # torch failed on these only at the first training step (label_smoothing, momentum), or never (weight decay)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\), got 1.5"):
        ImageClassifier(label_smoothing=1.5)
    for name in ("momentum", "weight_decay", "warmup_epochs"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got -0.5"):
            ImageClassifier(**{name: -0.5})


@pytest.mark.parametrize("compile", [True, "reduce-overhead"])
def test_compiled_classifier_runs_its_compiled_network(compile):
    # model.compile: true (or a mode) wraps the network in torch.compile; forward must call that wrapper
    # (a compiled module refuses bool(), which `compiled or net` asked for). Dynamo is switched off
    # (torch's own setting) so the wrapper runs eagerly: the dispatch is tested, not inductor's minutes.
    import torch._dynamo

    torch.manual_seed(0)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, compile=compile, channels_last=True)
    assert model._compiled is not None
    x = torch.rand(3, 1, 8, 8)
    with torch._dynamo.config.patch(disable=True):  # monkeypatch's restore broke torch's config module
        out = model(x)
    assert out.shape == (3, 10)
    assert torch.allclose(out, model.net(model.normalize(x)))
    assert set(model.state_dict()) == set(ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8).state_dict())


def test_an_unknown_compile_mode_is_refused_with_the_modes():
    # torch.compile itself named the bad mode only at the first step, after the data was loaded
    with pytest.raises(ValueError, match=r"unknown compile mode 'fast'; valid choices: true, false, default, reduce-overhead, max-autotune"):
        ImageClassifier(compile="fast")


def test_the_logged_accuracies_are_the_models_accuracy_on_each_split():
    # val/acc and test/acc are the epoch's accuracy over every image of the split (torchmetrics' state,
    # updated each step), not the last batch's nor a stale epoch's: counted here by hand from the predictions
    from lightning.pytorch import Trainer, seed_everything

    from roar.data.datamodule import ImageDataModule

    seed_everything(0, verbose=False)
    dm = ImageDataModule(source="digits", image_size=8, batch_size=64, val_fraction=0.2, seed=0)
    model = ImageClassifier(arch="small_cnn", num_classes=10, in_chans=1, image_size=8, lr=0.05)
    trainer = Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert 0 < trainer.callback_metrics["train/acc"].item() <= 1  # logged at the epoch's end from the same state
    model.eval()
    for split, run in (("val", trainer.validate), ("test", trainer.test)):
        logged = run(model, datamodule=dm, verbose=False)[0][f"{split}/acc"]
        loader = getattr(dm, f"{split}_dataloader")()
        with torch.no_grad():
            hits = [(model(images).argmax(1) == labels).sum().item() for images, labels, _ in loader]
        n = len(loader.dataset)
        assert logged == pytest.approx(sum(hits) / n, abs=1e-6), split
        assert n > loader.batch_size  # several batches: the last batch alone would not give this number
