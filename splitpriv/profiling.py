"""Profile every cut of a split model: message sizes, FLOPs, parameters and measured time.

Sizes follow from the shapes (exact): the message of a cut holds ``batch x prod(output_shape)``
elements, 4 bytes each in fp32, 2 in fp16, 1 in int8. FLOPs are counted by torch's
``FlopCounterMode`` (2 per multiply-add; matmul and convolution only, element-wise layers count 0)
on ``meta`` tensors, so counting costs no arithmetic. Training FLOPs are forward + backward as split
training runs them: the client's first block computes no input gradient, the server's first block
does (its input gradient is the gradient sent back across the cut).

Calibration (Neurosurgeon-style, Kang et al. ASPLOS 2017): per layer type, a linear regression
of measured block time on the block's FLOPs (on its output elements for FLOP-free layers such as
ReLU and pooling); the fit's R^2, and the error of the resulting latency prediction against the
measured end-to-end split forward at every cut.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from splitpriv.errors import ConfigError
from splitpriv.models import SplitModel
from splitpriv.store import atomic_save_figure, atomic_write_csv, pyplot

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}


def machine_memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_in_memory(activation_bytes: int, what: str, copies: int = 3) -> None:
    """Refuse work whose largest activation (``copies`` of it: input, output and gradient) exceeds
    this machine's memory, before anything is allocated."""
    needed, available = copies * activation_bytes, machine_memory_bytes()
    if needed > available:
        raise ConfigError(what.split(" ")[0], what, f"a size whose activations fit in memory: it needs about "
                          f"{needed / 2**30:,.1f} GiB, this machine has {available / 2**30:,.1f} GiB")


@dataclass(frozen=True)
class BlockProfile:
    """One block of the model for a whole batch: FLOPs (forward; forward + backward with and
    without its input's gradient), parameters and output size."""

    name: str
    layer_type: str
    output_shape: tuple[int, ...]
    output_elements: int  # for the whole batch
    flops_forward: int
    flops_train_input_grad: int
    flops_train_no_input_grad: int
    params: int
    param_bytes: int


@dataclass
class CutProfile:
    """One row of ``profile.csv``: the client runs blocks up to and including the cut layer."""

    cut_layer: int
    cut_name: str
    layer_type: str
    output_shape: str
    activation_bytes_fp32: int
    activation_bytes_fp16: int
    activation_bytes_int8: int
    client_flops_forward: int
    server_flops_forward: int
    client_flops_train: int
    server_flops_train: int
    client_params: int
    server_params: int
    client_param_bytes: int
    server_param_bytes: int
    client_time_s: float = float("nan")
    server_time_s: float = float("nan")


def count_flops(module: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, backward: bool = False) -> int:
    """FLOPs of ``module(inputs)`` (and of its backward pass when ``backward``), torch's counter;
    ``module`` may be any callable, e.g. a run's deployed client ``run.send``."""
    with FlopCounterMode(display=False) as counter:
        output = module(inputs)
        if backward and output.requires_grad:
            output.sum().backward()
    return int(counter.get_total_flops())


def _param_counts(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def profile_blocks(model: SplitModel, input_shape: Sequence[int], batch_size: int) -> list[BlockProfile]:
    """Per block FLOPs, parameters and output shapes, counted on a ``meta`` copy of the model."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    profiles = []
    h = torch.zeros(batch_size, *input_shape, device="meta")
    for name, block in meta_model.blocks.named_children():
        train_flops = {}
        for needs_input_grad in (True, False):
            x = h.detach().requires_grad_(needs_input_grad).clone()  # not a leaf: in-place ReLUs stay legal
            train_flops[needs_input_grad] = count_flops(block, x, backward=True)
        forward = count_flops(block, h)
        with torch.no_grad():
            h = block(h)
        params, param_bytes = _param_counts(block)
        profiles.append(BlockProfile(name, type(block).__name__, tuple(h.shape[1:]), h.numel(), forward,
                                     train_flops[True], train_flops[False], params, param_bytes))
    return profiles


def _train_flops(blocks: Sequence[BlockProfile], input_needs_grad: bool) -> int:
    """Forward + backward FLOPs of consecutive blocks: a block's input needs a gradient when the
    partition's input does or an earlier block of it has parameters."""
    total, needs_grad = 0, input_needs_grad
    for block in blocks:
        total += block.flops_train_input_grad if needs_grad else block.flops_train_no_input_grad
        needs_grad = needs_grad or block.params > 0
    return total


def profile_cuts(model: SplitModel, input_shape: Sequence[int], batch_size: int) -> list[CutProfile]:
    """Sizes, FLOPs and parameters at every cut point (no timing: see :func:`measure_partition_times`)."""
    blocks = profile_blocks(model, input_shape, batch_size)
    index = {b.name: i for i, b in enumerate(blocks)}
    rows = []
    for cut in model.cut_points(input_shape):
        last = index[cut.name]
        client, server = blocks[: last + 1], blocks[last + 1:]
        elements = batch_size * cut.output_elements
        rows.append(CutProfile(
            cut_layer=cut.index, cut_name=cut.name, layer_type=blocks[last].layer_type,
            output_shape="x".join(str(d) for d in (batch_size, *cut.output_shape)),
            activation_bytes_fp32=elements * BYTES_PER_ELEMENT["fp32"],
            activation_bytes_fp16=elements * BYTES_PER_ELEMENT["fp16"],
            activation_bytes_int8=elements * BYTES_PER_ELEMENT["int8"],
            client_flops_forward=sum(b.flops_forward for b in client),
            server_flops_forward=sum(b.flops_forward for b in server),
            client_flops_train=_train_flops(client, input_needs_grad=False),
            server_flops_train=_train_flops(server, input_needs_grad=True),
            client_params=sum(b.params for b in client), server_params=sum(b.params for b in server),
            client_param_bytes=sum(b.param_bytes for b in client), server_param_bytes=sum(b.param_bytes for b in server),
        ))
    return rows


# ----------------------------------------------------------------------------- timing


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` unmeasured runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure_partition_times(model: SplitModel, rows: list[CutProfile], input_shape: Sequence[int], batch_size: int,
                            repeats: int = 5, warmup: int = 1, progress: Callable[[str], None] | None = None) -> None:
    """Fill ``client_time_s`` and ``server_time_s`` of each row: median forward time on this machine."""
    model.eval()
    x = torch.randn(batch_size, *input_shape)
    for i, row in enumerate(rows):
        client, server = model.split(row.cut_layer)
        message = client(x)
        row.client_time_s = median_time(lambda: client(x), repeats, warmup)
        row.server_time_s = median_time(lambda: server(message), repeats, warmup)
        if progress:
            progress(f"timed cut {i + 1}/{len(rows)} {row.cut_name}: client {row.client_time_s * 1e3:.1f} ms, "
                     f"server {row.server_time_s * 1e3:.1f} ms")


# ----------------------------------------------------------------------------- calibration


def regression_feature(block: BlockProfile) -> float:
    """What a block's time is regressed on: FLOPs, or output elements for FLOP-free layers."""
    return float(block.flops_forward or block.output_elements)


def r_squared(measured: np.ndarray, predicted: np.ndarray) -> float:
    """R^2 = 1 - SS_res / SS_tot."""
    ss_tot = float(((measured - measured.mean()) ** 2).sum())
    ss_res = float(((measured - predicted) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


@dataclass
class Calibration:
    """Per layer type: time = seconds_per_unit * feature + intercept_s (1 / seconds_per_unit is the
    effective FLOP/s of that layer type for FLOP layers)."""

    coefficients: dict[str, tuple[float, float]]
    units: dict[str, str]  # what each layer type's time is regressed on: "FLOP" or "element"
    r2: float  # of the per-block fit, pooled over all blocks
    effective_flops_per_s: float  # single-mu summary: all FLOPs / all block time
    cut_errors: list[dict] = field(default_factory=list)

    def predict_block(self, block: BlockProfile) -> float:
        slope, intercept = self.coefficients[block.layer_type]
        return slope * regression_feature(block) + intercept

    @property
    def median_abs_error(self) -> float:
        return statistics.median(abs(e["end_to_end_error"]) for e in self.cut_errors)

    @property
    def median_abs_partition_error(self) -> float:
        errors = [abs(e[k]) for e in self.cut_errors for k in ("client_error", "server_error") if e[k] == e[k]]
        return statistics.median(errors) if errors else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "median_abs_error": self.median_abs_error,
                "median_abs_partition_error": self.median_abs_partition_error}


@torch.no_grad()
def measure_block_times(model: SplitModel, input_shape: Sequence[int], batch_size: int,
                        repeats: int = 5, warmup: int = 1) -> list[float]:
    """Median forward time of each block alone, on its real input."""
    model.eval()
    h = torch.randn(batch_size, *input_shape)
    times = []
    for block in model.blocks:
        x = h
        times.append(median_time(lambda: block(x), repeats, warmup))
        h = block(x)
    return times


def fit_calibration(blocks: list[BlockProfile], block_times_s: list[float]) -> Calibration:
    """Least squares of the relative residual (predicted / measured - 1) per layer type (through
    the origin when a type has a single block)."""
    coefficients, units = {}, {}
    for layer_type in sorted({b.layer_type for b in blocks}):
        members = [i for i, b in enumerate(blocks) if b.layer_type == layer_type]
        x = np.array([regression_feature(blocks[i]) for i in members])
        t = np.array([block_times_s[i] for i in members])
        if len(members) >= 2 and np.ptp(x) > 0:  # relative residuals: small layers count as much as big ones
            design = np.stack([x, np.ones_like(x)], 1) / t[:, None]
            slope, intercept = np.linalg.lstsq(design, np.ones_like(t), rcond=None)[0]
        else:
            slope, intercept = float(t.sum() / x.sum()), 0.0
        coefficients[layer_type] = (float(slope), float(intercept))
        units[layer_type] = "FLOP" if blocks[members[0]].flops_forward else "element"
    calibration = Calibration(coefficients, units, float("nan"), float("nan"))
    predicted = np.array([calibration.predict_block(b) for b in blocks])
    calibration.r2 = r_squared(np.array(block_times_s), predicted)
    calibration.effective_flops_per_s = sum(b.flops_forward for b in blocks) / sum(block_times_s)
    return calibration


@torch.no_grad()
def calibrate(model: SplitModel, input_shape: Sequence[int], batch_size: int, rows: list[CutProfile],
              repeats: int = 5, warmup: int = 1) -> Calibration:
    """Fit the per-type regression on isolated block times, then predict each cut's client, server
    and end-to-end split forward (``server(client(x))``) and compare with measured times.
    ``rows`` must carry measured client and server times (:func:`measure_partition_times`)."""
    blocks = profile_blocks(model, input_shape, batch_size)
    calibration = fit_calibration(blocks, measure_block_times(model, input_shape, batch_size, repeats, warmup))
    index = {b.name: i for i, b in enumerate(blocks)}
    x = torch.randn(batch_size, *input_shape)
    for row in rows:
        client, server = model.split(row.cut_layer)
        last = index[row.cut_name]
        predicted_client = sum(calibration.predict_block(b) for b in blocks[: last + 1])
        predicted_server = sum(calibration.predict_block(b) for b in blocks[last + 1:])
        measured = median_time(lambda: server(client(x)), repeats, warmup)
        predicted = predicted_client + predicted_server
        calibration.cut_errors.append({
            "cut_layer": row.cut_layer, "cut_name": row.cut_name,
            "measured_end_to_end_s": measured, "predicted_end_to_end_s": predicted,
            "end_to_end_error": (predicted - measured) / measured,
            "client_error": (predicted_client - row.client_time_s) / row.client_time_s,
            "server_error": (predicted_server - row.server_time_s) / row.server_time_s if row.server_time_s > 0 else float("nan"),
        })
    return calibration


# ----------------------------------------------------------------------------- output


def write_profile_csv(rows: list[CutProfile], path) -> None:
    atomic_write_csv(path, [asdict(r) for r in rows])


def plot_activation_sizes(rows: list[CutProfile], input_bytes: int, path, title: str) -> None:
    """The survey's Fig. 1: size of the hidden variable (the message) at each split layer."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(max(6.0, 0.32 * len(rows) + 2), 4.2))
    sizes_mb = [r.activation_bytes_fp32 / 2**20 for r in rows]
    colours = {"Conv2d": "tab:blue", "ReLU": "tab:orange", "MaxPool2d": "tab:green"}
    axes.bar(range(len(rows)), sizes_mb, color=[colours.get(r.layer_type, "tab:gray") for r in rows])
    for layer_type in sorted({r.layer_type for r in rows}):
        axes.bar([0], [0], color=colours.get(layer_type, "tab:gray"), label=layer_type)  # legend entry only
    axes.axhline(input_bytes / 2**20, color="black", linestyle="--", linewidth=1, label="raw input (fp32)")
    axes.set_xticks(range(len(rows)), [r.cut_name for r in rows], rotation=90, fontsize=7)
    axes.set_ylabel("hidden variable size (MiB, fp32)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_save_figure(figure, path)
