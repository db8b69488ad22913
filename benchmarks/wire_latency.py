"""The latency model's transmission term against the wire, per cut (issue 16, first part).

For every cut of the model, ``splitpriv serve`` runs in its own process and this process trains as
``splitpriv client`` over loopback for a few steps, both parties emulating the same link (``--mbps``,
``--rtt-ms``). Printed per cut: the model's T^T for one training step's crossing (the survey's
Sec. 2.2.1 in training: 2 x Size / bandwidth + RTT, Size = the batch's message, no compression;
``splitpriv.latency.transmission_time``), the wire time measured (round trip as the client sees it
minus the server's compute), and the relative error; then the median absolute error over the cuts.
The bytes include the labels (8 per sample), which the model leaves out.

Not yet here: the compute terms (FLOPs / mu) and the whole step against ``splitpriv plan``.

    python benchmarks/wire_latency.py                                    # small_cnn on digits, every cut
    python benchmarks/wire_latency.py --model vgg11 --dataset cifar10 --data-root ../shared/data --train-size 256
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from splitpriv.config import load_run_config
from splitpriv.data import make_splits
from splitpriv.experiment import quiet_lightning
from splitpriv.latency import transmission_time
from splitpriv.models import build_model
from splitpriv.parties import train_client
from splitpriv.transport import Shaping, free_port

SECRET = "wire-latency-benchmark-secret-0123"



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=512, help="private training images (one epoch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mbps", type=float, default=50.0, help="emulated bandwidth, megabits per second")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="emulated round-trip time")
    args = parser.parse_args()
    quiet_lightning()
    values = {"data.dataset": args.dataset, "model.name": args.model, "data.train_size": args.train_size,
              "training.epochs": 1, "training.batch_size": args.batch_size, "training.num_threads": 1,
              "training.progress_bar": False, "wandb.mode": "disabled", "training.accelerator": "cpu"}
    if args.data_root:
        values["data.root"] = args.data_root
    base = load_run_config(None, values)
    data = make_splits(base.data, base.seed)
    model = build_model(args.model, data.info.num_classes, data.info.in_channels, data.info.image_size)
    link = Shaping(args.mbps * 1e6 / 8, args.rtt_ms / 1000)
    out = tempfile.mkdtemp(prefix="splitpriv-wire-")
    environment = {**os.environ, "SPLITPRIV_SECRET": SECRET, "WANDB_MODE": "disabled"}
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, link {args.mbps:g} Mbit/s, RTT {args.rtt_ms:g} ms")
    print(f"{'cut':>3s} {'name':18s} {'bytes/step':>11s} {'model T^T':>10s} {'measured':>9s} {'error':>7s}")
    errors = []
    for point in model.cut_points(data.info.input_shape):
        cut, name = point.index, point.name
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "splitpriv.cli", "serve", "--out", out, "--port", str(port), "--model", args.model,
             "--dataset", args.dataset, "--train-size", str(args.train_size), "--epochs", "1", "--batch-size",
             str(args.batch_size), "--threads", "1", "--cut-layer", str(cut), "--accelerator", "cpu",
             "--bandwidth-mbps", str(args.mbps), "--rtt-ms", str(args.rtt_ms),
             *(["--data-root", args.data_root] if args.data_root else [])],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cfg = load_run_config(None, {**values, "out": out, "name": f"cut{cut}", "model.cut_layer": cut})
        run = train_client(cfg, f"127.0.0.1:{port}", SECRET.encode(), 120, link, data=data, force=True)
        _, err = server.communicate(timeout=120)
        if server.returncode:
            raise SystemExit(f"the server for cut {cut} failed:\n{err[-2000:]}")
        message_bytes = run.metrics["wire_backward_bytes_per_step"]  # the message's bytes: the gradient has its size
        predicted = transmission_time(message_bytes, link.bandwidth_bytes_per_s, link.rtt_s, training=True)
        measured = run.metrics["wire_time_s_per_step"]
        errors.append((predicted - measured) / measured)
        print(f"{cut:3d} {name:18s} {message_bytes:11,.0f} {predicted * 1e3:8.1f}ms {measured * 1e3:7.1f}ms "
              f"{errors[-1]:+7.1%}")
    print(f"median absolute error of the transmission term: {statistics.median(abs(e) for e in errors):.1%} "
          f"over {len(errors)} cuts")


if __name__ == "__main__":
    main()
