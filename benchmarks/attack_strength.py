"""How strong is the attack suite? The MNIST check of issue 4.

Classic MNIST CNN (conv32-ReLU-conv64-ReLU-pool-fc128-ReLU-fc10) cut after the first conv+ReLU
(cut 1, ``relu1``), 10,000 in-distribution proxy images: the default attack set must reconstruct
the private test images at SSIM >= 0.95. A weak attacker (small decoder, 3 epochs, 3,000 proxy
images) is printed for contrast: it would overstate privacy.

    python benchmarks/attack_strength.py --data-root ../shared/data            # CPU: minutes
    python benchmarks/attack_strength.py --capacities small large             # the full default set (GPU)
"""
from __future__ import annotations

import argparse
import time

import torch

from splitpriv.attacks import default_attack_specs
from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.config import load_run_config
from splitpriv.experiment import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: $SPLITPRIV_DATA)")
    parser.add_argument("--out", default="/tmp/splitpriv-attack-strength")
    parser.add_argument("--capacities", nargs="+", default=["small"],
                        help="decoder capacities of the default set to run (large needs a GPU to finish in minutes)")
    parser.add_argument("--samples", type=int, default=256, help="private test images scored")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_run_config(None, {
        "data.dataset": "mnist", "data.root": args.data_root, "data.proxy_fraction": 10000 / 60000,
        "data.proxy_size": 10000, "data.train_size": 20000, "model.name": "small_cnn", "model.cut_layer": 1,
        "training.epochs": 2, "training.batch_size": 128, "training.progress_bar": False,
        "wandb.mode": "disabled", "out": args.out, "name": "mnist-cut1"})
    started = time.perf_counter()
    run = train(cfg, force=True)
    print(f"trained: test accuracy {run.metrics['test_accuracy']:.4f}, cut {run.cut_layer} ({run.cut_name}), "
          f"{time.perf_counter() - started:.0f}s")

    started = time.perf_counter()
    weak_spec = {"name": "decoder_inversion", "capacity": "small", "max_epochs": 3, "patience": 3}
    weak = run_attacks(run, AttackSettings(attacks=[weak_spec], proxy_size=3000, samples=args.samples),
                       out_dir=f"{args.out}/weak")
    weak_time = time.perf_counter() - started
    started = time.perf_counter()
    # the default set (no randomised defense here), cheapest attack first so that results show early
    default_set = default_attack_specs(False, tuple(args.capacities))
    default = run_attacks(run, AttackSettings(attacks=default_set[-1:] + default_set[:-1], samples=args.samples),
                          out_dir=f"{args.out}/default")
    default_time = time.perf_counter() - started

    print(f"\n{'attacker':40s} {'MSE':>8s} {'SSIM':>6s} {'epochs':>6s} {'time':>6s}")
    for label, result in default["attacks"].items():
        epochs = result["summary"].get("epochs", result["summary"].get("steps"))
        print(f"{'default: ' + label:40s} {result['mse']:8.4f} {result['ssim']:6.3f} {epochs!s:>6s} {result['fit_time_s']:5.0f}s")
    worst = default["worst_case"]
    print(f"{'default set, worst case':40s} {worst['mse']:8.4f} {worst['ssim']:6.3f} {'':>6s} {default_time:5.0f}s")
    result = weak["attacks"]["decoder_inversion/small"]
    print(f"{'weak: small decoder, 3 epochs, 3k proxy':40s} {result['mse']:8.4f} {result['ssim']:6.3f} "
          f"{result['summary']['epochs']!s:>6s} {weak_time:5.0f}s")
    print(f"\ndefault set worst-case SSIM {worst['ssim']:.3f} (target >= 0.95): {'PASS' if worst['ssim'] >= 0.95 else 'FAIL'}")


if __name__ == "__main__":
    main()
