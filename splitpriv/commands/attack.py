"""``splitpriv attack``: attack a trained run several ways; report every attack and the worst case."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from splitpriv.commands.common import positive_int

HELP = "attack a trained run (decoder, noise-aware and optimisation inversion) and score the leakage"


FLAG_KEYS = {"samples": ("--samples",), "proxy": ("--proxy",), "proxy_size": ("--proxy-size",),
             "classifier_max_epochs": ("--classifier-max-epochs",), "seed": ("--seed",),
             "accelerator": ("--accelerator",)}


def attack_spec(text: str) -> dict:
    """``decoder_inversion:capacity=large,max_epochs=50`` -> {name: ..., capacity: 'large', max_epochs: 50}."""
    import yaml

    name, _, params = text.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME[:KEY=VALUE,...] such as decoder_inversion:capacity=large, got {text!r}")
    spec = {"name": name}
    for pair in filter(None, params.split(",")):
        key, equals, value = pair.partition("=")
        if not key or not equals:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE after '{name}:', got {pair!r} in {text!r}")
        try:
            spec[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise argparse.ArgumentTypeError(f"cannot read the value of {key!r} in {text!r}") from None
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", help="the run folder written by 'splitpriv train' (runs/<name>)")
    parser.add_argument("--observed", help="instead of --run: a record of 'splitpriv serve --record' (observed.pt); "
                                           "the passive attacks run from it alone (needs --config)")
    parser.add_argument("--config", help="with --observed: the run config the server and client ran with")
    parser.add_argument("--attacks", nargs="+", type=attack_spec, metavar="NAME[:KEY=VALUE,...]",
                        help="attacks to run (default: decoder_inversion small and large, noise_aware when the "
                             "defense is randomised, optimization_inversion), e.g. decoder_inversion:capacity=medium")
    parser.add_argument("--proxy", help="the attacker's proxy data: a data set name (its train split, mapped to the "
                                        "private images' shape) or an .npz file (default: the run's held-out proxy slice)")
    parser.add_argument("--proxy-size", type=int, help="at most this many proxy images")
    parser.add_argument("--samples", type=int, help="private test images attacked and scored (default 256)")
    parser.add_argument("--classifier-max-epochs", type=int, help="the attacker's proxy classifier (early stopping; default 100)")
    parser.add_argument("--seed", type=int, help="the attacker's seed")
    parser.add_argument("--accelerator", choices=["auto", "cpu", "gpu"],
                        help="where the attacks compute (default: the run's training.accelerator, resolved on this "
                             "machine: a run trained on a GPU is attacked on the CPU where there is none)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    parser.add_argument("--plugin", action="append", default=[],
                        help="python file registering the models, defenses or attacks the run needs (repeatable; "
                             "a run folder's own plugin list is never imported without it)")


def run(args: argparse.Namespace) -> int:
    import torch

    from splitpriv.attack_suite import AttackSettings, run_attacks
    from splitpriv.config import from_dict
    from splitpriv.errors import SplitprivError
    from splitpriv.runs import load_run
    from splitpriv.store import import_plugins

    if args.threads:
        torch.set_num_threads(args.threads)
    import_plugins(args.plugin)
    given = {"attacks": args.attacks, "proxy": args.proxy, "proxy_size": args.proxy_size, "samples": args.samples,
             "classifier_max_epochs": args.classifier_max_epochs, "seed": args.seed, "accelerator": args.accelerator}
    settings = from_dict(AttackSettings, {k: v for k, v in given.items() if v is not None})
    if bool(args.run) == bool(args.observed):
        raise SplitprivError("give one of --run (a run folder) or --observed (a record of 'splitpriv serve --record')")
    if args.observed:
        return _attack_observed(args, settings)
    trained = load_run(args.run)
    print(f"attacking {trained.path} (cut {trained.cut_layer} {trained.cut_name}, "
          f"defenses and transforms: {[c.name for c in trained.cut_pipeline] or 'none'})")
    record = run_attacks(trained, settings)
    for label, result in record["attacks"].items():
        print(f"  {label:32s} mse {result['mse']:.4f}  psnr {result['psnr']:6.2f}  ssim {result['ssim']:.3f}  "
              f"recognisable {result['recognisable_share']:.2f}  classifier acc "
              f"{result['classifier_accuracy'] if result['classifier_accuracy'] is not None else '-'}")
    for model, worst in record["worst_case"].items():
        print(f"worst case, {model:9s}: " + ("no attack of the set is within its means" if worst is None else
              f"mse {worst['mse']:.4f} ({worst['mse_attack']}), ssim {worst['ssim']:.3f} ({worst['ssim_attack']}), "
              f"recognisable share {worst['recognisable_share']:.2f}"))
    print(f"bias-corrected dCor²(x, message) {record['dcor_sq_bias_corrected']:.3f}")
    print(f"written {Path(trained.path) / 'attack.json'} and reconstructions.png")
    _log_attack(trained, record)
    print(json.dumps(record["worst_case"]))
    return 0


def _log_attack(trained, record: dict) -> None:
    """The attack as a wandb run (job type ``attack``) beside the run's training run, summary
    metrics named as in a sweep's frontier.csv."""
    from splitpriv.attack_suite import GRID_FILE
    from splitpriv.sweep import frontier_metrics
    from splitpriv.tracking import log_run

    folder = Path(trained.path)
    config = {"dataset": record["dataset"], "model": record["model"], "cut_layer": record["cut_layer"],
              "cut_name": record["cut_name"], "defense": "+".join(d["name"] for d in record["defenses"]) or "none",
              "strength": None, "seed": trained.config.seed, "attack": record["settings"]}
    summary = {**frontier_metrics(trained, record), "worst_case": record["worst_case"]}
    log_run(trained.config.wandb, folder / "attack-wandb", f"{folder.name}-attack", "attack", config, summary,
            images={"reconstructions": folder / GRID_FILE})


def _attack_observed(args: argparse.Namespace, settings) -> int:
    from splitpriv.attack_suite import attack_observed
    from splitpriv.config import load_run_config
    from splitpriv.errors import SplitprivError

    if not args.config:
        raise SplitprivError("--observed needs --config: the run config the server and client ran with")
    record = attack_observed(load_run_config(args.config, {}), args.observed, settings)
    for label, result in record["attacks"].items():
        print(f"  {label:32s} mse {result['mse']:.4f}  psnr {result['psnr']:6.2f}  ssim {result['ssim']:.3f}  "
              f"recognisable {result['recognisable_share']:.2f}")
    worst = record["worst_case"]["passive"]
    print(f"worst case, passive  : mse {worst['mse']:.4f} ({worst['mse_attack']}), ssim {worst['ssim']:.3f}")
    print(f"written {Path(args.observed).parent / 'attack.json'} and reconstructions.png")
    return 0
