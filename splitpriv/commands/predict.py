"""``splitpriv predict``: every cell's leakage and accuracy, predicted from public data before any private training."""
from __future__ import annotations

import argparse

from splitpriv.commands import sweep as sweep_command
from splitpriv.prediction import EPOCHS_SHARE, format_predictions, predict

HELP = ("predict every sweep cell's worst-case leakage per threat model and its test accuracy from the proxy data "
        "alone (a rehearsal per cell), before training on private data; write predicted.csv")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML sweep config (see experiments/*_sweep.yaml); default: the embedded digits sweep")
    for item in sweep_command.FLAGS:
        parser.add_argument(item.flag, dest=item.dest, help=sweep_command.flag_help(item), **sweep_command.flag_kind(item))
    parser.add_argument("--data-root", help="folder holding the data sets (default: $SPLITPRIV_DATA, else ./data)")
    parser.add_argument("--force", action="store_true", help="rehearse again although the folder holds this config's predictions")
    parser.add_argument("--epochs-share", type=float, default=EPOCHS_SHARE,
                        help=f"share of the private run's epochs each rehearsal trains, in (0, 1] (default {EPOCHS_SHARE}; "
                             f"1.0: slower, a closer accuracy)")


def run(args: argparse.Namespace) -> int:
    rows = predict(sweep_command.sweep_config(args), epochs_share=args.epochs_share, force=args.force)
    print(format_predictions(rows))
    return 0
