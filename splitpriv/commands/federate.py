"""``splitpriv federate``: SplitFed's fed server, which averages the clients' partitions apart from the server."""
from __future__ import annotations

import argparse

from splitpriv.commands.common import add_run_arguments, config_from_args

HELP = "average SplitFed's client partitions as a fed server apart from 'splitpriv serve' (which then never sees them)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 for every interface (Gloo traffic is not encrypted)")
    parser.add_argument("--port", type=int, default=29401, help="port of the handshake")
    parser.add_argument("--clients", type=int, default=2, help="clients whose partitions are averaged (2 or more)")
    parser.add_argument("--secret-file", help="file whose first line is the shared secret (default: $SPLITPRIV_SECRET)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the clients (to connect, or to end a round) before giving up")


def run(args: argparse.Namespace) -> int:
    from splitpriv.parties import Federation, federate
    from splitpriv.transport import read_secret

    cfg = config_from_args(args, {"training.progress_bar": False})
    federation = Federation(args.clients, "splitfed", fed_server=True)
    summary = federate(cfg, args.host, args.port, read_secret(args.secret_file), federation, args.timeout,
                       on_listening=lambda address: print(f"fed server on {address[0]}:{address[1]}", flush=True))
    print(f"averaged {summary['rounds']} rounds of {summary['clients']} clients' partitions (FedAvg); the server "
          f"saw none of them")
    return 0
