"""Are the default black-box decoders strong enough? Against a plain strong decoder, at deep cuts.

MNIST, the classic CNN trained once, attacked at ``pool`` and ``relu3`` (deep cuts, where a decoder
that stops early would overstate privacy most) by the default set's black-box decoders
(``decoder_inversion`` small and large, early stopping with patience 10 on 10 % of the proxy) and by
a plain strong decoder: the ``xlarge`` capacity (64 channels, 3 hidden convolutions), patience 20,
learning rate halved after 5 epochs without improvement, up to 300 epochs, on the whole proxy. Every
decoder sees the same proxy: by default 3,000 held-out MNIST training images, as the MNIST frontier
sweep attacks with (``--proxy-size``). Prints each decoder's MSE and SSIM on the private test images,
whether its early stopping ended it (``patience``: converged) or its epoch cap did, and the ratio of
the best default decoder's MSE to the strong one's (1.0: the default loses nothing; above 1: the
default understates the leak by that factor). Each cut is attacked in its own process, one thread
each (``--threads``), so the two cuts run side by side on two cores.

    python benchmarks/decoder_strength.py --data-root ../shared/data          # CPU: about two hours
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch
from mnist_bench import parser, train_undefended

from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.attacks import default_attack_specs
from splitpriv.runs import load_run

STRONG = {"name": "decoder_inversion", "capacity": "xlarge", "patience": 20, "lr_patience": 5, "max_epochs": 300}
BLACK_BOX = [spec for spec in default_attack_specs(False) if spec["name"] == "decoder_inversion"]


def attack_cut(run_dir: str, cut: str, samples: int, proxy_size: int, threads: int, out: str) -> dict:
    """The default black-box decoders and the strong one against the trained client cut at ``cut``."""
    torch.set_num_threads(threads)
    settings = AttackSettings(attacks=[*BLACK_BOX, STRONG], samples=samples, proxy_size=proxy_size,
                              classifier_max_epochs=1)
    return run_attacks(load_run(run_dir).recut(cut), settings, out_dir=f"{out}/{cut}",
                       progress=lambda line: print(f"{cut}: {line}", flush=True))


def main() -> None:
    arguments = parser(__doc__, "/tmp/splitpriv-decoder-strength")
    arguments.add_argument("--cuts", nargs="+", default=["pool", "relu3"])
    arguments.add_argument("--proxy-size", type=int, default=3000, help="proxy images every decoder learns from")
    args = arguments.parse_args()
    trained = train_undefended(args, "mnist-undefended", proxy_fraction=0.1)
    threads = args.threads or 1
    with ProcessPoolExecutor(len(args.cuts), mp_context=multiprocessing.get_context("spawn")) as pool:
        records = list(pool.map(attack_cut, [str(trained.path)] * len(args.cuts), args.cuts,
                                [args.samples] * len(args.cuts), [args.proxy_size] * len(args.cuts),
                                [threads] * len(args.cuts), [args.out] * len(args.cuts)))
    print(f"\n{'cut':6s} {'decoder':34s} {'MSE':>8s} {'SSIM':>6s} {'epochs':>6s} {'stopped':>9s} {'time':>6s}")
    for cut, record in zip(args.cuts, records):
        for label, result in record["attacks"].items():
            summary = result["summary"]
            print(f"{cut:6s} {label:34s} {result['mse']:8.4f} {result['ssim']:6.3f} {summary['epochs']!s:>6s} "
                  f"{summary.get('stopped', '-'):>9s} {result['fit_time_s']:5.0f}s")
    for cut, record in zip(args.cuts, records):
        default = min(record["attacks"][f"decoder_inversion/{spec['capacity']}"]["mse"] for spec in BLACK_BOX)
        strong = record["attacks"]["decoder_inversion/xlarge"]["mse"]
        print(f"{cut:6s} best default decoder MSE / strong decoder MSE = {default / strong:.2f}")


if __name__ == "__main__":
    main()
