"""--workers auto: worker count and threads per worker from the cores, the model's size and the devices."""

import pytest

from roar.benchmark.auto_workers import SMALL_MODEL_PARAMS, THREADS_PER_LARGE_MODEL, choose_workers
from roar.benchmark.launchers import LaunchOptions
from roar.models.classifier import ImageClassifier


def params(arch, image_size=8, in_chans=1):
    model = ImageClassifier(arch=arch, num_classes=10, in_chans=in_chans, image_size=image_size)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cores", [1, 2, 16])
def test_a_small_model_gets_one_thread_and_a_worker_per_core(cores):
    choice = choose_workers(cores, params("small_cnn"))
    assert (choice.workers, choice.threads) == (cores, 1)
    assert "one thread per small model" in choice.describe()


def test_a_large_model_gets_several_threads_per_worker():
    n = params("resnet50", image_size=32, in_chans=3)
    assert n > SMALL_MODEL_PARAMS
    assert (choose_workers(16, n).workers, choose_workers(16, n).threads) == (16 // THREADS_PER_LARGE_MODEL, THREADS_PER_LARGE_MODEL)
    assert (choose_workers(2, n).workers, choose_workers(2, n).threads) == (1, 2)  # fewer cores than four: one worker, all of them


def test_never_more_workers_than_runs_and_one_worker_per_gpu():
    assert choose_workers(16, 1000, runs=3).workers == 3
    assert choose_workers(16, 1000, runs=0).workers == 1
    gpu = choose_workers(16, 25_000_000, gpus=4)
    assert (gpu.workers, gpu.threads) == (4, 4)
    assert choose_workers(16, 1000, gpus=4, runs=2).workers == 2


def test_auto_is_a_valid_workers_value_and_others_are_refused():
    assert LaunchOptions(workers="auto").validate().parallel
    for bad in ("many", 0, 1.5):
        with pytest.raises(ValueError, match="positive integer or auto"):
            LaunchOptions(workers=bad).validate()


def test_the_reason_names_the_model_size_readably():
    # the synthetic benchmark's linear model has 34 parameters: it printed "3.4e-05M parameters"
    assert "34 parameters" in choose_workers(2, 34).describe()
    assert "120k parameters" in choose_workers(2, 120_000).describe()
    assert "25.6M parameters" in choose_workers(16, 25_557_032).describe()
