"""``splitpriv plan``: where to cut, on which devices, for latency, privacy and money."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from splitpriv.commands.common import positive_int

HELP = "plan where to cut: latency (Sec. 2.2.1), leakage (a sweep) and cost (Sec. 2.2.3) of every placement"


FLAG_KEYS = {"slo_s": ("--slo-s",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="scenario YAML (see experiments/plan_*.yaml); default: Pi 4B -> V100, VGG16/CIFAR-10")
    parser.add_argument("--sweep", help="a sweep folder (frontier.csv + sweep.yaml) measuring leakage and accuracy "
                                        "of the scenario's model, or one where 'splitpriv predict' wrote predicted.csv "
                                        "(predicted leakage, said so in the output); without it privacy is unknown")
    parser.add_argument("--catalogue", action="append", default=[],
                        help="YAML adding or overriding devices, links and prices (repeatable; e.g. a "
                             "'splitpriv profile --calibrate' this_machine.yaml)")
    parser.add_argument("--slo-s", type=float, help="latency objective in seconds (overrides the scenario's)")
    parser.add_argument("--plugin", action="append", default=[], help="python file registering models (repeatable)")
    parser.add_argument("--top", type=positive_int, default=12, help="Pareto-front plans to print")
    parser.add_argument("--out", help="output folder (default: runs/plan-<scenario name>)")


def run(args: argparse.Namespace) -> int:
    from splitpriv.catalogue import load_catalogue
    from splitpriv.data import dataset_shape
    from splitpriv.models import build_model
    from splitpriv.planner import load_scenario, load_sweep, model_shape, plan, plot_plans, write_plan_csv
    from splitpriv.store import import_plugins

    scenario = load_scenario(args.config, {"slo_s": args.slo_s} if args.slo_s is not None else None)
    catalogue = load_catalogue(scenario.catalogue + args.catalogue)
    scenario.options(catalogue)  # unknown devices or links fail here, before any work
    sweep = load_sweep(args.sweep, scenario.model, scenario.dataset, scenario.threat_model) if args.sweep else None
    import_plugins(scenario.plugins + args.plugin)
    num_classes, input_shape = dataset_shape(scenario.dataset)
    model = build_model(scenario.model, num_classes, input_shape[0], input_shape[-1])
    result = plan(scenario, catalogue, model_shape(model, input_shape, scenario.batch_size), sweep)

    out = Path(args.out or f"runs/plan-{scenario.name}")
    write_plan_csv(result, out / "plan.csv")
    plot_plans(result, out / "plan.png", f"{scenario.name}: {scenario.model} on {scenario.dataset}")
    _print_result(result, scenario, args.top, sweep.source if sweep else None)
    print(f"\nwrote {out / 'plan.csv'} ({len(result.plans)} plans) and {out / 'plan.png'}")
    return 0 if result.recommended else 1


def _print_result(result, scenario, top: int, sweep_source: str | None) -> None:
    mode = "training" if scenario.training else "inference"
    print(f"scenario {scenario.name}: {scenario.model} on {scenario.dataset}, batch {scenario.batch_size}, {mode}; "
          f"{len(result.plans)} plans, {sum(p.feasible for p in result.plans)} feasible")
    if result.with_privacy and sweep_source == "predicted":
        print(f"privacy: the worst case against the {scenario.threat_model} adversary PREDICTED by splitpriv predict "
              f"(no measured frontier.csv in the sweep folder; run 'splitpriv sweep' to measure it)")
    elif result.with_privacy:
        print(f"privacy: the worst case against the {scenario.threat_model} adversary, measured by the sweep")
    if not result.with_privacy:
        print("privacy: UNKNOWN (no --sweep): planning on latency and cost only; run 'splitpriv sweep' for "
              f"{scenario.model} on {scenario.dataset} and pass --sweep to weigh leakage")
    if result.recommended is None:
        nearest = result.nearest
        print(f"\nINFEASIBLE: no plan meets every constraint. Binding constraint: {result.binding_constraint} "
              f"(the nearest plan exceeds it by {nearest.violations[result.binding_constraint]:.0%}).")
        print("nearest plan:")
        _print_plan(nearest, result.with_privacy)
        return
    front = result.pareto_front
    print(f"\nPareto front ({len(front)} plans, showing {min(top, len(front))} by latency):")
    print(f"  {'latency ms':>10} {'USD/1k req':>10} {'leak SSIM':>9} {'acc':>6}  placement")
    for p in front[:top]:
        print(f"  {p.latency_s * 1e3:>10.2f} {p.cost_per_1000:>10.3g} {_fmt(p.leakage_ssim, '.3f'):>9} "
              f"{_fmt(p.accuracy, '.3f'):>6}  {p.describe()}")
    weights = scenario.weights
    print(f"\nrecommended (min w_L*L + w_P*P + w_C*C, normalised; w = {weights.latency:g}, "
          f"{weights.privacy if result.with_privacy else 0:g}, {weights.cost:g}):")
    _print_plan(result.recommended, result.with_privacy)


def _print_plan(p, with_privacy: bool) -> None:
    print(f"  {p.describe()}")
    print(f"  latency {p.latency_s * 1e3:.2f} ms = processing "
          + " + ".join(f"{d} {t * 1e3:.2f} ms" for d, t in zip(p.devices, p.processing_s))
          + " ; transmission " + " + ".join(f"{l} {t * 1e3:.2f} ms" for l, t in zip(p.links, p.transmission_s)))
    print(f"  cost ${p.cost_per_1000:.3g} per 1,000 requests; accuracy {_fmt(p.accuracy, '.3f')}; "
          f"leakage SSIM {_fmt(p.leakage_ssim, '.3f') if with_privacy else 'unknown'}, worst-case MSE {_fmt(p.worst_mse, '.4f')}")
    guarantees = [f"{what} (ε, δ)-DP per sample with ε {value:.3g}" for what, value in
                  (("messages", p.message_dp_epsilon_per_sample), ("client parameters", p.parameter_dp_epsilon_per_sample))
                  if not math.isnan(value)]
    if guarantees:
        print("  " + "; ".join(guarantees))
    if p.violations:
        print("  violates: " + ", ".join(f"{k} by {v:.0%}" for k, v in p.violations.items()))


def _fmt(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)
