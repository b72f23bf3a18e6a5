"""``python -m roar {benchmark,sanity,attribute,report}``: the commands beside ``train.py``.

Each command lives in its own module and is imported only when asked for, so ``--help`` is quick.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "benchmark": ("roar.benchmark.commands", "benchmark_main", "run the ROAR/KAR grid: base model, ranks, retrains, report"),
    "attribute": ("roar.benchmark.commands", "attribute_main", "compute (or reuse) every method's ranks of every train/test image"),
    "report": ("roar.benchmark.commands", "report_main", "rewrite results.csv, summary.csv, curves and report.md from results.db"),
    "sanity": ("roar.sanity.report", "main", "model/data randomisation sanity checks (Adebayo et al. 2018) with a report"),
}


def usage() -> str:
    lines = ["usage: python -m roar <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}; valid commands: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[command]
    from roar.quiet import wide_tables_in_logs

    wide_tables_in_logs()  # a report's tables in a log file are not cut at 80 columns
    result = getattr(importlib.import_module(module), function)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
