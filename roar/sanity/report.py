"""``python -m roar sanity``: the sanity checks of Adebayo et al. (NeurIPS 2018) as a report.

::

    python -m roar sanity --config configs/sanity/digits.yaml --out runs/sanity

1. Trains (or reuses) a model on the true labels and one on randomly permuted labels, with a
   Lightning Trainer (CSV logs under ``<out>/logs``, checkpoints ``<out>/model.ckpt`` and
   ``<out>/permuted.ckpt``; a checkpoint is reused only if it was trained with the same
   settings, recorded beside it in a ``.json`` file).
2. Explains a fixed, seeded batch of images with every method, then runs the model-randomisation
   checks (``cascading`` and ``independent`` from Adebayo et al. 2018, ``bottom_up`` from Binder
   et al., arXiv 2211.12486, 2022) and the data-randomisation check.
3. Writes ``sanity.csv`` (method, check, step, layer, metric, mean, std, n, and the percentile
   bootstrap interval over images ``ci_low``, ``ci_high``: :mod:`roar.sanity.intervals`), one plot per check
   and metric (``curve_<check>_<metric>.png``: similarity against the randomised layer, one line
   per method, the ``noise`` control dashed), and per method the cascading-randomisation grid
   (``grid_cascading_<method>.png``: rows are images; columns the input, the original map, then
   the map after each randomised layer), like Figure 2 of the paper.
4. Prints a table per method of the similarity after full randomisation, beside the ``noise``
   control, and why a low similarity is necessary but not sufficient.

Protocol (see :mod:`roar.sanity.maps`): the explained class is the true-label model's predicted
class, fixed across all steps and used for the permuted-label model too; maps are compared as
the paper does by :mod:`roar.sanity.similarity`.

The settings live in :mod:`roar.sanity.report_config`, the two models' training in
:mod:`roar.sanity.trained_models`, the csv, curves and tables in :mod:`roar.sanity.report_outputs`;
their public names are re-exported here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roar.sanity.intervals import interval_rows
from roar.sanity.maps import CheckResult, data_randomization, fixed_target, map_grid_figure, model_randomization, select_batch
from roar.sanity.report_config import DEFAULT_REPORT_METHODS, DEVICES, SanityReportConfig  # noqa: F401  (importable from here before the split)
from roar.sanity.report_outputs import CSV_COLUMNS, how_to_read, plot_curve, print_tables, read_csv, write_csv  # noqa: F401  (as above)
from roar.sanity.revisited import EMPRT, SMPRT, efficient_mprt, print_emprt_table
from roar.sanity.trained_models import (  # noqa: F401  (the constants, check_compatible, train_model: importable from here before the split)
    IGNORED_TRAINER_KEYS, LINKED, MODEL_CHECKPOINT, PERMUTED_CHECKPOINT, _check_methods_fit_the_model, _datamodule, accuracy, check_compatible,
    obtain_model, train_model,
)  # fmt: skip


def preflight(cfg: SanityReportConfig):
    """Every check that needs no training: the settings, the data, the methods on the architecture.

    Returns:
        The true-label datamodule.

    Raises:
        ValueError, FileNotFoundError: bad settings, naming the value and the valid choices.
    """
    from roar.models.checkpoint import load_classifier

    cfg.validate()
    datamodule = _datamodule(cfg, permuted=False)
    available = len(datamodule.split_dataset(cfg.split))
    if available == 0:  # "use at most 0" named no way out
        raise ValueError(f"the {cfg.split} split is empty (data.val_fraction {cfg.data.get('val_fraction', 0.1)}); "
                         f"use sanity.split test or a data.val_fraction in (0, 1)")
    if cfg.num_images > available:
        raise ValueError(f"num_images={cfg.num_images} but the {cfg.split} split has {available} images; use at most {available}")
    for given in (cfg.checkpoint, cfg.permuted_checkpoint):
        if given is not None:  # unsafe or ill-fitting checkpoints fail now, before any training
            # the arch too: the other model is trained, and the methods checked, on the configured one
            load_classifier(
                given, num_classes=datamodule.num_classes, in_chans=datamodule.in_chans, image_size=datamodule.image_size,
                arch=cfg.model.get("arch", "small_cnn"),
            )  # fmt: skip
    _check_methods_fit_the_model(cfg, datamodule)
    return datamodule


def run_report(cfg: SanityReportConfig, out: Path, console=None, datamodule=None) -> list[dict[str, Any]]:
    """Train or reuse the models, run the checks, write the report into ``out``.

    Args:
        cfg: the settings.
        out: the output folder.
        console: a rich console to print to (default: a new one on stdout).
        datamodule: the result of :func:`preflight` when it was called already.

    Returns:
        The ``sanity.csv`` rows.

    Raises:
        ValueError, FileNotFoundError: bad settings (raised before anything is trained or
            written), or a given checkpoint that does not fit the data.
    """
    from rich.console import Console

    datamodule = datamodule if datamodule is not None else preflight(cfg)
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = console.print
    device = cfg.torch_device

    model, model_path = obtain_model(cfg, out, permuted=False, say=say, datamodule=datamodule)
    permuted_model = None
    if cfg.data_check:
        permuted_model, permuted_path = obtain_model(cfg, out, permuted=True, say=say, datamodule=datamodule)

    images, labels, indices = select_batch(datamodule.split_dataset(cfg.split), cfg.num_images, cfg.seed, device)
    model.to(device)
    summary: dict[str, Any] = {
        "model": {"checkpoint": str(model_path), "test_acc": accuracy(model, datamodule.split_dataset("test"), device)}
    }
    if permuted_model is not None:
        permuted_data = _datamodule(cfg, permuted=True)
        summary["permuted_model"] = {
            "checkpoint": str(permuted_path),
            "epochs": None if cfg.permuted_checkpoint else cfg.permuted_epochs,  # a given checkpoint's own training is unknown
            "train_acc_permuted_labels": accuracy(permuted_model, permuted_data.split_dataset("train"), device),
            "test_acc": accuracy(permuted_model, permuted_data.split_dataset("test"), device),
            "chance": 1.0 / permuted_data.num_classes,
        }
    summary["images"] = {"split": cfg.split, "indices": indices.tolist(), "target": cfg.target}
    for name, info in summary.items():
        if "test_acc" in info:
            extra = f", train accuracy on the permuted labels {info['train_acc_permuted_labels']:.3f}" if "train_acc_permuted_labels" in info else ""
            say(f"{name}: test accuracy {info['test_acc']:.3f}{extra}")
    summary["warnings"] = model_warnings(summary, cfg.permuted_epochs)
    for line in summary["warnings"]:
        say(f"warning: {line}")

    target = fixed_target(model, images, labels, cfg.target)
    work = f"{len(cfg.methods)} method{'s' * (len(cfg.methods) != 1)} x {len(images)} image{'s' * (len(images) != 1)}"
    results: list[CheckResult] = []
    for order in cfg.orders:
        say(f"{order} randomisation: {work}")
        results.append(
            model_randomization(
                model, images, order, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, keep_maps=order == "cascading",
                settings=cfg.settings, stack=cfg.stack, share=cfg.share,
            )
        )  # fmt: skip
    if cfg.smprt:
        say(f"sMPRT ({cfg.smprt_order}, {cfg.smprt_samples} noisy copies): {work}")
        results.append(
            model_randomization(
                model, images, cfg.smprt_order, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings, stack=cfg.stack, share=cfg.share, smoothing=cfg.smoothing,
            )
        )  # fmt: skip
    if cfg.emprt:
        say(f"eMPRT: {work}")
        results.append(
            efficient_mprt(
                model, images, cfg.methods, n_bins=cfg.emprt_bins, absolute=cfg.emprt_abs, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings,
            )
        )  # fmt: skip
    if permuted_model is not None:
        say("data randomisation: true-label vs permuted-label model")
        permuted_model.to(device)
        results.append(
            data_randomization(
                model, permuted_model, images, cfg.methods, cfg.metrics, target=target, indices=indices,
                method_params=cfg.method_params, seed=cfg.seed, settings=cfg.settings,
            )
        )  # fmt: skip

    rows = interval_rows((r for result in results for r in result.records), cfg.confidence_level)
    write_csv(rows, out / "sanity.csv")
    # The figures of an earlier run into this --out (other orders, metrics or methods) would sit
    # beside this run's sanity.csv as if they were its own.
    for stale in [*out.glob("curve_*.png"), *out.glob("grid_cascading_*.png")]:
        stale.unlink()
    for result in results:
        for metric in cfg.metrics if result.check != EMPRT else []:
            order = cfg.smprt_order if result.check == SMPRT else None
            plot_curve(rows, result.check, metric, out / f"curve_{result.check}_{metric}.png", order=order)
        if result.check == "cascading" and result.maps is not None:
            for method, maps in result.maps.items():
                fig = map_grid_figure(images, maps, result.layers, title=f"cascading randomisation: {method}")
                fig.savefig(out / f"grid_cascading_{method}.png", dpi=110)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_tables(console, [r for r in rows if r["check"] != EMPRT], cfg)
    print_emprt_table(console, rows)
    figures = [name for name, pattern in (("curves", "curve_*.png"), ("grids", "grid_cascading_*.png")) if any(out.glob(pattern))]
    say(f"wrote {out / 'sanity.csv'}" + (f", the {' and the '.join(figures)}" if figures else "") + f" in {out}")
    return rows


def build_parser():
    """The command line: a ``train.py fit`` config's ``data``/``model``/``trainer`` sections plus a
    ``sanity:`` section, so ``--config configs/digits.yaml --config configs/sanity/digits.yaml`` compose."""
    from roar.fit_config import FIT_SECTIONS, ConfigParser, add_fit_sections

    parser = ConfigParser(
        prog="python -m roar sanity",
        description="Model- and data-randomisation sanity checks for saliency maps (Adebayo et al., NeurIPS 2018), "
        "with the noise control and bottom-up order of Binder et al. (arXiv 2211.12486, 2022).",
        exit_on_error=True,
        allow_abbrev=False,
    )
    add_fit_sections(parser)
    parser.add_class_arguments(SanityReportConfig, "sanity", skip=set(FIT_SECTIONS))
    parser.add_argument("--out", type=str, default="runs/sanity", help="output folder")
    return parser


def parse_config(argv: Sequence[str]) -> tuple[SanityReportConfig, Path]:
    """The settings and the output folder of a ``python -m roar sanity`` command line."""
    cfg, out, _ = _parse(argv)
    return cfg, out


def _parse(argv: Sequence[str]) -> tuple[SanityReportConfig, Path, str]:
    """:func:`parse_config`, and the command's full config as YAML (defaults included), saved as ``sanity.yaml``."""
    from roar.attribution.registry import normalize_methods
    from roar.data.datamodule import datamodule_arguments
    from roar.fit_config import fit_sections, plain
    from roar.registry import import_modules

    parser = build_parser()
    args = parser.parse_args(list(argv))
    sections = fit_sections(parser, args)
    values = plain(args.sanity)
    try:
        import_modules(values.get("imports"))  # their decorators register the methods named below
        data = sections["data"]
        values["data"] = datamodule_arguments(data) if "class_path" in data else data
        values["model"] = {k: v for k, v in sections["model"].items() if k != "class_path"}
        values["trainer"] = sections["trainer"]
        values["methods"], values["method_params"] = normalize_methods(values["methods"], values.get("method_params"))
    except ValueError as err:
        parser.error(str(err))
    from roar.out_folder import out_folder_problem

    if problem := out_folder_problem(args.out):
        parser.error(problem)
    return SanityReportConfig(**values), Path(args.out), parser.dump(args, skip_check=True, skip_none=False)


MEMORISED = 0.9
"""Train accuracy on its permuted labels above which the permuted-label model counts as having memorised them."""


def model_warnings(summary: dict[str, Any], permuted_epochs: int) -> list[str]:
    """What makes the data randomisation test of Adebayo et al. (2018) uninformative on these models.

    The test compares the maps of a model that learned the labels with those of one that could
    only memorise permuted labels. A permuted-label model that has not memorised them is barely
    trained, so its maps differ from the true-label model's for that reason alone.
    """
    lines = []
    permuted = summary.get("permuted_model")
    if permuted is not None and permuted["train_acc_permuted_labels"] < MEMORISED and permuted.get("epochs", permuted_epochs) is None:
        lines.append(  # sanity.permuted_epochs does not train a given checkpoint
            f"the given permuted_checkpoint {permuted['checkpoint']} fits {permuted['train_acc_permuted_labels']:.3f} of its training labels "
            f"(memorised: > {MEMORISED}); the data randomisation test then compares against a barely trained model. "
            "Train it until it memorises them, or leave sanity.permuted_checkpoint out to train one here"
        )
    elif permuted is not None and permuted["train_acc_permuted_labels"] < MEMORISED:
        lines.append(
            f"the permuted-label model fits {permuted['train_acc_permuted_labels']:.3f} of its training labels after {permuted_epochs} epochs "
            f"(memorised: > {MEMORISED}); the data randomisation test then compares against a barely trained model. "
            "Raise sanity.permuted_epochs until it memorises them (the model is retrained: its checkpoint is reused only for the same settings)"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m roar sanity``; returns the exit status (2 for bad settings)."""
    from rich.console import Console

    cfg, out, config_yaml = _parse(sys.argv[1:] if argv is None else argv)
    try:
        datamodule = preflight(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # every setting the numbers depend on (sMPRT's noise, eMPRT's bins...), beside them, as a config to rerun
    out.mkdir(parents=True, exist_ok=True)
    (out / "sanity.yaml").write_text(config_yaml)
    from roar.quiet import quiet_third_party

    with quiet_third_party(cfg.verbose):
        run_report(cfg, out, Console(), datamodule)
    return 0



__all__ = ["SanityReportConfig", "build_parser", "main", "parse_config", "plot_curve", "preflight", "read_csv", "run_report"]
