"""``splitpriv exits``: calibrate early-exit thresholds of a run trained with internal classifiers."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from splitpriv.errors import ConfigError, SplitprivError

HELP = ("sweep the confidence thresholds of a run's early exits, write exits.csv and exits.png, and pick the "
        "thresholds with the most early exits at accuracy >= --target-accuracy (calibrated on the validation split)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[],
                        help="python file registering what the run needs (repeatable; a run folder's own plugin "
                             "list is never imported without it)")
    parser.add_argument("--run", required=True, help="run folder trained with exits (config 'exits: {at: [...]}')")
    parser.add_argument("--target-accuracy", type=float, required=True, help="A_tar in (0, 1]: the accuracy to keep")
    parser.add_argument("--confidence", choices=["max_softmax", "entropy"], default="max_softmax",
                        help="confidence of an exit: max softmax probability, or 1 - normalised entropy")


def run(args: argparse.Namespace) -> int:
    from splitpriv.exit_calibration import calibrate_run
    from splitpriv.store import import_plugins

    if not (isinstance(args.target_accuracy, float) and 0 < args.target_accuracy <= 1) or math.isnan(args.target_accuracy):
        raise ConfigError("--target-accuracy", args.target_accuracy, "a number in (0, 1]")
    if not Path(args.run).is_dir():
        raise SplitprivError(f"no run folder at {args.run}")
    import_plugins(args.plugin)
    report = calibrate_run(args.run, args.target_accuracy, args.confidence)
    print(report.summary())
    return 0
