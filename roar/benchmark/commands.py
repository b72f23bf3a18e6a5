"""``python -m roar benchmark|attribute|report``: parse a benchmark config and run it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from roar.benchmark.config import BenchmarkConfig


def _parser(prog: str, description: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"python -m roar {prog}", description=description, exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="a benchmark config, e.g. configs/benchmark/digits_demo.yaml")
    parser.add_class_arguments(BenchmarkConfig, nested_key=None, as_group=False)
    parser.add_argument("--out", type=str, default=None, help="output folder (default: runs/<name>)")
    return parser


def _config(parser: ArgumentParser, argv: list[str]) -> tuple[BenchmarkConfig, Path, object]:
    args = parser.parse_args(argv)
    init = parser.instantiate_classes(args)
    fields = {k: init[k] for k in BenchmarkConfig.__dataclass_fields__}
    cfg = BenchmarkConfig(**fields)
    try:
        cfg.validate()
    except ValueError as err:
        parser.error(str(err))
    out = Path(args.out or Path("runs") / cfg.name)
    return cfg, out, args


def _add_launch_arguments(parser: ArgumentParser) -> None:
    """Where the runs go: this process, ``--workers N`` local processes, or a Ray cluster (docs/scale.md)."""
    from roar.benchmark.launchers import LaunchOptions

    default = LaunchOptions()
    group = parser.add_argument_group("scale", "run the grid in parallel (docs/scale.md)")
    group.add_argument("--launcher", type=Literal["local", "ray"], default=default.launcher,
                       help="local: this machine (--workers processes); ray: one Ray task per run on a Ray cluster")  # fmt: skip
    group.add_argument("--workers", type=int, default=default.workers,
                       help="local worker processes, each pinned to one CUDA device (round robin) or cores/N CPU threads; 1 runs in this process")  # fmt: skip
    group.add_argument("--worker_retries", "--worker-retries", type=int, default=default.worker_retries,
                       help="reruns of a run whose worker process died (OOM kill, preemption) before it is recorded as failed")  # fmt: skip
    group.add_argument("--ray_address", "--ray-address", type=Optional[str], default=default.ray_address,
                       help="Ray cluster: auto (started by `ray start` here), ray://host:10001, local (new instance); default: RAY_ADDRESS or a running local cluster")  # fmt: skip
    group.add_argument("--ray_cpus_per_task", "--ray-cpus-per-task", type=float, default=default.ray_cpus_per_task,
                       help="CPUs (and torch threads) reserved by each run's Ray task")  # fmt: skip
    group.add_argument("--ray_gpus_per_task", "--ray-gpus-per-task", type=Optional[float], default=default.ray_gpus_per_task,
                       help="GPUs reserved by each run's Ray task (default: 1 when trainer.accelerator is gpu/cuda, or auto on a GPU cluster)")  # fmt: skip


def _launch_options(args: object):
    from roar.benchmark.launchers import LaunchOptions

    return LaunchOptions(
        launcher=args.launcher, workers=args.workers, worker_retries=args.worker_retries, ray_address=args.ray_address,
        ray_cpus_per_task=args.ray_cpus_per_task, ray_gpus_per_task=args.ray_gpus_per_task,
    )  # fmt: skip


def benchmark_main(argv: list[str]) -> int:
    from roar.benchmark.runner import run_benchmark

    parser = _parser("benchmark", "Run the ROAR/KAR benchmark (Hooker et al., NeurIPS 2019): base model, ranks, retrains, report. "
                     "Running it again resumes: finished runs are skipped.")  # fmt: skip
    parser.add_argument("--force", type=bool, default=False, help="rerun every cell even if results.db has it")
    parser.add_argument("--progress", type=bool, default=True, help="progress bars")
    _add_launch_arguments(parser)
    cfg, out, args = _config(parser, argv)
    try:
        launch = _launch_options(args).validate()
    except (ValueError, ImportError) as err:  # e.g. --launcher ray without Ray: say how to install it
        parser.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    parser.save(args, out / "benchmark.yaml", overwrite=True, skip_check=True)
    try:
        run_benchmark(cfg, out, force=args.force, progress=args.progress, launch=launch)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are saved in {out / 'results.db'}; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def attribute_main(argv: list[str]) -> int:
    from roar.benchmark.runner import BASE_CHECKPOINT, prepare_ranks

    parser = _parser("attribute", "Rank every feature of every train/test image with each method, into the attribution store. "
                     "Entries with the same checkpoint, method, parameters and data are reused.")  # fmt: skip
    parser.add_argument("--ckpt", type=str, default=None, help=f"the base checkpoint (default: <out>/{BASE_CHECKPOINT})")
    parser.add_argument("--progress", type=bool, default=True)
    # `--methods a,b,c` as well as the list syntax
    argv = [a for arg in argv for a in ([arg] if not arg.startswith("--methods=") else ["--methods", arg.split("=", 1)[1]])]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--methods" and "," in argv[i + 1] and not argv[i + 1].startswith("["):
            argv[i + 1] = "[" + argv[i + 1] + "]"
    cfg, out, args = _config(parser, argv)
    ckpt = Path(args.ckpt) if args.ckpt else out / BASE_CHECKPOINT
    if not ckpt.is_file():
        parser.error(f"checkpoint not found: {ckpt} (train one with `python -m roar benchmark` or `python train.py fit`, or pass --ckpt)")
    prepare_ranks(cfg, out, ckpt, progress=args.progress)
    print(f"ranks of {', '.join(cfg.methods)} are in {out / 'attributions'}")
    return 0


def report_main(argv: list[str]) -> int:
    from roar.benchmark.results import ResultsStore
    from roar.benchmark.runner import write_benchmark_report

    parser = _parser("report", "Rewrite results.csv, summary.csv, the curves and report.md from <out>/results.db.")
    cfg, out, _ = _config(parser, argv)
    db = out / "results.db"
    if not db.is_file():
        parser.error(f"no results database at {db}; run `python -m roar benchmark` first")
    write_benchmark_report(cfg, out, ResultsStore(db))
    return 0
