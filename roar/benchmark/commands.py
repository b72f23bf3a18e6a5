"""``python -m roar benchmark|attribute|report``: parse a benchmark config and run it.

One config system (README, "Configs"): a benchmark config is a ``train.py fit`` config, with the
same ``data:``, ``model:`` and ``trainer:`` sections, plus a ``benchmark:`` section (methods,
thresholds, seeds, modes, protocol...). So a fit config and a grid compose::

    python -m roar benchmark --config configs/digits.yaml --config configs/benchmark/grid.yaml

Every section is typed by the class it configures (the datamodule, :class:`ImageClassifier`,
``lightning.Trainer``, :class:`BenchmarkConfig`), so a misspelled key anywhere is refused at parse
time, with the valid keys listed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

from jsonargparse import Namespace

from roar.benchmark.config import BenchmarkConfig
from roar.fit_config import FIT_SECTIONS, ConfigParser, add_fit_sections, fit_sections, plain
from roar.out_folder import out_folder_problem


def _parser(prog: str, description: str) -> ConfigParser:
    parser = ConfigParser(prog=f"python -m roar {prog}", description=description, exit_on_error=True, allow_abbrev=False)
    add_fit_sections(parser)
    parser.add_class_arguments(BenchmarkConfig, "benchmark", skip=set(FIT_SECTIONS))
    parser.add_argument("--out", type=Optional[str], default=None, help="output folder (default: runs/<benchmark.name>)")
    return parser


def _config(parser: ConfigParser, argv: list[str], writes_out: bool = True) -> tuple[BenchmarkConfig, Path, Namespace]:
    args = parser.parse_args(argv)
    try:
        cfg = BenchmarkConfig.from_dict({**plain(args.benchmark), **fit_sections(parser, args)})
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out or Path("runs") / cfg.name)
    if writes_out and (problem := out_folder_problem(out)):
        parser.error(problem)
    return cfg, out, args


def _add_launch_arguments(parser: ConfigParser) -> None:
    """Where the runs go: this process, ``--workers N`` local processes, or a Ray cluster (docs/scale.md)."""
    from roar.benchmark.launchers import LaunchOptions

    default = LaunchOptions()
    group = parser.add_argument_group("scale", "run the grid in parallel (docs/scale.md)")
    group.add_argument("--launcher", type=Literal["local", "ray"], default=default.launcher,
                       help="local: this machine (--workers processes); ray: one Ray task per run (or stack) on a Ray cluster")  # fmt: skip
    group.add_argument("--workers", type=Union[int, Literal["auto"]], default=default.workers,
                       help="local worker processes, each pinned to one CUDA device (round robin) or cores/N CPU threads; 1 runs in this process; "
                            "auto: from the cores and the model's size (one thread per small model)")  # fmt: skip
    group.add_argument("--worker_retries", "--worker-retries", type=int, default=default.worker_retries,
                       help="reruns of a run whose worker process died (OOM kill, preemption) before it is recorded as failed")  # fmt: skip
    group.add_argument("--ray_address", "--ray-address", type=Optional[str], default=default.ray_address,
                       help="Ray cluster: auto (started by `ray start` here), ray://host:10001, local (new instance); default: RAY_ADDRESS or a running local cluster")  # fmt: skip
    group.add_argument("--ray_cpus_per_task", "--ray-cpus-per-task", type=float, default=default.ray_cpus_per_task,
                       help="CPUs (and torch threads) reserved by each Ray task (a run, or a stack)")  # fmt: skip
    group.add_argument("--ray_gpus_per_task", "--ray-gpus-per-task", type=Optional[float], default=default.ray_gpus_per_task,
                       help="GPUs reserved by each Ray task (a run, or a stack; default: 1 when trainer.accelerator is gpu/cuda, or auto on a GPU cluster)")  # fmt: skip


def _launch_options(args: object):
    from roar.benchmark.launchers import LaunchOptions

    return LaunchOptions(
        launcher=args.launcher, workers=args.workers, worker_retries=args.worker_retries, ray_address=args.ray_address,
        ray_cpus_per_task=args.ray_cpus_per_task, ray_gpus_per_task=args.ray_gpus_per_task,
    )  # fmt: skip


def _fail(message: object) -> int:
    from roar.quiet import error_line

    print(f"error: {error_line(message) if isinstance(message, BaseException) else message}", file=sys.stderr)
    return 2


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one message, not a traceback."""
    from roar.attribution.store import StoreError
    from roar.benchmark.lock import FolderBusyError
    from roar.benchmark.provenance import ConfigChangedError
    from roar.benchmark.prepare import BaseModelError
    from roar.models.checkpoint import CheckpointError

    # ValueError covers the checks that need the data (e.g. two thresholds masking the same features)
    return ConfigChangedError, CheckpointError, FolderBusyError, BaseModelError, StoreError, FileNotFoundError, ValueError


def _is_ctrl_c(err: BaseException) -> bool:
    """Ctrl-C, also when Lightning caught it: a Trainer turns a KeyboardInterrupt in ``fit``/``test``
    into ``sys.exit(1)``, which would end the grid silently with status 1 instead of saying how to resume."""
    return isinstance(err, KeyboardInterrupt) or (isinstance(err, SystemExit) and isinstance(err.__context__, KeyboardInterrupt))


LIST_ARGUMENTS = ("benchmark.methods", "benchmark.thresholds", "benchmark.modes")
"""Lists a user types as ``a,b`` (``--benchmark.thresholds 0.3,0.6``): jsonargparse takes only ``[a, b]``."""


def _list_arguments(argv: list[str], names: tuple[str, ...] = LIST_ARGUMENTS, parser: Any = None) -> list[str]:
    """``--name a``, ``--name a,b`` and ``--name=a,b`` as the list syntax ``--name [a, b]``; with ``parser``,
    a value YAML cannot read is refused through it, naming YAML's complaint."""
    for name in names:
        argv = [a for arg in argv for a in ([arg] if not arg.startswith(f"--{name}=") else [f"--{name}", arg.split("=", 1)[1]])]
        for i, arg in enumerate(argv[:-1]):
            if arg == f"--{name}" and not argv[i + 1].lstrip().startswith("["):
                argv[i + 1] = "[" + argv[i + 1] + "]"
            if arg == f"--{name}":
                argv[i + 1] = _entries_as_strings(argv[i + 1], name, parser)
    return argv


def _entries_as_strings(value: str, name: str = "", parser: Any = None) -> str:
    """``[@blur]`` (a YAML reserved character first) as the list of strings the user meant, ``["@blur"]``.

    YAML refuses it, and jsonargparse then said "expected list" of the whole value; read as strings,
    the entry reaches :func:`~roar.benchmark.plan.parse_modes`, which names it and the valid choices.
    """
    import json

    import yaml

    try:
        yaml.safe_load(value)
        return value
    except yaml.YAMLError as err:
        inner = value.strip()
        inner = inner[1:-1] if inner.startswith("[") and inner.endswith("]") else inner
        if any(c in inner for c in "{}[]"):  # a mapping or a nested list is YAML gone wrong, not plain names
            mark = getattr(err, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None else ""
            if parser is not None:  # jsonargparse's own message would be "expected list"
                parser.error(f"--{name} {value!r}: not valid YAML ({getattr(err, 'problem', None) or err}{where})")
            return value
        return json.dumps([entry.strip().strip("'\"") for entry in inner.split(",")])


def benchmark_main(argv: list[str]) -> int:
    from roar.benchmark.runner import failed_runs, run_benchmark

    parser = _parser("benchmark", "Run the ROAR/KAR benchmark (Hooker et al., NeurIPS 2019): base model, ranks, retrains, report. "
                     "Running it again resumes: finished runs with the same fingerprint are skipped; a changed config is refused.")  # fmt: skip
    parser.add_argument("--force", type=bool, default=False,
                        help="discard the results (and a base model) of other settings in --out and run the grid afresh")  # fmt: skip
    parser.add_argument("--allow_failures", "--allow-failures", type=bool, default=False,
                        help="exit 0 even when runs failed (they are listed and recorded either way)")  # fmt: skip
    parser.add_argument("--progress", type=bool, default=True, help="the grid's progress bar and one line per finished run")
    parser.add_argument("--verbose", type=bool, default=False, help="also each run's progress bars and Lightning's banners and logs")
    _add_launch_arguments(parser)
    cfg, out, args = _config(parser, _list_arguments(argv, parser=parser))
    try:
        launch = _launch_options(args).validate()
    except ImportError as err:  # --launcher ray without Ray: no bad argument, so one line with the install command, no usage
        return _fail(err)
    except ValueError as err:
        parser.error(str(err))
    config_yaml = parser.dump(args, skip_check=True, skip_none=False)
    try:
        results = run_benchmark(cfg, out, force=args.force, progress=args.progress, verbose=args.verbose, launch=launch, config_yaml=config_yaml)
    except (KeyboardInterrupt, SystemExit) as err:
        if not _is_ctrl_c(err):
            raise
        print(f"\ninterrupted: finished runs are saved in {out / 'results.db'}; run the same command again to resume", file=sys.stderr)
        return 130
    except _expected_errors() as err:
        return _fail(err)
    failed = failed_runs(cfg, results)
    if failed:
        print(f"{len(failed)} run(s) failed (errors in {out / 'results.csv'} and report.md):", file=sys.stderr)
        for row in failed:
            last = (row.get("error") or "").strip().splitlines()
            print(f"  {row['run_id']}: {last[-1] if last else 'no error recorded'}", file=sys.stderr)
        if not args.allow_failures:
            print("rerun the same command to retry them; --allow_failures true exits 0 regardless", file=sys.stderr)
            return 1
    return 0


def attribute_main(argv: list[str]) -> int:
    from roar.benchmark.lock import FolderLock
    from roar.benchmark.prepare import BASE_CHECKPOINT, prepare_ranks
    from roar.quiet import quiet_third_party, say

    parser = _parser("attribute", "Rank every feature of every train/test image with each method, into the attribution store. "
                     "Entries with the same checkpoint, method, resolved parameters and data are reused.")  # fmt: skip
    parser.add_argument("--ckpt", type=str, default=None, help=f"the base checkpoint (default: <out>/{BASE_CHECKPOINT})")
    parser.add_argument("--progress", type=bool, default=True, help="progress bars (in a terminal) and one line per method")
    parser.add_argument("--verbose", type=bool, default=False, help="also Lightning's and other libraries' banners and warnings")
    cfg, out, args = _config(parser, _list_arguments(argv, parser=parser))
    ckpt = Path(args.ckpt) if args.ckpt else out / BASE_CHECKPOINT
    if not ckpt.is_file():
        parser.error(f"checkpoint not found: {ckpt} (train one with `python -m roar benchmark` or `python train.py fit`, or pass --ckpt)")
    try:
        with FolderLock(out, "attribute"), quiet_third_party(args.verbose):
            keys = prepare_ranks(cfg, out, ckpt, progress=args.progress, say=say if args.progress else None)
    except _expected_errors() as err:
        return _fail(err)
    stored = [method for method in cfg.methods if "fresh" not in keys[method]]  # random_mask fresh stores nothing
    fresh = "; random: drawn afresh at every read (random_mask fresh), nothing stored" if len(stored) < len(cfg.methods) else ""
    print(f"ranks of {', '.join(stored)} are in {out / 'attributions'}{fresh}" if stored else fresh[2:])
    return 0


def _recorded_config(rows: list[dict[str, Any]]) -> str | None:
    """The config the latest of ``rows`` (those of results.db) recorded, as a ``--config`` for a report of them.

    Without it, a report rebuilt from the folder alone (``python -m roar report --out DIR``) would
    title, describe and log the results under the default config's name, methods and protocol.
    """
    import json

    rows = [row for row in rows if isinstance(row.get("config"), dict) and "benchmark" in row["config"]]
    if not rows:
        return None
    benchmark = dict(max(rows, key=lambda row: str(row.get("finished_at") or ""))["config"]["benchmark"])
    data, model, trainer = (benchmark.pop(section, None) or {} for section in FIT_SECTIONS)
    # a report trains nothing: the grid's own callbacks and loggers need not import here (and are in no fingerprint)
    trainer = {k: v for k, v in trainer.items() if k not in ("callbacks", "logger")}
    if "class_path" not in data:  # recorded as ImageDataModule arguments
        data = {"class_path": "roar.data.ImageDataModule", "init_args": data}
    return json.dumps({"data": data, "model": model, "trainer": trainer, "benchmark": benchmark})


def _recorded_rows(db: Path) -> list[dict[str, Any]] | str:
    """The rows of ``db``, or why it has nothing to report (not a results database, or no run recorded yet)."""
    import sqlite3

    from roar.benchmark.results import ResultsStore

    try:
        rows = ResultsStore(db, read_only=True).rows()
    except sqlite3.DatabaseError as err:
        return f"{db} is not a roar results database ({err})"
    except ValueError as err:  # a database of another schema (an empty file reads as version 0)
        return str(err)
    return rows or f"{db} records no run yet: nothing to report; run (or resume) `python -m roar benchmark` with this --out"


def report_main(argv: list[str]) -> int:
    import os
    import shutil

    from roar.benchmark.leakage_report import LEAKAGE_CSV
    from roar.benchmark.leakage_report import discard as discard_leakage
    from roar.benchmark.results import ResultsStore
    from roar.benchmark.runner import write_benchmark_report
    from roar.benchmark.wandb_runs import wandb_service
    from roar.quiet import quiet_third_party

    parser = _parser("report", "Rewrite results.csv, summary.csv, the curves and report.md from <out>/results.db.")
    parser.add_argument("--report_dir", "--report-dir", type=Optional[str], default=None,
                        help="where the report files go (default: --out); results.db is only read, so an archived, read-only --out works")  # fmt: skip
    argv = _list_arguments(argv, parser=parser)
    cfg, out, args = _config(parser, argv, writes_out=False)  # only read: an archived, read-only --out is fine
    db = out / "results.db"
    if not db.is_file():
        parser.error(f"no results database at {db}; run `python -m roar benchmark` first")
    report_dir = Path(args.report_dir) if args.report_dir else out
    if report_dir.exists() and not os.access(report_dir, os.W_OK):
        parser.error(f"{report_dir} is not writable (an archived folder?); write the report elsewhere with --report_dir DIR")
    if problem := out_folder_problem(report_dir, "--report_dir" if args.report_dir else "--out"):
        parser.error(problem)
    rows = _recorded_rows(db)
    if isinstance(rows, str):
        return _fail(rows)
    recorded = None if args.config else _recorded_config(rows)
    if recorded is not None:  # the grid's own name, methods and protocol; options given here still apply on top
        cfg, out, args = _config(parser, ["--config", recorded, *argv], writes_out=False)
    if report_dir.resolve() != out.resolve():
        if (report_dir / "results.db").exists():  # its results.csv, summary, report.md and probes would become these results'
            parser.error(f"--report_dir {report_dir} is a benchmark's output folder (it has results.db); write the report of {out} elsewhere")
        # the report's leakage section reads report_dir/leakage.csv: this folder's probes, else none (an earlier report's would pass as these)
        if (out / LEAKAGE_CSV).is_file():
            report_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / LEAKAGE_CSV, report_dir / LEAKAGE_CSV)
        else:
            discard_leakage(report_dir)
    try:
        with quiet_third_party(), wandb_service(cfg.logger == "wandb"):  # the summary run without W&B's banners, as after a grid
            write_benchmark_report(cfg, report_dir, ResultsStore(db, read_only=True))
    except ValueError as err:  # e.g. results of two configurations
        return _fail(err)
    return 0
