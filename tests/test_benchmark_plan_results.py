"""The benchmark grid (plan.py) and the results database (results.py)."""

from __future__ import annotations

import csv
import json
import multiprocessing
import sqlite3
from collections import Counter

import numpy as np
import pytest

from roar.benchmark.plan import DEFAULT_THRESHOLDS, MODES, RunSpec, build_plan
from roar.benchmark.results import CSV_COLUMNS, ResultsStore, UnreadableResultsError

METHODS = ["gradient", "integrated_gradients_sg_sq", "random"]


# ------------------------------------------------------------------------------------------ plan


def test_run_spec_ids_and_names():
    spec = RunSpec("digits", "small_cnn", "integrated_gradients_sg_sq", "roar", 0.5, 3)
    assert spec.run_id == "roar/integrated_gradients_sg_sq/t0.500/s3/digits/small_cnn"
    assert spec.name == "roar-integrated_gradients_sg_sq-t0.5-s3"
    # the same cell under KAR, or under another fill, is another W&B run: its name says so
    assert RunSpec("digits", "small_cnn", "integrated_gradients_sg_sq", "kar", 0.5, 3).name == "kar-integrated_gradients_sg_sq-t0.5-s3"
    assert RunSpec("digits", "small_cnn", "gradient", "kar", 0.5, 3, fill="blur").name == "kar@blur-gradient-t0.5-s3"
    assert spec.to_dict() == {"dataset": "digits", "model": "small_cnn", "method": "integrated_gradients_sg_sq", "mode": "roar", "threshold": 0.5, "seed": 3, "fill": "channel_mean"}
    assert RunSpec.from_dict({**spec.to_dict(), "test_acc": 0.9}) == spec
    # the same run spelled differently is the same run
    same = RunSpec("digits", "small_cnn", "gradient", "kar", np.float64(0.5), np.int64(1))
    assert same == RunSpec("digits", "small_cnn", "gradient", "kar", 0.5, 1) and type(same.threshold) is float and type(same.seed) is int
    assert hash(same) == hash(RunSpec("digits", "small_cnn", "gradient", "kar", 0.5, 1))
    ref = RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 2)
    assert ref.is_reference and ref.run_id == "reference/unmasked/t0.000/s2/digits/small_cnn" and ref.name == "reference-unmasked-t0-s2"
    # more precision than three decimals is kept, so ids never collide
    assert RunSpec("d", "m", "gradient", "roar", 0.0625, 0).run_id != RunSpec("d", "m", "gradient", "roar", 0.0624, 0).run_id
    with pytest.raises(AttributeError):
        spec.seed = 4  # frozen


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="retrain"), "unknown mode 'retrain'; valid modes: roar, kar, noretrain, noretrain_kar, reference"),
        (dict(threshold=1.5), r"threshold 1.5 must be a number in \[0, 1\]"),
        (dict(seed=-1), "seed -1 must be a non-negative integer"),
        (dict(method="a/b"), "method must be a non-empty string without '/'"),
        (dict(dataset=""), "dataset must be a non-empty string"),
    ],
)
def test_run_spec_rejects_bad_values(kwargs, match):
    base = dict(dataset="digits", model="small_cnn", method="gradient", mode="roar", threshold=0.5, seed=0)
    with pytest.raises(ValueError, match=match):
        RunSpec(**{**base, **kwargs})


def test_build_plan_contents_and_order():
    plan = build_plan("digits", "small_cnn", METHODS, thresholds=(0.9, 0.1, 0.5), seeds=2, modes=("roar", "kar"))
    ids = [s.run_id for s in plan]
    assert len(ids) == len(set(ids))
    # 2 references + (1 + 3 methods x 3 thresholds) noretrain + 3 x 3 in KAR order + 2 seeds x 2 modes x 3 x 3 retrains
    assert len(plan) == 2 + 10 + 9 + 36
    # references first, one per seed
    assert [(s.method, s.mode, s.threshold, s.seed) for s in plan[:2]] == [("unmasked", "reference", 0.0, 0), ("unmasked", "reference", 0.0, 1)]
    # then the noretrain evaluations, seed 0 only, starting with the unmasked base model
    noretrain = plan[2:12]
    assert all(s.mode == "noretrain" and s.seed == 0 for s in noretrain)
    assert (noretrain[0].method, noretrain[0].threshold) == ("unmasked", 0.0)
    assert Counter(s.method for s in noretrain[1:]) == {m: 3 for m in METHODS}
    # with kar among the modes, the no-retrain evaluations in KAR order too (ROAD's LeRF), seed 0 only
    noretrain_kar = plan[12:21]
    assert all(s.mode == "noretrain_kar" and s.seed == 0 for s in noretrain_kar)
    assert Counter(s.method for s in noretrain_kar) == {m: 3 for m in METHODS}
    # then retrains, seed-major: all of seed 0 before any of seed 1
    retrains = plan[21:]
    seeds = [s.seed for s in retrains]
    assert seeds == sorted(seeds) and seeds.count(0) == 18
    assert {s.mode for s in retrains} == {"roar", "kar"}
    # within a seed and mode: threshold before method, so a partial seed compares all methods
    seed0_roar = [(s.threshold, s.method) for s in retrains if s.seed == 0 and s.mode == "roar"]
    assert seed0_roar == [(t, m) for t in (0.1, 0.5, 0.9) for m in METHODS]
    assert all(s.dataset == "digits" and s.model == "small_cnn" for s in plan)


def test_build_plan_defaults_and_options():
    plan = build_plan("digits", "small_cnn", ["random"])
    assert MODES == ("roar", "kar", "noretrain", "noretrain_kar") and DEFAULT_THRESHOLDS == (0.1, 0.3, 0.5, 0.7, 0.9)
    assert Counter(s.mode for s in plan) == {"reference": 5, "noretrain": 6, "roar": 25}
    assert sorted({s.seed for s in plan if s.mode == "roar"}) == [0, 1, 2, 3, 4]
    no_eval = build_plan("digits", "small_cnn", ["random"], seeds=[3, 7], noretrain=False)
    assert {s.mode for s in no_eval} == {"reference", "roar"} and {s.seed for s in no_eval} == {3, 7}
    # noretrain alone needs no reference retrain
    only_eval = build_plan("digits", "small_cnn", ["random", "gradient"], modes=("noretrain",), noretrain=False)
    assert {s.mode for s in only_eval} == {"noretrain"} and len(only_eval) == 1 + 2 * 5
    # KAR order without retraining alone: the unmasked base model evaluation is its curve's end point
    only_lerf = build_plan("digits", "small_cnn", ["random"], modes=("noretrain_kar",), noretrain=False)
    assert Counter(s.mode for s in only_lerf) == {"noretrain": 1, "noretrain_kar": 5}
    # a ROAR-only grid's ids are those of before: no KAR-order evaluations added
    assert "noretrain_kar" not in {s.mode for s in plan}
    # KAR with noretrain adds KAR-order evaluations; the ROAR-order ids are unchanged
    kar = build_plan("digits", "small_cnn", ["random"], modes=("roar", "kar"))
    assert {s.run_id for s in plan} <= {s.run_id for s in kar}
    assert Counter(s.mode for s in kar)["noretrain_kar"] == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(thresholds=(0.0, 0.5)), r"threshold 0.0 is not in the open interval \(0, 1\)"),
        (dict(thresholds=(0.5, 1.0)), r"threshold 1.0 is not in the open interval \(0, 1\)"),
        (dict(thresholds=(0.5, 0.5)), "threshold 0.5 repeats 0.5; thresholds must be unique"),
        (dict(thresholds=()), "thresholds is empty"),
        (dict(thresholds=("half",)), "threshold 'half' is not in the open interval"),
        (dict(methods=[]), "methods is empty"),
        (dict(methods=["gradient", "random", "gradient"]), "methods must be unique; repeated: gradient"),
        (dict(methods=["unmasked"]), "'unmasked' is reserved"),
        (dict(modes=("roar", "remove")), "unknown mode 'remove'; valid modes: roar, kar, noretrain"),
        (dict(modes=("reference",)), "unknown mode 'reference' .*added automatically"),
        (dict(modes=()), "modes is empty; valid modes: roar, kar, noretrain"),
        (dict(modes=("roar", "roar")), "modes must be unique"),
        (dict(seeds=0), "seeds must be a positive count or a non-empty list of integers, got 0"),
        (dict(seeds=[]), "seeds is an empty list"),
        (dict(seeds=[0, 1.5]), "seed 1.5 must be a non-negative integer"),
        (dict(seeds=[1, 1]), "seeds must be unique"),
        (dict(seeds="3"), "seeds must be a positive count"),
    ],
)
def test_build_plan_rejects_bad_inputs(kwargs, match):
    args = dict(methods=["random"], thresholds=(0.5,), seeds=1, modes=("roar",))
    with pytest.raises(ValueError, match=match):
        build_plan("digits", "small_cnn", **{**args, **kwargs})


# --------------------------------------------------------------------------------------- results


def _spec(method="gradient", mode="roar", threshold=0.5, seed=0):
    return RunSpec("digits", "small_cnn", method, mode, threshold, seed)


def test_record_rows_and_config_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    config = {"protocol": {"granularity": "element", "score": "abs", "fill": "channel_mean", "target": "predicted"}, "seed": 0}
    store.record(_spec(), status="done", test_acc=0.8125, epochs=10, seconds=12.5, checkpoint=tmp_path / "last.ckpt", config=config)
    [row] = store.rows()
    assert row["run_id"] == "roar/gradient/t0.500/s0/digits/small_cnn"
    assert (row["status"], row["test_acc"], row["epochs"], row["seconds"]) == ("done", 0.8125, 10, 12.5)
    assert row["checkpoint"] == str(tmp_path / "last.ckpt") and row["error"] is None
    assert row["config"] == config and row["finished_at"].endswith("+00:00")
    # the journal is WAL, so readers never block the writers
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # a folder opens <folder>/results.db, the same database
    assert ResultsStore(tmp_path).path == store.path and len(ResultsStore(tmp_path)) == 1


def test_resume_semantics_and_failures(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    store.record(_spec(seed=0), status="done", test_acc=0.9)
    store.record(_spec(seed=1), status="failed", error="Traceback ...\nRuntimeError: CUDA out of memory")
    store.record(_spec(seed=2), status="done", test_acc=0.7)
    assert store.finished_ids() == {_spec(seed=0).run_id, _spec(seed=2).run_id}  # failed ones are retried
    assert store.finished_ids(include_failed=True) == {_spec(seed=s).run_id for s in range(3)}
    [failure] = store.failures()
    assert failure["run_id"] == _spec(seed=1).run_id and failure["test_acc"] is None and "out of memory" in failure["error"]
    assert store.counts() == {"done": 2, "failed": 1}
    assert [r["seed"] for r in store.rows(status="done")] == [0, 2]
    # the resumed run succeeds: it replaces the failed row, never duplicates it
    store.record(_spec(seed=1), status="done", test_acc=0.8)
    assert len(store) == 3 and store.failures() == []
    assert store.finished_ids() == {_spec(seed=s).run_id for s in range(3)}
    store.clear()  # --force
    assert store.rows() == [] and store.finished_ids() == set()


def test_insert_or_replace_keeps_one_row_per_run(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    for acc in (0.5, 0.6, 0.7):
        store.record(_spec(), status="done", test_acc=acc, epochs=3)
    rows = store.rows()
    assert len(rows) == 1 and rows[0]["test_acc"] == 0.7
    # the row survives a new store on the same file (a resumed process)
    assert ResultsStore(tmp_path / "results.db").rows()[0]["test_acc"] == 0.7


def test_export_csv_columns_and_rows(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    store.record(_spec("unmasked", "reference", 0.0, 0), status="done", test_acc=0.97, epochs=5, seconds=3.0)
    store.record(_spec("random", "kar", 0.3, 1), status="done", test_acc=0.61, epochs=5, seconds=2.0, checkpoint="runs/x/last.ckpt")
    store.record(_spec("gradient", "roar", 0.7, 0), status="failed", error="boom, with a comma\nand a newline")
    path = store.export_csv(tmp_path / "out" / "results.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert CSV_COLUMNS[:11] == ("dataset", "model", "method", "mode", "fill", "threshold", "seed", "test_acc", "epochs", "seconds", "checkpoint")
    assert CSV_COLUMNS[11:] == ("status", "error")
    assert len(rows) == 3
    by_method = {r["method"]: r for r in rows}
    assert by_method["random"]["checkpoint"] == "runs/x/last.ckpt" and float(by_method["random"]["test_acc"]) == 0.61
    assert by_method["gradient"]["test_acc"] == "" and by_method["gradient"]["error"] == "boom, with a comma\nand a newline"
    assert (by_method["unmasked"]["mode"], float(by_method["unmasked"]["threshold"])) == ("reference", 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(status="ok", test_acc=0.5), "unknown status 'ok'; valid statuses: done, failed"),
        (dict(status="done"), "a done run needs a test accuracy in"),
        (dict(status="done", test_acc=1.5), "a done run needs a test accuracy in"),
        (dict(status="done", test_acc=float("nan")), "a done run needs a test accuracy in"),
        (dict(status="failed", test_acc=0.5, error="x"), "a failed run has no test accuracy"),
    ],
)
def test_record_rejects_bad_values_and_writes_nothing(tmp_path, kwargs, match):
    store = ResultsStore(tmp_path / "results.db")
    with pytest.raises(ValueError, match=match):
        store.record(_spec(), **kwargs)
    assert store.rows() == []


def test_unstorable_config_writes_nothing(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    with pytest.raises(ValueError, match="Circular reference"):
        cyclic: dict = {}
        cyclic["self"] = cyclic
        store.record(_spec(), status="done", test_acc=0.5, config=cyclic)
    with pytest.raises(ValueError, match="spec must be a RunSpec"):
        store.record(_spec().to_dict(), status="done", test_acc=0.5)
    with pytest.raises(ValueError, match="unknown status 'running'"):
        store.rows(status="running")
    assert len(store) == 0


def test_killed_writer_leaves_no_half_row(tmp_path):
    """A process that dies inside its transaction leaves nothing behind: SQLite rolls it back."""
    store = ResultsStore(tmp_path / "results.db")
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_die_mid_transaction, args=(str(store.path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    assert store.rows() == []
    store.record(_spec(), status="done", test_acc=0.5)  # and the database is not left locked
    assert len(store) == 1


@pytest.mark.parametrize("damage", ["truncated", "page"])
def test_a_damaged_database_is_refused_in_one_line_and_replaced_only_with_force(tmp_path, damage):
    """A results.db damaged on disk (a full disk, a copy cut short, a hand edit) is neither resumed
    nor read past: a clear refusal naming the ways on, not sqlite's traceback; ``--force`` replaces it."""
    store = ResultsStore(tmp_path / "results.db")
    for seed in range(40):  # a few pages of rows
        store.record(_spec(seed=seed), status="done", test_acc=0.5, config={"padding": "x" * 200})
    size = store.path.stat().st_size
    with store.path.open("r+b") as f:
        if damage == "truncated":
            f.truncate(size // 2)
        else:  # a table page's header overwritten: SQLite opens it and reads wrong rows, or fails mid-read
            f.seek(4096)
            f.write(bytes([0x0D, 0, 0, 0, 0x09, 0xFF]))
    with pytest.raises(UnreadableResultsError, match=r"results.db is not a readable results database \(.*\).*--force true") as err:
        ResultsStore(store.path)
    assert "\n" not in str(err.value)
    fresh = ResultsStore(store.path, replace_unreadable=True)
    assert fresh.rows() == []
    fresh.record(_spec(), status="done", test_acc=0.5)
    assert len(ResultsStore(store.path)) == 1


def _die_mid_transaction(path: str) -> None:
    import os

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO runs (run_id, dataset, model, method, mode, threshold, seed, status, finished_at) VALUES ('x', 'd', 'm', 'g', 'roar', 0.5, 0, 'done', 'now')")
    os._exit(3)  # killed before COMMIT


def _write_runs(store: ResultsStore, worker: int, n: int) -> None:
    for seed in range(n):
        spec = RunSpec("digits", "small_cnn", f"method{worker}", "roar", 0.5, seed)
        store.record(spec, status="done", test_acc=(worker + 1) / 10, epochs=seed, config={"worker": worker})
    # every worker also writes the same shared run: it must end up once
    store.record(RunSpec("digits", "small_cnn", "unmasked", "reference", 0.0, 0), status="done", test_acc=(worker + 1) / 10)


def test_concurrent_writers(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    workers, per_worker = 3, 15
    ctx = multiprocessing.get_context("spawn")  # the store is pickled into each worker: only its path travels
    procs = [ctx.Process(target=_write_runs, args=(store, w, per_worker)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * workers
    rows = store.rows()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == workers * per_worker + 1
    for w in range(workers):
        mine = [r for r in rows if r["method"] == f"method{w}"]
        assert sorted(r["seed"] for r in mine) == list(range(per_worker))
        assert all(r["test_acc"] == pytest.approx((w + 1) / 10) and r["config"] == {"worker": w} for r in mine)
    [shared] = [r for r in rows if r["mode"] == "reference"]
    assert round(shared["test_acc"], 6) in {round((w + 1) / 10, 6) for w in range(workers)}
    assert json.loads(json.dumps(rows))  # rows are plain JSON-able dicts
