"""``splitpriv client``: the client party of split learning, training against a ``splitpriv serve``."""
from __future__ import annotations

import argparse
import json

from splitpriv.commands.common import add_training_arguments, config_from_args
from splitpriv.commands.serve import add_transport_arguments, federation_from_args, shaping_from_args

HELP = "train as the client party against 'splitpriv serve' (same config; the run folder holds the client's state)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="rejoin the server from the run folder's last checkpoint (one client, or sequential clients; the "
                             "same serve process)")
    parser.add_argument("--server", default="127.0.0.1:29400", help="HOST:PORT of 'splitpriv serve'")
    parser.add_argument("--fed-server", help="HOST:PORT of 'splitpriv federate', SplitFed's separate fed server, which "
                                             "then averages the client partitions instead of the server")
    parser.add_argument("--client-index", type=int, default=0,
                        help="this client's index among --clients (0..N-1): it trains on every N-th private image from it")
    add_transport_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from splitpriv.parties import train_client
    from splitpriv.transport import parse_address, read_secret

    overrides = {"training.progress_bar": False} if args.no_progress else {}
    cfg = config_from_args(args, overrides)
    for address in (args.server, args.fed_server):
        if address is not None:
            parse_address(address)
    shaping, federation = shaping_from_args(args), federation_from_args(args)
    run = train_client(cfg, args.server, read_secret(args.secret_file), args.timeout, shaping, federation,
                       args.client_index, args.fed_server, force=args.force, resume=args.resume)
    print(f"run written to {run.path} (the client's state; the server keeps its own)")
    print(json.dumps(run.metrics, indent=2))
    return 0
