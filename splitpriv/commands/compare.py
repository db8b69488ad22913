"""``splitpriv compare``: frontiers of several sweeps (or attacked runs) side by side, as text or as a
Markdown table that names the command and commit behind every folder's numbers."""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from splitpriv.errors import RunStateError, SplitprivError

HELP = ("print the frontiers of sweep folders (or attacked run folders) side by side, one line per cut and "
        "defense, averaged over seeds; --markdown FILE writes the table with the provenance of each folder")
PLOT_FORMATS = (".png", ".pdf", ".svg")
SHOWN = ("test_accuracy", "worst_mse_passive", "worst_mse_black_box", "worst_mse_white_box")


def frontier_rows(folder: Path) -> list[dict]:
    """A sweep folder's frontier.csv, or one row from an attacked run's metrics.json + attack.json."""
    if (folder / "frontier.csv").exists():
        from splitpriv.sweep import read_frontier

        return read_frontier(folder / "frontier.csv")
    if (folder / "attack.json").exists() and (folder / "metrics.json").exists():
        from splitpriv.store import read_metrics

        try:
            attack, metrics = json.loads((folder / "attack.json").read_text()), read_metrics(folder)
            from splitpriv.sweep import THREAT_COLUMNS

            defense = attack["defenses"][0] if attack["defenses"] else {"name": "none"}
            leakage = {f"{column}_{model}": (worst or {}).get(key) for model, worst in attack["worst_case"].items()
                       for column, key in THREAT_COLUMNS.items()}
            return [{"cut_layer": attack["cut_layer"], "cut_name": attack["cut_name"], "defense": defense["name"],
                     "strength": None, "seed": None, "test_accuracy": metrics["test_accuracy"], **leakage}]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise RunStateError(f"{folder}: attack.json or metrics.json is damaged ({type(error).__name__}: {error}); "
                                f"rerun 'splitpriv attack --run {folder}'") from None
    raise SplitprivError(f"{folder} holds neither a sweep (frontier.csv) nor an attacked run (attack.json and "
                         f"metrics.json); run 'splitpriv sweep' or 'splitpriv attack --run {folder}' first")


def folder_provenance(folder: Path) -> dict | None:
    """The provenance a sweep (provenance.json) or a run (config.yaml) recorded, if any."""
    if (folder / "provenance.json").exists():
        try:
            return json.loads((folder / "provenance.json").read_text())["started"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            return None
    if (folder / "config.yaml").exists():
        import yaml

        try:
            return (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("resolved", {}).get("provenance")
        except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
            return None
    return None


def _strength(row: dict) -> str:
    """e.g. 'epsilon (per message) 32': the strength with what it is, or '-'."""
    if row.get("strength") is None:
        return "-"
    return " ".join(filter(None, [row.get("strength_parameter"), f"{row['strength']:g}"]))


def rows_at_cuts(folder: Path, cuts: tuple[str, ...] = ()) -> list[dict]:
    """The folder's frontier rows at ``cuts`` (indices or names; all when empty)."""
    return [row for row in frontier_rows(folder) if not cuts or {str(row["cut_layer"]), row["cut_name"]} & set(cuts)]


def by_cell(rows: list[dict], metrics: tuple[str, ...]) -> dict[tuple, dict[str, list]]:
    """Each metric's values over seeds, keyed by (cut_layer, cut_name, defense with the cell's
    adaptations, strength)."""
    from splitpriv.sweep import row_adaptations

    grouped: dict[tuple, dict[str, list]] = {}
    for row in rows:
        defense = "+".join([row["defense"], *row_adaptations(row)])
        cell = grouped.setdefault((row["cut_layer"], row["cut_name"], defense, _strength(row)), {m: [] for m in metrics})
        for metric in metrics:
            if row.get(metric) is not None:
                cell[metric].append(row[metric])
    return grouped


def _format(values: list) -> str:
    """Numbers: the mean, with ± the sample standard deviation (n - 1) over seeds and their number when there are
    several. Text (e.g. the attack behind a worst case): each distinct value."""
    if not values:
        return "-"
    if any(isinstance(v, str) for v in values):
        return ", ".join(sorted({str(v) for v in values}))
    mean = statistics.mean(values)
    text = f"{mean:.4f}" if abs(mean) < 10 else f"{mean:.1f}"
    return text if len(values) == 1 else f"{text} ± {statistics.stdev(values):.4f} (n={len(values)})"


def compare_lines(folders: list[Path], metrics: tuple[str, ...] = SHOWN, cuts: tuple[str, ...] = ()) -> list[list[str]]:
    """The header and one line per (cut, defense, strength) over every folder; ``cuts`` (indices or
    names) keeps only those cuts."""
    frontiers = []
    for folder in folders:
        rows = rows_at_cuts(folder, cuts)
        unknown = [m for m in metrics if rows and all(m not in row for row in rows)]
        if unknown:
            raise SplitprivError(f"--metrics {' '.join(unknown)}: no such column in {folder}; columns: {sorted(rows[0])}")
        frontiers.append(by_cell(rows, metrics))
    keys = sorted({key for frontier in frontiers for key in frontier}, key=lambda k: (k[0], str(k[2]), str(k[3])))
    short = lambda m: m.replace("test_", "").replace("worst_", "w_")  # noqa: E731
    lines = [["cut", "defense", "strength"] + [f"{folder.name}:{short(m)}" for folder in folders for m in metrics]]
    for key in keys:
        values = []
        for frontier in frontiers:
            cell = frontier.get(key)
            values += [_format(cell[m]) if cell else "-" for m in metrics]
        lines.append([f"{key[0]}:{key[1]}", str(key[2]), key[3]] + values)
    return lines


def compare_table(folders: list[Path], metrics: tuple[str, ...] = SHOWN, cuts: tuple[str, ...] = ()) -> str:
    lines = compare_lines(folders, metrics, cuts)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in lines)


def markdown_table(folders: list[Path], metrics: tuple[str, ...] = SHOWN, command: str = "", cuts: tuple[str, ...] = ()) -> str:
    """The table in Markdown, headed by how it was generated and, per folder, what produced its numbers."""
    lines = compare_lines(folders, metrics, cuts)
    text = [f"Generated by `{command}`." if command else "Generated by `splitpriv compare --markdown`.", ""]
    for folder in folders:
        origin = folder_provenance(folder)
        described = origin and all(key in origin for key in ("command", "commit", "created_utc"))
        kernels = f", CPU kernels {origin['cpu_kernels']}" if described and origin.get("cpu_kernels") else ""
        text.append(f"- `{folder.name}`: " + (f"`{origin['command']}` at commit `{origin['commit']}`, {origin['created_utc']}"
                                              f"{kernels}" if described else "no provenance recorded"))
    text += ["", "| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    text += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(text) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (runs/<sweep>) or attacked run folders")
    parser.add_argument("--metrics", nargs="+", default=list(SHOWN),
                        help="frontier.csv columns to show (e.g. worst_psnr dcor_sq_bias_corrected message_dp_epsilon_per_sample)")
    parser.add_argument("--cuts", nargs="+", default=[], help="only these cuts (indices or names)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the table as Markdown, with provenance")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="also draw the folders' frontiers in one figure (.png, .pdf or .svg; a marker shape per folder)")


def run(args: argparse.Namespace) -> int:
    from splitpriv.provenance import command_line
    from splitpriv.store import atomic_write_text

    for folder in args.folders:
        if not folder.is_dir():
            raise SplitprivError(f"no such folder: {folder}")
    if args.plot and args.plot.suffix.lower() not in PLOT_FORMATS:
        raise SplitprivError(f"--plot {args.plot}: give a file name ending in one of {', '.join(PLOT_FORMATS)}")
    metrics, cuts = tuple(args.metrics), tuple(args.cuts)
    print(compare_table(args.folders, metrics, cuts))
    if args.markdown:
        atomic_write_text(args.markdown, markdown_table(args.folders, metrics, command_line(), cuts))
        print(f"wrote {args.markdown}")
    if args.plot:
        from splitpriv.store import atomic_save_figure
        from splitpriv.sweep import frontier_figure

        frontiers = {_unique_name(folder, args.folders): rows_at_cuts(folder, cuts) for folder in args.folders}
        atomic_save_figure(frontier_figure(frontiers, " vs ".join(frontiers)), args.plot)
        print(f"wrote {args.plot}")
    return 0


def _unique_name(folder: Path, folders: list[Path]) -> str:
    """The folder's name, or its path where another folder has the same name."""
    return folder.name if sum(f.name == folder.name for f in folders) == 1 else str(folder)
