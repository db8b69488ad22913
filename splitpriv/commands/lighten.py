"""``splitpriv lighten``: lighter client partitions of a trained run, measured against the original."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("distil, prune or int8-quantise a run's client partition and report parameters, FLOPs, CPU latency "
        "and accuracy against the original (writes lighten.json in the run folder)")


FLAG_KEYS = {"epochs": ("--epochs",), "--width": ("--width",), "--amount": ("--amount",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from splitpriv.lighten import METHODS

    parser.add_argument("--plugin", action="append", default=[],
                        help="python file registering what the run needs (repeatable; a run folder's own plugin "
                             "list is never imported without it)")
    parser.add_argument("--run", required=True, help="a trained run folder")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="variants to build")
    parser.add_argument("--width", type=float, default=0.5, help="distillation: share of hidden widths the student keeps, in (0, 1)")
    parser.add_argument("--amount", type=float, default=0.5, help="pruning: share of weights zeroed, in (0, 1)")
    parser.add_argument("--epochs", type=int, default=10, help="distillation epochs")


def run(args: argparse.Namespace) -> int:
    from splitpriv.lighten import check_fraction, format_table, lighten
    from splitpriv.runs import load_run
    from splitpriv.store import atomic_write_json, import_plugins

    check_fraction("--width", args.width, "a number in (0, 1)")  # before loading anything
    check_fraction("--amount", args.amount, "a number in (0, 1)")
    import_plugins(args.plugin)
    run = load_run(args.run)
    rows = lighten(run, args.methods, args.width, args.amount, args.epochs)
    atomic_write_json(Path(run.path) / "lighten.json", rows)
    print(format_table(rows))
    print(f"wrote {Path(run.path) / 'lighten.json'}")
    return 0
