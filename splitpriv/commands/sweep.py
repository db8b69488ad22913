"""``splitpriv sweep``: the privacy-utility frontier at every cut point (train + attack each cell)."""
from __future__ import annotations

import argparse

from splitpriv.commands.common import flag_help, flag_kind
from splitpriv.config import config_flags, load_yaml, set_dotted
from splitpriv.sweep import SweepConfig, format_table, load_sweep_config, run_sweep

HELP = ("train and attack every cut x defense x seed; write frontier.csv/png (default: digits, small_cnn, "
        "every cut, each default defense, the default attack set per threat model)")
FLAGS = config_flags(SweepConfig)
DATA_ROOT = "data.root"  # the sweep's data settings are a plain mapping, so this one flag is declared here
FLAG_KEYS = {**{item.key: (item.flag,) for item in FLAGS}, DATA_ROOT: ("--data-root",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML sweep config (see experiments/*_sweep.yaml); default: the embedded digits sweep")
    for item in FLAGS:
        parser.add_argument(item.flag, dest=item.dest, help=flag_help(item), **flag_kind(item))
    parser.add_argument("--data-root", help="folder holding the data sets (default: $SPLITPRIV_DATA, else ./data)")
    parser.add_argument("--force", action="store_true", help="discard the sweep folder's results and start afresh")


def sweep_config(args: argparse.Namespace) -> SweepConfig:
    """The sweep config of ``--config`` with the flags given on top (``sweep`` and ``predict`` share them)."""
    values = load_yaml(args.config) if args.config else {}
    given = [(item.key, getattr(args, item.dest)) for item in FLAGS] + [(DATA_ROOT, args.data_root)]
    for key, value in given:
        if value is not None:
            set_dotted(values, key, value)
    return load_sweep_config(values)


def run(args: argparse.Namespace) -> int:
    rows = run_sweep(sweep_config(args), force=args.force)
    print(format_table(rows))
    return 0
