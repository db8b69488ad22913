"""How long a sweep takes, in seconds and in units of the reference workload, and where the time goes.

Runs a sweep (default: the default ``splitpriv sweep``: digits, every cut, each default defense, the
default attack set) into a fresh folder, and times ``../shared/bench/ref_workload.py`` (a fixed
plain-PyTorch workload) before and after it in the same run: units = sweep seconds / mean reference
seconds, comparable across machines. Then the per-phase breakdown, in CPU-seconds summed over the
cells (workers run in parallel, so the phases add up to about workers x wall time):

- training: each trained run's ``train_time_s`` (the shared undefended trainings once);
- each attack: its ``fit_time_s`` summed over the cells, by attack label;
- attack scoring: the rest of each cell's ``attack_time_s`` (queries, metrics, dCor, the image grid);
- overhead: workers x wall time minus the above (process start, data loading, test passes, idle cores).

    python benchmarks/sweep_time.py                      # the default sweep, ~3-6 min on 2 cores
    python benchmarks/sweep_time.py --config experiments/default_sweep_pinned.yaml
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "ref_workload.py"


def reference_seconds() -> float | None:
    if not REFERENCE.exists():
        return None
    return float(subprocess.run([sys.executable, str(REFERENCE)], capture_output=True, text=True, check=True).stdout.split()[-1])


def breakdown(folder: Path, workers: int, wall: float) -> list[tuple[str, float]]:
    """(phase, CPU-seconds summed over cells) from a finished sweep folder."""
    phases: dict[str, float] = collections.Counter()
    for metrics in (folder / "train").glob("*/metrics.json"):
        phases["training"] += json.loads(metrics.read_text())["train_time_s"]
    for record_path in (folder / "attacks").glob("*/attack.json"):
        record = json.loads(record_path.read_text())
        fits = {label: attack["fit_time_s"] for label, attack in record["attacks"].items()}
        for label, seconds in fits.items():
            phases[f"attack {label}"] += seconds
        phases["attack scoring"] += record["attack_time_s"] - sum(fits.values())
    phases["overhead"] = workers * wall - sum(phases.values())
    return sorted(phases.items(), key=lambda item: -item[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a sweep config (default: the default sweep)")
    parser.add_argument("--out", default=None, help="parent folder of the sweep folder (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="splitpriv-sweep-time-"))
    before = reference_seconds()
    command = [sys.executable, "-m", "splitpriv.cli", "sweep", "--out", str(out), "--wandb-mode", "disabled",
               *(["--config", args.config] if args.config else [])]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = reference_seconds()
    folder = next(path.parent for path in out.glob("*/sweep.yaml"))
    import yaml

    settings = yaml.safe_load((folder / "sweep.yaml").read_text())
    workers = settings["workers"] if settings.get("executor", "local") == "local" else 1
    cells = len((folder / "results.jsonl").read_text().splitlines())
    print(f"sweep {folder.name}: {cells} cells, {workers} worker(s), {wall:.0f} s wall")
    if before is not None:
        reference = statistics.mean([before, after])
        print(f"reference workload: {before:.2f} s before, {after:.2f} s after; sweep = {wall / reference:.1f} units")
    print(f"\n{'phase':44s} {'CPU-s':>8s} {'share':>6s}")
    phases = breakdown(folder, workers, wall)
    total = sum(seconds for _, seconds in phases)
    for phase, seconds in phases:
        print(f"{phase:44s} {seconds:8.1f} {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
