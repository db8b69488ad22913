"""End-to-end latency of a split network placed on a chain of devices (the survey's Sec. 2.2.1).

The network's blocks are divided into consecutive partitions ``pid = 1..D``, one per device of a
chain (device -> edge -> cloud, or just device -> cloud). Between consecutive devices the message
``x_pid`` (the last block's output) crosses a link. The survey's model::

    T = xi_0 * T_0^T + sum_pid ( xi_pid^c * T_pid^c + xi_pid^T * T_pid^T )

    T_0^T   = (1 - gamma_0) * Size(x_0) / bandwidth  (+ RTT)           raw input sent
    T_pid^c = FLOPs_pid / mu_device                                    processing
    T_pid^T = (1 - kappa_pid)(1 - beta_pid)(1 - gamma_pid) * Size(x_pid) / bandwidth  (+ RTT)

kappa is the compression rate (share of the message's bytes removed, fp16 = 0.5, int8 = 0.75),
beta the early-exit rate (share of the requests reaching the sending device that an internal
classifier answers before the message is sent), gamma the reduction rate (share of the message
dropped by feature selection/pruning, gamma_0 for the raw input). xi are 0/1 placement flags: a
partition holding no block is not processed, a message is transmitted only if a later partition
needs it. A request that exits is not sent, so it pays no RTT either: the RTT is discounted by
(1 - beta) with the bytes.

Exits discount everything after them, not the next hop only: the share of requests reaching device
d is r_d = prod_{h < d} (1 - beta_h), and the expected latency weights each partition's processing
and each hop's T^T by the share reaching it (the processing shares also weight the cost). The
deadline a service-level objective must meet is that of a request that runs every partition
(``full_path_s``, every beta = 0), as ``splitpriv cost`` checks it.

The survey's Flag_Train selects the mode, here the boolean ``training``: in inference, exits
reduce what flows on; in training there are no exits, processing counts forward + backward FLOPs
and each crossing carries the activation forward and its gradient back in one round trip:
((1 - kappa) + (1 - kappa_grad))(1 - gamma) Size / bandwidth. kappa_grad is the gradient's own
compression rate: 0 for a quantiser, whose gradient goes back dense (straight-through).
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
                      training: bool = False, gradient_compression_rate: float = 0.0) -> float:
    """T_pid^T = (1 - beta) * [(1 - kappa)(1 - gamma) * Size(x_pid) / bandwidth + RTT].

    ``message_bytes`` = Size(x_pid), ``compression_rate`` = kappa_pid, ``exit_rate`` = beta_pid,
    ``reduction_rate`` = gamma_pid. With ``training`` (Flag_Train = training): no exits (beta
    ignored) and the gradient travels back in the same round trip,
    ((1 - kappa) + (1 - kappa_grad))(1 - gamma) * Size / bandwidth + RTT, where
    ``gradient_compression_rate`` = kappa_grad (0: dense, as a quantiser's gradient goes back).
    """
    size = (1 - reduction_rate) * message_bytes / bandwidth_bytes_per_s
    if training:
        return ((1 - compression_rate) + (1 - gradient_compression_rate)) * size + rtt_s
    return (1 - exit_rate) * ((1 - compression_rate) * size + rtt_s)


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
    exit_rate: float = 0.0  # beta: of the requests reaching the sending device
    reduction_rate: float = 0.0  # gamma (gamma_0 when the raw input crosses)
    gradient_compression_rate: float = 0.0  # kappa_grad, training only: 0 for a quantiser's dense gradient


@dataclass(frozen=True)
class LatencyBreakdown:
    total_s: float  # expected over requests: exits discount every later hop and partition
    processing_s: tuple[float, ...]  # per device (partition), weighted by the share of requests reaching it
    transmission_s: tuple[float, ...]  # per link, weighted likewise
    full_path_s: float  # a request that runs every partition (no exit): the deadline an SLO checks


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
    # r_d: the share of requests reaching device d (exits answer the others before they are sent)
    reach = [1.0]
    for hop in hops:
        reach.append(reach[-1] * (1.0 if training else 1 - hop.exit_rate))

    def hop_times(exits: bool) -> tuple[float, float, list[float], list[float]]:
        """(xi_0, T_0^T, [T^T per link], [xi^T per link]) with or without the hops' exits."""
        input_time, send_input, transmission, transmitted = 0.0, 0.0, [], []
        for boundary, hop in zip(boundaries, hops):
            if boundary == -1:  # the raw input crosses this link: T_0^T
                time = input_transmission_time(input_bytes, hop.bandwidth_bytes_per_s, hop.rtt_s, hop.reduction_rate)
                input_time, send_input = input_time + time, 1.0
                transmission.append(time)
                transmitted.append(0.0)  # counted once, as xi_0 * T_0^T
                continue
            transmission.append(transmission_time(block_output_bytes[boundary], hop.bandwidth_bytes_per_s, hop.rtt_s,
                                                  hop.compression_rate, hop.exit_rate if exits else 0.0,
                                                  hop.reduction_rate, training, hop.gradient_compression_rate))
            transmitted.append(1.0 if boundary < last_block else 0.0)  # a later device still has blocks to run
        return send_input, input_time, transmission, transmitted

    send_input, input_time, transmission, transmitted = hop_times(exits=False)
    full_path = total_latency(send_input, input_time, processing, transmission + [0.0], processed, transmitted + [0.0])
    _, _, transmission, _ = hop_times(exits=True)
    expected_processing = [r * t for r, t in zip(reach, processing)]
    expected_transmission = [r * t for r, t in zip(reach, transmission)]
    total = total_latency(send_input, input_time, expected_processing, expected_transmission + [0.0], processed,
                          transmitted + [0.0])
    shown = [t if (boundary == -1 or x) else 0.0 for t, x, boundary in zip(expected_transmission, transmitted, boundaries)]
    return LatencyBreakdown(total, tuple(expected_processing), tuple(shown), full_path)
