"""Where the IaaS/FaaS hybrid wins: the survey's cost study (Sec. 2.2.3) against the share of requests
that internal classifiers answer early.

``splitpriv cost`` prices one set of reach rates beta_pid (the share of requests reaching partition pid).
Measured rates come from ``splitpriv exits`` (a cost study's ``exits_run``). This script asks the
question the measured rates answer, for every rate at once: if each internal classifier answers a
share e of the requests reaching it, beta_pid = (1 - e)^(pid - 1), how much does the hybrid (a small VM
plus a function for the deep partitions) save against the large VM alone, at each SLO and billing?
A study with an ``exits_run`` adds its measured rates as the last column.

    python benchmarks/cost_reach.py [--config experiments/cost_c6i_lambda.yaml] [--shares 0 0.1 0.2 0.3 0.5]
"""
from __future__ import annotations

import argparse

from splitpriv.commands.cost import prepare
from splitpriv.config import from_dict, load_yaml
from splitpriv.cost import CostStudy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/cost_c6i_lambda.yaml")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5],
                        help="shares e each internal classifier answers")
    args = parser.parse_args()
    setup = prepare(from_dict(CostStudy, load_yaml(args.config, "cost study")), [])
    partitions = len(setup.partition_flops)
    columns = {f"e={share:g}": setup.run(reach_rates=[(1 - share) ** p for p in range(partitions)])
               for share in args.shares}
    if setup.study.exits_run:
        columns["measured"] = setup.run()
    print(f"{setup.study.name}: {setup.study.model} on {setup.study.dataset}, {partitions} partitions; hybrid "
          f"({setup.small.name} + {setup.function.name}) against {setup.large.name} alone: saving 1 - hybrid/alone, "
          f"'-' where no hybrid meets the SLO")
    print(f"{'SLO ms':>7} {'billing':<11}" + "".join(f"{name:>10}" for name in columns))
    for index, row in enumerate(next(iter(columns.values()))):
        cells = "".join(f"{(f'{rows[index].savings:+.0%}' if rows[index].savings is not None else '-'):>10}"
                        for rows in columns.values())
        print(f"{row.slo_s * 1e3:7.1f} {row.billing:<11}" + cells)
    print("hybrid placements at the largest share:")
    for row in columns[f"e={args.shares[-1]:g}"]:
        best = row.hybrid.best
        print(f"  SLO {row.slo_s * 1e3:5.1f} ms {row.billing:<11} {best.placement if best else row.hybrid.reason}")


if __name__ == "__main__":
    main()
