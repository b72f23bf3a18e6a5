"""`python -m benchmarks.run`'s bad input: one error line naming the value and the choices, before any figure runs."""

import pytest

from benchmarks.run import main


@pytest.fixture
def refused(capsys, tmp_path):
    """Run the command with bad input; the last stderr line. Nothing is measured or written."""

    def error(*argv: str) -> str:
        out = tmp_path / "results.json"
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "work")])
        assert exit_info.value.code == 2 and not out.exists()
        return _last_line(capsys)

    return error


def _last_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: python -m benchmarks.run") and "Traceback" not in "\n".join(err)
    assert not any(line.startswith("figure ") for line in err)  # refused before any figure started
    return err[-1]


def test_an_empty_figure_list_is_refused_not_an_empty_run(refused):
    # `--figures ""` (an unset shell variable) used to measure nothing, write an empty results.json and exit 0
    line = refused("--smoke", "--figures", "")
    assert line.startswith("python -m benchmarks.run: error: --figures '' names no figure; valid figures: all, 1 (attribution),")
    assert refused("--smoke", "--figures", " , ").endswith("11 (gpu)")


def test_an_unknown_figure_names_the_choices(refused):
    line = refused("--smoke", "--figures", "1,bogus")
    assert line.endswith("unknown figure 'bogus'; valid figures: all, 1 (attribution), 2 (masked), 3 (overhead), 4 (store), "
                         "5 (sanity), 6 (grid), 7 (mprt), 8 (road), 9 (stacked), 10 (per_run), 11 (gpu)")  # fmt: skip


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("store.n=abc", "--set 'store.n=abc': n takes an integer, got 'abc'"),
        ("gpu.peak_tflops=fast", "--set 'gpu.peak_tflops=fast': peak_tflops takes a number, got 'fast'"),
        ("attribution.models=resnet50:x:2", "--set 'attribution.models=resnet50:x:2': attribution.models takes arch:image_size:batch_size[,...] (integer sizes), got 'resnet50:x:2'"),
        ("stacked.cases=small_cnn:1:8:b:2", "(integer sizes), got 'small_cnn:1:8:b:2'"),
        # masked.cases holds datasets, not stacked cases: it was parsed as stacked's arch:chans:px:batch:N
        ("masked.cases=small_cnn:1:8:64:4", "--set 'masked.cases=small_cnn:1:8:64:4': cases cannot be set from the command line"),
        ("store.nn=3", "--set 'store.nn=3': store has no setting 'nn'; valid settings: n, batch_size, chunk_size, shape, repeats, fresh_process"),
        ("stor.n=3", "--set 'stor.n=3': unknown figure 'stor'; valid figures: attribution, masked, overhead, store, sanity, grid, mprt, road, stacked, per_run, gpu"),
    ],
)
def test_a_bad_setting_names_itself_and_its_figure(refused, item, message):
    # checked for every figure named in --set, including one not run this time (here only figure 4 runs)
    assert refused("--smoke", "--figures", "4", "--set", item).endswith(message)


@pytest.mark.parametrize(("option", "value"), [("--threads", "0"), ("--threads", "-2"), ("--repeats", "0"), ("--repeats", "-1"), ("--repeats", "two")])
def test_threads_and_repeats_must_be_positive(refused, option, value):
    # --threads 0 and --repeats 0 used to mean the default silently; --repeats -1 measured nothing and exited 0
    assert refused("--smoke", "--figures", "sanity", option, value).endswith(f"argument {option}: must be a positive integer, got {value!r}")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("store.n=-5", "--set 'store.n=-5': store.n must be a positive integer, got -5"),
        ("mprt.n_steps=0", "--set 'mprt.n_steps=0': mprt.n_steps must be a positive integer, got 0"),
        # the first epoch pays for warm-up and is left out: one epoch would leave nothing to time
        ("overhead.epochs=1", "--set 'overhead.epochs=1': overhead.epochs must be an integer >= 2 (the first is left out as warm-up), got 1"),
        ("masked.repeats=-1", "--set 'masked.repeats=-1': masked.repeats must be an integer >= 0 (0: the run's --repeats), got -1"),
        ("road.fraction=1", "--set 'road.fraction=1': road.fraction must be a number >= 0 and < 1, got 1.0"),
        ("overhead.lr=0", "--set 'overhead.lr=0': overhead.lr must be a number > 0, got 0.0"),
        ("per_run.long_epochs=1", "--set 'per_run.long_epochs=1': per_run.long_epochs must be > per_run.short_epochs (1), got 1"),
        ("attribution.models=resnet50:0:2", "--set 'attribution.models=resnet50:0:2': attribution.models image_size must be a positive integer, got 0"),
        ("stacked.cases=small_cnn:1:8:64:0", "--set 'stacked.cases=small_cnn:1:8:64:0': stacked.cases members must be a positive integer, got 0"),
    ],
)
def test_an_out_of_range_setting_is_refused_before_any_figure(refused, item, message):
    # store.n=-5 used to fail figure 4 deep inside it (exit 1), after the figures before it had run
    assert refused("--smoke", "--figures", "1,4", "--set", item).endswith(message)


def test_every_preset_is_in_range_and_a_bound_itself_is_accepted():
    from benchmarks.options import FIGURES, check, figure_config

    for name in FIGURES:
        for preset in ("smoke", "quick", "full"):
            check(name, figure_config(name, preset, []))  # raises ValueError naming the field if a default is out of range
    assert figure_config("store", "smoke", ["store.n=1"]).n == 1
    assert figure_config("masked", "smoke", ["masked.repeats=0"]).repeats == 0
    assert figure_config("road", "smoke", ["road.fraction=0"]).fraction == 0.0
