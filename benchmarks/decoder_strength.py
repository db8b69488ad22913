"""Are the default black-box decoders strong enough? Against a plain strong decoder, at deep cuts.

MNIST, the classic CNN trained once, attacked at ``pool`` and ``relu3`` (deep cuts, where a decoder
that stops early would overstate privacy most) by the default set's black-box decoders
(``decoder_inversion`` small and large, early stopping with patience 10 on 10 % of the proxy) and by
a plain strong decoder: the ``xlarge`` capacity (64 channels, 3 hidden convolutions), patience 30,
up to 1,000 epochs, on the whole proxy slice. Prints each decoder's MSE and SSIM on the private test
images and the ratio of the best default decoder's MSE to the strong one's (1.0: the default loses
nothing; above 1: the default understates the leak by that factor).

    python benchmarks/decoder_strength.py --data-root ../shared/data          # CPU: tens of minutes
"""
from __future__ import annotations

import argparse
import time

import torch

from splitpriv.attacks import default_attack_specs
from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.config import load_run_config
from splitpriv.experiment import train

STRONG = {"name": "decoder_inversion", "capacity": "xlarge", "patience": 30, "max_epochs": 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default: $SPLITPRIV_DATA)")
    parser.add_argument("--out", default="/tmp/splitpriv-decoder-strength")
    parser.add_argument("--cuts", nargs="+", default=["pool", "relu3"])
    parser.add_argument("--samples", type=int, default=256, help="private test images scored")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_run_config(None, {
        "data.dataset": "mnist", "data.root": args.data_root, "data.proxy_fraction": 0.1, "data.train_size": 20000,
        "model.name": "small_cnn", "training.epochs": 2, "training.batch_size": 128, "training.progress_bar": False,
        "wandb.mode": "disabled", "out": args.out, "name": "mnist-undefended"})
    started = time.perf_counter()
    trained = train(cfg, force=True)
    print(f"trained: test accuracy {trained.metrics['test_accuracy']:.4f}, {time.perf_counter() - started:.0f}s; "
          f"proxy: {len(trained.data.proxy)} MNIST training images held out")
    black_box = [spec for spec in default_attack_specs(False) if spec["name"] == "decoder_inversion"]
    print(f"\n{'cut':6s} {'decoder':34s} {'MSE':>8s} {'SSIM':>6s} {'epochs':>6s} {'time':>6s}")
    for cut in args.cuts:
        record = run_attacks(trained.recut(cut), AttackSettings(attacks=[*black_box, STRONG], samples=args.samples,
                                                                classifier_max_epochs=1),
                             out_dir=f"{args.out}/{cut}", progress=None)
        for label, result in record["attacks"].items():
            print(f"{cut:6s} {label:34s} {result['mse']:8.4f} {result['ssim']:6.3f} {result['summary']['epochs']!s:>6s} "
                  f"{result['fit_time_s']:5.0f}s")
        default = min(record["attacks"][f"decoder_inversion/{spec['capacity']}"]["mse"] for spec in black_box)
        strong = record["attacks"]["decoder_inversion/xlarge"]["mse"]
        print(f"{cut:6s} best default decoder MSE / strong decoder MSE = {default / strong:.2f}")


if __name__ == "__main__":
    main()
