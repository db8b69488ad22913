"""Early exits: internal classifiers at cut points, and inference with confidence thresholds.

Training (BranchyNet, Teerapittayanon et al. 2016; Shallow-Deep Networks, Kaya et al. 2019):
an internal classifier (pooling, then a small classifier) is attached after each listed cut point
and trained jointly with the final classifier on a weighted sum of losses

    L = CE(f_final(x), y) + sum_i tau_i * CE(f_i(x), y)

Exits before the network cut run on the client (their loss joins the client's objective), exits
after it on the server. ``tau_i`` is ``weight`` (schedule ``constant``) or SDN's schedule
(``sdn``): tau_i grows linearly from 0.01 to d_i, the exit's relative depth (block position /
number of blocks), over the epochs.

Inference: a sample leaves at the first exit whose confidence reaches its threshold alpha_i
(max softmax probability, or 1 - H(p) / log(C) for ``entropy`` so both live in [0, 1]); the final
classifier takes the rest. Per exit: the exit rate beta_i (sum_i beta_i = 1 with the final exit) and
the accuracy of the samples that left there; overall: accuracy, mean FLOPs and mean bytes sent
per sample (nothing is sent for samples that leave on the client).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from splitpriv.errors import ConfigError, RunStateError, SplitprivError

FINAL = "final"


class InternalClassifier(nn.Sequential):
    """Feature reduction by adaptive average pooling (4-D features), then a small classifier."""

    def __init__(self, feature_shape: tuple[int, ...], num_classes: int, pool_size: int = 2, hidden: int = 0):
        layers: list[nn.Module] = []
        features = math.prod(feature_shape)
        if len(feature_shape) == 3:
            side = min(pool_size, feature_shape[1], feature_shape[2])
            layers.append(nn.AdaptiveAvgPool2d(side))
            features = feature_shape[0] * side * side
        layers.append(nn.Flatten())
        if hidden:
            layers += [nn.Linear(features, hidden), nn.ReLU()]
            features = hidden
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


@dataclass(frozen=True)
class ExitWeights:
    """The loss weight tau_i of each internal classifier (see the module docstring)."""

    weight: float = 1.0
    schedule: str = "constant"
    depth: tuple[tuple[str, float], ...] = ()  # (block name, relative depth d_i)

    def __call__(self, name: str, epoch: int, max_epochs: int) -> float:
        if self.schedule == "constant":
            return self.weight
        progress = min(1.0, epoch / max(max_epochs - 1, 1))
        return 0.01 + (dict(self.depth)[name] - 0.01) * progress


def build_exits(model, exits_cfg, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.ModuleDict, ExitWeights]:
    """Internal classifiers at ``exits_cfg.at`` (cut indices or names), keyed by block name."""
    cut_points = model.cut_points(input_shape)
    heads, depth = {}, []
    for i, cut in enumerate(exits_cfg.at):
        try:
            point = cut_points[model.cut_index(cut)]
        except ConfigError as error:
            raise ConfigError(f"exits.at[{i}]", cut, error.allowed) from None
        if point.name in heads:
            raise ConfigError(f"exits.at[{i}]", cut, "each cut point at most once")
        heads[point.name] = InternalClassifier(point.output_shape, num_classes, exits_cfg.pool_size, exits_cfg.hidden)
        depth.append((point.name, (model.block_names.index(point.name) + 1) / len(model.block_names)))
    ordered = sorted(heads, key=model.block_names.index)
    return nn.ModuleDict({n: heads[n] for n in ordered}), ExitWeights(exits_cfg.weight, exits_cfg.schedule, tuple(depth))


def run_blocks(blocks: nn.Sequential, heads: nn.ModuleDict, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``blocks(h)`` and the logits of every internal classifier attached among them, in order."""
    if not heads:  # no exits: exactly the plain forward (and whatever wraps ``blocks``)
        return blocks(h), []
    exit_logits = []
    for name, block in blocks.named_children():
        h = block(h)
        if name in heads:
            exit_logits.append(heads[name](h))
    return h, exit_logits


def confidence(logits: torch.Tensor, kind: str = "max_softmax") -> torch.Tensor:
    """Per-sample confidence in [0, 1]: max softmax probability, or 1 - H(p) / log(C)."""
    probabilities = F.softmax(logits, dim=1)
    if kind == "max_softmax":
        return probabilities.amax(dim=1)
    if kind == "entropy":
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
        return 1 - entropy / math.log(logits.shape[1])
    raise ConfigError("confidence", kind, "'max_softmax' or 'entropy'")


# ----------------------------------------------------------------------------- inference


@dataclass
class ExitOutputs:
    """Every exit evaluated on every sample (columns: internal classifiers in order, then final)."""

    names: list[str]
    confidence: np.ndarray  # (N, E)
    correct: np.ndarray  # (N, E) bool
    flops: np.ndarray  # (E,) FLOPs per sample when leaving at each exit
    bytes_sent: np.ndarray  # (E,) bytes per sample sent across the cut when leaving at each exit


def _flops(function, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        function(*inputs)
    return counter.get_total_flops()


def exit_costs(split_module, input_shape: tuple[int, ...]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(exit names, FLOPs per sample, bytes sent per sample) for leaving at each exit.

    A sample leaving at exit i has run every block up to it and every earlier classifier; it is
    sent across the cut only if exit i lies on the server.
    """
    heads = {**split_module.client_exits, **split_module.server_exits}
    names, flops, sent = [], [], []
    total, crossed = 0, False
    h = torch.zeros(1, *input_shape)
    with torch.no_grad():
        for part, is_server in ((split_module.client, False), (split_module.server, True)):
            if is_server:  # the defenses and compressions at the cut (e.g. a bottleneck's layers)
                total += _flops(lambda a: split_module.defend(a, training=False), h)
                h = split_module.defend(h, training=False)
                crossed = True
            for name, block in part.named_children():
                total += _flops(block, h)
                h = block(h)
                if name in heads:
                    total += _flops(heads[name], h)
                    names.append(name)
                    flops.append(total)
                    sent.append(crossed)
    message_bytes = split_module.wire_bytes(split_module.send(torch.zeros(2, *input_shape), training=False)[1], training=False)
    names.append(FINAL)
    flops.append(total)
    sent.append(True)
    return names, np.array(flops, dtype=float), np.array([message_bytes if s else 0.0 for s in sent])


@torch.no_grad()
def collect(split_module, dataset, input_shape: tuple[int, ...], kind: str = "max_softmax", batch_size: int = 512) -> ExitOutputs:
    """Run every exit on every sample of ``dataset`` (inference as deployed)."""
    split_module.eval()
    names, flops, bytes_sent = exit_costs(split_module, input_shape)
    confidences, correct = [], []
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        logits = split_module.all_exit_logits(x)
        confidences.append(torch.stack([confidence(l, kind) for l in logits], 1))
        correct.append(torch.stack([l.argmax(1) == y for l in logits], 1))
    return ExitOutputs(names, torch.cat(confidences).numpy(), torch.cat(correct).numpy(), flops, bytes_sent)


def evaluate(outputs: ExitOutputs, thresholds: list[float] | np.ndarray) -> dict:
    """Thresholds alpha_i of the internal classifiers -> beta and accuracy per exit, overall figures."""
    alphas = np.asarray(thresholds, dtype=float)
    passes = np.concatenate([outputs.confidence[:, :-1] >= alphas, np.ones((len(outputs.correct), 1), bool)], 1)
    exit_at = passes.argmax(axis=1)  # the first exit whose confidence reaches its threshold
    correct = outputs.correct[np.arange(len(exit_at)), exit_at]
    record = {f"alpha_{n}": float(a) for n, a in zip(outputs.names, alphas)}
    for e, name in enumerate(outputs.names):
        left = exit_at == e
        record[f"beta_{name}"] = float(left.mean())
        record[f"accuracy_{name}"] = float(correct[left].mean()) if left.any() else float("nan")
    record.update(accuracy=float(correct.mean()), early_exit_rate=float((exit_at < len(outputs.names) - 1).mean()),
                  client_exit_rate=float((outputs.bytes_sent[exit_at] == 0).mean()),  # never crossed the cut
                  mean_flops=float(outputs.flops[exit_at].mean()), mean_bytes=float(outputs.bytes_sent[exit_at].mean()))
    return record


def threshold_grid(num_exits: int, max_combinations: int = 10_000) -> np.ndarray:
    """Candidate thresholds per exit: an even grid on [0, 1] plus 1.01 (never exit early)."""
    points = int(np.clip(round(max_combinations ** (1 / max(num_exits, 1))), 3, 21))
    return np.append(np.linspace(0, 1, points), 1.01)


def sweep(outputs: ExitOutputs) -> list[dict]:
    """Every combination of grid thresholds, evaluated."""
    grid = threshold_grid(len(outputs.names) - 1)
    return [evaluate(outputs, combo) for combo in itertools.product(grid, repeat=len(outputs.names) - 1)]


def choose(records: list[dict], target_accuracy: float) -> dict | None:
    """The most early exits subject to accuracy >= ``target_accuracy`` (ties: higher accuracy,
    then fewer FLOPs); None when no thresholds reach it."""
    feasible = [r for r in records if r["accuracy"] >= target_accuracy]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (r["early_exit_rate"], r["accuracy"], -r["mean_flops"]))


def chosen_exits(run_path: str | Path) -> tuple[dict[str, float], float]:
    """(beta per exit - block name, and ``final`` -, validation accuracy) at the thresholds
    ``splitpriv exits`` chose, read from the run's ``exits.csv`` (for the planner)."""
    import csv

    path = Path(run_path) / "exits.csv"
    if not path.exists():
        raise SplitprivError(f"{path} is missing: run 'splitpriv exits --run {run_path} --target-accuracy A' first")
    with path.open() as handle:
        chosen = [row for row in csv.DictReader(handle) if row.get("chosen") == "True"]
    if not chosen:
        raise SplitprivError(f"{path} holds no chosen thresholds (the target accuracy was infeasible); "
                             "rerun 'splitpriv exits' with a reachable --target-accuracy")
    try:
        rates = {key[len("beta_"):]: float(value) for key, value in chosen[0].items() if key.startswith("beta_")}
        return rates, float(chosen[0]["accuracy"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunStateError(f"{path} is damaged ({type(error).__name__}: {error}); rerun 'splitpriv exits --run {run_path}'") from None
