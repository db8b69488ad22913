"""Where to cut: enumerate placements, score latency, privacy and cost, pick one (the survey's eq. 1).

A *plan* places the model's blocks on a chain of devices (phone -> edge -> cloud, or device ->
cloud): one boundary per link, the boundary being the last block before the link (``raw``: the
input itself crosses; ``local``: nothing crosses). Each plan also fixes a link per hop, a defense
and strength at the first cut (from a sweep), a message compression and an early-exit rate.

Objectives, all to minimise:

* **L** - latency (:mod:`splitpriv.latency`, the survey's Sec. 2.2.1);
* **P** - leakage: the worst-case SSIM of the best attacker's reconstruction of the private test
  images from the message leaving the user's device, measured by ``splitpriv sweep`` for that cut
  and defense (0: nothing recognisable, 1: perfect copy; ``raw`` = 1, ``local`` = 0);
* **C** - money per request: each priced device paid for the seconds it computes (VMs and GPUs
  at their on-demand price, kept fully used - the survey's amortised IaaS cost), FaaS per GB-s
  plus its fee (:mod:`splitpriv.cost`).

Constraints: latency <= SLO, accuracy >= A_tar, leakage SSIM <= a ceiling and worst-case MSE >=
a floor (privacy constraints need a sweep), cost <= a budget. The recommended plan minimises::

    w_L * L~ + w_P * P~ + w_C * C~,   X~ = (X - min X) / (max X - min X) over the feasible plans

Without a sweep, privacy is unknown: the plan uses latency and cost only and says so.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.catalogue import Catalogue, Device
from splitpriv.transforms.compression import measured_message
from splitpriv.config import NON_NEGATIVE, POSITIVE_INT, check, from_dict, load_yaml, set_dotted
from splitpriv.cost import OPTIONAL_FRACTION, faas_price_per_s, iaas_price_per_s
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.exits import chosen_exits
from splitpriv.latency import Hop, chain_latency
from splitpriv.models import SplitModel
from splitpriv.profiling import BYTES_PER_ELEMENT, BlockProfile, profile_blocks
from splitpriv.store import atomic_save_figure, atomic_write_csv, pyplot
from splitpriv.prediction import PREDICTED_CSV, read_predictions
from splitpriv.sweep import read_frontier

RAW, LOCAL = "raw", "local"
OPTIONAL_POSITIVE = check(lambda v: v is None or v > 0, "a number > 0 (or null: no constraint)")


@dataclass
class Weights:
    latency: float = field(default=1.0, metadata=NON_NEGATIVE)
    privacy: float = field(default=1.0, metadata=NON_NEGATIVE)
    cost: float = field(default=1.0, metadata=NON_NEGATIVE)


@dataclass
class Scenario:
    """A planning scenario (``experiments/plan_*.yaml``); lists are options to enumerate."""

    name: str = "scenario"
    model: str = "vgg16"
    dataset: str = "cifar10"
    batch_size: int = field(default=1, metadata=POSITIVE_INT)
    training: bool = False  # the survey's Flag_Train: inference (exits) or training (backward + gradients)
    chain: list = field(default_factory=lambda: ["raspberry_pi_4b", "v100"])  # per position: a device or a list of options
    links: list = field(default_factory=lambda: [["lte", "wifi"]])  # per hop: a link or a list of options
    compression: list[str] = field(default_factory=lambda: ["fp32"])
    exit_rates: list[float] = field(default_factory=lambda: [0.0])  # beta at the first cut
    exits_run: str | None = None  # a run with exits.csv ('splitpriv exits'): its measured betas replace exit_rates
    compression_runs: list[str] = field(default_factory=list)  # trained runs with a compression: measured bytes at their cut
    input_bytes_per_element: int = field(default=1, metadata=check(lambda v: v in (1, 2, 4), "1 (8-bit image), 2 or 4"))
    slo_s: float | None = field(default=None, metadata=OPTIONAL_POSITIVE)
    target_accuracy: float | None = field(default=None, metadata=OPTIONAL_FRACTION)
    max_leakage_ssim: float | None = field(default=None, metadata=OPTIONAL_FRACTION)
    min_reconstruction_mse: float | None = field(default=None, metadata=OPTIONAL_POSITIVE)
    max_cost_per_1000: float | None = field(default=None, metadata=OPTIONAL_POSITIVE)
    threat_model: str = field(default="white_box", metadata=check(lambda v: v in THREAT_MODELS,
                                                                  f"one of {list(THREAT_MODELS)}"))  # whose leakage counts
    weights: Weights = field(default_factory=Weights)
    catalogue: list[str] = field(default_factory=list)  # extra catalogue YAML files
    plugins: list[str] = field(default_factory=list)  # python files registering models

    def options(self, catalogue: Catalogue) -> tuple[list[list[Device]], list[list[Hop]]]:
        """The device options per chain position and link options per hop, checked by name."""
        if len(self.chain) < 2:
            raise ConfigError("chain", self.chain, "at least two devices (e.g. [raspberry_pi_4b, v100])")
        if len(self.links) != len(self.chain) - 1:
            raise ConfigError("links", self.links, f"{len(self.chain) - 1} link(s): one per hop of the chain {self.chain}")
        devices = [[catalogue.device(n, f"chain[{i}]") for n in _as_list(entry)] for i, entry in enumerate(self.chain)]
        links = [[catalogue.link(n, f"links[{i}]") for n in _as_list(entry)] for i, entry in enumerate(self.links)]
        for level in self.compression:
            if level not in BYTES_PER_ELEMENT:
                raise ConfigError("compression", level, f"one of {list(BYTES_PER_ELEMENT)}")
        for rate in self.exit_rates:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ConfigError("exit_rates", rate, "early-exit rates in [0, 1)")
        if self.training and any(self.exit_rates):
            raise ConfigError("exit_rates", self.exit_rates, "[0.0] when training: there are no early exits in training")
        if self.training and self.exits_run:
            raise ConfigError("exits_run", self.exits_run, "null when training: there are no early exits in training")
        return devices, links


def _as_list(entry) -> list:
    return list(entry) if isinstance(entry, list) else [entry]


def load_scenario(path: str | None, overrides: dict | None = None) -> Scenario:
    values = load_yaml(path) if path else {}
    for dotted_key, value in (overrides or {}).items():
        set_dotted(values, dotted_key, value)
    return from_dict(Scenario, values)


# ----------------------------------------------------------------------------- sweep results


@dataclass(frozen=True)
class Outcome:
    """What a sweep measured for one (cut, defense, strength): worst case over seeds and attacks."""

    accuracy: float
    leakage_ssim: float
    worst_mse: float
    message_dp_epsilon_per_sample: float = math.nan  # dp_noise: the messages' privacy per person; nan: none
    parameter_dp_epsilon_per_sample: float = math.nan  # dp_sgd: the client parameters' privacy per person


@dataclass
class SweepResults:
    path: Path
    outcomes: dict[tuple[int, str, str], Outcome]  # (cut_layer, defense, strength)
    source: str = "measured"  # or "predicted": splitpriv predict's predicted.csv, no measured frontier yet

    @property
    def undefended_accuracy(self) -> float:
        values = [o.accuracy for (_, defense, _), o in self.outcomes.items() if defense == "none"]
        return sum(values) / len(values) if values else math.nan


def load_sweep(folder: str | Path, model: str, dataset: str, threat_model: str = "white_box") -> SweepResults:
    """Read ``frontier.csv`` + ``sweep.yaml`` of a sweep, or without a measured frontier the
    ``predicted.csv`` of ``splitpriv predict``; refuse one of another model or data set. Leakage is
    the worst case against ``threat_model``."""
    folder = Path(folder)
    frontier, predicted, description = folder / "frontier.csv", folder / PREDICTED_CSV, folder / "sweep.yaml"
    measured = frontier.exists()
    for file in (frontier if measured or not predicted.exists() else predicted, description):
        if not file.exists():
            raise SplitprivError(f"--sweep {folder}: {file} is missing; run 'splitpriv sweep' (measured leakage) or "
                                 f"'splitpriv predict' (predicted leakage) with the folder's parent as --out first")
    sweep = load_yaml(description, "sweep record")
    for key, wanted in (("model", model), ("dataset", dataset)):
        if sweep.get(key) != wanted:
            raise SplitprivError(f"--sweep {folder} measured {key} {sweep.get(key)!r} but the scenario plans {key} "
                                 f"{wanted!r}: leakage does not transfer between {key}s. Sweep {wanted!r} or change the scenario.")
    grouped: dict[tuple[int, str, str], list[dict]] = {}
    for row in read_frontier(frontier) if measured else read_predictions(predicted):
        if (row.get("compression") or "none") != "none" or (row.get("exits") or "none") != "none":
            continue  # adaptation cells; measured adaptations enter through compression_runs / exits_run
        strength = "" if row["strength"] is None else " ".join(filter(None, [row.get("strength_parameter"), f"{row['strength']:g}"]))
        grouped.setdefault((row["cut_layer"], row["defense"], strength), []).append(row)
    ssim, mse = f"worst_ssim_{threat_model}", f"worst_mse_{threat_model}"
    unmeasured = sorted({key for key, rows in grouped.items() if any(r.get(ssim) is None or r.get(mse) is None for r in rows)})
    if unmeasured:
        raise SplitprivError(f"--sweep {folder} has no {threat_model} attack for {unmeasured[:3]}: its attack set had none "
                             f"within that adversary's means; plan with another threat_model or rerun the sweep with one")
    outcomes = {
        key: Outcome(
            accuracy=sum(float(r["test_accuracy"]) for r in rows) / len(rows),
            leakage_ssim=min(1.0, max(0.0, max(float(r[ssim]) for r in rows))),
            worst_mse=min(float(r[mse]) for r in rows),
            message_dp_epsilon_per_sample=_largest(rows, "message_dp_epsilon_per_sample"),
            parameter_dp_epsilon_per_sample=_largest(rows, "parameter_dp_epsilon_per_sample"),
        )
        for key, rows in grouped.items()
    }
    return SweepResults(folder, outcomes, "measured" if measured else "predicted")


def _largest(rows: list[dict], column: str) -> float:
    """The largest value of ``column`` over seeds (the weakest guarantee); nan when no row has one."""
    values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
    return max(values) if values else math.nan


# ----------------------------------------------------------------------------- measured adaptations


@dataclass(frozen=True)
class MessageOption:
    """How the message leaving the user's device is sent: a numeric format at any cut, or a
    compression run's measured bytes at the cut it was trained at."""

    label: str
    kappa: float = 0.0  # quantisation / sparsification
    gamma: float = 0.0  # a learned bottleneck
    gradient_kappa: float = 0.0  # the gradient's, in training: 0 for a quantiser (its gradient goes back dense)
    block: int | None = None  # None: any cut
    accuracy: float = math.nan  # measured by the compression run; nan: not measured


def _same_model(path: str, model: str, dataset: str, scenario: Scenario, key: str) -> None:
    if (model, dataset) != (scenario.model, scenario.dataset):
        raise SplitprivError(f"{key}: {path} trained {model} on {dataset} but the scenario plans {scenario.model} "
                             f"on {scenario.dataset}; measured rates do not transfer between models")


def message_options(scenario: Scenario, shape: ModelShape) -> list[MessageOption]:
    """The scenario's formats, plus each compression run: 1 - kappa (or 1 - gamma) = measured
    serialised bytes / fp32 bytes of the message at its cut."""
    options = [MessageOption(level, kappa=1 - BYTES_PER_ELEMENT[level] / BYTES_PER_ELEMENT["fp32"]) for level in scenario.compression]
    block_of = {cut: block for block, cut in shape.cut_blocks.items()}
    for path in scenario.compression_runs:
        measured = measured_message(path)
        _same_model(path, measured.model, measured.dataset, scenario, "compression_runs")
        block = block_of[measured.cut_layer]
        fp32_per_sample = shape.blocks[block].output_elements * BYTES_PER_ELEMENT["fp32"] / scenario.batch_size
        rate = 1 - measured.bytes_per_sample / fp32_per_sample
        reduced = 1 - rate if measured.learned_reduction else 1.0  # gamma shrinks the gradient too
        gradient_rate = 1 - measured.gradient_bytes_per_sample / (fp32_per_sample * reduced)
        options.append(MessageOption(measured.label, kappa=0.0 if measured.learned_reduction else rate,
                                     gamma=rate if measured.learned_reduction else 0.0, block=block,
                                     accuracy=measured.test_accuracy, gradient_kappa=max(0.0, gradient_rate)))
    return options


def exit_options(scenario: Scenario, names: list[str]) -> Callable[[int], list[tuple[float, float]]]:
    """first boundary block -> [(beta, accuracy)]: the typed exit rates (accuracy unknown), or the
    exits run's chosen thresholds, where beta = the share of samples leaving at exits up to the
    boundary (they never cross it) and accuracy is the calibrated overall accuracy."""
    if not scenario.exits_run:
        return lambda first: [(rate, math.nan) for rate in scenario.exit_rates]
    config = load_yaml(Path(scenario.exits_run) / "config.yaml")
    _same_model(scenario.exits_run, config["model"]["name"], config["data"]["dataset"], scenario, "exits_run")
    rates, accuracy = chosen_exits(scenario.exits_run)
    return lambda first: [(sum(beta for name, beta in rates.items() if name in names and names.index(name) <= first), accuracy)]


def _lowest_known(*values: float) -> float:
    """The lowest measured accuracy of a plan's parts (conservative); nan when none is known."""
    known = [v for v in values if not math.isnan(v)]
    return min(known) if known else math.nan


# ----------------------------------------------------------------------------- plans


@dataclass
class Plan:
    devices: tuple[str, ...]
    links: tuple[str, ...]
    boundaries: tuple[str, ...]  # per link: the block before it, or raw / local
    first_cut_layer: int | None  # the cut index of the message leaving the user's device
    defense: str
    strength: str
    compression: str
    exit_rate: float
    latency_s: float  # expected over requests (exits discount every later hop and partition)
    processing_s: tuple[float, ...]
    transmission_s: tuple[float, ...]
    cost_per_request: float
    accuracy: float  # nan: unknown (no sweep)
    leakage_ssim: float  # nan: unknown
    worst_mse: float
    message_dp_epsilon_per_sample: float = math.nan
    parameter_dp_epsilon_per_sample: float = math.nan
    full_path_latency_s: float = math.nan  # a request that runs every partition: what the SLO checks
    violations: dict[str, float] = field(default_factory=dict)  # constraint -> relative violation
    score: float = math.nan
    pareto: bool = False

    @property
    def feasible(self) -> bool:
        return not self.violations

    @property
    def cost_per_1000(self) -> float:
        return 1000 * self.cost_per_request

    def describe(self) -> str:
        """e.g. ``raspberry_pi_4b =[features_4_pool via lte]=> v100; none, int8, exit 0``."""
        chain = self.devices[0]
        for boundary, link, device in zip(self.boundaries, self.links, self.devices[1:]):
            chain += f" =[unused {link}]=> {device}" if boundary == LOCAL else f" =[{boundary} via {link}]=> {device}"
        defense = self.defense + (f" {self.strength}" if self.strength else "")
        return f"{chain}; {defense}, {self.compression}, exit {self.exit_rate:g}"

    def row(self) -> dict:
        return {
            "devices": " > ".join(self.devices), "links": " > ".join(self.links), "boundaries": " > ".join(self.boundaries),
            "first_cut_layer": "" if self.first_cut_layer is None else self.first_cut_layer,
            "defense": self.defense, "strength": self.strength, "compression": self.compression,
            "exit_rate": self.exit_rate, "latency_s": self.latency_s, "full_path_latency_s": self.full_path_latency_s,
            "processing_s": " ".join(f"{t:.6g}" for t in self.processing_s),
            "transmission_s": " ".join(f"{t:.6g}" for t in self.transmission_s),
            "cost_per_1000": self.cost_per_1000, "accuracy": self.accuracy, "leakage_ssim": self.leakage_ssim,
            "worst_mse": self.worst_mse, "message_dp_epsilon_per_sample": self.message_dp_epsilon_per_sample,
            "parameter_dp_epsilon_per_sample": self.parameter_dp_epsilon_per_sample, "feasible": self.feasible,
            "violations": " ".join(f"{k}:{v:.3g}" for k, v in self.violations.items()),
            "score": self.score, "pareto": self.pareto,
        }


def request_cost(processing_s: Sequence[float], devices: Sequence[Device], catalogue: Catalogue) -> float:
    """USD per request: priced devices paid per busy second (amortised), FaaS per GB-s and per call."""
    total = 0.0
    for seconds, device in zip(processing_s, devices):
        if device.name in catalogue.faas and seconds > 0:
            function = catalogue.faas[device.name]
            total += faas_price_per_s(function.memory_mb, function.price_per_gb_s) * seconds + function.price_per_request
        elif device.price_per_hour is not None:
            total += iaas_price_per_s(device.price_per_hour) * seconds
    return total


@dataclass
class ModelShape:
    """What the planner needs of the model: per-block FLOPs and output sizes, the cut blocks."""

    blocks: list[BlockProfile]
    cut_blocks: dict[int, int]  # block index -> cut index
    input_elements: int  # per batch


def model_shape(model: SplitModel, input_shape: Sequence[int], batch_size: int) -> ModelShape:
    blocks = profile_blocks(model, input_shape, batch_size)
    cut_blocks = {model.block_names.index(c.name): c.index for c in model.cut_points(input_shape)}
    return ModelShape(blocks, cut_blocks, batch_size * math.prod(input_shape))


def _boundary_options(shape: ModelShape) -> list[int]:
    return [-1, *sorted(shape.cut_blocks), len(shape.blocks) - 1]


def _privacy_options(first_boundary: int, shape: ModelShape, sweep: SweepResults | None) -> list[tuple[str, str, Outcome | None]]:
    """(defense, strength, outcome) choices for the message leaving the user's device."""
    last = len(shape.blocks) - 1
    if sweep is None:
        return [("none", "", None)]
    accuracy = sweep.undefended_accuracy
    if first_boundary == -1:
        return [("none", "", Outcome(accuracy, 1.0, 0.0))]
    if first_boundary == last:
        return [("none", "", Outcome(accuracy, 0.0, math.inf))]
    cut = shape.cut_blocks[first_boundary]
    return [(d, s, o) for (c, d, s), o in sorted(sweep.outcomes.items()) if c == cut]


def block_flops(shape: ModelShape, training: bool) -> list[float]:
    """FLOPs_pid's terms per block: forward, or in training forward + backward (the first block computes
    no gradient for the input)."""
    flops = [b.flops_train_input_grad if training else b.flops_forward for b in shape.blocks]
    if training:
        flops[0] = shape.blocks[0].flops_train_no_input_grad
    return flops


def enumerate_plans(scenario: Scenario, catalogue: Catalogue, shape: ModelShape, sweep: SweepResults | None) -> list[Plan]:
    device_options, link_options = scenario.options(catalogue)
    names = [b.name for b in shape.blocks]
    flops = block_flops(shape, scenario.training)
    input_bytes = shape.input_elements * scenario.input_bytes_per_element
    output_bytes = [b.output_elements * BYTES_PER_ELEMENT["fp32"] for b in shape.blocks]
    last = len(shape.blocks) - 1
    messages, exits = message_options(scenario, shape), exit_options(scenario, names)
    plans = []
    hops_count = len(link_options)
    for boundaries in itertools.combinations_with_replacement(_boundary_options(shape), hops_count):
        first = boundaries[0]
        crosses = -1 < first < last
        # an idle device or an unused link does not change the plan: keep one option of each
        edges = [-1, *boundaries, last]
        devices_used = [options if edges[i + 1] > edges[i] else options[:1] for i, options in enumerate(device_options)]
        links_used = [options if b < last else options[:1] for b, options in zip(boundaries, link_options)]
        for devices, links in itertools.product(itertools.product(*devices_used), itertools.product(*links_used)):
            message_choices = [m for m in messages if m.block in (None, first)] if crosses else [MessageOption("fp32")]
            for message, (exit_rate, exit_accuracy) in itertools.product(message_choices, exits(first) if crosses else [(0.0, math.nan)]):
                hops = [Hop(link.bandwidth_bytes_per_s, link.rtt_s, message.kappa if i == 0 else 0.0,
                            exit_rate if i == 0 else 0.0, message.gamma if i == 0 else 0.0,
                            message.gradient_kappa if i == 0 else 0.0) for i, link in enumerate(links)]
                latency = chain_latency(flops, output_bytes, input_bytes, boundaries,
                                        [d.flops_per_s for d in devices], hops, scenario.training)
                cost = request_cost(latency.processing_s, devices, catalogue)
                for defense, strength, outcome in _privacy_options(first, shape, sweep):
                    plans.append(Plan(
                        devices=tuple(d.name for d in devices), links=tuple(l.name for l in links),
                        boundaries=tuple(RAW if b == -1 else LOCAL if b == last else names[b] for b in boundaries),
                        first_cut_layer=shape.cut_blocks.get(first), defense=defense, strength=strength,
                        compression=message.label, exit_rate=exit_rate, latency_s=latency.total_s,
                        full_path_latency_s=latency.full_path_s,
                        processing_s=latency.processing_s, transmission_s=latency.transmission_s,
                        cost_per_request=cost,
                        accuracy=_lowest_known(outcome.accuracy if outcome else math.nan, message.accuracy, exit_accuracy),
                        leakage_ssim=outcome.leakage_ssim if outcome else math.nan,
                        worst_mse=outcome.worst_mse if outcome else math.nan,
                        message_dp_epsilon_per_sample=outcome.message_dp_epsilon_per_sample if outcome else math.nan,
                        parameter_dp_epsilon_per_sample=outcome.parameter_dp_epsilon_per_sample if outcome else math.nan,
                    ))
    return plans


def apply_constraints(plans: list[Plan], scenario: Scenario) -> None:
    """Record each violated constraint with its relative size (0.5 = 50 % beyond the limit)."""
    for plan in plans:
        plan.violations = {}
        checks = [
            # the deadline of a request that runs every partition, as `splitpriv cost` checks it
            ("slo_s", plan.full_path_latency_s, scenario.slo_s, "max"),
            ("max_cost_per_1000", plan.cost_per_1000, scenario.max_cost_per_1000, "max"),
            ("target_accuracy", plan.accuracy, scenario.target_accuracy, "min"),
            ("max_leakage_ssim", plan.leakage_ssim, scenario.max_leakage_ssim, "max"),
            ("min_reconstruction_mse", plan.worst_mse, scenario.min_reconstruction_mse, "min"),
        ]
        for name, value, limit, kind in checks:
            if limit is None or math.isnan(value):
                continue
            excess = (value - limit) if kind == "max" else (limit - value)
            if excess > 0:
                plan.violations[name] = excess / limit if limit else math.inf


def _normalised(values: list[float]) -> list[float]:
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]


def objectives(plan: Plan, with_privacy: bool) -> tuple[float, ...]:
    return (plan.latency_s, plan.leakage_ssim, plan.cost_per_request) if with_privacy else (plan.latency_s, plan.cost_per_request)


def score_plans(plans: list[Plan], weights: Weights, with_privacy: bool) -> None:
    """score = w_L * L~ + w_P * P~ + w_C * C~ over ``plans`` (min-max normalised among them)."""
    if not plans:
        return
    latency = _normalised([p.latency_s for p in plans])
    cost = _normalised([p.cost_per_request for p in plans])
    privacy = _normalised([p.leakage_ssim for p in plans]) if with_privacy else [0.0] * len(plans)
    for plan, l, p, c in zip(plans, latency, privacy, cost):
        plan.score = weights.latency * l + (weights.privacy * p if with_privacy else 0.0) + weights.cost * c


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def mark_pareto(plans: list[Plan], with_privacy: bool) -> None:
    points = [objectives(p, with_privacy) for p in plans]
    for plan, point in zip(plans, points):
        plan.pareto = not any(dominates(other, point) for other in points)


@dataclass
class PlanResult:
    plans: list[Plan]
    with_privacy: bool
    recommended: Plan | None
    nearest: Plan | None = None  # when nothing is feasible: the plan closest to feasibility
    binding_constraint: str = ""

    @property
    def pareto_front(self) -> list[Plan]:
        return sorted((p for p in self.plans if p.pareto), key=lambda p: p.latency_s)


def plan(scenario: Scenario, catalogue: Catalogue, shape: ModelShape, sweep: SweepResults | None) -> PlanResult:
    """Enumerate, constrain, score and rank; the recommended plan minimises the weighted score."""
    plans = enumerate_plans(scenario, catalogue, shape, sweep)
    apply_constraints(plans, scenario)
    feasible = [p for p in plans if p.feasible]
    with_privacy = sweep is not None
    score_plans(feasible, scenario.weights, with_privacy)
    mark_pareto(feasible, with_privacy)
    if feasible:
        return PlanResult(plans, with_privacy, min(feasible, key=lambda p: (p.score, p.latency_s)))
    nearest = min(plans, key=lambda p: sum(min(v, 1e9) for v in p.violations.values()))
    binding = max(nearest.violations, key=nearest.violations.get)
    return PlanResult(plans, with_privacy, None, nearest, binding)


def write_plan_csv(result: PlanResult, path: Path) -> None:
    rows = [p.row() for p in sorted(result.plans, key=lambda p: (not p.feasible, p.score if p.feasible else math.inf))]
    atomic_write_csv(path, rows)


def plot_plans(result: PlanResult, path: Path, title: str) -> None:
    """Latency against leakage (or against cost without a sweep), cost as colour; front circled."""
    plt = pyplot()
    import matplotlib.ticker

    feasible = [p for p in result.plans if p.feasible] or result.plans
    figure, axes = plt.subplots(figsize=(7, 4.5))
    y_label = "worst-case leakage (SSIM of the best reconstruction)" if result.with_privacy else "cost per 1,000 requests (USD)"
    y = [p.leakage_ssim if result.with_privacy else p.cost_per_1000 for p in feasible]
    points = axes.scatter([p.latency_s * 1e3 for p in feasible], y, c=[p.cost_per_1000 for p in feasible],
                          cmap="viridis", s=14)
    figure.colorbar(points, ax=axes, label="USD per 1,000 requests")
    front = [p for p in feasible if p.pareto]
    axes.scatter([p.latency_s * 1e3 for p in front], [p.leakage_ssim if result.with_privacy else p.cost_per_1000 for p in front],
                 facecolors="none", edgecolors="red", s=60, label="Pareto front")
    if result.recommended:
        best = result.recommended
        axes.scatter([best.latency_s * 1e3], [best.leakage_ssim if result.with_privacy else best.cost_per_1000],
                     marker="*", c="red", s=200, label="recommended")
    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
    axes.set_xlabel("latency (ms, log)")
    axes.set_ylabel(y_label)
    axes.set_title(title if result.with_privacy else f"{title} (privacy unknown: no sweep)")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    atomic_save_figure(figure, path)
