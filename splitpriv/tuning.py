"""Privacy-safe tuning: choose a cell from predictions, then train once on the private data.

Tuning by trial sends messages computed from private data in every trial before a safe configuration
is known. ``tune`` chooses the cut, defense and strength of a sweep's grid from ``splitpriv predict``'s
rehearsals on public data alone, trains that one cell on the private data, attacks it with the sweep's
attack set, and reports how close the private run landed to the target.

The choice: among the grid's settings (mean over seeds) whose predicted worst-case MSE against
``threat_model`` is at least ``target_mse`` and whose predicted accuracy is at most
``max_accuracy_drop`` below the best predicted undefended accuracy, the one with the highest predicted
accuracy (ties: the shallowest cut, the least client compute).
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from splitpriv.attack_suite import run_attacks
from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.experiment import train
from splitpriv.prediction import EPOCHS_SHARE, PREDICTED_CSV, predict, read_predictions
from splitpriv.provenance import provenance
from splitpriv.store import atomic_write_json
from splitpriv.sweep import NO_DEFENSE, SweepConfig, base_run_config, cell_run_config, grid, seed_splits
from splitpriv.models import build_model

TUNE_DIR, TUNE_FILE = "tune", "tune.json"


@dataclass
class Choice:
    cut_layer: int
    defense: str
    strength: float | None
    predicted_mse: float
    predicted_accuracy: float


def choose(rows: list[dict], target_mse: float, max_accuracy_drop: float, threat_model: str) -> tuple[Choice | None, float, list[Choice]]:
    """(the chosen setting or None, the best predicted undefended accuracy, every setting) from predicted rows."""
    settings: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["compression"] == NO_DEFENSE and row["exits"] == NO_DEFENSE:
            settings.setdefault((row["cut_layer"], row["defense"], row["strength"]), []).append(row)
    options = [Choice(cut, defense, strength, statistics.mean(r[f"worst_mse_{threat_model}"] for r in group),
                      statistics.mean(r["test_accuracy"] for r in group))
               for (cut, defense, strength), group in settings.items()]
    if not options:
        raise SplitprivError("no setting of the grid has a prediction: every rehearsal failed (predicted.csv's "
                             "rehearsal_failure says why); change the grid or the training settings")
    undefended = max((o.predicted_accuracy for o in options if o.defense == NO_DEFENSE), default=max(o.predicted_accuracy for o in options))
    eligible = [o for o in options if o.predicted_mse >= target_mse and undefended - o.predicted_accuracy <= max_accuracy_drop]
    chosen = max(eligible, key=lambda o: (o.predicted_accuracy, -o.cut_layer), default=None)
    return chosen, undefended, options


def tune(cfg: SweepConfig, target_mse: float, max_accuracy_drop: float, threat_model: str = "white_box", *,
         epochs_share: float = EPOCHS_SHARE, force: bool = False, progress: Callable[[str], None] = print) -> dict:
    """Choose from predictions (those in the sweep folder, else a fresh prediction; ``force``: a fresh
    one), train the choice once on the private data, attack it; returns (and writes ``tune/tune.json``)
    the record."""
    if threat_model not in THREAT_MODELS:
        raise ConfigError("threat_model", threat_model, f"one of {list(THREAT_MODELS)}")
    if not target_mse > 0:
        raise ConfigError("target_mse", target_mse, "a number > 0 (the least worst-case MSE the private run may leave)")
    if not 0 <= max_accuracy_drop <= 1:
        raise ConfigError("max_accuracy_drop", max_accuracy_drop, "a number in [0, 1] (test-accuracy points below the undefended model)")
    sweep_dir = Path(cfg.out) / cfg.sweep_name()
    predict(cfg, epochs_share=epochs_share, force=force, progress=progress)
    chosen, undefended, options = choose(read_predictions(sweep_dir / PREDICTED_CSV), target_mse, max_accuracy_drop, threat_model)
    record = {"provenance": provenance(), "threat_model": threat_model, "target_mse": target_mse,
              "max_accuracy_drop": max_accuracy_drop, "predicted_undefended_accuracy": undefended}
    if chosen is None:
        nearest = max((o for o in options if undefended - o.predicted_accuracy <= max_accuracy_drop),
                      key=lambda o: o.predicted_mse, default=None)
        record |= {"chosen": None, "nearest": dataclasses.asdict(nearest) if nearest else None}
        atomic_write_json(sweep_dir / TUNE_DIR / TUNE_FILE, record)
        return record
    progress(f"tune: cut {chosen.cut_layer}, {chosen.defense} {chosen.strength if chosen.strength is not None else ''} "
             f"(predicted MSE {chosen.predicted_mse:.4f}, accuracy {chosen.predicted_accuracy:.3f}); training it on the private data")
    record["chosen"] = dataclasses.asdict(chosen)
    record["measured"] = _train_and_attack(cfg, chosen, sweep_dir / TUNE_DIR, threat_model)
    measured = record["measured"]
    record["target_met"] = measured["worst_mse"] >= target_mse and undefended - measured["test_accuracy"] <= max_accuracy_drop
    record["mse_ratio_to_target"] = measured["worst_mse"] / target_mse
    atomic_write_json(sweep_dir / TUNE_DIR / TUNE_FILE, record)
    return record


def _train_and_attack(cfg: SweepConfig, chosen: Choice, folder: Path, threat_model: str) -> dict:
    """The one private training of the chosen cell (first seed) and the sweep's attack set on it."""
    data = seed_splits(dataclasses.replace(base_run_config(cfg), seed=cfg.seeds[0]))
    model = build_model(cfg.model, data.info.num_classes, data.info.in_channels, data.info.image_size)
    cell = next(c for c in grid(cfg, model.cut_points(data.info.input_shape))
                if (c.cut_layer, c.defense, c.strength, c.seed) == (chosen.cut_layer, chosen.defense, chosen.strength, cfg.seeds[0])
                and c.compression == NO_DEFENSE and c.exits == NO_DEFENSE)
    run_cfg = dataclasses.replace(cell_run_config(cfg, cell, cell.cut_layer), out=str(folder))
    run = train(run_cfg, force=True, data=data)
    attack = run_attacks(run, cfg.attack, out_dir=run.path, progress=None)
    worst = attack["worst_case"][threat_model]
    return {"run": str(run.path), "test_accuracy": run.metrics["test_accuracy"], "worst_mse": worst["mse"],
            "worst_attack": worst["mse_attack"], "worst_ssim": worst["ssim"]}
