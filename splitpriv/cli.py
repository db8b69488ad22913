"""``splitpriv <command>``: the command-line front door.

Each command is one module in ``splitpriv/commands/`` with ``HELP``, ``add_arguments(parser)``,
``run(args) -> int`` and optionally ``FLAG_KEYS`` (config key -> the flags that set it). Plugin files
named by ``--plugin`` are imported before the parser is built, so that what they register (a defense's
parameters, for one) has its flags.

This is the one place where failures become exit codes: a problem with the user's input, files or
saved state (:class:`SplitprivError`, or the file system's ``OSError``) prints one message naming
the file or key, what is wrong and how to fix it, exit code 2; Ctrl-C exits 130; anything else is
a bug in splitpriv and keeps its traceback, with a line saying so, exit code 1.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from splitpriv.errors import ConfigError, SplitprivError, TrainingInterrupted

COMMANDS = ["train", "serve", "client", "federate", "attack", "sweep", "predict", "tune", "compare", "profile", "plan", "cost", "exits", "lighten"]


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
        sub.set_defaults(handler=module.run, parser=sub,
                         flag_keys={**getattr(module, "FLAG_KEYS", {}), **(sub.get_default("flag_keys") or {})})
    return parser


def user_message(error: BaseException, argv: list[str], flag_keys: dict[str, str]) -> str:
    """The message for a user-fixable error; a config key the user set by a flag is named by that flag."""
    if isinstance(error, ConfigError):
        typed = [flag for flag in flag_keys.get(error.key, ()) if any(a == flag or a.startswith(flag + "=") for a in argv)]
        if typed:
            return f"{error.problem} {typed[0]} (config key '{error.key}'): {error.value!r}; allowed: {error.allowed}"
    if isinstance(error, ConnectionError):
        return (f"{error.strerror or error} (the connection to the other party broke: check that it is still running "
                f"and reachable, then start this party again)")
    if isinstance(error, OSError) and not isinstance(error, SplitprivError):
        where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
        return (f"{error.strerror or error}: {where}" if where else str(error)) + \
            " (check that the path exists, is the kind of file expected, is writable and that the disk has room)"
    return str(error)


def import_given_plugins(argv: list[str]) -> None:
    """Import the files given with ``--plugin``, before the parser that shows what they register."""
    from splitpriv.store import import_plugins

    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    import_plugins(early.parse_known_args(argv)[0].plugin)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        import_given_plugins(argv)
    except SplitprivError as error:
        print(f"splitpriv {argv[0] if argv else ''}: error: {error}".replace("  ", " "), file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (SplitprivError, OSError) as error:
        print(f"splitpriv {args.command}: error: {user_message(error, argv, args.flag_keys)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as interrupted:
        print(f"splitpriv {args.command}: interrupted: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"splitpriv {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user error: keep the evidence
        traceback.print_exc()
        print(f"splitpriv {args.command}: unexpected internal error: this is a bug in splitpriv, not a problem "
              f"with your input; please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
