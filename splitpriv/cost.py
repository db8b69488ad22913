"""Monetary cost of serving a partitioned network on IaaS, FaaS or both (the survey's Sec. 2.2.3).

The network is a sequence of partitions ``pid = 1..M`` (each may end in an internal classifier).
The hybrid runs partitions ``1..cutid`` on VMs (IaaS, capacity mu_I FLOP/s, price C_I per second)
and ``cutid+1..M`` on a serverless function (FaaS, capacity mu_F from its memory size, price C_F
per second = memory in GB x price per GB-second, plus a fee per request). The survey's model::

    Cost = C_I(mu_I) * T_I * sum_{pid <= cutid} beta_pid + C_F(mu_F) * T_F * sum_{pid > cutid} beta_pid
    T_I  = FLOPs_1^cutid / mu_I + T_trans        T_F = FLOPs_{cutid+1}^M / mu_F + T_cold
    subject to  T_I + T_F <= SLO  and  accuracy >= A_tar

Here beta_pid is the share of requests that reach partition pid (1 for all in the conservative
case where every request traverses the whole network; with internal classifiers
beta_{pid+1} = beta_pid x (1 - exit rate of pid)). We move beta inside the sums - every partition's
time weighted by the share of requests that run it - which equals the survey's product when the
partitions on a side are equally heavy and is exact otherwise. T_trans (the message from the VM to
the function) and the function's fee are paid by the requests that reach the function;
T_cold enters as ``cold_start_rate x cold start time`` (1 reproduces the survey's worst case).

VM billing, ``billing``:

* ``amortised`` - the survey's: VMs kept fully used, a request pays C_I x its busy time T_I;
* ``provisioned`` - a fleet of ceil(r_max x T_I) whole VMs sized for the peak rate r_max
  requests/s, billed by the hour whatever their load: a request pays n_VM x C_I / r_max.

The latency checked against the SLO is the one of a request that runs every partition (the
weights beta make the cost an expectation, not the deadline).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from splitpriv.catalogue import Device, Faas
from splitpriv.config import check
from splitpriv.errors import ConfigError
from splitpriv.latency import transmission_time

BILLING = ("amortised", "provisioned")
OPTIONAL_FRACTION = check(lambda v: v is None or 0 <= v <= 1, "a number in [0, 1] (or null)")


def iaas_price_per_s(price_per_hour: float) -> float:
    """C_I(mu_I) in USD per second of a VM."""
    return price_per_hour / 3600.0


def faas_price_per_s(memory_mb: float, price_per_gb_s: float) -> float:
    """C_F(mu_F) = memory (GB) x price per GB-second (AWS Lambda bills memory in GB = MB / 1024)."""
    return memory_mb / 1024.0 * price_per_gb_s


@dataclass(frozen=True)
class CostBreakdown:
    cutid: int  # partitions 1..cutid on IaaS
    vm: str | None
    function: str | None
    iaas_time_s: float  # T_I (expected busy time per request, beta-weighted)
    faas_time_s: float  # T_F
    latency_s: float  # of a request that runs every partition
    iaas_cost: float  # USD per request
    faas_cost: float
    vm_count: int  # whole VMs for r_max (provisioned billing)

    @property
    def cost(self) -> float:
        return self.iaas_cost + self.faas_cost

    @property
    def placement(self) -> str:
        if self.function is None:
            return f"{self.vm} alone"
        if self.vm is None:
            return f"{self.function} alone"
        return f"{self.vm} (partitions 1-{self.cutid}) + {self.function}"


def reach_from_exits(exit_rates: dict[str, float], partition_ends: Sequence[str], block_names: Sequence[str]) -> list[float]:
    """beta_pid from measured exit shares: beta_1 = 1 and beta_{pid+1} = 1 - (the share of all
    requests leaving at internal classifiers placed up to partition pid's last block). ``exit_rates``
    maps an exit's block name to the share of all requests that leave there (``splitpriv exits``);
    ``partition_ends`` are the blocks ending partitions 1..M-1."""
    position = {name: index for index, name in enumerate(block_names)}
    unknown = sorted(set(exit_rates) - set(position) - {"final"})
    if unknown:
        raise ConfigError("exits_run", unknown, f"exits at blocks of the study's model ({list(block_names)[:4]}...)")
    exits = {name: share for name, share in exit_rates.items() if name != "final"}
    left = [sum(share for name, share in exits.items() if position[name] <= position[end]) for end in partition_ends]
    return [1.0, *(max(0.0, 1 - share) for share in left)]


def check_reach_rates(reach_rates: Sequence[float], partitions: int) -> None:
    if len(reach_rates) != partitions:
        raise ConfigError("reach_rates", list(reach_rates), f"one share per partition ({partitions})")
    if any(not 0 <= b <= 1 for b in reach_rates) or list(reach_rates) != sorted(reach_rates, reverse=True):
        raise ConfigError("reach_rates", list(reach_rates), "non-increasing shares in [0, 1] (requests only exit)")


def hybrid_cost(partition_flops: Sequence[float], reach_rates: Sequence[float], cutid: int,
                vm: Device | None, function: Faas | None, transfer_time_s: float = 0.0,
                cold_start_rate: float = 1.0, billing: str = "amortised", r_max: float = 1.0) -> CostBreakdown:
    """Cost per request and latency of partitions 1..``cutid`` on ``vm``, the rest on ``function``.

    ``partition_flops`` = [FLOPs_pid], ``reach_rates`` = [beta_pid], ``transfer_time_s`` = T_trans,
    ``cold_start_rate`` x ``function.cold_start_s`` = T_cold, ``r_max`` = peak requests per second.
    """
    partitions = len(partition_flops)
    if not 0 <= cutid <= partitions:
        raise ConfigError("cutid", cutid, f"0..{partitions}")
    if billing not in BILLING:
        raise ConfigError("billing", billing, f"one of {list(BILLING)}")
    if (cutid > 0 and vm is None) or (cutid < partitions and function is None):
        raise ValueError("partitions placed on IaaS need a vm, partitions on FaaS a function")
    check_reach_rates(reach_rates, partitions)
    offloads = 0 < cutid < partitions
    on_iaas, on_faas = range(cutid), range(cutid, partitions)

    iaas_busy = sum(reach_rates[p] * partition_flops[p] / vm.flops_per_s for p in on_iaas) if cutid else 0.0
    faas_busy = sum(reach_rates[p] * partition_flops[p] / function.flops_per_s for p in on_faas) if on_faas else 0.0
    reach_faas = reach_rates[cutid] if on_faas else 0.0
    cold_s = cold_start_rate * function.cold_start_s if on_faas else 0.0
    transfer_s = transfer_time_s if offloads else 0.0
    iaas_time = iaas_busy + reach_faas * transfer_s
    faas_time = faas_busy + reach_faas * cold_s

    latency = (sum(partition_flops[p] for p in on_iaas) / vm.flops_per_s if cutid else 0.0) + transfer_s
    latency += (sum(partition_flops[p] for p in on_faas) / function.flops_per_s + cold_s) if on_faas else 0.0

    vm_count = max(1, math.ceil(r_max * iaas_time - 1e-12)) if cutid else 0
    if not cutid:
        iaas_cost = 0.0
    elif billing == "amortised":
        iaas_cost = iaas_price_per_s(vm.price_per_hour) * iaas_time
    else:
        iaas_cost = vm_count * iaas_price_per_s(vm.price_per_hour) / r_max
    faas_cost = (faas_price_per_s(function.memory_mb, function.price_per_gb_s) * faas_time
                 + reach_faas * function.price_per_request) if on_faas else 0.0
    return CostBreakdown(cutid, vm.name if cutid else None, function.name if on_faas else None,
                         iaas_time, faas_time, latency, iaas_cost, faas_cost, vm_count)


@dataclass(frozen=True)
class Optimum:
    best: CostBreakdown | None  # None: nothing meets the constraints
    candidates: tuple[CostBreakdown, ...]
    reason: str = ""  # why nothing is feasible


def optimise(partition_flops: Sequence[float], reach_rates: Sequence[float], vms: Sequence[Device],
             functions: Sequence[Faas], slo_s: float, accuracy: float = 1.0, target_accuracy: float = 0.0,
             transfer_times_s: Sequence[float] | None = None, cold_start_rate: float = 1.0,
             billing: str = "amortised", r_max: float = 1.0) -> Optimum:
    """The cheapest (cutid, mu_I, mu_F) with latency <= ``slo_s`` and ``accuracy`` >= ``target_accuracy``.

    ``transfer_times_s[c]`` is T_trans when the message after partition c+1 goes to the function.
    """
    if slo_s <= 0:
        raise ConfigError("slo_s", slo_s, "a latency objective in seconds > 0")
    for vm in vms:
        if vm.price_per_hour is None:
            raise ConfigError("vms", vm.name, "VMs with a price_per_hour in the catalogue")
    partitions = len(partition_flops)
    transfers = list(transfer_times_s) if transfer_times_s is not None else [0.0] * partitions
    candidates = []
    for cutid in range(partitions + 1):
        vm_choices = vms if cutid > 0 else [None]
        function_choices = functions if cutid < partitions else [None]
        for vm in vm_choices:
            for function in function_choices:
                transfer = transfers[cutid - 1] if 0 < cutid < partitions else 0.0
                candidates.append(hybrid_cost(partition_flops, reach_rates, cutid, vm, function, transfer,
                                              cold_start_rate, billing, r_max))
    if accuracy < target_accuracy:
        return Optimum(None, tuple(candidates), f"accuracy {accuracy:.3f} is below the target A_tar = {target_accuracy:.3f}")
    feasible = [c for c in candidates if c.latency_s <= slo_s]
    if not feasible:
        fastest = min(candidates, key=lambda c: c.latency_s)
        return Optimum(None, tuple(candidates), f"SLO {slo_s * 1e3:.1f} ms: the fastest placement "
                                                f"({fastest.placement}) takes {fastest.latency_s * 1e3:.1f} ms")
    return Optimum(min(feasible, key=lambda c: (c.cost, c.latency_s)), tuple(candidates))


# ----------------------------------------------------------------------------- the survey's experiment


@dataclass
class CostStudy:
    """A large VM alone vs. a small VM offloading to a function, across SLOs
    (``experiments/cost_c6i_lambda.yaml``)."""

    name: str = "cost_study"
    model: str = "vgg16"
    dataset: str = "cifar10"
    partition_after: list[str] = field(default_factory=list)  # blocks ending a partition (internal classifiers)
    reach_rates: list[float] | None = None  # beta_pid; None: 1 for all (conservative)
    exits_run: str | None = None  # a run with exits.csv ('splitpriv exits'): its measured shares give beta_pid
    accuracy: float | None = field(default=None, metadata=OPTIONAL_FRACTION)  # of the deployed network
    target_accuracy: float | None = field(default=None, metadata=OPTIONAL_FRACTION)  # A_tar
    large_vm: str = "c6i.xlarge"
    small_vm: str = "c6i.large"
    function: str = "lambda_8845mb"
    link: str = "datacenter"  # between the VM and the function
    slos_s: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    r_max: float = field(default=20.0, metadata=check(lambda v: v > 0, "requests per second > 0"))
    cold_start_rate: float = field(default=1.0, metadata=check(lambda v: 0 <= v <= 1, "a share in [0, 1]"))
    billing: list[str] = field(default_factory=lambda: list(BILLING))
    catalogue: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for slo in self.slos_s:
            if isinstance(slo, bool) or not isinstance(slo, (int, float)) or slo <= 0:
                raise ConfigError("slos_s", slo, "latency objectives in seconds > 0")
        for billing in self.billing:
            if billing not in BILLING:
                raise ConfigError("billing", billing, f"one of {list(BILLING)}")
        if self.exits_run and self.reach_rates is not None:
            raise ConfigError("reach_rates", self.reach_rates, "null with exits_run (the run's measured shares give them)")


@dataclass(frozen=True)
class StudyRow:
    slo_s: float
    billing: str
    alone: Optimum
    hybrid: Optimum

    @property
    def savings(self) -> float | None:
        """1 - hybrid / alone, None when either is infeasible."""
        if self.alone.best is None or self.hybrid.best is None:
            return None
        return 1 - self.hybrid.best.cost / self.alone.best.cost


def run_study(study: CostStudy, partition_flops: Sequence[float], message_bytes: Sequence[float],
              large_vm: Device, small_vm: Device, function: Faas, link_bandwidth_bytes_per_s: float,
              link_rtt_s: float) -> list[StudyRow]:
    """Each SLO x billing: the cheapest feasible large-VM-alone and small-VM + function placements.
    ``message_bytes[c]`` is the size of what partition c+1 sends on."""
    reach = study.reach_rates or [1.0] * len(partition_flops)
    transfers = [transmission_time(size, link_bandwidth_bytes_per_s, link_rtt_s) for size in message_bytes]
    accuracy = 1.0 if study.accuracy is None else study.accuracy
    target = 0.0 if study.target_accuracy is None else study.target_accuracy
    rows = []
    for slo in study.slos_s:
        for billing in study.billing:
            common = dict(slo_s=slo, accuracy=accuracy, target_accuracy=target, cold_start_rate=study.cold_start_rate,
                          billing=billing, r_max=study.r_max)
            alone = optimise(partition_flops, reach, [large_vm], [], **common)
            hybrid = optimise(partition_flops, reach, [small_vm], [function], transfer_times_s=transfers, **common)
            rows.append(StudyRow(slo, billing, alone, hybrid))
    return rows
