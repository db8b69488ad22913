"""How strong is the attack suite? The MNIST check of issue 4.

Classic MNIST CNN (conv32-ReLU-conv64-ReLU-pool-fc128-ReLU-fc10) cut after the first conv+ReLU
(cut 1, ``relu1``), 10,000 in-distribution proxy images: the default attack set must reconstruct
the private test images at SSIM >= 0.95. A weak attacker (small decoder, 3 epochs, 3,000 proxy
images) is printed for contrast: it would overstate privacy.

    python benchmarks/attack_strength.py --data-root ../shared/data            # CPU: minutes
    python benchmarks/attack_strength.py --capacities small large             # the full default set (GPU)
"""
from __future__ import annotations

import time

from mnist_bench import parser, train_undefended

from splitpriv.attacks import default_attack_specs
from splitpriv.attack_suite import AttackSettings, run_attacks


def main() -> None:
    arguments = parser(__doc__, "/tmp/splitpriv-attack-strength")
    arguments.add_argument("--capacities", nargs="+", default=["small"],
                           help="decoder capacities of the default set to run (large needs a GPU to finish in minutes)")
    args = arguments.parse_args()
    run = train_undefended(args, "mnist-cut1", proxy_fraction=10000 / 60000, proxy_size=10000).recut(1)
    print(f"attacked at cut {run.cut_layer} ({run.cut_name})")

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
    for model, worst in default["worst_case"].items():
        if worst is not None:
            print(f"{'worst case, ' + model + ': ' + worst['mse_attack']:40s} {worst['mse']:8.4f} {worst['ssim']:6.3f} "
                  f"{'':>6s} {default_time:5.0f}s")
    result = weak["attacks"]["decoder_inversion/small"]
    print(f"{'weak: small decoder, 3 epochs, 3k proxy':40s} {result['mse']:8.4f} {result['ssim']:6.3f} "
          f"{result['summary']['epochs']!s:>6s} {weak_time:5.0f}s")
    best = max(worst["ssim"] for worst in default["worst_case"].values() if worst is not None)
    print(f"\ndefault set, best SSIM over the threat models {best:.3f} (target >= 0.95): {'PASS' if best >= 0.95 else 'FAIL'}")


if __name__ == "__main__":
    main()
