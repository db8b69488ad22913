"""What the MNIST attack benchmarks share: their common flags and the undefended classic CNN they attack."""
from __future__ import annotations

import argparse
import time

import torch

from splitpriv.config import load_run_config
from splitpriv.experiment import train


def parser(description: str, out: str) -> argparse.ArgumentParser:
    """--data-root, --out, --samples, --threads; a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: $SPLITPRIV_DATA)")
    parser.add_argument("--out", default=out)
    parser.add_argument("--samples", type=int, default=256, help="private test images scored")
    parser.add_argument("--threads", type=int, default=None)
    return parser


def train_undefended(args: argparse.Namespace, name: str, **data):
    """The classic MNIST CNN, 20,000 private training images, 2 epochs, no defense; ``data`` sets the proxy."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_run_config(None, {
        "data.dataset": "mnist", "data.root": args.data_root, "data.train_size": 20000,
        **{f"data.{key}": value for key, value in data.items()}, "model.name": "small_cnn", "training.epochs": 2,
        "training.batch_size": 128, "training.progress_bar": False, "wandb.mode": "disabled", "out": args.out, "name": name})
    started = time.perf_counter()
    run = train(cfg, force=True)
    print(f"trained: test accuracy {run.metrics['test_accuracy']:.4f}, {time.perf_counter() - started:.0f}s; "
          f"proxy: {len(run.data.proxy)} MNIST training images held out")
    return run
