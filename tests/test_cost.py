"""The survey's cost model (Sec. 2.2.3) and its optimiser."""
import itertools
import math
import random

import pytest

from splitpriv.catalogue import Device, Faas
from splitpriv.cli import main
from splitpriv.cost import faas_price_per_s, hybrid_cost, iaas_price_per_s, optimise
from splitpriv.errors import ConfigError

VM = Device("vm", "vm", flops_per_s=10.0, price_per_hour=3600.0)  # $1 per second
FUNCTION = Faas("fn", memory_mb=1024, flops_per_s=20.0, price_per_gb_s=2.0, price_per_request=0.1, cold_start_s=1.0)


def test_prices_per_second():
    assert iaas_price_per_s(0.17) == pytest.approx(0.17 / 3600)
    assert faas_price_per_s(8845, 0.0000166667) == pytest.approx(8845 / 1024 * 0.0000166667)


def test_hybrid_cost_by_hand():
    cost = hybrid_cost([10, 20, 30], [1.0, 0.5, 0.5], cutid=1, vm=VM, function=FUNCTION, transfer_time_s=0.2,
                       cold_start_rate=0.5, billing="amortised")
    # T_I = 1 * 10/10 + 0.5 * 0.2 (transfer, for the requests that reach the function) = 1.1 s
    # T_F = 0.5 * 20/20 + 0.5 * 30/20 + 0.5 * (0.5 * 1.0 cold start) = 1.5 s
    assert cost.iaas_time_s == pytest.approx(1.1) and cost.faas_time_s == pytest.approx(1.5)
    assert cost.iaas_cost == pytest.approx(1.0 * 1.1)
    assert cost.faas_cost == pytest.approx(2.0 * 1.5 + 0.5 * 0.1)  # 1 GB x $2/GB-s x T_F + fee x beta
    # a request that runs everything: 10/10 + 0.2 + 50/20 + 0.5
    assert cost.latency_s == pytest.approx(4.2)


def test_provisioned_billing_pays_whole_vms():
    cost = hybrid_cost([10, 20, 30], [1.0, 0.5, 0.5], cutid=1, vm=VM, function=FUNCTION, transfer_time_s=0.2,
                       cold_start_rate=0.5, billing="provisioned", r_max=3.0)
    assert cost.vm_count == math.ceil(3.0 * 1.1)
    assert cost.iaas_cost == pytest.approx(4 * 1.0 / 3.0)


def test_all_on_one_side():
    alone = hybrid_cost([10, 20], [1.0, 1.0], cutid=2, vm=VM, function=None)
    assert alone.faas_cost == 0 and alone.cost == pytest.approx(3.0) and alone.latency_s == pytest.approx(3.0)
    serverless = hybrid_cost([10, 20], [1.0, 1.0], cutid=0, vm=None, function=FUNCTION, cold_start_rate=0.0)
    assert serverless.iaas_cost == 0 and serverless.cost == pytest.approx(2.0 * 1.5 + 0.1)


def test_reach_rates_must_not_increase():
    with pytest.raises(ConfigError, match="reach_rates"):
        hybrid_cost([10, 20], [0.5, 1.0], cutid=1, vm=VM, function=FUNCTION)


@pytest.mark.parametrize("seed", range(5))
def test_optimiser_respects_the_slo_and_is_cheapest(seed):
    rng = random.Random(seed)
    flops = [rng.uniform(1, 50) for _ in range(4)]
    reach = sorted((rng.uniform(0.2, 1.0) for _ in range(4)), reverse=True)
    reach[0] = 1.0
    vms = [Device(f"vm{i}", "vm", rng.uniform(5, 50), rng.uniform(100, 5000)) for i in range(2)]
    functions = [Faas(f"fn{i}", rng.choice([512, 2048]), rng.uniform(5, 80), rng.uniform(0.1, 3), 0.01, rng.uniform(0, 1))
                 for i in range(2)]
    transfers = [rng.uniform(0, 0.5) for _ in range(4)]
    latencies = [c.latency_s for c in optimise(flops, reach, vms, functions, slo_s=1e9, transfer_times_s=transfers).candidates]
    for slo in sorted(latencies)[:: max(1, len(latencies) // 6)]:
        result = optimise(flops, reach, vms, functions, slo_s=slo, transfer_times_s=transfers)
        assert result.best.latency_s <= slo
        # brute force over every (cutid, vm, function)
        costs = []
        for cutid in range(5):
            for vm, fn in itertools.product(vms if cutid else [None], functions if cutid < 4 else [None]):
                transfer = transfers[cutid - 1] if 0 < cutid < 4 else 0.0
                candidate = hybrid_cost(flops, reach, cutid, vm, fn, transfer)
                if candidate.latency_s <= slo:
                    costs.append(candidate.cost)
        assert result.best.cost == pytest.approx(min(costs))


def test_optimiser_reports_infeasible_slo_and_accuracy():
    result = optimise([10, 20], [1.0, 1.0], [VM], [FUNCTION], slo_s=0.01)
    assert result.best is None and "SLO" in result.reason
    result = optimise([10, 20], [1.0, 1.0], [VM], [FUNCTION], slo_s=100, accuracy=0.8, target_accuracy=0.9)
    assert result.best is None and "A_tar" in result.reason


def test_cost_study_command_prints_assumptions_and_savings(tmp_path, capsys):
    assert main(["cost", "--config", "experiments/cost_c6i_lambda.yaml", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for assumption in ("c6i.xlarge: $0.17/h", "c6i.large: $0.085/h", "lambda_8845mb", "reach rates", "r_max"):
        assert assumption in out
    lines = (tmp_path / "cost.csv").read_text().splitlines()
    assert lines[0].startswith("slo_s,billing") and len(lines) > 2


def test_negative_price_in_a_user_catalogue_exits_2(tmp_path, capsys):
    extra = tmp_path / "mine.yaml"
    extra.write_text("devices:\n  c6i.large: {kind: vm, vcpus: 2, flops_per_vcpu: 1.0e+9, price_per_hour: -0.1}\n")
    assert main(["cost", "--catalogue", str(extra), "--out", str(tmp_path)]) == 2
    assert "price_per_hour" in capsys.readouterr().err
