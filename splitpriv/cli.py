"""``splitpriv <command>``: the command-line front door.

Each command is one module in ``splitpriv/commands/`` with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. User errors (bad config, missing data, wrong cut) print one message
and exit with code 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from splitpriv.errors import SplitprivError

COMMANDS = ["train", "attack", "sweep", "compare", "profile", "plan", "cost", "exits", "lighten"]


def _commands() -> dict:
    return {name: importlib.import_module(f"splitpriv.commands.{name}") for name in COMMANDS}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults; a None default means "from the config file", so it is not shown."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitpriv",
        description="Privacy-aware split learning: train split models with defenses, attack them, "
        "profile every cut and plan where to cut.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in _commands().items():
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP,
                                    formatter_class=_HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run, parser=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SplitprivError as error:
        print(f"splitpriv {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"splitpriv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
