"""The placement planner: enumeration, constraints, the weighted objective and the Pareto front."""
import csv
import math
import random

import pytest
import yaml

from splitpriv.catalogue import load_catalogue
from splitpriv.cli import main
from splitpriv.models import build_model
from splitpriv.planner import Scenario, load_scenario, load_sweep, model_shape, plan

THREATS = ("passive", "black_box", "white_box")
FRONTIER_COLUMNS = ["cut_layer", "cut_name", "defense", "strength", "seed", "test_accuracy",
                    *(f"{m}_{t}" for t in THREATS for m in ("worst_mse", "worst_psnr", "worst_ssim")),
                    "activation_bytes_per_sample", "train_time_s", "attack_time_s"]
LEGACY_COLUMNS = ["cut_layer", "cut_name", "defense", "strength", "seed", "test_accuracy", "worst_mse", "worst_psnr",
                  "worst_ssim", "reconstruction_classifier_accuracy", "dcor", "activation_bytes_per_sample",
                  "train_time_s", "attack_time_s"]


def write_sweep(folder, model="small_cnn", dataset="digits", seed=0, legacy=False):
    """A synthetic sweep of small_cnn on digits: two defenses, two seeds, random leakage per threat model
    (weaker adversaries leak less); ``legacy``: a frontier from before threat models."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cuts = build_model("small_cnn", 10, 1, 8).cut_points((1, 8, 8))
    rows = []
    for cut in cuts:
        for defense, strength in (("none", ""), ("dp_noise", "1.0")):
            for run_seed in (0, 1):
                mse, ssim = rng.uniform(0.001, 0.1), rng.uniform(0.0, 0.5)
                leakage = {f"{m}_{t}": value for t, factor in zip(THREATS, (3.0, 2.0, 1.0))
                           for m, value in (("worst_mse", mse * factor), ("worst_psnr", 20.0), ("worst_ssim", ssim / factor))}
                rows.append({"cut_layer": cut.index, "cut_name": cut.name, "defense": defense, "strength": strength,
                             "seed": run_seed, "test_accuracy": rng.uniform(0.8, 0.98), **leakage,
                             "activation_bytes_per_sample": cut.output_elements * 4, "train_time_s": 1.0,
                             "attack_time_s": 1.0})
    if legacy:
        rows = [{**{k: v for k, v in r.items() if not k.startswith("worst_")}, "worst_mse": r["worst_mse_white_box"],
                 "worst_psnr": 20.0, "worst_ssim": r["worst_ssim_white_box"], "reconstruction_classifier_accuracy": 0.5,
                 "dcor": 0.5} for r in rows]
    with (folder / "frontier.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LEGACY_COLUMNS if legacy else FRONTIER_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({"dataset": dataset, "model": model, "seeds": [0, 1]}))
    return rows


@pytest.fixture
def slow_sensor(tmp_path):
    """A user catalogue entry: a device so slow that running small_cnn locally is not free."""
    path = tmp_path / "slow.yaml"
    path.write_text("devices:\n  slow_sensor: {kind: edge, flops_per_s: 2.0e+6, price_per_hour: null}\n")
    return str(path)


def scenario(**overrides) -> Scenario:
    values = {"name": "test", "model": "small_cnn", "dataset": "digits", "chain": ["raspberry_pi_4b", "v100"],
              "links": [["lte", "wifi"]], "compression": ["fp32", "int8"], "slo_s": 10.0}
    values.update(overrides)
    return load_scenario(None, values)


def run_plan(sc, sweep=None):
    model = build_model(sc.model, 10, 1, 8)
    return plan(sc, load_catalogue(sc.catalogue), model_shape(model, (1, 8, 8), sc.batch_size), sweep)


def median_latency(sc, sweep) -> float:
    latencies = sorted(p.latency_s for p in run_plan(sc, sweep).plans)
    return latencies[len(latencies) // 2]


def brute_force_best(plans, weights, with_privacy):
    """An independent re-implementation of the survey's eq. 1 over the feasible plans."""
    feasible = [p for p in plans if not p.violations]

    def norm(values):
        low, high = min(values), max(values)
        return [0.0 if high == low else (v - low) / (high - low) for v in values]

    lat, cost = norm([p.latency_s for p in feasible]), norm([p.cost_per_request for p in feasible])
    leak = norm([p.leakage_ssim for p in feasible]) if with_privacy else [0.0] * len(feasible)
    scores = [weights["latency"] * a + weights["privacy"] * b * with_privacy + weights["cost"] * c
              for a, b, c in zip(lat, leak, cost)]
    return feasible[min(range(len(feasible)), key=lambda i: (scores[i], feasible[i].latency_s))], scores


@pytest.mark.parametrize("weights", [{"latency": 1, "privacy": 1, "cost": 1}, {"latency": 0.1, "privacy": 3, "cost": 0},
                                     {"latency": 2, "privacy": 0.5, "cost": 1}])
def test_planner_picks_what_brute_force_picks(tmp_path, slow_sensor, weights):
    write_sweep(tmp_path / "sweep")
    sweep = load_sweep(tmp_path / "sweep", "small_cnn", "digits")
    sc = scenario(weights=weights, chain=["slow_sensor", ["v100", "a100"]], catalogue=[slow_sensor])
    sc.slo_s = median_latency(sc, sweep)  # about half of the plans miss the SLO
    result = run_plan(sc, sweep)
    assert 0 < sum(p.feasible for p in result.plans) < len(result.plans)
    best, scores = brute_force_best(result.plans, weights, True)
    assert result.recommended.score == pytest.approx(min(scores))
    assert result.recommended is best


def test_pareto_front_is_exactly_the_non_dominated_plans(tmp_path, slow_sensor):
    write_sweep(tmp_path / "sweep", seed=3)
    sc = scenario(chain=["slow_sensor", ["v100", "a100"]], catalogue=[slow_sensor])
    result = run_plan(sc, load_sweep(tmp_path / "sweep", "small_cnn", "digits"))
    assert 1 < sum(p.pareto for p in result.plans) < sum(p.feasible for p in result.plans)
    points = {id(p): (p.latency_s, p.leakage_ssim, p.cost_per_request) for p in result.plans if p.feasible}
    for p in result.plans:
        if not p.feasible:
            continue
        dominated = any(all(a <= b for a, b in zip(q, points[id(p)])) and q != points[id(p)] for q in points.values())
        assert p.pareto == (not dominated)


@pytest.mark.parametrize("threat_model", THREATS)
def test_sweep_leakage_is_the_worst_case_over_seeds_for_the_scenarios_adversary(tmp_path, threat_model):
    rows = write_sweep(tmp_path / "sweep")
    sweep = load_sweep(tmp_path / "sweep", "small_cnn", "digits", threat_model)
    cell = [r for r in rows if r["cut_layer"] == 2 and r["defense"] == "dp_noise"]
    outcome = sweep.outcomes[(2, "dp_noise", "1")]  # the strength as the sweep wrote it (no unit column here)
    assert outcome.leakage_ssim == pytest.approx(max(r[f"worst_ssim_{threat_model}"] for r in cell))
    assert outcome.worst_mse == pytest.approx(min(r[f"worst_mse_{threat_model}"] for r in cell))
    assert outcome.accuracy == pytest.approx(sum(r["test_accuracy"] for r in cell) / 2)


def test_a_frontier_from_before_threat_models_counts_as_the_white_box_adversarys(tmp_path):
    rows = write_sweep(tmp_path / "sweep", legacy=True)
    outcome = load_sweep(tmp_path / "sweep", "small_cnn", "digits", "white_box").outcomes[(2, "dp_noise", "1")]
    cell = [r for r in rows if r["cut_layer"] == 2 and r["defense"] == "dp_noise"]
    assert outcome.worst_mse == pytest.approx(min(r["worst_mse"] for r in cell))


def test_without_a_sweep_privacy_is_unknown(slow_sensor):
    result = run_plan(scenario(chain=["slow_sensor", ["v100", "a100"]], catalogue=[slow_sensor]))
    assert not result.with_privacy
    assert all(math.isnan(p.leakage_ssim) for p in result.plans)
    best, _ = brute_force_best(result.plans, {"latency": 1, "privacy": 1, "cost": 1}, False)
    assert result.recommended is best


def test_constraints_filter_and_infeasible_names_the_binding_constraint(tmp_path):
    write_sweep(tmp_path / "sweep")
    sweep = load_sweep(tmp_path / "sweep", "small_cnn", "digits")
    result = run_plan(scenario(max_leakage_ssim=0.3, target_accuracy=0.85), sweep)
    feasible = [p for p in result.plans if p.feasible]
    assert feasible and all(p.leakage_ssim <= 0.3 and p.accuracy >= 0.85 for p in feasible)
    impossible = run_plan(scenario(slo_s=1e-6), sweep)
    assert impossible.recommended is None and impossible.binding_constraint == "slo_s"
    assert impossible.nearest.latency_s == min(p.latency_s for p in impossible.plans)


def test_exits_shorten_the_expected_latency_but_the_slo_checks_a_request_that_runs_every_partition():
    result = run_plan(scenario(exit_rates=[0.0, 0.6], compression=["fp32"], links=["lte"]))
    by_rate = {}
    for plan_ in result.plans:
        by_rate.setdefault((plan_.boundaries, plan_.devices), {})[plan_.exit_rate] = plan_
    crossing = [pair for pair in by_rate.values() if len(pair) == 2]
    assert crossing
    for pair in crossing:
        plain, exiting = pair[0.0], pair[0.6]
        assert plain.full_path_latency_s == pytest.approx(plain.latency_s)  # no exit: the two are one
        assert exiting.full_path_latency_s == pytest.approx(plain.full_path_latency_s)
        assert exiting.latency_s < plain.latency_s  # the server and the link serve 40 % of the requests
    deadline = min(pair[0.6].full_path_latency_s for pair in crossing) * 0.99
    strict = run_plan(scenario(exit_rates=[0.0, 0.6], compression=["fp32"], links=["lte"], slo_s=deadline))
    exit_plans = [p for p in strict.plans if p.exit_rate and p.first_cut_layer is not None]
    assert any(p.latency_s < deadline for p in exit_plans)  # their expected latency would pass ...
    assert not any(p.feasible for p in exit_plans)  # ... but the deadline of the full path does not


def test_three_device_chain_enumerates_every_ordered_pair_of_boundaries():
    sc = scenario(chain=["phone_cpu", "edge_server_t4", "v100"], links=["wifi", "wan"], compression=["fp32"])
    result = run_plan(sc)
    options = 8 + 2  # the 8 cuts of small_cnn, raw input and all-local
    assert len({p.boundaries for p in result.plans}) == options * (options + 1) // 2


def test_plan_command_writes_outputs(tmp_path, capsys):
    write_sweep(tmp_path / "sweep")
    config = tmp_path / "scenario.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "model": "small_cnn", "dataset": "digits",
                                      "chain": ["raspberry_pi_4b", "v100"], "links": ["wifi"], "slo_s": 1.0}))
    out = tmp_path / "plan"
    assert main(["plan", "--config", str(config), "--sweep", str(tmp_path / "sweep"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "recommended" in printed and "per 1,000 requests" in printed
    assert (out / "plan.png").stat().st_size > 0
    assert len(list(csv.DictReader((out / "plan.csv").open()))) > 10
    assert main(["plan", "--config", str(config), "--out", str(out)]) == 0
    assert "privacy: UNKNOWN" in capsys.readouterr().out
    assert main(["plan", "--config", str(config), "--slo-s", "1e-6", "--out", str(out)]) == 1
    assert "Binding constraint: slo_s" in capsys.readouterr().out


def _scenario_file(tmp_path, **changes):
    values = {"name": "t", "model": "small_cnn", "dataset": "digits", "chain": ["raspberry_pi_4b", "v100"], "links": ["wifi"]}
    values.update(changes)
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("changes,catalogue,expected", [
    ({"chain": ["raspberry_pi_4b", "no_such_gpu"]}, None, "no_such_gpu"),
    ({"links": ["carrier_pigeon"]}, None, "carrier_pigeon"),
    ({}, "links:\n  wifi: {bandwidth_mbps: 0, rtt_ms: 10}\n", "bandwidth_mbps"),
    ({}, "links:\n  wifi: {bandwidth_mbps: -5, rtt_ms: 10}\n", "bandwidth_mbps"),
    ({}, "devices:\n  v100: {kind: gpu, flops_per_s: 1.0e+12, price_per_hour: -3}\n", "price_per_hour"),
    ({"compression": ["fp8"]}, None, "fp8"),
])
def test_bad_inputs_exit_2(tmp_path, capsys, changes, catalogue, expected):
    args = ["plan", "--config", _scenario_file(tmp_path, **changes), "--out", str(tmp_path / "plan")]
    if catalogue:
        (tmp_path / "mine.yaml").write_text(catalogue)
        args += ["--catalogue", str(tmp_path / "mine.yaml")]
    assert main(args) == 2
    assert expected in capsys.readouterr().err


def test_sweep_of_another_model_exits_2(tmp_path, capsys):
    write_sweep(tmp_path / "sweep", model="vgg16", dataset="cifar10")
    args = ["plan", "--config", _scenario_file(tmp_path), "--sweep", str(tmp_path / "sweep"), "--out", str(tmp_path / "p")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "vgg16" in error and "small_cnn" in error


@pytest.mark.parametrize("path", ["experiments/plan_pi4_v100.yaml", "experiments/plan_phone_edge_cloud.yaml"])
def test_shipped_scenarios_name_catalogue_entries(path):
    devices, links = load_scenario(path).options(load_catalogue())
    assert devices and links


def test_pi4_v100_scenario_plans(tmp_path, capsys):
    assert main(["plan", "--config", "experiments/plan_pi4_v100.yaml", "--out", str(tmp_path)]) == 0
    assert "raspberry_pi_4b" in capsys.readouterr().out
