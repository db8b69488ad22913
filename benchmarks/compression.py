"""What compressing the message costs and saves: bytes on the wire, accuracy and leakage.

MNIST / small_cnn cut at one layer, trained once per compression of the message (fp32, fp16,
int8, 4-bit, top-k, bottleneck); prints per sample the serialised bytes sent forward and
backward, the private-test accuracy and the worst-case reconstruction MSE over the attack
suite's default attackers (``attacks.run_attacks``; higher MSE = less leakage).

    python benchmarks/compression.py --data-root /work/shared/data [--train-size 6000 --epochs 2]

Trained runs are kept in ``--out`` and reused, so a rerun only repeats the attacks.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from splitpriv.config import load_run_config
from splitpriv.experiment import train
from splitpriv.runs import load_run
from splitpriv.store import METRICS_FILE

COMPRESSIONS = {
    "fp32": [],
    "fp16": [{"name": "quantize", "format": "fp16"}],
    "int8": [{"name": "quantize", "bits": 8}],
    "int4": [{"name": "quantize", "bits": 4}],
    "topk": [{"name": "topk", "k": 1024}],
    "bottleneck": [{"name": "bottleneck", "rate": 0.25}],
}


def worst_case(run, args) -> dict:
    """Worst case over the attack suite's attackers on the compressed message, as deployed
    (``--full-attacks``: the default set; otherwise an early-stopped small decoder and white-box
    optimisation on fewer images, to fit a busy CPU)."""
    from splitpriv.attack_suite import AttackSettings, run_attacks

    if args.full_attacks:
        return run_attacks(run)["worst_case"]
    settings = AttackSettings(attacks=[{"name": "decoder_inversion", "capacity": "small", "patience": 5},
                                       {"name": "optimization_inversion", "max_steps": 500}],
                              samples=args.attack_samples, proxy_size=args.attack_proxy_size)
    return run_attacks(run, settings)["worst_case"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--cut-layer", default="pool")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--proxy-size", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/splitpriv-bench-compression")
    parser.add_argument("--no-attack", action="store_true", help="bytes and accuracy only")
    parser.add_argument("--full-attacks", action="store_true", help="the attack suite's default set (slow on CPU)")
    parser.add_argument("--attack-samples", type=int, default=128, help="private test images attacked")
    parser.add_argument("--attack-proxy-size", type=int, default=3000, help="proxy images the attacker trains on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, defenses in COMPRESSIONS.items():
        cfg = load_run_config(None, {
            "data.dataset": args.dataset, "data.root": args.data_root, "data.train_size": args.train_size,
            "data.test_size": args.test_size, "data.proxy_size": args.proxy_size, "model.cut_layer": args.cut_layer,
            "training.epochs": args.epochs, "training.progress_bar": False, "training.num_threads": args.threads,
            "defenses": defenses, "out": args.out, "name": name, "wandb.mode": "disabled",
        })
        started = time.perf_counter()
        run_dir = Path(args.out) / name
        run = load_run(run_dir) if (run_dir / METRICS_FILE).exists() else train(cfg)
        worst = {} if args.no_attack else worst_case(run, args)
        rows.append((name, run.metrics, worst, time.perf_counter() - started))
        print(f"{name}: done in {rows[-1][3]:.0f} s", flush=True)

    fp32_bytes = rows[0][1]["activation_bytes_per_sample"]
    print(f"\n{args.dataset} / small_cnn, cut {rows[0][1]['cut_name']}, {args.train_size} training images, {args.epochs} epochs")
    print(f"{'message':<12}{'bytes fwd':>10}{'vs fp32':>9}{'bytes bwd':>10}{'accuracy':>10}{'worst MSE':>11}{'worst SSIM':>11}")
    for name, metrics, worst, _ in rows:
        forward = metrics["activation_bytes_per_sample"]
        print(f"{name:<12}{forward:>10.0f}{fp32_bytes / forward:>8.1f}x{metrics['gradient_bytes_per_sample']:>10.0f}"
              f"{metrics['test_accuracy']:>10.4f}{worst.get('mse', float('nan')):>11.2e}{worst.get('ssim', float('nan')):>11.3f}")


if __name__ == "__main__":
    main()
