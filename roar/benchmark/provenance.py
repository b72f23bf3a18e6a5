"""What produced each artefact of a benchmark: the fingerprints of its base model, ranks and runs.

A benchmark folder is resumed, never mixed (DESIGN.md, "Fingerprints"; README, "Reruns"):

* the **settings** of a grid are the resolved config sections that change a result (data, model,
  the trainer settings that change training, the protocol, the base model's training, roar's
  major.minor version), with speed- and output-only settings left out (``num_workers``,
  ``accelerator``, loggers, progress bars, ``compile``...);
* the **base checkpoint** records the fingerprint of its training inside itself, and is reused
  only when it equals the current one;
* a **run** records the settings, the base checkpoint's sha256, its method's resolved parameters
  and its rank entries' keys, its spec, and its fill with the fill's own settings (``fill_sigma``
  of ``blur``...) unless the fill is the paper's ``channel_mean``. A rerun of the same config
  finds the same fingerprint and skips the run; a changed config finds a recorded run whose
  fingerprint differs and is refused, naming the settings that changed (``--force`` starts the
  folder afresh). A change of one fill's own settings is the exception: the planned runs of that
  fill are run again (replacing their rows), the others kept.

The grid's settings hold the protocol under ``channel_mean`` whatever the fills of its modes
(``mode@fill``): the unmasked references and the mask ranks do not depend on the fill, and the
fingerprints of a ``channel_mean`` grid stay those of roar 0.3.0, so its results keep resuming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from roar.benchmark.config import BenchmarkConfig
from roar.benchmark.plan import DEFAULT_FILL, FILL_SEPARATOR, MODES, REFERENCE_METHOD, RunSpec, entry_label, recorded_fill
from roar.fingerprint import differences, fingerprint_key, jsonable
from roar.training_settings import training_settings

TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 10, "accelerator": "auto", "devices": 1, "log_every_n_steps": 10}
"""What the benchmark's trainers use where the config says nothing."""


class ConfigChangedError(ValueError):
    """The output folder holds artefacts of another configuration."""


def base_training(cfg: BenchmarkConfig) -> dict[str, Any]:
    """The fingerprint of the base model's training: data, model, trainer, epochs, seed, version."""
    settings = training_settings(cfg.data, cfg.model, cfg.trainer, TRAINER_DEFAULTS)
    epochs = cfg.base.max_epochs if cfg.base.max_epochs is not None else settings["trainer"]["max_epochs"]
    return {**settings, "base": {"max_epochs": epochs, "seed": cfg.base.seed}}


def base_model_training(cfg: BenchmarkConfig) -> dict[str, Any]:
    """What ``base.ckpt`` records and is reused on: :func:`base_training`, less the retrains' epochs
    (``trainer.max_epochs``) when ``base.max_epochs`` sets the base model's own, so changing how
    long the retrains train (and ``--force``) keeps a base model that would be trained the same."""
    training = base_training(cfg)
    if cfg.base.max_epochs is not None:
        training["trainer"] = {k: v for k, v in training["trainer"].items() if k != "max_epochs"}
    return training


def grid_settings(cfg: BenchmarkConfig, base_checkpoint_sha256: str | None = None) -> dict[str, Any]:
    """The settings every run of the grid shares; a given base checkpoint stands for its training.

    The protocol is taken under the paper's fill: a run's own fill is in its fingerprint
    (:meth:`GridProvenance.for_run`), so a grid's fills share one settings key.
    """
    settings = base_training(cfg)
    settings["protocol"] = jsonable(cfg.protocol.fingerprint(fill=DEFAULT_FILL))
    if cfg.base.checkpoint:  # a user's checkpoint: its bytes (sha256), not our training, define it
        settings["base"] = {"checkpoint_sha256": base_checkpoint_sha256}
    return settings


def method_identity(cfg: BenchmarkConfig, method: str) -> dict[str, Any]:
    """A method's resolved parameters (defaults filled in): what its runs depend on besides the ranks."""
    from roar.attribution.registry import resolved_params

    return {"name": method, "params": jsonable(resolved_params(method, cfg.method_params.get(method, {})))}


@dataclass
class GridProvenance:
    """Everything a run's fingerprint needs, as plain data (it travels to workers and Ray tasks).

    Attributes:
        settings: :func:`grid_settings`.
        base_checkpoint_sha256: the base model's bytes.
        methods: ``{method: {"name", "params", "ranks": {split: entry key}}}``.
        fills: ``{fill: its name and own settings}`` (:meth:`~roar.benchmark.config.Protocol.fill_fingerprint`)
            of every fill but the paper's, which the settings hold.
    """

    settings: dict[str, Any]
    base_checkpoint_sha256: str
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    fills: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def settings_key(self) -> str:
        """One key for the grid: the settings and the base model. The report states it."""
        return fingerprint_key({"settings": self.settings, "base_checkpoint_sha256": self.base_checkpoint_sha256})

    def for_run(self, spec: RunSpec) -> dict[str, Any]:
        """The fingerprint of one run (its key is :func:`~roar.fingerprint.fingerprint_key` of it)."""
        method = None if spec.method == REFERENCE_METHOD else self.methods.get(spec.method)
        if spec.method != REFERENCE_METHOD and method is None:
            raise KeyError(f"no provenance for method {spec.method!r}; known: {', '.join(sorted(self.methods))}")
        # the spec without its fill, and no fill entry for channel_mean: the fingerprints of roar 0.3.0
        fingerprint = {
            "settings": self.settings,
            "base_checkpoint_sha256": self.base_checkpoint_sha256,
            "method": method,
            "spec": {k: v for k, v in spec.to_dict().items() if k != "fill"},
        }
        if spec.fill != DEFAULT_FILL:
            if spec.fill not in self.fills:
                raise KeyError(f"no provenance for fill {spec.fill!r}; known: {', '.join(sorted(self.fills))}")
            fingerprint["fill"] = self.fills[spec.fill]
        return fingerprint


def grid_fills(cfg: BenchmarkConfig) -> dict[str, dict[str, Any]]:
    """:attr:`GridProvenance.fills` of ``cfg``: every fill (not only the planned ones, so a recorded
    row of any fill can be checked) with the protocol's settings of it."""
    from roar.data.roar import FILLS

    return {fill: jsonable(cfg.protocol.fill_fingerprint(fill)) for fill in FILLS if fill != DEFAULT_FILL}


def refusal(what: str, where: str, changes: list[str]) -> ConfigChangedError:
    listed = "\n  ".join(changes) if changes else "(no single setting named; the artefact was made differently)"
    return ConfigChangedError(
        f"{what} in {where} was made with other settings; refusing to mix them. What changed (recorded -> now):\n  {listed}\n"
        "Use a new --out for the new configuration, or --force true to discard the old results and start this folder afresh."
    )


def _legacy_fill(row: dict[str, Any], recorded_settings: dict[str, Any]) -> str | None:
    """Why a row of roar 0.3.0 cannot be resumed: it ran under another fill than ``channel_mean``, but its id names none."""
    protocol = recorded_settings.get("protocol") or {}
    fill = protocol.get("fill", DEFAULT_FILL) if isinstance(protocol, dict) else DEFAULT_FILL
    if fill == DEFAULT_FILL or FILL_SEPARATOR in str(row.get("run_id", "")).split("/")[0]:
        return None
    return (
        f"the run was recorded by roar 0.3.0 under protocol.fill {fill!r} with an id that names no fill; runs of a fill other "
        f"than {DEFAULT_FILL} are now named mode{FILL_SEPARATOR}fill (e.g. noretrain{FILL_SEPARATOR}{fill}/...), so they cannot be resumed here"
    )


def _without_fill(fingerprint: dict[str, Any]) -> str:
    return fingerprint_key({k: v for k, v in fingerprint.items() if k != "fill"})


def check_recorded_rows(
    rows: list[dict[str, Any]], cfg: BenchmarkConfig, where: str, provenance: GridProvenance | None = None, planned: set[str] | None = None
) -> None:
    """Refuse when a done row of ``results.db`` was made with other settings than ``cfg``'s.

    Without ``provenance`` (before anything is computed) the config-derived parts are compared:
    settings and each planned method's parameters. With it, the complete fingerprint of every run
    that the grid would skip is compared as well (base checkpoint, rank entries, fill settings).
    A row that differs only in its fill's own settings (``fill_sigma``...) and is in ``planned``
    (run ids) is not refused: the grid runs it again (:func:`stale_fill`), replacing its row.

    Raises:
        ConfigChangedError: listing what changed, and how to proceed.
    """
    settings = provenance.settings if provenance is not None else None
    methods = {m: method_identity(cfg, m) for m in cfg.methods}
    for row in rows:
        if row.get("status") != "done":
            continue  # a failed run is rerun anyway: fixing a typo that failed every run must just work
        recorded = row.get("provenance")
        if not isinstance(recorded, dict):
            raise refusal(f"run {row['run_id']}", where, ["the run has no fingerprint (recorded by an older roar)"])
        old_settings = dict(recorded.get("settings") or {})
        legacy = _legacy_fill(row, old_settings)
        if legacy:
            raise refusal(f"run {row['run_id']}", where, [legacy])
        new_settings = settings if settings is not None else _comparable_settings(cfg, old_settings)
        if old_settings != new_settings:
            raise refusal(f"run {row['run_id']}", where, differences(old_settings, new_settings))
        method = row.get("method")
        old_method = recorded.get("method") or {}
        if method in methods and {k: old_method.get(k) for k in ("name", "params")} != methods[method]:
            raise refusal(f"run {row['run_id']}", where, differences({"method": old_method.get("params")}, {"method": methods[method]["params"]}))
        if provenance is not None and (method in methods or method == REFERENCE_METHOD):
            expected = provenance.for_run(RunSpec.from_dict(row))
            if row.get("fingerprint") != fingerprint_key(expected):
                if planned is not None and row["run_id"] in planned and stale_fill(recorded, expected):
                    continue  # only its fill's own settings changed: it is planned again
                raise refusal(f"run {row['run_id']}", where, differences(recorded, expected))


def stale_fill(recorded: dict[str, Any], expected: dict[str, Any]) -> bool:
    """The recorded fingerprint differs from the expected one in the run's fill settings only."""
    return _without_fill(recorded) == _without_fill(expected) and recorded.get("fill") != expected.get("fill")


def stale_fill_lines(rows: list[dict[str, Any]], provenance: GridProvenance, plan: list[RunSpec]) -> list[str]:
    """One line per fill whose recorded runs the grid runs again because that fill's own settings changed.

    Without it a resumed grid printed "resuming: 6 of 8 runs (same fingerprint)" and then reran the
    other two with no word of why.
    """
    planned = {spec.run_id: spec for spec in plan}
    changed: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for row in rows:
        spec, recorded = planned.get(row["run_id"]), row.get("provenance")
        if spec is None or row.get("status") != "done" or not isinstance(recorded, dict):
            continue
        expected = provenance.for_run(spec)
        if row.get("fingerprint") != fingerprint_key(expected) and stale_fill(recorded, expected):
            counts[spec.fill] = counts.get(spec.fill, 0) + 1
            changed.setdefault(spec.fill, differences(recorded.get("fill") or {}, expected.get("fill") or {}))
    return [f"runs of {fill} run again, its settings changed: {n} ({'; '.join(changed[fill])})" for fill, n in sorted(counts.items())]


def kept_rows_line(rows: list[dict[str, Any]], plan: list[RunSpec], default_fill: str = DEFAULT_FILL) -> str | None:
    """One line naming the done runs of this folder that the config does not plan, if any.

    They are of an earlier grid in the folder with the same settings (fewer methods now, another
    ``protocol.fill``, a mode dropped): kept and reported beside this grid's runs. Without the line,
    a rerun after ``protocol.fill`` changed printed nothing of the old fill's curves, which the report
    then showed as ``roar@channel_mean``.
    """
    listed = _unplanned(rows, plan, default_fill, "done")
    return f"kept from an earlier grid in this folder and reported with this one: {listed}; --force starts the folder over" if listed else None


def earlier_failures_line(rows: list[dict[str, Any]], plan: list[RunSpec], default_fill: str = DEFAULT_FILL) -> str | None:
    """One line naming the failed runs of an earlier grid in this folder that this config does not
    plan, so does not retry (they stay under the report's Failures), if any."""
    listed = _unplanned(rows, plan, default_fill, "failed")
    return f"failed in an earlier grid in this folder and not retried by this one: {listed}; see report.md's Failures" if listed else None


def _unplanned(rows: list[dict[str, Any]], plan: list[RunSpec], default_fill: str, status: str) -> str:
    """``roar@channel_mean (2 runs), ...``: the rows of ``status`` not in ``plan``, per mode@fill, in the report's order."""
    planned = {spec.run_id for spec in plan}
    counts: dict[tuple[int, str], int] = {}
    for row in rows:
        if row.get("status") == status and row["run_id"] not in planned and row.get("method") != REFERENCE_METHOD:
            mode = str(row["mode"])
            key = (MODES.index(mode) if mode in MODES else len(MODES), entry_label(mode, recorded_fill(row, default_fill), default_fill))
            counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{label} ({n} run{'s' * (n > 1)})" for (_, label), n in sorted(counts.items()))


def _comparable_settings(cfg: BenchmarkConfig, recorded: dict[str, Any]) -> dict[str, Any]:
    # Before the base model exists, a given checkpoint's sha256 is the recorded one if the file is
    # the same path; it is compared for real once the base checkpoint is hashed.
    sha = (recorded.get("base") or {}).get("checkpoint_sha256") if cfg.base.checkpoint else None
    return grid_settings(cfg, sha)
