"""The leakage probe in the report: exact intervals, "leaks" marks, the caveat, leakage.png, one section.

The probe rows are written by hand (digits, 10 classes: chance 0.1; 500 test images), so each
interval is computable: 200 of 500 right is 0.400 with the Clopper-Pearson interval [0.357, 0.444],
far above chance (leaks); 60 of 500 is 0.120 [0.093, 0.152], which holds 0.1 (does not).
"""

from __future__ import annotations

import csv
import json

import pytest
from test_report import _is_png, _store_with, fake_rows

from roar.benchmark.curves import MODE_TITLE
from roar.benchmark.leakage_report import COLUMNS, LEAKAGE_CSV, LEAKAGE_TITLE, leakage_caveats, leakage_section, leaks, plot_leakage, read_rows
from roar.benchmark.report import log_summary_to_wandb, summarize, write_report
from roar.statistics import binomial_interval

N_TEST = 500
# (method, order, threshold) -> correctly classified test images of 500
CORRECT = {
    ("gradient", "roar", 0.1): 60, ("gradient", "roar", 0.5): 200, ("gradient", "roar", 0.9): 150,
    ("random", "roar", 0.1): 52, ("random", "roar", 0.5): 47, ("random", "roar", 0.9): 50,
    ("gradient", "kar", 0.1): 55, ("gradient", "kar", 0.5): 49, ("gradient", "kar", 0.9): 51,
    ("random", "kar", 0.1): 50, ("random", "kar", 0.5): 53, ("random", "kar", 0.9): 48,
}  # fmt: skip


def probe_rows(correct: dict = CORRECT, n_test: int | str = N_TEST) -> list[dict]:
    return [
        {"dataset": "digits", "model": "small_cnn", "method": m, "order": o, "threshold": t, "seed": 0, "test_acc": k / N_TEST,
         "n_test": n_test, "chance": 0.1, "epochs": 5, "seconds": 1.0, "fingerprint": f"{m}-{o}-{t}"}
        for (m, o, t), k in correct.items()
    ]  # fmt: skip


def _write(rows: list[dict], path, columns=COLUMNS) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_leaks_only_where_the_whole_interval_is_above_chance():
    marks = {(r["method"], r["order"], r["threshold"]): leaks(r) for r in probe_rows()}
    assert [key for key, leaked in marks.items() if leaked] == [("gradient", "roar", 0.5), ("gradient", "roar", 0.9)]
    # 60 of 500 (0.120) is above chance as a number, but its interval [0.093, 0.152] holds 0.1
    assert binomial_interval(60, 500).format(3) == "0.120 [0.093, 0.152]"
    # at a lower level the interval narrows: 65 of 500 leaks at 80%, not at 99%
    row = probe_rows({("gradient", "roar", 0.1): 65})[0]
    assert leaks(row, 0.8) and not leaks(row, 0.99)
    section = "\n".join(leakage_section(probe_rows()))
    assert f"| `gradient` | 0.120 [0.093, 0.152] | {binomial_interval(200, 500).format(3)} **leaks** | " in section
    assert section.count("**leaks**") == 2 + 1  # two cells, and the sentence that explains the mark
    # random is the table's last row: the reference the others are read against
    roar_table = section.split("**ROAR masks**")[1].split("**KAR masks**")[0]
    assert roar_table.index("`gradient`") < roar_table.index("`random`")


def test_caveat_names_a_leaking_method_and_never_random_at_chance():
    [caveat] = leakage_caveats(probe_rows())
    assert "ROAR masks of `gradient` leak at threshold 0.5, 0.9 (probe accuracy up to 0.400, chance 0.100" in caveat
    assert "while `random`'s do not" in caveat
    # random's masks leaking too: that threshold is no evidence against gradient, and random gets its own warning
    correct = {**CORRECT, ("random", "roar", 0.9): 100}
    caveats = leakage_caveats(probe_rows(correct))
    assert len(caveats) == 2 and "`random` ROAR masks leak at threshold 0.9" in caveats[0]
    assert "`gradient` leak at threshold 0.5 (probe accuracy up to 0.400" in caveats[1]
    # nothing leaks: nothing to say
    assert leakage_caveats(probe_rows({k: 50 for k in CORRECT})) == []


def test_rows_written_before_n_test_still_load(tmp_path):
    path = tmp_path / LEAKAGE_CSV
    _write(probe_rows(), path, columns=[c for c in COLUMNS if c != "n_test"])  # the file of an earlier version
    rows = read_rows(path)
    assert "n_test" not in rows[0] and all(leaks(r) is None for r in rows)
    section = "\n".join(leakage_section(rows))
    assert "| `gradient` | 0.120 [–] | 0.400 [–] | 0.300 [–] |" in section and "0.400 [–] **leaks**" not in section
    assert leakage_caveats(rows) == []  # no interval, no claim
    assert _is_png(plot_leakage(rows, tmp_path / "old.png"))


def test_report_embeds_the_section_once_after_the_kar_curves(tmp_path):
    store = _store_with(tmp_path, fake_rows())
    # no leakage.csv: no section, no figure
    plain = write_report(tmp_path, store, print_table=False)
    assert "leakage" not in plain and LEAKAGE_TITLE not in plain["report"].read_text()
    _write(probe_rows(), tmp_path / LEAKAGE_CSV)
    for _ in range(2):  # the report is rebuilt, as `python -m roar report` does: the section is not appended twice
        paths = write_report(tmp_path, store, print_table=False, title="ROAR on digits")
    report = paths["report"].read_text()
    assert report.count(LEAKAGE_TITLE) == 1 and report.count("![mask leakage](leakage.png)") == 1
    assert report.index(MODE_TITLE["kar"]) < report.index(LEAKAGE_TITLE) < report.index(MODE_TITLE["noretrain"])
    assert report.index("![kar curves](kar.png)") < report.index(LEAKAGE_TITLE)
    warnings = report.split("## Warnings")[1].split("\n## ")[0]
    assert "ROAR masks of `gradient` leak at threshold 0.5, 0.9" in warnings and "`random` ROAR masks leak" not in warnings
    # leakage.png: two panels (ROAR and KAR), so wider than a one-order figure
    assert paths["leakage"] == tmp_path / "leakage.png"
    both = _is_png(paths["leakage"])
    one = _is_png(plot_leakage([r for r in probe_rows() if r["order"] == "roar"], tmp_path / "roar_only.png"))
    assert both[0] > 1.5 * one[0] and both[1] == one[1]


def test_wandb_summary_carries_the_probes_and_the_figure(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _write(probe_rows(), tmp_path / LEAKAGE_CSV)
    plot_leakage(probe_rows(), tmp_path / "leakage.png")
    run_dir = log_summary_to_wandb(tmp_path, summarize(fake_rows()), group="digits-test", config={}, mode="offline")
    media = run_dir / "files" / "media"
    [table] = (media / "table").glob("leakage_*.table.json")
    logged = json.loads(table.read_text())
    assert logged["columns"] == list(COLUMNS) and len(logged["data"]) == len(CORRECT)
    assert list((media / "images" / "figures").glob("leakage_*.png"))


def test_caveat_of_kar_masks_speaks_of_the_features_kept():
    # KAR's masks keep the top features; the order's curves are KAR's and, in a ROAD grid, noretrain_kar's (LeRF)
    [caveat] = leakage_caveats(probe_rows({**CORRECT, ("gradient", "roar", 0.5): 50, ("gradient", "roar", 0.9): 50, ("gradient", "kar", 0.5): 200}))
    assert "KAR masks of `gradient` leak at threshold 0.5" in caveat
    assert "its KAR-order curves measure the mask's shape as well as the features kept" in caveat and "removed" not in caveat
