"""Calibrating a trained run's early exits: thresholds swept on the validation split, the cheapest
reaching a target accuracy chosen and checked on the private test set (``splitpriv exits``).
The exits themselves and the threshold arithmetic are :mod:`splitpriv.exits`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitpriv.errors import SplitprivError
from splitpriv.exits import choose, collect, evaluate, sweep
from splitpriv.runs import load_run
from splitpriv.store import atomic_save_figure, atomic_write_csv, pyplot


@dataclass
class ExitsReport:
    target_accuracy: float
    names: list[str]
    chosen: dict | None  # on the validation split (calibration)
    chosen_test: dict | None  # the same thresholds on the private test set
    best_val_accuracy: float
    csv_path: Path
    plot_path: Path

    def summary(self) -> str:
        lines = [f"wrote {self.csv_path} and {self.plot_path}"]
        if self.chosen is None:
            lines.append(f"infeasible: no thresholds reach accuracy >= {self.target_accuracy:g} on the validation split; "
                         f"the best reachable is {self.best_val_accuracy:.4f} (no early exit at all)")
            return "\n".join(lines)
        lines.append("thresholds (calibrated on the validation split): "
                     + ", ".join(f"{n}: {self.chosen[f'alpha_{n}']:.3g}" for n in self.names[:-1]))
        for split, record in (("validation", self.chosen), ("private test", self.chosen_test)):
            exits = ", ".join(f"{n}: beta={record[f'beta_{n}']:.3f} acc={record[f'accuracy_{n}']:.3f}" for n in self.names)
            lines.append(f"{split}: accuracy {record['accuracy']:.4f}, early exits {record['early_exit_rate']:.3f}, "
                         f"mean FLOPs {record['mean_flops']:.4g}, mean bytes {record['mean_bytes']:.4g} | {exits}")
        return "\n".join(lines)


def plot(path: Path, records: list[dict], chosen: dict | None, target_accuracy: float) -> None:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(6, 4))
    axes.scatter([r["mean_flops"] for r in records], [r["accuracy"] for r in records], s=8, c="tab:gray", label="thresholds")
    axes.axhline(target_accuracy, color="tab:red", linestyle="--", linewidth=1, label=f"A_tar = {target_accuracy:g}")
    if chosen is not None:
        axes.scatter([chosen["mean_flops"]], [chosen["accuracy"]], marker="*", s=160, c="tab:red", label="chosen")
    axes.set(xlabel="mean FLOPs per sample", ylabel="accuracy (validation)", title="early exits: accuracy vs. compute")
    axes.legend(loc="lower right")
    figure.tight_layout()
    atomic_save_figure(figure, path)


def calibrate_run(run_path: str | Path, target_accuracy: float, kind: str = "max_softmax") -> ExitsReport:
    """Sweep thresholds on the run's validation split, choose, check on the private test set,
    write ``exits.csv`` (every threshold combination, the chosen one marked) and ``exits.png``."""
    run = load_run(run_path)
    module = run.module
    if not (module.client_exits or module.server_exits):
        raise SplitprivError(f"run {run.path} has no internal classifiers: train it with exits, e.g. "
                             "'exits: {at: [1, 6]}' in its config")
    input_shape = run.data.info.input_shape
    validation = collect(module, run.data.dataset("val"), input_shape, kind)
    test = collect(module, run.data.dataset("private_test"), input_shape, kind)
    records = sweep(validation)
    chosen = choose(records, target_accuracy)
    chosen_test = evaluate(test, [chosen[f"alpha_{n}"] for n in test.names[:-1]]) if chosen else None
    for record in records:
        record["chosen"] = record is chosen
    report = ExitsReport(target_accuracy, validation.names, chosen, chosen_test, max(r["accuracy"] for r in records),
                         Path(run.path) / "exits.csv", Path(run.path) / "exits.png")
    atomic_write_csv(report.csv_path, records)
    plot(report.plot_path, records, chosen, target_accuracy)
    return report
