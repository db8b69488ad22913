"""``splitpriv compare``: frontiers of several sweeps (or attacked runs) side by side."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from splitpriv.errors import SplitprivError

HELP = "print the frontiers of sweep folders (or attacked run folders) side by side, one line per cut and defense"
SHOWN = ("test_accuracy", "worst_mse", "worst_ssim")


def frontier_rows(folder: Path) -> list[dict]:
    """A sweep folder's frontier.csv, or one row from an attacked run's metrics.json + attack.json."""
    if (folder / "frontier.csv").exists():
        with open(folder / "frontier.csv", newline="") as handle:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    if (folder / "attack.json").exists() and (folder / "metrics.json").exists():
        attack, metrics = (json.loads((folder / f).read_text()) for f in ("attack.json", "metrics.json"))
        defense = attack["defenses"][0] if attack["defenses"] else {"name": "none"}
        return [{"cut_layer": attack["cut_layer"], "cut_name": attack["cut_name"], "defense": defense["name"],
                 "strength": None, "seed": None, "test_accuracy": metrics["test_accuracy"],
                 "worst_mse": attack["worst_case"]["mse"], "worst_ssim": attack["worst_case"]["ssim"]}]
    raise SplitprivError(f"{folder} holds neither a sweep (frontier.csv) nor an attacked run (attack.json and "
                         f"metrics.json); run 'splitpriv sweep' or 'splitpriv attack --run {folder}' first")


def _number(text: str):
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def mean_by_cell(rows: list[dict]) -> dict[tuple, dict]:
    """Rows keyed by (cut_layer, cut_name, defense, strength), each metric averaged over seeds."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["cut_layer"], row["cut_name"], row["defense"], row["strength"]), []).append(row)
    return {key: {m: sum(r[m] for r in group) / len(group) for m in SHOWN} for key, group in grouped.items()}


def compare_table(folders: list[Path]) -> str:
    frontiers = [mean_by_cell(frontier_rows(folder)) for folder in folders]
    keys = sorted({key for frontier in frontiers for key in frontier}, key=lambda k: (k[0], str(k[2]), str(k[3])))
    header = ["cut", "defense", "strength"] + [f"{folder.name}:{m.replace('test_', '').replace('worst_', 'w_')}"
                                                for folder in folders for m in SHOWN]
    lines = [header]
    for key in keys:
        values = []
        for frontier in frontiers:
            row = frontier.get(key)
            values += [f"{row[m]:.4f}" if row else "-" for m in SHOWN]
        lines.append([f"{key[0]}:{key[1]}", str(key[2]), "-" if key[3] is None else f"{key[3]:g}"] + values)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (runs/<sweep>) or attacked run folders")


def run(args: argparse.Namespace) -> int:
    for folder in args.folders:
        if not folder.is_dir():
            raise SplitprivError(f"no such folder: {folder}")
    print(compare_table(args.folders))
    return 0
