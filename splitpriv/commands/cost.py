"""``splitpriv cost``: the survey's IaaS-vs-hybrid cost experiment (Sec. 2.2.3) across SLOs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

HELP = "cost study: a large VM alone vs. a small VM offloading to a serverless function, across SLOs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="cost study YAML (default: experiments/cost_c6i_lambda.yaml's settings)")
    parser.add_argument("--catalogue", action="append", default=[], help="YAML adding or overriding devices and prices")
    parser.add_argument("--out", help="output folder for cost.csv (default: runs/cost-<study name>)")


def run(args: argparse.Namespace) -> int:
    from splitpriv.config import from_dict, load_yaml
    from splitpriv.cost import CostStudy

    setup = prepare(from_dict(CostStudy, load_yaml(args.config, "cost study") if args.config else {}), args.catalogue)
    _print_assumptions(setup)
    rows = setup.run()
    _print_rows(rows)
    out = Path(args.out or f"runs/cost-{setup.study.name}")
    _write_csv(rows, out / "cost.csv")
    print(f"\nwrote {out / 'cost.csv'}")
    return 0


class StudySetup(NamedTuple):
    """A cost study checked and resolved: what :func:`splitpriv.cost.run_study` takes."""

    study: object
    partition_flops: list[float]
    message_bytes: list[float]
    large: object
    small: object
    function: object
    link: object

    def run(self, **changes) -> list:
        """The study's rows; ``changes`` replace study fields (e.g. ``reach_rates``)."""
        import dataclasses

        from splitpriv.cost import run_study

        return run_study(dataclasses.replace(self.study, **changes), self.partition_flops, self.message_bytes,
                         self.large, self.small, self.function, self.link.bandwidth_bytes_per_s, self.link.rtt_s)


def prepare(study, catalogue_files: list[str]) -> StudySetup:
    """The study checked against the catalogue and the model: partitions' FLOPs and messages, the
    devices, the link; reach rates from its exits run when it names one."""
    from splitpriv.catalogue import load_catalogue
    from splitpriv.data import dataset_shape
    from splitpriv.errors import ConfigError
    from splitpriv.models import build_model
    from splitpriv.profiling import BYTES_PER_ELEMENT, profile_blocks

    study.validate()
    catalogue = load_catalogue(study.catalogue + catalogue_files)
    large, small = catalogue.device(study.large_vm, "large_vm"), catalogue.device(study.small_vm, "small_vm")
    for key, vm in (("large_vm", large), ("small_vm", small)):
        if vm.price_per_hour is None:
            raise ConfigError(key, vm.name, "a VM with a price_per_hour in the catalogue (add one with --catalogue FILE)")
    function, link = catalogue.function(study.function, "function"), catalogue.link(study.link, "link")

    num_classes, input_shape = dataset_shape(study.dataset)
    model = build_model(study.model, num_classes, input_shape[0], input_shape[-1])
    blocks = profile_blocks(model, input_shape, batch_size=1)
    names = [b.name for b in blocks]
    for name in study.partition_after:
        if name not in names[:-1]:
            raise ConfigError("partition_after", name, f"block names of {study.model} before the last: {names[:-1]}")
    ends = sorted(names.index(n) for n in study.partition_after) + [len(blocks) - 1]
    starts = [0] + [e + 1 for e in ends[:-1]]
    partition_flops = [sum(b.flops_forward for b in blocks[s: e + 1]) for s, e in zip(starts, ends)]
    message_bytes = [blocks[e].output_elements * BYTES_PER_ELEMENT["fp32"] for e in ends[:-1]]
    if study.reach_rates is not None and len(study.reach_rates) != len(partition_flops):
        raise ConfigError("reach_rates", study.reach_rates, f"{len(partition_flops)} shares, one per partition")
    if study.exits_run:
        study = _with_measured_reach(study, [names[e] for e in ends[:-1]], names)
    return StudySetup(study, partition_flops, message_bytes, large, small, function, link)


def _with_measured_reach(study, partition_ends: list[str], names: list[str]):
    """The study with beta_pid and the accuracy measured by ``splitpriv exits`` on its exits run."""
    import dataclasses

    from splitpriv.config import load_yaml
    from splitpriv.cost import reach_from_exits
    from splitpriv.errors import ConfigError
    from splitpriv.exits import chosen_exits

    config = load_yaml(Path(study.exits_run) / "config.yaml", "exits run config")
    trained = (config.get("model", {}).get("name"), config.get("data", {}).get("dataset"))
    if trained != (study.model, study.dataset):
        raise ConfigError("exits_run", study.exits_run, f"a run of {study.model} on {study.dataset} (it trained "
                          f"{trained[0]} on {trained[1]})")
    rates, accuracy = chosen_exits(study.exits_run)
    print(f"exits measured by 'splitpriv exits' in {study.exits_run}: "
          + ", ".join(f"{name} {share:.3f}" for name, share in rates.items()) + f"; accuracy {accuracy:.4f}")
    return dataclasses.replace(study, reach_rates=reach_from_exits(rates, partition_ends, names),
                               accuracy=study.accuracy if study.accuracy is not None else accuracy)


def _print_assumptions(setup: StudySetup) -> None:
    study, partition_flops, message_bytes, large, small, function, link = setup
    reach = study.reach_rates or [1.0] * len(partition_flops)
    print(f"cost study {study.name}: {study.model} on {study.dataset}, one request = one input, "
          f"{len(partition_flops)} partitions (internal classifiers after {', '.join(study.partition_after) or '-'})")
    print("assumptions (edit the YAML or the catalogue to change them):")
    print("  partition GFLOP: " + ", ".join(f"{f / 1e9:.3f}" for f in partition_flops)
          + "; internal classifiers' FLOPs neglected")
    print("  messages between partitions (fp32 bytes): " + ", ".join(f"{b:,}" for b in message_bytes))
    print("  reach rates beta: " + ", ".join(f"{b:.3g}" for b in reach)
          + (" (conservative: every request traverses the whole network)" if all(b == 1 for b in reach) else
             " (measured by 'splitpriv exits')" if study.exits_run else ""))
    for vm in (large, small):
        print(f"  {vm.name}: ${vm.price_per_hour}/h, mu = {vm.flops_per_s / 1e9:.1f} GFLOP/s (catalogue)")
    print(f"  {function.name}: {function.memory_mb:g} MB, ${function.price_per_gb_s}/GB-s, ${function.price_per_request}/request, "
          f"mu = {function.flops_per_s / 1e9:.1f} GFLOP/s, cold start {function.cold_start_s:g} s x cold-start rate "
          f"{study.cold_start_rate:g}")
    print(f"  VM -> function link {link.name}: {link.bandwidth_bytes_per_s * 8 / 1e6:g} Mbit/s, RTT {link.rtt_s * 1e3:g} ms")
    print(f"  r_max = {study.r_max:g} requests/s; accuracy {study.accuracy} vs A_tar {study.target_accuracy}")
    print("  billing: amortised = VMs kept fully used (pay busy seconds, the survey's); "
          "provisioned = ceil(r_max x T_I) whole VMs billed by the hour")


def _print_rows(rows) -> None:
    print(f"\n{'SLO ms':>7} {'billing':<11} {'alone $/1k':>10} {'alone ms':>8} {'hybrid $/1k':>11} {'hybrid ms':>9} "
          f"{'savings':>8}  hybrid placement")
    for row in rows:
        alone, hybrid = row.alone.best, row.hybrid.best
        savings = "n/a" if row.savings is None else f"{row.savings:.1%}"
        print(f"{row.slo_s * 1e3:>7.1f} {row.billing:<11} "
              f"{_cost(alone):>10} {_ms(alone):>8} {_cost(hybrid):>11} {_ms(hybrid):>9} {savings:>8}  "
              f"{hybrid.placement if hybrid else 'infeasible: ' + row.hybrid.reason}"
              + ("" if alone else f"  [alone infeasible: {row.alone.reason}]"))


def _cost(best) -> str:
    return "-" if best is None else f"{best.cost * 1000:.5f}"


def _ms(best) -> str:
    return "-" if best is None else f"{best.latency_s * 1e3:.1f}"


def _write_csv(rows, path: Path) -> None:
    from splitpriv.store import atomic_write_csv

    records = []
    for row in rows:
        alone, hybrid = row.alone.best, row.hybrid.best
        records.append({"slo_s": row.slo_s, "billing": row.billing, "alone_cost_per_1000": alone and alone.cost * 1000,
                        "alone_latency_s": alone and alone.latency_s, "hybrid_cost_per_1000": hybrid and hybrid.cost * 1000,
                        "hybrid_latency_s": hybrid and hybrid.latency_s, "hybrid_cutid": hybrid and hybrid.cutid,
                        "hybrid_placement": hybrid.placement if hybrid else "", "savings": row.savings})
    atomic_write_csv(path, records)
