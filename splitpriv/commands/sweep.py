"""``splitpriv sweep``: the privacy-utility frontier at every cut point (train + attack each cell)."""
from __future__ import annotations

import argparse

HELP = ("train and attack every cut x defense x seed; write frontier.csv/png (default: digits, small_cnn, "
        "every cut, no defense / distance correlation / DP noise / decoder reconstruction)")


FLAG_KEYS = {"out": ("--out",), "name": ("--name",), "data.root": ("--data-root",), "workers": ("--workers",),
             "wandb.mode": ("--wandb-mode",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML sweep config (see experiments/*_sweep.yaml); default: the embedded digits sweep")
    parser.add_argument("--out", help="parent folder of the sweep folder (default: runs)")
    parser.add_argument("--name", help="sweep folder name and wandb group (default: <dataset>-<model>-sweep)")
    parser.add_argument("--data-root", help="folder holding the data sets (default: $SPLITPRIV_DATA, else ./data)")
    parser.add_argument("--workers", type=int, help="cells run in parallel processes (default 2)")
    parser.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                        help="default: offline unless wandb is configured with an API key")
    parser.add_argument("--force", action="store_true", help="discard the sweep folder's results and start afresh")


def run(args: argparse.Namespace) -> int:
    from splitpriv.config import load_yaml, set_dotted
    from splitpriv.sweep import format_table, load_sweep_config, run_sweep

    values = load_yaml(args.config) if args.config else {}
    for key, value in (("out", args.out), ("name", args.name), ("data.root", args.data_root),
                       ("workers", args.workers), ("wandb.mode", args.wandb_mode)):
        if value is not None:
            set_dotted(values, key, value)
    rows = run_sweep(load_sweep_config(values), force=args.force)
    print(format_table(rows))
    return 0
