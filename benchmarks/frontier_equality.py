"""Do two sweeps of the same deterministic config give the same frontier? Row for row, every measured
column but the wall times, for a change that must not change behaviour (e.g. a refactoring).

    splitpriv sweep --config experiments/default_sweep_pinned.yaml --out before   # at the old commit
    splitpriv sweep --config experiments/default_sweep_pinned.yaml --out after    # at the new commit
    python benchmarks/frontier_equality.py before/default-sweep-pinned after/default-sweep-pinned

Prints each sweep's command and commit (from its folder), then per row the columns that differ, and
the count of equal rows. Exit status 1 when any row differs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from splitpriv.sweep import PROVENANCE_FILE, read_frontier

NOT_COMPARED = {"train_time_s", "attack_time_s"}  # wall times differ from run to run


def relative(value, folder: Path):
    """A path inside the sweep folder (a run, an attack.json) as it is relative to that folder."""
    return value.replace(str(folder.resolve()), "<sweep>").replace(str(folder), "<sweep>") if isinstance(value, str) else value


def cell(row: dict) -> str:
    """A frontier row's cell: cut, defense, strength, seed and adaptations."""
    return "-".join(str(row.get(column)) for column in ("cut_name", "defense", "strength", "seed", "compression", "exits"))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    frontiers = []
    for folder in (args.before, args.after):
        provenance = json.loads((folder / PROVENANCE_FILE).read_text())["started"]
        print(f"{folder.name}: `{provenance.get('command', '?')}` at commit {provenance.get('commit', '?')}")
        frontiers.append({cell(row): {column: relative(value, folder) for column, value in row.items()}
                          for row in read_frontier(folder / "frontier.csv")})
    before, after = frontiers
    if set(before) != set(after):
        print(f"different cells: only before {sorted(set(before) - set(after))}, only after {sorted(set(after) - set(before))}")
        return 1
    equal = 0
    for key in sorted(before):
        columns = sorted((set(before[key]) | set(after[key])) - NOT_COMPARED)
        differing = [c for c in columns if not same(before[key].get(c), after[key].get(c))]
        equal += not differing
        print(f"{key:48s} " + ("equal" if not differing else
                               "differs: " + ", ".join(f"{c} {before[key].get(c)} -> {after[key].get(c)}" for c in differing)))
    print(f"{equal} of {len(before)} rows equal in all {len(columns)} compared columns "
          f"(wall times {sorted(NOT_COMPARED)} not compared)")
    return 0 if equal == len(before) else 1


if __name__ == "__main__":
    sys.exit(main())
