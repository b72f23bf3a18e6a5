"""``python -m roar benchmark|attribute|report``: parse a benchmark config and run it."""

from __future__ import annotations

import sys
from pathlib import Path

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


def benchmark_main(argv: list[str]) -> int:
    from roar.benchmark.runner import run_benchmark

    parser = _parser("benchmark", "Run the ROAR/KAR benchmark (Hooker et al., NeurIPS 2019): base model, ranks, retrains, report. "
                     "Running it again resumes: finished runs are skipped.")  # fmt: skip
    parser.add_argument("--force", type=bool, default=False, help="rerun every cell even if results.db has it")
    parser.add_argument("--progress", type=bool, default=True, help="progress bars")
    cfg, out, args = _config(parser, argv)
    out.mkdir(parents=True, exist_ok=True)
    parser.save(args, out / "benchmark.yaml", overwrite=True, skip_check=True)
    try:
        run_benchmark(cfg, out, force=args.force, progress=args.progress)
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
