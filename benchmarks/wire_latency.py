"""The latency model against the wire, per cut: the transmission term and the whole training step.

For every cut of the model, ``splitpriv serve`` runs in its own process and this process trains as
``splitpriv client`` over loopback for one short epoch, both parties emulating the same link
(``--mbps``, ``--rtt-ms``), one thread each, for ``--epochs`` short epochs; the last epoch's means are
compared, so that the first steps' warm-up (allocations, the optimizer's state, the link's first
messages) does not count: the model describes a step in steady state, as mu is measured. Printed per cut:

- the transmission term: the model's T^T for one training step's crossing (the survey's Sec. 2.2.1
  in training: 2 x Size / bandwidth + RTT, Size = the batch's message, no compression;
  ``splitpriv.latency.transmission_time``) against the wire time measured (round trip as the client
  sees it minus the server's compute). The bytes include the labels (8 per sample), which the model
  leaves out.
- the whole step: ``splitpriv plan``'s training latency for that cut (T = FLOPs_client / mu + T^T +
  FLOPs_server / mu, forward + backward FLOPs) against the measured step (``training_step_s``: from
  one step's request to the next). mu is measured first, once, on this machine: the FLOPs of one
  training step of the whole model (forward, backward, the optimizer's update) in a plain loop, one
  thread, divided by its median time. The plan runs from a scenario and a catalogue this script writes
  (this machine twice, the emulated link); both are printed.

Then the median absolute errors over the cuts.

    python benchmarks/wire_latency.py                                    # small_cnn on digits, every cut
    python benchmarks/wire_latency.py --model vgg11 --dataset cifar10 --data-root ../shared/data --train-size 256
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from splitpriv.config import load_run_config
from splitpriv.data import make_splits
from splitpriv.errors import SplitprivError
from splitpriv.experiment import quiet_lightning
from splitpriv.latency import transmission_time
from splitpriv.models import build_model
from splitpriv.parties import train_client
from splitpriv.planner import block_flops, model_shape
from splitpriv.transport import Shaping, free_port

SECRET = "wire-latency-benchmark-secret-0123"


def measured_flops_per_s(model, inputs: torch.Tensor, labels: torch.Tensor, steps: int = 7) -> float:
    """mu of this machine (one thread) for training this model: its training FLOPs per step over the
    median time of a plain training step (forward, backward, Adam's update)."""
    optimizer = torch.optim.Adam(model.parameters())
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
        if step >= 2:  # warm-up steps
            times.append(time.perf_counter() - started)
    flops = sum(block_flops(model_shape(model, tuple(inputs.shape[1:]), len(inputs)), training=True))
    return flops / statistics.median(times)


def last_epoch_metrics(run_folder: Path) -> dict[str, float]:
    """The wire metrics of the run's last training epoch, from its per-epoch log."""
    with open(run_folder / "logs" / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("training_step_s")]
    return {key: float(value) for key, value in rows[-1].items() if value}


def plan_latencies(args, flops_per_s: float, folder: Path) -> dict[str, float]:
    """``splitpriv plan``'s training latency per cut (block name) for this machine and the emulated link."""
    catalogue = {"devices": {"this_machine": {"kind": "cpu", "flops_per_s": flops_per_s}},
                 "links": {"emulated": {"bandwidth_mbps": args.mbps, "rtt_ms": args.rtt_ms}}}
    scenario = {"name": "wire-latency", "model": args.model, "dataset": args.dataset, "batch_size": args.batch_size,
                "training": True, "chain": ["this_machine", "this_machine"], "links": ["emulated"],
                "compression": ["fp32"], "catalogue": [str(folder / "catalogue.yaml")]}
    for name, values in (("catalogue.yaml", catalogue), ("scenario.yaml", scenario)):
        (folder / name).write_text(yaml.safe_dump(values, sort_keys=False))
        print(f"{name}: {yaml.safe_dump(values, default_flow_style=True, sort_keys=False).strip()}")
    command = [sys.executable, "-m", "splitpriv.cli", "plan", "--config", str(folder / "scenario.yaml"), "--out",
               str(folder / "plan")]
    subprocess.run(command, check=True, capture_output=True, text=True)
    with open(folder / "plan" / "plan.csv", newline="") as handle:
        return {row["boundaries"]: float(row["latency_s"]) for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=512, help="private training images (one epoch)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per cut; the last one is timed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mbps", type=float, default=50.0, help="emulated bandwidth, megabits per second")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="emulated round-trip time")
    args = parser.parse_args()
    quiet_lightning()
    torch.set_num_threads(1)
    # the steps are what is timed: validation and test passes cut to a few batches
    values = {"data.dataset": args.dataset, "model.name": args.model, "data.train_size": args.train_size,
              "data.val_fraction": 0.002, "data.test_size": 64,
              "training.epochs": args.epochs, "training.batch_size": args.batch_size, "training.num_threads": 1,
              "training.progress_bar": False, "wandb.mode": "disabled", "training.accelerator": "cpu"}
    if args.data_root:
        values["data.root"] = args.data_root
    base = load_run_config(None, values)
    data = make_splits(base.data, base.seed)
    model = build_model(args.model, data.info.num_classes, data.info.in_channels, data.info.image_size)
    inputs, labels = data.dataset("private_train").tensors
    flops_per_s = measured_flops_per_s(model, inputs[: args.batch_size], labels[: args.batch_size])
    out = Path(tempfile.mkdtemp(prefix="splitpriv-wire-"))
    print(f"{args.model} on {args.dataset}, batch {args.batch_size}, link {args.mbps:g} Mbit/s, RTT {args.rtt_ms:g} ms; "
          f"mu measured {flops_per_s / 1e9:.2f} GFLOP/s (one thread, training)")
    planned = plan_latencies(args, flops_per_s, out)
    link = Shaping(args.mbps * 1e6 / 8, args.rtt_ms / 1000)
    environment = {**os.environ, "SPLITPRIV_SECRET": SECRET, "WANDB_MODE": "disabled"}
    print(f"{'cut':>3s} {'name':18s} {'bytes/step':>11s} {'model T^T':>10s} {'wire':>9s} {'error':>7s}"
          f" {'plan step':>10s} {'step':>9s} {'error':>7s}")
    wire_errors, step_errors = [], []
    for point in model.cut_points(data.info.input_shape):
        cut, name = point.index, point.name
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "splitpriv.cli", "serve", "--out", str(out), "--port", str(port), "--model",
             args.model, "--dataset", args.dataset, "--train-size", str(args.train_size), "--epochs", str(args.epochs),
             "--batch-size", str(args.batch_size), "--threads", "1", "--cut-layer", str(cut), "--accelerator", "cpu",
             "--bandwidth-mbps", str(args.mbps), "--rtt-ms", str(args.rtt_ms),
             *(["--data-root", args.data_root] if args.data_root else [])],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cfg = load_run_config(None, {**values, "out": str(out), "name": f"cut{cut}", "model.cut_layer": cut})
        try:
            run = train_client(cfg, f"127.0.0.1:{port}", SECRET.encode(), 120, link, data=data, force=True)
        except SplitprivError as error:
            raise SystemExit(f"the client for cut {cut} failed: {error}\nthe server said:\n"
                             f"{server.communicate(timeout=120)[1][-2000:]}") from None
        _, err = server.communicate(timeout=120)
        if server.returncode:
            raise SystemExit(f"the server for cut {cut} failed:\n{err[-2000:]}")
        last_epoch = last_epoch_metrics(run.path)
        message_bytes = last_epoch["wire_backward_bytes_per_step"]  # the message's bytes: the gradient has its size
        predicted = transmission_time(message_bytes, link.bandwidth_bytes_per_s, link.rtt_s, training=True)
        measured = last_epoch["wire_time_s_per_step"]
        wire_errors.append((predicted - measured) / measured)
        step, planned_step = last_epoch["training_step_s"], planned[name]
        step_errors.append((planned_step - step) / step)
        print(f"{cut:3d} {name:18s} {message_bytes:11,.0f} {predicted * 1e3:8.1f}ms {measured * 1e3:7.1f}ms "
              f"{wire_errors[-1]:+7.1%} {planned_step * 1e3:8.1f}ms {step * 1e3:7.1f}ms {step_errors[-1]:+7.1%}", flush=True)
    print(f"median absolute error of the transmission term: {statistics.median(abs(e) for e in wire_errors):.1%} "
          f"over {len(wire_errors)} cuts")
    print(f"median absolute error of the whole training step (splitpriv plan): "
          f"{statistics.median(abs(e) for e in step_errors):.1%} over {len(step_errors)} cuts")


if __name__ == "__main__":
    main()
