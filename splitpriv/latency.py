"""End-to-end latency of a split network placed on a chain of devices (the survey's Sec. 2.2.1).

The network's blocks are divided into consecutive partitions ``pid = 1..D``, one per device of a
chain (device -> edge -> cloud, or just device -> cloud). Between consecutive devices the message
``x_pid`` (the last block's output) crosses a link. The survey's model::

    T = xi_0 * T_0^T + sum_pid ( xi_pid^c * T_pid^c + xi_pid^T * T_pid^T )

    T_0^T   = (1 - gamma_0) * Size(x_0) / bandwidth  (+ RTT)           raw input sent
    T_pid^c = FLOPs_pid / mu_device                                    processing
    T_pid^T = (1 - kappa_pid)(1 - beta_pid)(1 - gamma_pid) * Size(x_pid) / bandwidth  (+ RTT)

kappa is the compression rate (share of the message's bytes removed, fp16 = 0.5, int8 = 0.75),
beta the early-exit rate (share of requests answered by an internal classifier before the message
is sent), gamma the reduction rate (share of the message dropped by feature selection/pruning,
gamma_0 for the raw input). xi are 0/1 placement flags: a partition holding no block is not
processed, a message is transmitted only if a later partition needs it.

The survey's Flag_Train selects the mode, here the boolean ``training``: in inference, exits
reduce what flows on; in training there are no exits, processing counts forward + backward FLOPs
and each crossing carries the activation forward and its gradient back (2 x Size / bandwidth, one
round trip).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def processing_time(flops: float, flops_per_s: float) -> float:
    """T_pid^c = FLOPs_pid / mu_device, with ``flops`` = FLOPs_pid and ``flops_per_s`` = mu_device."""
    return flops / flops_per_s


def input_transmission_time(input_bytes: float, bandwidth_bytes_per_s: float, rtt_s: float = 0.0,
                            input_reduction_rate: float = 0.0) -> float:
    """T_0^T = (1 - gamma_0) * Size(x_0) / bandwidth + RTT.

    ``input_bytes`` = Size(x_0), ``input_reduction_rate`` = gamma_0, ``rtt_s`` = the link's RTT.
    """
    return (1 - input_reduction_rate) * input_bytes / bandwidth_bytes_per_s + rtt_s


def transmission_time(message_bytes: float, bandwidth_bytes_per_s: float, rtt_s: float = 0.0,
                      compression_rate: float = 0.0, exit_rate: float = 0.0, reduction_rate: float = 0.0,
                      training: bool = False) -> float:
    """T_pid^T = (1 - kappa)(1 - beta)(1 - gamma) * Size(x_pid) / bandwidth + RTT.

    ``message_bytes`` = Size(x_pid), ``compression_rate`` = kappa_pid, ``exit_rate`` = beta_pid,
    ``reduction_rate`` = gamma_pid. With ``training`` (Flag_Train = training): no exits (beta
    ignored) and the gradient of the same size travels back, 2 * Size / bandwidth + RTT.
    """
    if training:
        return 2 * (1 - compression_rate) * (1 - reduction_rate) * message_bytes / bandwidth_bytes_per_s + rtt_s
    return (1 - compression_rate) * (1 - exit_rate) * (1 - reduction_rate) * message_bytes / bandwidth_bytes_per_s + rtt_s


def total_latency(send_input: float, input_time_s: float, processing_times_s: Sequence[float],
                  transmission_times_s: Sequence[float], processed: Sequence[float],
                  transmitted: Sequence[float]) -> float:
    """T = xi_0 * T_0^T + sum_pid (xi_pid^c * T_pid^c + xi_pid^T * T_pid^T).

    ``send_input`` = xi_0, ``input_time_s`` = T_0^T, ``processing_times_s`` = [T_pid^c],
    ``transmission_times_s`` = [T_pid^T], ``processed`` = [xi_pid^c], ``transmitted`` = [xi_pid^T].
    """
    if not len(processing_times_s) == len(transmission_times_s) == len(processed) == len(transmitted):
        raise ValueError("one processing time, transmission time and two flags per partition")
    return send_input * input_time_s + sum(
        xi_c * t_c + xi_t * t_t
        for t_c, t_t, xi_c, xi_t in zip(processing_times_s, transmission_times_s, processed, transmitted)
    )


@dataclass(frozen=True)
class Hop:
    """A link between consecutive devices of the chain and what the message goes through on it."""

    bandwidth_bytes_per_s: float
    rtt_s: float = 0.0
    compression_rate: float = 0.0  # kappa
    exit_rate: float = 0.0  # beta
    reduction_rate: float = 0.0  # gamma (gamma_0 when the raw input crosses)


@dataclass(frozen=True)
class LatencyBreakdown:
    total_s: float
    processing_s: tuple[float, ...]  # per device (partition)
    transmission_s: tuple[float, ...]  # per link


def chain_latency(block_flops: Sequence[float], block_output_bytes: Sequence[float], input_bytes: float,
                  boundaries: Sequence[int], flops_per_s: Sequence[float], hops: Sequence[Hop],
                  training: bool = False) -> LatencyBreakdown:
    """Latency of the blocks placed on a chain of ``len(flops_per_s)`` devices.

    ``boundaries[d]`` is the index of the last block on devices ``0..d`` (-1: none; the raw input
    crosses), non-decreasing; the last device runs the remaining blocks. ``block_flops`` are per
    block (forward, or forward + backward when ``training``), ``block_output_bytes`` the size of
    each block's output (Size(x_pid) when the cut is after it), ``input_bytes`` = Size(x_0).
    """
    devices = len(flops_per_s)
    if len(boundaries) != devices - 1 or len(hops) != devices - 1:
        raise ValueError(f"{devices} devices need {devices - 1} boundaries and links")
    if list(boundaries) != sorted(boundaries) or (boundaries and not -1 <= boundaries[0] <= boundaries[-1] < len(block_flops)):
        raise ValueError(f"boundaries must be non-decreasing block indices in [-1, {len(block_flops) - 1}]")
    last_block = len(block_flops) - 1
    edges = [-1, *boundaries, last_block]
    partition_flops = [sum(block_flops[edges[d] + 1: edges[d + 1] + 1]) for d in range(devices)]
    processing = [processing_time(f, mu) for f, mu in zip(partition_flops, flops_per_s)]
    processed = [1.0 if edges[d + 1] > edges[d] else 0.0 for d in range(devices)]

    input_time, send_input = 0.0, 0.0
    transmission, transmitted = [], []
    for boundary, hop in zip(boundaries, hops):
        crosses = boundary < last_block  # a later device still has blocks to run
        if boundary == -1:  # the raw input crosses this link: T_0^T
            time = input_transmission_time(input_bytes, hop.bandwidth_bytes_per_s, hop.rtt_s, hop.reduction_rate)
            input_time, send_input = input_time + time, 1.0
            transmission.append(time)
            transmitted.append(0.0)  # counted once, as xi_0 * T_0^T
            continue
        transmission.append(transmission_time(block_output_bytes[boundary], hop.bandwidth_bytes_per_s, hop.rtt_s,
                                              hop.compression_rate, hop.exit_rate, hop.reduction_rate, training))
        transmitted.append(1.0 if crosses else 0.0)
    total = total_latency(send_input, input_time, processing, transmission + [0.0], processed, transmitted + [0.0])
    shown = [t if (boundary == -1 or x) else 0.0 for t, x, boundary in zip(transmission, transmitted, boundaries)]
    return LatencyBreakdown(total, tuple(processing), tuple(shown))
