"""The privacy-utility frontier: train and attack every cell of cuts x defenses x seeds.

``runs/<sweep>/`` holds ``sweep.yaml`` (the resolved config), ``results.jsonl`` (one line per
finished cell, appended atomically: a rerun skips finished cells), ``frontier.csv``,
``frontier.png``, ``train/<run>/`` (trained runs) and ``attacks/<cell>/`` (attack.json,
reconstructions.png, wandb). The undefended cells of all cuts share one training per seed: an
undefended network computes the same function wherever it is cut (:meth:`Run.recut`).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import statistics
import time
import traceback
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from splitpriv.attacks import build_attacks, default_attack_specs
from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.attacks.semantic import fit_proxy_classifier
from splitpriv.attack_suite import GRID_FILE, load_proxy
from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.defenses import build_defenses
from splitpriv.transforms import build_transform
from splitpriv.config import SAFE_NAME, ExitsConfig, RunConfig, WandbConfig, check, from_dict, load_yaml
from splitpriv.executors import RAY_INSTALL, cell_executor, inline_executor, submit
from splitpriv.fields import flag, flag_prefix, one_of
from splitpriv.data import make_splits
from splitpriv.errors import ConfigError, RunStateError, SplitprivError, SweepIncomplete
from splitpriv.experiment import quiet_lightning, train
from splitpriv.models import build_model
from splitpriv.profiling import count_flops
from splitpriv.provenance import provenance
from splitpriv.runs import load_run
from splitpriv.store import CHECKPOINT, METRICS_FILE, atomic_append_line, atomic_save_figure, atomic_write_csv, atomic_write_json, atomic_write_text, atomic_write_yaml, csv_value, import_plugins, json_text, pyplot
from splitpriv.workers import exclusive_sweep_folder
from splitpriv.tracking import log_run

SWEEP_FILE, RESULTS_FILE, FRONTIER_CSV, FRONTIER_PNG = "sweep.yaml", "results.jsonl", "frontier.csv", "frontier.png"
FAILURES_FILE = "failures.jsonl"  # one line per failed attempt of a cell: its key and why
LOCAL_ATTEMPTS = 3  # rounds of local worker processes for cells whose worker died (Ray retries on its own)
PROVENANCE_FILE, DAMAGED_RESULTS_FILE, SWEEP_MARKER = "provenance.json", "results.damaged.jsonl", ".splitpriv-sweep"
# where the folder lives and where and how many cells compute at once: a resume may change them
FREE_TO_CHANGE = {"out", "workers", "executor", "address", "cell_cpus", "cell_gpus"}
# per threat model: the worst case of each leakage metric over the attacks it admits (column -> attack.json key)
THREAT_COLUMNS = {"worst_mse": "mse", "worst_psnr": "psnr", "worst_ssim": "ssim",
                  "reconstruction_classifier_accuracy": "classifier_accuracy", "recognisable_share": "recognisable_share",
                  "worst_mse_p10": "mse_p10", "worst_attack": "mse_attack"}
FRONTIER_COLUMNS = ["cut_layer", "cut_name", "defense", "strength", "strength_parameter", "seed", "test_accuracy",
                    *(f"{column}_{model}" for model in THREAT_MODELS for column in THREAT_COLUMNS),
                    "dcor_sq_bias_corrected",
                    "message_dp_epsilon_per_sample", "message_dp_delta_per_sample", "message_dp_releases_per_sample",
                    "parameter_dp_epsilon_per_sample", "parameter_dp_delta_per_sample",
                    "activation_bytes_per_sample", "train_time_s", "attack_time_s", "compression", "exits",
                    "gradient_bytes_per_sample", "client_flops_per_sample"]
# the per-sample privacy of each protected object, as the defenses report it in metrics.json
DP_COLUMNS = {"message_dp_epsilon_per_sample": "dp_noise/epsilon_per_sample",
              "message_dp_delta_per_sample": "dp_noise/delta_per_sample",
              "message_dp_releases_per_sample": "dp_noise/releases_per_sample",
              "parameter_dp_epsilon_per_sample": "dp_sgd/epsilon_per_sample",
              "parameter_dp_delta_per_sample": "dp_sgd/delta_per_sample"}
NO_DEFENSE = "none"


@dataclass
class DefenseAxis:
    """One defense of the grid: ``parameter`` takes each of ``strengths``; ``params`` are fixed."""

    name: str = NO_DEFENSE
    parameter: str | None = None
    strengths: list = field(default_factory=list)
    params: dict = field(default_factory=dict)


DEFAULT_DEFENSES = [
    {"name": NO_DEFENSE},
    {"name": "distance_correlation", "parameter": "weight", "strengths": [0.5]},
    {"name": "dp_noise", "parameter": "epsilon", "strengths": [32.0], "params": {"mechanism": "laplace", "clip": "median"}},
    {"name": "decoder_reconstruction", "parameter": "weight", "strengths": [5.0]},
    {"name": "dp_sgd", "parameter": "target_epsilon", "strengths": [8.0], "params": {"max_grad_norm": 1.0}},
]
# the default attack set, scored on 128 private test images per cell
DEFAULT_SWEEP_ATTACK = {"samples": 128}


@dataclass
class SweepConfig:
    name: str | None = field(default=None, metadata={**SAFE_NAME, **flag(
        "sweep folder name and wandb group; none: <dataset>-<model>-sweep")})
    out: str = field(default="runs", metadata=flag("parent folder of the sweep folder"))
    dataset: str = "digits"
    model: str = "small_cnn"
    cuts: list | str = "all"  # cut indices or names, or "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    defenses: list[dict] = field(default_factory=lambda: [dict(d) for d in DEFAULT_DEFENSES])
    data: dict = field(default_factory=dict)  # DataConfig fields but 'dataset' (e.g. root, proxy_fraction)
    training: dict = field(default_factory=dict)  # TrainingConfig fields (e.g. epochs)
    attack: AttackSettings = field(default_factory=lambda: AttackSettings(**DEFAULT_SWEEP_ATTACK))
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=flag_prefix("wandb-"))
    workers: int = field(default=2, metadata={**check(lambda v: 1 <= v <= 256, "an integer in [1, 256]"),
                                              **flag("cells run in parallel processes (local executor)")})
    executor: str = field(default="local", metadata={**one_of("local", "ray"), **flag(
        f"where cells run: local worker processes, or Ray tasks ({RAY_INSTALL})")})
    address: str | None = field(default=None, metadata=flag(
        "the Ray cluster to run on (ray://HOST:10001, or auto); none: a local Ray on this machine"))
    cell_cpus: float = field(default=1.0, metadata={**check(lambda v: 0 < v <= 1024, "a number in (0, 1024]"), **flag(
        "CPUs each cell's Ray task holds (its torch threads: the whole part, at least 1)")})
    cell_gpus: float = field(default=0.0, metadata={**check(lambda v: 0 <= v <= 64, "a number in [0, 64]"), **flag(
        "GPUs each cell's Ray task holds; a fraction places several cells on one GPU, e.g. 0.25")})
    plugins: list[str] = field(default_factory=list)
    # adaptations at the cut, crossed with every defense setting: compressions of the message
    # ({name: none} = fp32) and early-exit configurations ({} = none; an exit model is attacked
    # at the sweep's cuts and at each of its exits' cuts)
    compressions: list[dict] = field(default_factory=lambda: [{"name": NO_DEFENSE}])
    exits: list[dict] = field(default_factory=lambda: [{}])

    def sweep_name(self) -> str:
        return self.name or f"{self.dataset}-{self.model}-sweep"


@dataclass
class Cell:
    """One point of the grid. Further axes (e.g. compression) add fields and a part of ``key``."""

    cut_layer: int
    cut_name: str
    defense: str
    strength: float | None
    seed: int
    defense_specs: list[dict]  # the defense's
    strength_parameter: str | None = None  # e.g. 'epsilon (per message)': what the strength is, in which unit
    compression: str = NO_DEFENSE  # e.g. quantize_bits4
    exits: str = NO_DEFENSE  # e.g. relu2+relu3
    exits_config: dict = field(default_factory=dict)
    transform_specs: list[dict] = field(default_factory=list)  # the compression's

    @property
    def trained_at_its_cut(self) -> bool:
        """A defense or a compression is trained for its cut; otherwise the cell recuts its seed's shared training."""
        return bool(self.defense_specs or self.transform_specs)

    @property
    def adaptations(self) -> str:
        """The key's part for compression and exits ('' without: keys of plain grids stay as they were)."""
        labels = [self.compression] + ([f"exits_{self.exits}"] if self.exits != NO_DEFENSE else [])
        return "".join(f"-{label}" for label in labels if label != NO_DEFENSE)

    @property
    def key(self) -> str:
        strength = "" if self.strength is None else f"-{self.strength:g}"
        return f"cut{self.cut_layer}-{self.defense}{strength}{self.adaptations}-seed{self.seed}"

    @property
    def training_key(self) -> str:
        """Cells with the same training key share one trained model."""
        return f"{NO_DEFENSE}{self.adaptations}-seed{self.seed}" if not self.trained_at_its_cut else self.key

    def labels(self) -> dict:
        return {"cut_layer": self.cut_layer, "cut_name": self.cut_name, "defense": self.defense,
                "strength": self.strength, "strength_parameter": self.strength_parameter, "seed": self.seed,
                "compression": self.compression, "exits": self.exits}


# ----------------------------------------------------------------------------- config


def load_sweep_config(values: dict | None) -> SweepConfig:
    """Validate a sweep config (plain YAML mapping); errors name the key, value and what is allowed."""
    cfg = from_dict(SweepConfig, values or {})
    if cfg.cuts != "all" and (isinstance(cfg.cuts, str) or not isinstance(cfg.cuts, list)):
        raise ConfigError("cuts", cfg.cuts, "'all' or a list of cut indices or names")
    if not cfg.seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in cfg.seeds):
        raise ConfigError("seeds", cfg.seeds, "a non-empty list of integers >= 0")
    if "dataset" in cfg.data:
        raise ConfigError("data.dataset", cfg.data["dataset"], "the top-level 'dataset' key (the sweep's data set)")
    axes = [from_dict(DefenseAxis, axis, f"defenses[{i}].") for i, axis in enumerate(cfg.defenses)]
    for i, axis in enumerate(axes):
        if axis.name != NO_DEFENSE and (axis.parameter is None) != (not axis.strengths):
            raise ConfigError(f"defenses[{i}]", cfg.defenses[i], "'parameter' together with a non-empty 'strengths' "
                              "list (e.g. {name: dp_noise, parameter: epsilon, strengths: [2, 8]}), or neither")
    return cfg


def base_run_config(cfg: SweepConfig) -> RunConfig:
    values = {"out": str(Path(cfg.out) / cfg.sweep_name() / "train"), "plugins": cfg.plugins,
              "data": {**cfg.data, "dataset": cfg.dataset}, "model": {"name": cfg.model},
              "training": {"progress_bar": False, **cfg.training}, "wandb": dataclasses.asdict(cfg.wandb)}
    run_cfg = from_dict(RunConfig, values)
    return dataclasses.replace(run_cfg, wandb=dataclasses.replace(run_cfg.wandb, group=cfg.wandb.group or cfg.sweep_name()))


def defense_cells(cfg: SweepConfig) -> list[tuple[str, float | None, list[dict], str | None]]:
    """(defense, strength, defense specs, strength parameter with its unit) for every defense setting of the grid."""
    settings = []
    for i, values in enumerate(cfg.defenses):
        axis = from_dict(DefenseAxis, values, f"defenses[{i}].")
        if axis.name == NO_DEFENSE:
            settings.append((NO_DEFENSE, None, [], None))
            continue
        for strength in axis.strengths or [None]:
            spec = {"name": axis.name, **axis.params, **({axis.parameter: strength} if axis.parameter else {})}
            defense = build_defenses([spec])[0]  # unknown defense or parameter: fail before any training
            unit = defense.parameter_units.get(axis.parameter)
            parameter = axis.parameter and (f"{axis.parameter} ({unit})" if unit else axis.parameter)
            settings.append((axis.name, strength, [spec], parameter))
    return settings


def grid(cfg: SweepConfig, cut_points: list) -> list[Cell]:
    """Every cell: cuts x defense settings x seeds. An empty grid is an input error."""
    by_index = {c.index: c for c in cut_points}
    if cfg.cuts == "all":
        cuts = cut_points
    else:
        names = {c.name: c for c in cut_points}
        cuts = []
        for cut in cfg.cuts:
            if isinstance(cut, bool) or not isinstance(cut, (int, str)):
                raise ConfigError("cuts", cut, f"cut indices (integers) or names of {cfg.model}, e.g. [1, pool]")
            point = names.get(cut) if isinstance(cut, str) and not cut.isdigit() else by_index.get(int(cut))
            if point is None:
                listing = ", ".join(f"{c.index}={c.name}" for c in cut_points)
                raise ConfigError("cuts", cut, f"a cut index or name of {cfg.model}: {listing}")
            cuts.append(point)
    cells = [Cell(cut.index, cut.name, defense, strength, seed, specs, parameter, compression, exits, exits_config,
                  compression_spec)
             for seed in cfg.seeds for defense, strength, specs, parameter in defense_cells(cfg)
             for compression, compression_spec in compression_settings(cfg)
             for exits, exits_config, exit_cuts in exit_settings(cfg, cut_points)
             for cut in cuts + [c for c in exit_cuts if c not in cuts]]
    if not cells:
        raise ConfigError("cuts/defenses/seeds", {"cuts": cfg.cuts, "defenses": cfg.defenses, "seeds": cfg.seeds},
                          "at least one cut, one defense entry (e.g. {name: none}) and one seed")
    return cells


def compression_settings(cfg: SweepConfig) -> list[tuple[str, list[dict]]]:
    """(label, [spec]) per compression of the grid, e.g. ('quantize_bits4', [{name: quantize, bits: 4}])."""
    settings = []
    for i, spec in enumerate(cfg.compressions):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"compressions[{i}]", spec, "a mapping with a 'name' key, e.g. {name: quantize, bits: 4}")
        if spec["name"] == NO_DEFENSE:
            settings.append((NO_DEFENSE, []))
            continue
        build_transform(spec, f"compressions[{i}]")  # unknown compression or parameter: fail before any training
        settings.append(("_".join([spec["name"], *(f"{k}{v}" for k, v in spec.items() if k != "name")]), [dict(spec)]))
    return settings


def exit_settings(cfg: SweepConfig, cut_points: list) -> list[tuple[str, dict, list]]:
    """(label, exits config, the exits' cut points) per early-exit configuration of the grid."""
    settings = []
    for i, values in enumerate(cfg.exits):
        exits = from_dict(ExitsConfig, values, f"exits[{i}].")
        points = []
        for j, cut in enumerate(exits.at):
            point = next((c for c in cut_points if str(cut) in (str(c.index), c.name)), None)
            if point is None:
                listing = ", ".join(f"{c.index}={c.name}" for c in cut_points)
                raise ConfigError(f"exits[{i}].at[{j}]", cut, f"a cut index or name of {cfg.model}: {listing}")
            points.append(point)
        settings.append(("+".join(p.name for p in points) or NO_DEFENSE, dict(values or {}), points))
    return settings


# ----------------------------------------------------------------------------- one cell


_DATA_CACHE: dict = {}


def seed_splits(run_cfg: RunConfig):
    """The data splits of a seed, built once per process (every cell of a seed shares them)."""
    key = (repr(run_cfg.data), run_cfg.seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = make_splits(run_cfg.data, run_cfg.seed)
    return _DATA_CACHE[key]


def _trained(run_cfg: RunConfig, tracking: dict):
    """The trained run of ``run_cfg``: loaded when a previous (killed) sweep finished it, resumed when
    it had finished some epochs."""
    run_dir = Path(run_cfg.out) / run_cfg.run_name()
    if (run_dir / METRICS_FILE).exists():
        run = load_run(run_dir)
        run._data = seed_splits(run_cfg)
        return run
    resume = (run_dir / CHECKPOINT).exists()
    return train(run_cfg, resume=resume, force=not resume, data=seed_splits(run_cfg), tracking=tracking)


def cell_threads(cfg: SweepConfig) -> int | None:
    """Torch threads per cell: a Ray task's whole CPUs; one per local worker process when several
    run (threads of tiny ops only spin-wait for each other); else torch's default."""
    if cfg.executor == "ray":
        return max(1, int(cfg.cell_cpus))
    return 1 if cfg.workers > 1 else None


def worker_setup(cfg: SweepConfig) -> None:
    threads = cell_threads(cfg)
    if threads:
        torch.set_num_threads(threads)
    quiet_lightning()
    import_plugins(cfg.plugins)  # the sweep config's own plugins, which its runs were trained with


def train_shared(cfg: SweepConfig, cell: Cell) -> None:
    """The undefended training that every undefended cell of ``cell``'s seed recuts."""
    worker_setup(cfg)
    _trained(cell_run_config(cfg, cell, cell.cut_layer), {"strength": None, "sweep": cfg.sweep_name()})


def cell_run_config(cfg: SweepConfig, cell: Cell, cut_layer: int) -> RunConfig:
    base = base_run_config(cfg)
    # the package list costs ~0.2 s per run (wandb parses every package's metadata): a sweep's
    # cells leave it to the summary run
    return dataclasses.replace(base, name=cell.training_key, seed=cell.seed, defenses=cell.defense_specs,
                               transforms=cell.transform_specs,
                               wandb=dataclasses.replace(base.wandb, save_requirements=False),
                               model=dataclasses.replace(base.model, cut_layer=cut_layer),
                               exits=from_dict(ExitsConfig, cell.exits_config, "exits."))


def frontier_metrics(run, record: dict) -> dict:
    """The measured columns of a frontier row for a trained ``run`` and its attack.json ``record``."""
    leakage = {f"{column}_{model}": (worst or {}).get(key) for model, worst in record["worst_case"].items()
               for column, key in THREAT_COLUMNS.items()}
    return {"test_accuracy": run.metrics["test_accuracy"], **leakage,
            "dcor_sq_bias_corrected": record["dcor_sq_bias_corrected"],
            **{column: run.metrics.get(key) for column, key in DP_COLUMNS.items()},
            "activation_bytes_per_sample": run.metrics["activation_bytes_per_sample"],
            "gradient_bytes_per_sample": run.metrics["gradient_bytes_per_sample"],
            "client_flops_per_sample": count_flops(run.send, run.data.dataset("private_test").tensors[0][:1]),
            "train_time_s": run.metrics["train_time_s"], "attack_time_s": record["attack_time_s"]}


def _long_fit_reporter(cell: Cell) -> Callable[[str], None]:
    """Only the periodic reports of long fits (e.g. an MNIST decoder); the cell line says the rest."""
    def report(message: str) -> None:
        if message.lstrip().startswith("epoch"):
            print(f"  [{cell.key}] {message.strip()}", flush=True)
    return report


def run_cell(cfg: SweepConfig, cell: Cell, sweep_dir: Path, classifier: torch.nn.Module | None) -> dict:
    """Train (or reuse) the cell's model, attack it, log both to wandb; the cell's frontier row."""
    worker_setup(cfg)
    tracking = {"strength": cell.strength, "sweep": cfg.sweep_name()}
    if cell.trained_at_its_cut:
        run = _trained(cell_run_config(cfg, cell, cell.cut_layer), {**tracking, "defense": cell.defense})
    else:  # one undefended training per seed, trained at the model's default cut, recut here
        shared = load_run(Path(base_run_config(cfg).out) / cell.training_key)
        shared._data = seed_splits(shared.config)
        run = shared.recut(cell.cut_layer)
    attack_dir = sweep_dir / "attacks" / cell.key
    record = run_attacks(run, cfg.attack, out_dir=attack_dir, classifier=classifier, progress=_long_fit_reporter(cell))
    row = {**cell.labels(), **frontier_metrics(run, record)}
    wandb_cfg = cell_run_config(cfg, cell, cell.cut_layer).wandb
    log_run(wandb_cfg, attack_dir, f"{cfg.sweep_name()}-{cell.key}-attack", "attack",
            {"dataset": cfg.dataset, "model": cfg.model, **cell.labels(), "attack": record["settings"]},
            {**row, "worst_case": record["worst_case"]}, group=wandb_cfg.group,
            images={"reconstructions": attack_dir / GRID_FILE})
    return {"key": cell.key, **row, "train_run": str(run.path), "attack_json": str(attack_dir / "attack.json")}


# ----------------------------------------------------------------------------- the sweep


def check_sweep_folder(sweep_dir: Path, resolved: dict, force: bool) -> None:
    """A new sweep, the same sweep resumed, or (``force``) a splitpriv sweep's folder emptied."""
    stored = sweep_dir / SWEEP_FILE
    contents = list(sweep_dir.iterdir()) if sweep_dir.is_dir() else []
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SplitprivError(f"{sweep_dir} is a file, not a sweep folder; choose another --name/--out")
    if force and contents:
        if not (sweep_dir / SWEEP_MARKER).is_file():
            raise SplitprivError(f"--force would delete the contents of {sweep_dir}, which splitpriv did not create as "
                                 f"a sweep folder (it has no {SWEEP_MARKER}); move or delete it yourself, or choose "
                                 f"another --name/--out")
        for path in contents:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif stored.exists():
        previous = load_yaml(stored, "sweep record")
        changed = sorted(k for k in (set(previous) | set(resolved)) - FREE_TO_CHANGE if previous.get(k) != resolved.get(k))
        if changed:
            raise SplitprivError(
                f"{sweep_dir} holds a sweep with another config (differs in: {', '.join(changed)}); rerun with "
                f"the same config to resume it, pass --force to start it afresh, or choose another --out/--name")
    elif contents:
        raise SplitprivError(f"{sweep_dir} exists and holds files that are not a splitpriv sweep; choose another "
                             f"--name/--out")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / SWEEP_MARKER, "made by splitpriv sweep: splitpriv sweep --force may empty this folder\n")


def record_provenance(sweep_dir: Path) -> None:
    """``provenance.json``: the command and commit that started the sweep, and each that resumed it."""
    path = sweep_dir / PROVENANCE_FILE
    if not path.exists():
        record = {"started": provenance(), "resumed": []}
    else:
        try:
            record = json.loads(path.read_text())
            record["resumed"].append(provenance())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            os.replace(path, path.with_name("provenance.damaged.json"))  # kept for a human; the sweep goes on
            record = {"started": {"command": "unknown: the earlier record was damaged (provenance.damaged.json)"},
                      "resumed": [provenance()]}
    atomic_write_json(path, record)


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row_or_none(line: str) -> dict | None:
    """A results.jsonl line as a row, or None when it is damaged (not JSON, or missing columns)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("key"), str) and set(FRONTIER_COLUMNS) <= set(row) else None


def finished_rows(sweep_dir: Path) -> dict[str, dict]:
    """The finished cells of ``results.jsonl`` by key (damaged lines are skipped: see :func:`quarantine_damaged`)."""
    path = sweep_dir / RESULTS_FILE
    if not path.exists():
        return {}
    rows = filter(None, (_row_or_none(line) for line in path.read_text(errors="replace").splitlines() if line.strip()))
    return {row["key"]: row for row in rows}


def quarantine_damaged(sweep_dir: Path) -> list[int]:
    """Move damaged lines of ``results.jsonl`` (a hand edit, a disk fault) to ``results.damaged.jsonl``,
    keeping every intact cell; their cells then run again. Returns the damaged line numbers."""
    path = sweep_dir / RESULTS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    damaged = [number for number, line in enumerate(lines, 1) if _row_or_none(line) is None]
    if damaged:
        quarantine = sweep_dir / DAMAGED_RESULTS_FILE
        previous = quarantine.read_text() if quarantine.exists() else ""
        atomic_write_text(quarantine, previous + "".join(lines[n - 1] + "\n" for n in damaged))
        atomic_write_text(path, "".join(line + "\n" for n, line in enumerate(lines, 1) if n not in damaged))
    return damaged


def _classifier(cfg: SweepConfig, seed: int):
    """The attacker's proxy classifier, trained once per seed and shared by every cell."""
    run_cfg = dataclasses.replace(base_run_config(cfg), seed=seed)
    data = seed_splits(run_cfg)
    proxy, _, same_classes = load_proxy(data, run_cfg.data, cfg.attack.proxy, cfg.attack.proxy_size, cfg.attack.seed)
    return fit_proxy_classifier(proxy, data.info.num_classes, cfg.attack.seed, cfg.attack.classifier_max_epochs) if same_classes else None


def run_sweep(cfg: SweepConfig, *, force: bool = False, progress: Callable[[str], None] = print) -> list[dict]:
    """Run every unfinished cell and write the frontier; returns the frontier rows in grid order."""
    started = time.perf_counter()
    worker_setup(cfg)
    base = base_run_config(cfg)
    build_attacks(cfg.attack.attacks or default_attack_specs(True, tuple(cfg.attack.decoder_capacities)))
    data = seed_splits(dataclasses.replace(base, seed=cfg.seeds[0]))
    model = build_model(cfg.model, data.info.num_classes, data.info.in_channels, data.info.image_size)
    cells = grid(cfg, model.cut_points(data.info.input_shape))
    sweep_dir = Path(cfg.out) / cfg.sweep_name()
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise SplitprivError(f"--out {cfg.out} is a file, not a folder; choose a folder for the sweep folder")
    resolved = json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, name=cfg.sweep_name()))))
    with exclusive_sweep_folder(sweep_dir):
        check_sweep_folder(sweep_dir, resolved, force)
        atomic_write_yaml(sweep_dir / SWEEP_FILE, resolved)
        record_provenance(sweep_dir)
        damaged = quarantine_damaged(sweep_dir)
        if damaged:
            progress(f"warning: {sweep_dir / RESULTS_FILE} had damaged line(s) {damaged}: moved to "
                     f"{DAMAGED_RESULTS_FILE}; their cells run again")
        rows = _run_cells(cfg, cells, model, sweep_dir, started, progress)
    progress(f"sweep finished in {time.perf_counter() - started:.0f}s")
    return rows


def _run_cells(cfg: SweepConfig, cells: list[Cell], model, sweep_dir: Path, started: float,
               progress: Callable[[str], None]) -> list[dict]:
    done = finished_rows(sweep_dir)
    pending = [cell for cell in cells if cell.key not in done]
    progress(f"sweep {cfg.sweep_name()}: {len(cells)} cells ({len(cells) - len(pending)} already finished) -> {sweep_dir}")
    finished_count = 0
    failures: dict[str, str] = {}

    def finished(row: dict) -> None:
        nonlocal finished_count
        finished_count += 1
        atomic_append_line(sweep_dir / RESULTS_FILE, json_text(row))
        elapsed = time.perf_counter() - started
        eta = elapsed / finished_count * (len(pending) - finished_count - len(failures))
        leaks = " ".join(f"{threat} {_number(row[f'worst_mse_{threat}'], '.4f')}" for threat in THREAT_MODELS)
        progress(f"cell {len(done) + finished_count}/{len(cells)} {row['key']}: acc {row['test_accuracy']:.3f} worst mse "
                 f"{leaks} | elapsed {elapsed:.0f}s, ETA {max(eta, 0):.0f}s")

    def failed(cell: Cell, error: BaseException | str) -> None:
        failures[cell.key] = reason = error if isinstance(error, str) else failure_reason(error)
        record = {"key": cell.key, "reason": reason, "executor": cfg.executor, "time": time.time()}
        if isinstance(error, BaseException) and not isinstance(error, SplitprivError):
            record["traceback"] = "".join(traceback.format_exception(error))[-20_000:]
        atomic_append_line(sweep_dir / FAILURES_FILE, json_text(record))
        progress(f"cell {cell.key} failed: {reason}")

    todo = pending
    for attempt in range(1, LOCAL_ATTEMPTS + 1):
        todo = _run_round(cfg, todo, model.default_cut(), sweep_dir, finished, failed)
        if not todo:
            break
        if attempt < LOCAL_ATTEMPTS:
            progress(f"a worker process died: its {len(todo)} unfinished cell(s) run again in new processes")
    for cell in todo:
        failed(cell, f"its worker process died {LOCAL_ATTEMPTS} times (killed, or out of memory?)")

    rows = write_frontier(sweep_dir, cells)
    log_summary(cfg, sweep_dir, rows)
    if failures:
        listed = "; ".join(f"{key}: {reason}" for key, reason in list(failures.items())[:3])
        raise SweepIncomplete(f"{len(failures)} of {len(cells)} cells failed ({listed}{'; ...' if len(failures) > 3 else ''}); "
                              f"every reason is in {sweep_dir / FAILURES_FILE}, the finished cells are in the frontier: "
                              f"rerun the same command to retry the failed cells")
    return rows


def _run_round(cfg: SweepConfig, pending: list[Cell], default_cut: int, sweep_dir: Path,
               finished: Callable[[dict], None], failed: Callable[[Cell, BaseException | str], None]) -> list[Cell]:
    """Run ``pending`` on the sweep's executor; the cells lost with a dead local worker process
    (Python's process pool breaks with it) are returned to be run again."""
    seeds = [seed for seed in cfg.seeds if any(c.seed == seed for c in pending)]
    # the shared undefended trainings, one per seed (and early-exit configuration)
    shared = [dataclasses.replace(c, cut_layer=default_cut) for c in
              {c.training_key: c for c in pending if not c.trained_at_its_cut}.values()]
    inline = cfg.executor == "local" and (cfg.workers == 1 or len(pending) <= 1)
    lost: list[Cell] = []
    with (inline_executor() if inline else cell_executor(
            cfg.executor, min(cfg.workers, len(pending)), sweep_dir, address=cfg.address, cpus=cfg.cell_cpus,
            gpus=cfg.cell_gpus)) as executor:
        # no core idles at the start: the shared trainings run in the pool while this process fits
        # the attacker's classifier; the defended cells go first, the undefended ones once their
        # shared training is done
        trainings = {cell.training_key: submit(executor, train_shared, cfg, cell) for cell in shared}
        classifiers = {seed: _classifier(cfg, seed) for seed in seeds}
        futures = {submit(executor, run_cell, cfg, cell, sweep_dir, classifiers[cell.seed]): cell
                   for cell in pending if cell.trained_at_its_cut}
        broken: dict[str, BaseException] = {}
        for key, training in trainings.items():
            if training.exception() is not None:  # waits for the training
                broken[key] = training.exception()
        for cell in pending:
            if cell.trained_at_its_cut:
                continue
            error = broken.get(cell.training_key)
            if isinstance(error, BrokenProcessPool):
                lost.append(cell)
            elif error is not None:
                failed(cell, f"its shared training failed: {failure_reason(error)}")
            else:
                futures[submit(executor, run_cell, cfg, cell, sweep_dir, classifiers[cell.seed])] = cell
        # inline futures run when asked, so in submission order; a pool's as they complete
        for future in (futures if inline else as_completed(futures)):
            error = future.exception()
            if error is None:
                finished(future.result())
            elif isinstance(error, BrokenProcessPool):
                lost.append(futures[future])
            else:
                failed(futures[future], error)
    return lost


def failure_reason(error: BaseException) -> str:
    """One line on why a cell failed: a user-fixable error's message, else the exception (for a Ray
    task, the exception it raised on its worker)."""
    cause = getattr(error, "cause", None) or error
    if isinstance(cause, SplitprivError):
        return str(cause)
    text = " ".join(str(cause).split())
    return f"{type(cause).__name__}: {text}"[:1000]


def write_frontier(sweep_dir: Path, cells: list[Cell]) -> list[dict]:
    """frontier.csv (grid order) and frontier.png from results.jsonl."""
    done = finished_rows(sweep_dir)
    rows = [{c: done[cell.key][c] for c in FRONTIER_COLUMNS} for cell in cells if cell.key in done]
    atomic_write_csv(sweep_dir / FRONTIER_CSV, rows, FRONTIER_COLUMNS)
    plot_frontier(rows, sweep_dir / FRONTIER_PNG, sweep_dir.name)
    return rows


FRONTIER_REQUIRED = ("cut_layer", "cut_name", "defense", "strength", "test_accuracy", "worst_mse_white_box",
                     "worst_ssim_white_box")
# a frontier from before threat models took each worst case over every attack: the white-box adversary's,
# which admits them all
BEFORE_THREAT_MODELS = {"worst_mse": "worst_mse_white_box", "worst_psnr": "worst_psnr_white_box",
                        "worst_ssim": "worst_ssim_white_box",
                        "reconstruction_classifier_accuracy": "reconstruction_classifier_accuracy_white_box"}


def read_frontier(path: Path) -> list[dict]:
    """A frontier.csv as rows of numbers and text; a file that is not one is a RunStateError naming it and the line."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames and "worst_mse" in reader.fieldnames and "worst_mse_white_box" not in reader.fieldnames:
                reader.fieldnames = [BEFORE_THREAT_MODELS.get(name, name) for name in reader.fieldnames]
            missing = [c for c in FRONTIER_REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise RunStateError(f"{path} is not a sweep frontier: it lacks the column(s) {missing}")
            rows = []
            for line, row in enumerate(reader, 2):
                parsed = {k: csv_value(v) for k, v in row.items() if k is not None}
                numbers = ("test_accuracy", "worst_mse_white_box", "worst_ssim_white_box")
                if not isinstance(parsed["cut_layer"], int) or any(not isinstance(parsed[c], (int, float)) for c in numbers):
                    raise RunStateError(f"{path}, line {line}: cut_layer must be an integer and {', '.join(numbers)} "
                                        f"numbers; the file is damaged: rerun the sweep to rewrite it")
                rows.append(parsed)
    except (UnicodeDecodeError, csv.Error) as error:
        raise RunStateError(f"{path} is not a readable CSV file ({error})") from None
    return rows


def plot_frontier(rows: list[dict], path: Path, title: str) -> None:
    atomic_save_figure(frontier_figure({title: rows}, title), path)


def row_adaptations(row: dict) -> list[str]:
    """The cell's adaptations other than none, e.g. ``['compression quantize_bits4']``: cells that
    differ in them are different cells, never seeds of one."""
    return [f"{k} {row[k]}" for k in ("compression", "exits") if row.get(k, NO_DEFENSE) != NO_DEFENSE]


def frontier_series(row: dict) -> str:
    """A row's series in the plot: the defense and its strength (with its unit), and the cell's adaptations if any."""
    defense = row["defense"] if row.get("strength") is None else f"{row['defense']} {row['strength_parameter']} {row['strength']:g}"
    return "+".join([defense, *row_adaptations(row)])


def seed_means(rows: list[dict], column: str) -> list[dict]:
    """One point per cell (cut and series) with ``column`` measured: the means over its seeds of
    ``column`` and the test accuracy, their standard deviations (0 for one seed) and the seed count."""
    cells: dict[tuple, list[dict]] = {}
    for row in rows:
        if row.get(column) is not None:
            cells.setdefault((row["cut_layer"], row["cut_name"], frontier_series(row)), []).append(row)
    points = []
    for (_, cut_name, series), seeds in cells.items():
        x, y = [r[column] for r in seeds], [r["test_accuracy"] for r in seeds]
        spread = statistics.stdev if len(seeds) > 1 else (lambda values: 0.0)
        points.append({"cut_name": cut_name, "series": series, "mse": statistics.fmean(x), "accuracy": statistics.fmean(y),
                       "mse_std": spread(x), "accuracy_std": spread(y), "seeds": len(seeds)})
    return points


FOLDER_MARKERS = "osD^vP*X"  # a marker shape per frontier when several share one plot


def frontier_figure(frontiers: dict[str, list[dict]], title: str):
    """One panel per threat model that some attack measured: accuracy against that adversary's
    worst-case MSE, a marker per cell (mean over seeds, with ± one standard deviation on both axes
    when there are several) coloured by defense and strength and labelled by cut; the undefended
    cells joined as a line. Several frontiers (name -> rows) share the panels, a marker shape each."""
    plt = pyplot()
    every_row = [row for rows in frontiers.values() for row in rows]
    series = list(dict.fromkeys(frontier_series(row) for row in every_row))
    colours = plt.get_cmap("tab10")
    measured = [m for m in THREAT_MODELS if any(r.get(f"worst_mse_{m}") is not None for r in every_row)] or list(THREAT_MODELS)
    figure, axes = plt.subplots(1, len(measured), figsize=(5.2 * len(measured), 4.6), sharey=True, squeeze=False)
    seed_counts = set()
    for axis, model in zip(axes[0], measured):
        panel = []
        for f, (name, rows) in enumerate(frontiers.items()):
            points = seed_means(rows, f"worst_mse_{model}")
            panel += points
            for i, label in enumerate(series):
                _draw_series(axis, sorted((p for p in points if p["series"] == label), key=lambda p: p["mse"]),
                             colours(i % 10), FOLDER_MARKERS[f % len(FOLDER_MARKERS)], label == NO_DEFENSE,
                             label if len(frontiers) == 1 else f"{name}: {label}")
        seed_counts |= {p["seeds"] for p in panel}
        errors = [p["mse"] for p in panel if p["mse"] > 0]
        if errors and max(errors) > 100 * min(errors):  # leakage spans decades from shallow to deep cuts
            axis.set_xscale("log")
        axis.set_xlabel(f"worst-case reconstruction MSE, {model}\n(higher = more private)")
        axis.set_title(model.replace("_", "-"))
    axes[0][0].set_ylabel("test accuracy")
    if axes[0][-1].get_legend_handles_labels()[0]:  # a sweep with no cell measured yet draws empty panels
        axes[0][-1].legend(fontsize=7)
    counts = sorted(seed_counts) or [1]
    spread = "" if counts[-1] == 1 else \
        f"; mean ± std over {counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} seeds"
    figure.suptitle(f"privacy-utility frontier per threat model: {title}{spread}")
    figure.tight_layout()
    return figure


def _draw_series(axis, points: list[dict], colour, marker: str, joined: bool, label: str) -> None:
    """The cells of one series (sorted by MSE) as markers, with their seeds' spread when there are several."""
    if not points:
        return
    several = any(p["seeds"] > 1 for p in points)
    axis.errorbar([p["mse"] for p in points], [p["accuracy"] for p in points],
                  xerr=[p["mse_std"] for p in points] if several else None,
                  yerr=[p["accuracy_std"] for p in points] if several else None,
                  fmt=f"-{marker}" if joined else marker, color=colour, label=label, alpha=0.85, capsize=2)
    for p in points:
        axis.annotate(p["cut_name"], (p["mse"], p["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")


def log_summary(cfg: SweepConfig, sweep_dir: Path, rows: list[dict]) -> None:
    wandb_cfg = base_run_config(cfg).wandb
    log_run(wandb_cfg, sweep_dir, f"{cfg.sweep_name()}-summary", "summary",
            {"dataset": cfg.dataset, "model": cfg.model, "sweep": dataclasses.asdict(cfg)}, {"cells": len(rows)},
            group=wandb_cfg.group, images={"frontier_plot": sweep_dir / FRONTIER_PNG}, tables={"frontier": rows})


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A plain-text table of frontier rows."""
    columns = columns or ["cut_layer", "cut_name", "defense", "strength", "seed", "test_accuracy",
                          *(f"worst_mse_{model}" for model in THREAT_MODELS), "worst_ssim_white_box",
                          "dcor_sq_bias_corrected", "message_dp_epsilon_per_sample", "parameter_dp_epsilon_per_sample"]
    headers = {"dcor_sq_bias_corrected": "dcor²_bc", "message_dp_epsilon_per_sample": "msg_eps/sample",
               "parameter_dp_epsilon_per_sample": "param_eps/sample",
               **{f"worst_mse_{model}": f"mse_{model}" for model in THREAT_MODELS}, "worst_ssim_white_box": "ssim_white_box"}

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
        return "-" if value is None else str(value)

    table = [[headers.get(c, c) for c in columns]] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)
