"""``splitpriv serve``: the server party of split learning, in its own process."""
from __future__ import annotations

import argparse
from pathlib import Path

from splitpriv.commands.common import add_run_arguments, config_from_args

HELP = "serve the server partition to one 'splitpriv client' over the network (torch.distributed, Gloo)"


def add_transport_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret-file", help="file whose first line is the shared secret (default: $SPLITPRIV_SECRET)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the other party (to connect, or to answer a step) before giving up")
    parser.add_argument("--bandwidth-mbps", type=float, help="emulate a link of this bandwidth on this party's sends "
                                                             "(megabits per second; default: unlimited)")
    parser.add_argument("--rtt-ms", type=float, default=0.0,
                        help="emulate this round-trip time: half of it is added to each of this party's sends")
    parser.add_argument("--clients", type=int, default=1, help="clients training with the server (the same on every party)")
    parser.add_argument("--federation", choices=["splitfed", "sequential"], default="splitfed",
                        help="several clients: splitfed (in parallel, client partitions averaged each epoch) or "
                             "sequential (vanilla split learning: one client at a time, the partition passed on)")


def federation_from_args(args: argparse.Namespace):
    from splitpriv.parties import Federation

    return Federation(args.clients, args.federation, bool(getattr(args, "fed_server", None)))


def shaping_from_args(args: argparse.Namespace):
    from splitpriv.errors import ConfigError
    from splitpriv.transport import Shaping

    if args.bandwidth_mbps is not None and not args.bandwidth_mbps > 0:
        raise ConfigError("--bandwidth-mbps", args.bandwidth_mbps, "a number > 0 (megabits per second)")
    if not args.rtt_ms >= 0:
        raise ConfigError("--rtt-ms", args.rtt_ms, "a number >= 0 (milliseconds)")
    bandwidth = args.bandwidth_mbps * 1e6 / 8 if args.bandwidth_mbps else None
    return Shaping(bandwidth, args.rtt_ms / 1000)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0 for every interface (Gloo traffic is not encrypted)")
    parser.add_argument("--port", type=int, default=29400, help="port of the handshake")
    parser.add_argument("--record", action="store_true",
                        help="keep what the server observed (messages, labels, returned gradients, the test pass's "
                             "messages, its partition) in observed.pt (observed-client<k>.pt with several clients), "
                             "for 'splitpriv attack --observed'")
    parser.add_argument("--resume", action="store_true",
                        help="start from the server state a killed serve process left in its folder, for a client "
                             "that resumes at the same step (one client, or every SplitFed client from the same round)")
    parser.add_argument("--separate-fed-server", dest="fed_server", action="store_true",
                        help="SplitFed: the clients average their partitions through 'splitpriv federate', so this "
                             "server never receives their weights")
    add_transport_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from splitpriv.parties import serve
    from splitpriv.transport import read_secret

    cfg = config_from_args(args, {"training.progress_bar": False})
    shaping, federation = shaping_from_args(args), federation_from_args(args)
    secret = read_secret(args.secret_file)
    out = Path(cfg.out) / f"{cfg.run_name()}-server"
    summary = serve(cfg, args.host, args.port, secret, out, args.timeout,
                    on_listening=lambda address: print(f"serving on {address[0]}:{address[1]}", flush=True),
                    shaping=shaping, federation=federation, record=args.record,
                    resume=args.resume)
    print(f"served {summary['steps']} training steps of {summary['clients']} client(s) at cut {summary['cut_layer']} "
          f"({summary['cut_name']}); the server's state is in {summary['state']}"
          + (f", what it observed in {', '.join(summary['observed'])}" if summary["observed"] else ""))
    return 0
