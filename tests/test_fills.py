"""Several fills in one grid (``modes: [roar, noretrain@noisy_linear]``): one store, one config, one report.

ROAR (Hooker et al., NeurIPS 2019: the channel mean, retrained) and ROAD (Rong, Leemann et al.,
ICML 2022: noisy linear imputation, no retraining) as modes of one benchmark, sharing the ranks and
the unmasked references; the consistency table compares their rankings. Run as a user does
(``python -m roar benchmark``) on 8 px digits, one epoch per retrain.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from roar.__main__ import main as roar_main
from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import RunSpec, build_plan
from roar.benchmark.progress import run_label
from roar.benchmark.provenance import ConfigChangedError, GridProvenance, check_recorded_rows
from roar.benchmark.results import ResultsStore
from roar.benchmark.stack_settings import stack_groups
from roar.fingerprint import fingerprint_key

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/benchmark/digits_demo.yaml")
FILLS = "channel_mean, image_mean, noisy_linear, blur"

# 2 methods x 1 threshold x 1 seed per mode, one epoch per retrain; a 6-epoch base model; retrains
# stacked by two (stacked_runner), so stacks of either fill run too.
GRID = [
    "--config", DEMO, "--trainer.max_epochs", "1", "--benchmark.base.max_epochs", "6", "--benchmark.methods", "[random, gradient]",
    "--benchmark.thresholds", "[0.5]", "--benchmark.seeds", "1", "--benchmark.noretrain", "false", "--benchmark.logger", "none",
    "--progress", "false", "--benchmark.modes", "[roar, roar@blur, noretrain@noisy_linear]", "--benchmark.stack", "2",
]  # fmt: skip


def benchmark(out: Path, *extra: str) -> int:
    return roar_main(["benchmark", *GRID, *extra, "--out", str(out)])


def snapshot(out: Path) -> dict[str, tuple[float, str]]:
    return {r["run_id"]: (r["seconds"], r["fingerprint"]) for r in ResultsStore(out / "results.db").rows()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fills") / "out"
    assert benchmark(out) == 0
    return out


# ------------------------------------------------------------------------------------------ plan


def test_run_ids_name_the_fill_only_when_it_is_not_the_papers():
    assert RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 3).run_id == "roar/gradient/t0.500/s3/digits/small_cnn"  # as roar 0.3.0
    road = RunSpec("digits", "small_cnn", "gradient", "noretrain", 0.5, 0, "noisy_linear")
    assert road.run_id == "noretrain@noisy_linear/gradient/t0.500/s0/digits/small_cnn" and road.evaluation == "noretrain@noisy_linear"
    assert RunSpec.from_dict(road.to_dict()) == road
    # the unmasked reference removes nothing: one run whatever fill it is asked under
    assert RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 1, "blur").run_id == "reference/unmasked/t0.000/s1/digits/small_cnn"


def test_a_plan_of_several_fills_shares_its_references():
    plan = build_plan("digits", "small_cnn", ["random", "gradient"], thresholds=(0.3, 0.6), seeds=2, modes=["roar", "roar@blur", "noretrain@noisy_linear"], noretrain=False)
    assert len({s.run_id for s in plan}) == len(plan)
    assert Counter(s.evaluation for s in plan if not s.is_reference) == {"roar": 8, "roar@blur": 8, "noretrain@noisy_linear": 4}
    assert [s.run_id for s in plan if s.is_reference] == [
        "reference/unmasked/t0.000/s0/digits/small_cnn", "reference/unmasked/t0.000/s1/digits/small_cnn", "noretrain/unmasked/t0.000/s0/digits/small_cnn",
    ]  # fmt: skip
    # noretrain: true adds the default fill's no-retrain curves, beside ROAD's
    both = build_plan("digits", "small_cnn", ["random"], thresholds=(0.5,), seeds=1, modes=["roar", "noretrain@noisy_linear"], noretrain=True)
    assert [s.evaluation for s in both if not s.is_reference] == ["noretrain@noisy_linear", "noretrain", "roar"]
    # a plain mode runs under the grid's default fill
    road = build_plan("digits", "small_cnn", ["random"], thresholds=(0.5,), seeds=1, modes=["noretrain"], fill="noisy_linear")
    assert [s.run_id for s in road] == ["noretrain/unmasked/t0.000/s0/digits/small_cnn", "noretrain@noisy_linear/random/t0.500/s0/digits/small_cnn"]


@pytest.mark.parametrize(
    "modes, match",
    [
        (["roar", "noretrain@zero"], f"unknown fill 'zero' in modes entry 'noretrain@zero'; valid fills: {FILLS}"),
        (["roar@"], f"unknown fill '' in modes entry 'roar@'; valid fills: {FILLS}"),
        (["remove@blur"], f"unknown mode 'remove' in modes entry 'remove@blur'; valid modes: roar, kar, noretrain, noretrain_kar; valid fills after @: {FILLS}"),
        (["@blur"], f"no mode before @ in modes entry '@blur'; valid modes: roar, kar, noretrain, noretrain_kar; valid fills after @: {FILLS}"),
        (["reference@blur"], "unknown mode 'reference' in modes entry 'reference@blur' \\(the reference runs are added automatically"),
        (["roar", "roar@channel_mean"], "modes must be unique.*'roar@channel_mean' is 'roar' again"),
    ],
)
def test_bad_mode_entries_are_named_with_the_choices(modes, match):
    with pytest.raises(ValueError, match=match):
        build_plan("digits", "small_cnn", ["random"], modes=modes)
    with pytest.raises(ValueError, match=match):
        BenchmarkConfig(modes=modes).validate()


def test_a_bad_mode_entry_fails_on_the_command_line_before_training(tmp_path, capsys):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as exit_:  # the parser's check of the config, with its usage line
        roar_main(["benchmark", *GRID, "--benchmark.modes", "[roar, noretrain@noisy]", "--out", str(out)])
    assert exit_.value.code == 2 and f"unknown fill 'noisy' in modes entry 'noretrain@noisy'; valid fills: {FILLS}" in capsys.readouterr().err
    assert not (out / "base.ckpt").exists() and not (out / "results.db").exists()


@pytest.mark.parametrize("value", ["[@blur]", "[roar, @blur]", "roar,@blur"])
def test_an_entry_yaml_refuses_is_named_with_the_mode_and_fill_choices(tmp_path, capsys, value):
    """'@' is reserved in YAML: `--benchmark.modes '[@blur]'` said "expected list" of the whole value, naming no choices."""
    with pytest.raises(SystemExit) as exit_:
        roar_main(["benchmark", *GRID, "--benchmark.modes", value, "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2
    assert err[-1] == f"error: no mode before @ in modes entry '@blur'; valid modes: roar, kar, noretrain, noretrain_kar; valid fills after @: {FILLS}", err


def test_stacks_and_progress_lines_know_the_fill():
    specs = [RunSpec("digits", "small_cnn", "random", "roar", 0.5, seed, fill) for fill in ("channel_mean", "blur") for seed in (0, 1)]
    assert [{s.fill for s in group} for group in stack_groups(specs, 2)] == [{"blur"}, {"channel_mean"}]  # one cell's seeds together
    assert run_label(RunSpec("digits", "small_cnn", "gradient", "noretrain", 0.5, 0, "noisy_linear")) == "noretrain@noisy_linear gradient t=0.5 seed 0"
    assert run_label(RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 1)) == "roar gradient t=0.5 seed 1"


def test_a_channel_mean_runs_fingerprint_is_that_of_roar_0_3_0():
    # computed by roar 0.3.0 (RunSpec without a fill): its results must keep resuming
    provenance = GridProvenance({"protocol": {"fill": "channel_mean"}}, "abc", {"gradient": {"name": "gradient", "params": {}}})
    spec = RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 1)
    assert fingerprint_key(provenance.for_run(spec)) == "f4a068a1723405a7ec3f73ee47d0eb2a3d5eaec07ac303b03c3d7b7af4d634ab"
    reference = RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 1)
    assert fingerprint_key(provenance.for_run(reference)) == "c79766a77dbc9e4420bf3dc533a0dd3c37c05bebc0c672e6f49b7845eebbba69"


# ------------------------------------------------------------------------------------- end to end


def test_one_grid_runs_every_fill_with_one_reference_and_one_report(finished):
    rows = ResultsStore(finished / "results.db").rows()
    assert all(r["status"] == "done" for r in rows)
    assert Counter((r["mode"], r["fill"]) for r in rows) == {
        ("reference", "channel_mean"): 1, ("roar", "channel_mean"): 2, ("roar", "blur"): 2, ("noretrain", "channel_mean"): 1, ("noretrain", "noisy_linear"): 2,
    }  # fmt: skip
    acc = {(r["mode"], r["fill"], r["method"]): r["test_acc"] for r in rows}
    # each run was masked with its own fill: the same masks, other pixel values, another retrained model
    for method in ("random", "gradient"):
        assert acc[("roar", "blur", method)] != acc[("roar", "channel_mean", method)]
    assert all(r["config"]["fill"] == r["fill"] for r in rows)
    assert len({r["settings_key"] for r in rows}) == 1, "the fills share one settings fingerprint"
    table = json.loads((finished / "consistency.json").read_text())
    assert [e["name"] for e in table["evaluations"]] == ["roar (channel_mean)", "roar (blur)", "noretrain (noisy_linear)"]
    assert [e["runs"] for e in table["evaluations"]] == [3, 3, 3]  # two runs each + the shared unmasked reference
    pairs = {(p["evaluation_a"], p["evaluation_b"]): p for p in table["pairs"]}
    assert pairs[("roar (channel_mean)", "noretrain (noisy_linear)")]["kendall_tau_b"] in (-1.0, 1.0)  # two methods: same order or reversed
    report = (finished / "report.md").read_text()
    assert "![roar curves](roar.png)" in report and "![roar@blur curves](roar@blur.png)" in report
    assert "![noretrain@noisy_linear curves](noretrain@noisy_linear.png)" in report and "### digits / small_cnn, fill `blur`" in report
    assert "| `noretrain (noisy_linear)` |" in report.split("## Consistency between evaluations")[1]
    assert all((finished / name).is_file() for name in ("roar.png", "roar@blur.png", "noretrain@noisy_linear.png"))
    assert (finished / "runs" / "noretrain@noisy_linear" / "gradient" / "t0.500-s0").is_dir()


def test_a_rerun_of_several_fills_resumes_everything(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    assert benchmark(out) == 0
    assert "resuming: 8 of 8 runs" in capsys.readouterr().out
    assert snapshot(out) == before


def test_a_rerun_under_another_protocol_fill_says_which_runs_it_keeps(finished, tmp_path, capsys):
    """``protocol.fill blur`` and ``modes: [roar]``: its runs are the earlier roar@blur runs (resumed); the
    channel-mean and noisy-linear runs stay in the store and the report, and the grid says so."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    assert benchmark(out, "--benchmark.modes", "[roar]", "--benchmark.protocol.fill", "blur") == 0
    printed = capsys.readouterr().out
    assert "resuming: 3 of 3 runs" in printed
    kept = "kept from an earlier grid in this folder and reported with this one: roar@channel_mean (2 runs), noretrain@noisy_linear (2 runs);"
    assert kept in printed, printed
    assert snapshot(out) == before
    assert (out / "roar.png").is_file() and (out / "roar@channel_mean.png").is_file()  # the blur curves are roar.png now
    assert benchmark(out, "--benchmark.modes", "[roar, roar@channel_mean, noretrain@noisy_linear]", "--benchmark.protocol.fill", "blur") == 0
    assert "kept from" not in capsys.readouterr().out  # every run planned again


def test_a_failure_of_an_earlier_grid_is_named_as_not_retried(finished, tmp_path, capsys):
    """A roar@blur run failed; the grid now runs ``modes: [roar]``, which does not plan it. The rerun
    said nothing of it, exited 0, and report.md told the user to run the same command to retry it."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    store = ResultsStore(out / "results.db")
    blurred = RunSpec("digits", "small_cnn", "gradient", "roar", 0.5, 0, fill="blur")
    store.record(blurred, status="failed", error="Traceback (most recent call last):\nRuntimeError: CUDA out of memory")
    assert benchmark(out, "--benchmark.modes", "[roar]") == 0  # not this command's failure
    printed = capsys.readouterr().out
    assert "failed in an earlier grid in this folder and not retried by this one: roar@blur (1 run); see report.md's Failures" in printed
    failures = (out / "report.md").read_text().split("## Failures")[1]
    assert "1 run(s) of an earlier grid in this folder failed; this config does not plan them" in failures
    assert "again to retry them." not in failures and f"`{blurred.run_id}`" in failures and "CUDA out of memory" in failures
    # the grid that plans it retries it, and says it was this command's to retry
    assert benchmark(out) == 0
    assert "earlier grid" not in capsys.readouterr().out
    assert {r["run_id"]: r["status"] for r in store.rows()}[blurred.run_id] == "done"
    assert (out / "report.md").read_text().split("## Failures")[1].strip() == "None."


def test_a_changed_fill_setting_reruns_only_that_fills_runs(finished, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    assert benchmark(out, "--benchmark.protocol.fill_sigma", "0.7") == 0
    printed = capsys.readouterr().out
    assert "resuming: 6 of 8 runs" in printed
    # the two reruns are said, with why: not silently run again beside "same fingerprint"
    sigma = next(r["provenance"]["fill"]["fill_sigma"] for r in ResultsStore(finished / "results.db").rows() if r["fill"] == "blur")
    assert f"runs of blur run again, its settings changed: 2 (fill_sigma: {json.dumps(sigma)} -> 0.7)" in printed
    after = snapshot(out)
    changed = sorted(run_id for run_id in before if after[run_id] != before[run_id])
    assert changed == ["roar@blur/gradient/t0.500/s0/digits/small_cnn", "roar@blur/random/t0.500/s0/digits/small_cnn"]
    rows = {r["run_id"]: r for r in ResultsStore(out / "results.db").rows()}
    assert rows[changed[0]]["provenance"]["fill"] == {"fill": "blur", "fill_sigma": 0.7}
    # a fill setting of a fill no planned run uses is a refusal, not a silent mix: the blur rows stay, of the old sigma
    assert benchmark(out, "--benchmark.protocol.fill_sigma", "0.9", "--benchmark.modes", "[roar]") == 2
    assert 'fill.fill_sigma: 0.7 -> 0.9' in capsys.readouterr().err


# ---------------------------------------------------------------------------------- roar 0.3.0 files

V2_SCHEMA = """CREATE TABLE runs (run_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, model TEXT NOT NULL, method TEXT NOT NULL,
mode TEXT NOT NULL, threshold REAL NOT NULL, seed INTEGER NOT NULL, status TEXT NOT NULL, test_acc REAL, epochs INTEGER,
seconds REAL, checkpoint TEXT, error TEXT, config TEXT, finished_at TEXT NOT NULL, fingerprint TEXT, settings_key TEXT, provenance TEXT)"""


def _v2_database(path: Path, fill: str) -> None:
    """A results.db as roar 0.3.0 wrote it: no fill column, the grid's fill in each row's config."""
    conn = sqlite3.connect(path)
    conn.execute(V2_SCHEMA)
    for method, threshold in (("unmasked", 0.0), ("gradient", 0.5)):
        spec = RunSpec("digits", "small_cnn", method, "noretrain", threshold, 0)
        config = {**{k: v for k, v in spec.to_dict().items() if k != "fill"}, "benchmark": {"protocol": {"fill": fill}}}
        provenance = {"settings": {"protocol": {"fill": fill}}, "spec": config}
        conn.execute(
            "INSERT INTO runs VALUES (?, 'digits', 'small_cnn', ?, 'noretrain', ?, 0, 'done', 0.5, 0, 1.0, NULL, NULL, ?, '2025-01-01', 'k', 's', ?)",
            (spec.run_id, method, threshold, json.dumps(config), json.dumps(provenance)),
        )
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("fill", ["channel_mean", "noisy_linear"])
def test_a_results_db_of_roar_0_3_0_opens_with_each_rows_fill(tmp_path, fill):
    _v2_database(tmp_path / "results.db", fill)
    archived = ResultsStore(tmp_path / "results.db", read_only=True).rows()  # read as it is
    assert [(r["method"], r["fill"]) for r in archived] == [("gradient", fill), ("unmasked", fill)]
    rows = ResultsStore(tmp_path / "results.db").rows()  # opened to write: migrated, rows kept
    assert [(r["run_id"], r["fill"]) for r in rows] == [(r["run_id"], fill) for r in archived]
    assert sqlite3.connect(tmp_path / "results.db").execute("PRAGMA user_version").fetchone()[0] == 3
    assert ResultsStore(tmp_path / "results.db", read_only=True).rows() == rows


def test_a_roar_0_3_0_run_of_another_fill_is_refused_by_name(tmp_path):
    _v2_database(tmp_path / "results.db", "noisy_linear")
    rows = ResultsStore(tmp_path / "results.db").rows()
    with pytest.raises(ConfigChangedError, match="recorded by roar 0.3.0 under protocol.fill 'noisy_linear'.*noretrain@noisy_linear/"):
        check_recorded_rows(rows, BenchmarkConfig(modes=["noretrain@noisy_linear"]), "results.db")


def test_a_methods_mapping_yaml_refuses_is_not_read_as_method_names(tmp_path, capsys):
    """Only plain entries are read as strings: a typo inside a method's mapping said "unknown attribution method '{name: x'",
    and before that "expected list"; it is YAML's own complaint, with where."""
    with pytest.raises(SystemExit) as exit_:
        roar_main(["benchmark", *GRID, "--benchmark.methods", "[{name: x, method: gradient, power: [1}]", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and "--benchmark.methods '[{name: x, method: gradient, power: [1}]': not valid YAML (expected ',' or ']', but got '}' at character 39)" in err[-1], err
