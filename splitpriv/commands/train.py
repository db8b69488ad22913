"""``splitpriv train``: train one split model (with its defenses) and write runs/<name>/."""
from __future__ import annotations

import argparse
import json

from splitpriv.commands.common import add_training_arguments, config_from_args

HELP = "train a split model at one cut (digits, small_cnn, a middle cut by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")


def run(args: argparse.Namespace) -> int:
    from splitpriv.experiment import train

    overrides = {"training.progress_bar": False} if args.no_progress else {}
    cfg = config_from_args(args, overrides)
    run = train(cfg, resume=args.resume, force=args.force)
    print(f"run written to {run.path}")
    print(json.dumps(run.metrics, indent=2))
    return 0
