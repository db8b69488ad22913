"""Are the default black-box decoders strong enough? Against a plain strong decoder, at deep cuts.

MNIST, the classic CNN trained once, attacked at ``pool`` and ``relu3`` (deep cuts, where a decoder
that stops early would overstate privacy most) by the default set's black-box decoders
(``decoder_inversion`` small and large, early stopping with patience 10 on 10 % of the proxy) and by
a plain strong decoder: the ``xlarge`` capacity (64 channels, 3 hidden convolutions), patience 20,
up to 300 epochs, on the whole proxy. Every decoder sees the same proxy: by default 3,000 held-out
MNIST training images, as the MNIST frontier sweep attacks with (``--proxy-size``). Prints each decoder's MSE and SSIM on the private test
images, whether its early stopping ended it (``patience``: converged) or its epoch cap did, and the
ratio of the best default decoder's MSE to the strong one's (1.0: the default loses nothing; above 1:
the default understates the leak by that factor).

    python benchmarks/decoder_strength.py --data-root ../shared/data          # CPU: one to two hours
"""
from __future__ import annotations

from mnist_bench import parser, train_undefended

from splitpriv.attacks import default_attack_specs
from splitpriv.attack_suite import AttackSettings, run_attacks

STRONG = {"name": "decoder_inversion", "capacity": "xlarge", "patience": 20, "lr_patience": 5, "max_epochs": 300}


def main() -> None:
    arguments = parser(__doc__, "/tmp/splitpriv-decoder-strength")
    arguments.add_argument("--cuts", nargs="+", default=["pool", "relu3"])
    arguments.add_argument("--proxy-size", type=int, default=3000, help="proxy images every decoder learns from")
    args = arguments.parse_args()
    trained = train_undefended(args, "mnist-undefended", proxy_fraction=0.1)
    black_box = [spec for spec in default_attack_specs(False) if spec["name"] == "decoder_inversion"]
    print(f"\n{'cut':6s} {'decoder':34s} {'MSE':>8s} {'SSIM':>6s} {'epochs':>6s} {'stopped':>9s} {'time':>6s}")
    for cut in args.cuts:
        record = run_attacks(trained.recut(cut), AttackSettings(attacks=[*black_box, STRONG], samples=args.samples,
                                                                proxy_size=args.proxy_size, classifier_max_epochs=1),
                             out_dir=f"{args.out}/{cut}", progress=lambda line: print(f"{cut}: {line}", flush=True))
        for label, result in record["attacks"].items():
            summary = result["summary"]
            print(f"{cut:6s} {label:34s} {result['mse']:8.4f} {result['ssim']:6.3f} {summary['epochs']!s:>6s} "
                  f"{summary.get('stopped', '-'):>9s} {result['fit_time_s']:5.0f}s")
        default = min(record["attacks"][f"decoder_inversion/{spec['capacity']}"]["mse"] for spec in black_box)
        strong = record["attacks"]["decoder_inversion/xlarge"]["mse"]
        print(f"{cut:6s} best default decoder MSE / strong decoder MSE = {default / strong:.2f}")


if __name__ == "__main__":
    main()
