"""``python -m benchmarks.run``: measure the figures of issue 7 and write ``benchmarks/results.json``.

Examples::

    python -m benchmarks.run                       # every figure, default sizes (figures 1-6 alone ~5 min on 2 CPU cores)
    python -m benchmarks.run --quick               # tiny sizes (~3.5 min)
    python -m benchmarks.run --figures 1,4         # attribution cost and store only
    python -m benchmarks.run --grid                # also time the digits demo grid (~5 min more)
    python -m benchmarks.run --set store.n=20000 --set attribution.n_steps=16
    python -m benchmarks.run --device cuda --threads 8 --clock wall

Figures: 1 ``attribution`` (method cost against its floor), 2 ``masked`` (ROAR training
against unmasked), 3 ``overhead`` (Lightning against a plain loop), 4 ``store`` (rank store
throughput and peak memory), 5 ``sanity`` (sanity callbacks' share of an epoch), 6 ``grid``
(digits demo wall time, CIFAR-10 ResNet50 epoch extrapolated), 7 ``mprt`` (the cascade against
Quantus's MPRT), 8 ``road`` (ROAD imputation against a ResNet50 forward pass and Quantus), 9 ``stacked``
(N cells as one stacked model against one by one), 10 ``per_run`` (a grid cell's fixed cost
against a digits-demo run), 11 ``gpu`` (a CIFAR-10 ResNet50 retrain's images/s and MFU on the device, the
paper's grid in GPU-hours; bf16, channels-last and compile side by side). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import CLOCKS, Settings, describe_device, markdown_table, resolve_device
from benchmarks.options import FIGURES, figure_config, parse_figures

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results.json"

PRESETS = ("smoke", "quick", "full")
DEFAULT_REPEATS = {"smoke": 1, "quick": 2, "full": 3}


def _positive(text: str) -> int:
    """--threads and --repeats: 0 used to mean the default silently, and a negative --repeats measured nothing."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--figures", default="all", help="comma-separated figure numbers or names (default: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, a few minutes for every figure")
    size.add_argument("--smoke", action="store_true", help="the tiniest sizes, for the test suite: checks it runs; numbers meaningless")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where models and batches live (default: auto)")
    p.add_argument(
        "--threads", type=_positive, default=None,
        help="torch.set_num_threads for every measurement (default: 1 on CPU, where threads of a shared machine "
        "waiting on each other make timings erratic; torch's default on CUDA)",
    )  # fmt: skip
    p.add_argument("--repeats", type=_positive, default=None, help="interleaved repeats per measurement; the median is reported (default: 3, quick 2, smoke 1)")
    p.add_argument("--clock", choices=CLOCKS, default=None, help="clock the ratios are judged on (default: cpu on CPU, wall on CUDA); both are recorded")
    p.add_argument("--grid", action="store_true", help="figure 6 also runs the digits demo grid (minutes; about 5 on 2 CPU cores with 1 thread)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIGURE.FIELD=VALUE", help="override a size, e.g. store.n=20000")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results JSON (default: {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown to this file")
    p.add_argument("--merge", action="store_true", help="keep the other figures already in --out (each figure records its own date)")
    p.add_argument("--workdir", default=None, help="folder for temporary files (default: a fresh temporary folder, removed after)")
    return p


def _version(package: str) -> str:
    """A package's version, or "not installed" (a GPU machine's image may lack captum: figure 11 needs none)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _meta(settings: Settings, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    import lightning

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(settings.device),
        "device_name": describe_device(settings.device),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "captum": _version("captum"),
        "threads": settings.threads,
        "repeats": settings.repeats,
        "clock": settings.clock,
        "preset": settings.preset,
        "grid": args.grid,
        "overrides": args.overrides,
        "argv": argv,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def render(results: dict[str, Any]) -> str:
    """All figures as markdown: a heading, the target and verdict, the table."""
    meta = results["meta"]
    lines = [
        f"Measured {meta['date']} on {meta['device_name']} (device {meta['device']}), torch {meta['torch']}, "
        f"lightning {meta['lightning']}, captum {meta['captum']}; {meta['threads']} thread(s), median of {meta['repeats']} "
        f"interleaved repeats, ratios on the {meta['clock']} clock; preset {meta['preset']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in meta.get('load_average_at_start') or [])}.",
        "",
    ]
    for name, fig in results["figures"].items():
        number = FIGURES[name][0]
        verdict = {True: "met", False: "NOT met", None: "-"}[fig.get("meets_target")]
        lines += [f"### Figure {number}: {fig['title']}", ""]
        if fig.get("status"):
            lines += [f"Status: {fig['status']}", ""]
        lines += [f"Target: {fig.get('target', '-')}. Verdict: **{verdict}**.", ""]
        measured = fig.get("measured")
        if measured and measured.get("date") != meta["date"]:
            lines += [f"(Measured {measured['date']}, preset {measured['preset']}, {measured['threads']} thread(s).)", ""]
        if fig.get("rows"):
            lines += [markdown_table(fig["rows"], fig["columns"]), ""]
        if fig.get("config"):
            lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in fig["config"].items() if k != "models"), ""]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and value != value:
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        figures = parse_figures(args.figures)
        preset = "smoke" if args.smoke else "quick" if args.quick else "full"
        # Every override is checked, including those for figures not run this time.
        named = {item.partition("=")[0].partition(".")[0] for item in args.overrides}
        configs = {name: figure_config(name, preset, args.overrides) for name in sorted(set(figures) | (named & set(FIGURES)))}
        for item in args.overrides:
            figure_config(next(iter(FIGURES)), preset, [item])  # unknown figure names and malformed items
        device = resolve_device(args.device)
    except ValueError as err:
        parser().error(str(err))
    threads = args.threads or (1 if device.type == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    repeats = args.repeats or DEFAULT_REPEATS[preset]
    clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.markdown:  # as for --out: a missing folder must not crash the command after minutes of measuring
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="roar-bench-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        settings = Settings(device=device, threads=threads, repeats=repeats, preset=preset, workdir=workdir, clock=clock)
        results: dict[str, Any] = {"meta": _meta(settings, args, argv), "figures": {}}
        if args.merge and out.is_file():
            previous = json.loads(out.read_text()).get("figures", {})
            results["figures"] = {name: previous[name] for name in FIGURES if name in previous and name not in figures}
        for name in figures:
            number, module_name = FIGURES[name]
            print(f"figure {number} ({name})...", file=sys.stderr, flush=True)
            fig_start = time.perf_counter()
            kwargs = {"grid": args.grid} if name == "grid" else {}
            try:
                figure = importlib.import_module(module_name).run(settings, configs[name], **kwargs)
            except (Exception, SystemExit) as err:  # noqa: BLE001 - one broken figure (a package missing on a GPU image) must not cost the others
                # SystemExit: a figure that parses a roar command's options in-process (figure 10) exits on a bad --set value
                if isinstance(err, SystemExit):
                    message = f"SystemExit {err.code}: the error printed above"
                else:
                    traceback.print_exc()
                    message = f"{type(err).__name__}: {err}".splitlines()[0]
                print(f"figure {number} ({name}) FAILED: {message}", file=sys.stderr, flush=True)
                results["meta"].setdefault("failed", {})[name] = message  # with --merge an earlier result of it is kept
                continue
            figure["seconds"] = time.perf_counter() - fig_start
            figure["measured"] = {key: results["meta"][key] for key in ("date", "device", "threads", "repeats", "clock", "preset", "load_average_at_start")}
            results["figures"][name] = figure
            results["figures"] = {n: results["figures"][n] for n in FIGURES if n in results["figures"]}
            print(render({"meta": results["meta"], "figures": {name: figure}}).split("\n", 2)[2], flush=True)
            results["meta"]["total_seconds"] = time.perf_counter() - started
            out.write_text(json.dumps(_jsonable(results), indent=1))  # after every figure: a crash keeps the rest
    results["meta"]["total_seconds"] = time.perf_counter() - started
    results["meta"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out.write_text(json.dumps(_jsonable(results), indent=1))
    if args.markdown:
        Path(args.markdown).write_text(render(results) + "\n")
    failed = results["meta"].get("failed", {})
    print(f"wrote {out} ({results['meta']['total_seconds']:.0f} s)" + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
