"""What a sweep config would cost on this machine, from one of its cells measured at reduced scale.

The config's undefended cell at its first cut is trained on ``--train-size`` private images for
``--epochs`` epoch(s), its validation set shrunk in the same proportion and its test set to the
images the attacks score, then attacked with the config's attack set.
Projected:

    training  = seconds per image-epoch x (private training images x epochs) x trainings of the grid
    attacks   = Σ_attacks (fit seconds x scale) x cells of the grid
    sweep     = (training + attacks) / workers

where ``scale`` is 1, or, with ``--proxy-size P`` (the attacks fit on P proxy images instead of the
config's N), N / P for the attacks that learn from the proxy (an epoch costs in proportion to the
proxy; assumed: the same number of epochs to early stopping) and 1 for those that do not
(optimisation inversion works per observed message).

A lower bound on training: defended trainings cost more per step than the undefended one (see
``benchmarks/defense_overhead.py``); the final test pass is not counted. The accuracy and leakage of
the reduced cell mean nothing.

    python benchmarks/sweep_projection.py --config experiments/cifar10_vgg11_sweep.yaml --data-root ../shared/data \
        --train-size 512 --proxy-size 1000
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

from splitpriv.attack_suite import load_proxy, run_attacks
from splitpriv.attacks.semantic import fit_proxy_classifier
from splitpriv.config import load_yaml
from splitpriv.data import make_splits
from splitpriv.experiment import quiet_lightning, train
from splitpriv.models import build_model
from splitpriv.sweep import base_run_config, grid, load_sweep_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--proxy-size", type=int, default=None,
                        help="fit the attacks on this many proxy images and scale their time up (default: the whole proxy)")
    args = parser.parse_args()
    quiet_lightning()
    values = load_yaml(args.config)
    if args.data_root:
        values.setdefault("data", {})["root"] = args.data_root
    cfg = load_sweep_config({**values, "wandb": {"mode": "disabled"}})
    base = base_run_config(cfg)
    full = make_splits(base.data, cfg.seeds[0])
    model = build_model(cfg.model, full.info.num_classes, full.info.in_channels, full.info.image_size)
    cells = grid(cfg, model.cut_points(full.info.input_shape))
    trainings = len({cell.training_key for cell in cells})
    images, epochs = len(full.private_train), base.training.epochs

    reduced = dataclasses.replace(
        base, out=tempfile.mkdtemp(prefix="splitpriv-projection-"), name="reduced-cell", seed=cfg.seeds[0],
        # the validation set shrunk with the training set, so that an epoch's validation pass weighs as in the full run
        data=dataclasses.replace(base.data, train_size=args.train_size, test_size=cfg.attack.samples,
                                 val_fraction=base.data.val_fraction * min(1.0, args.train_size / images)),
        model=dataclasses.replace(base.model, cut_layer=cells[0].cut_layer),
        training=dataclasses.replace(base.training, epochs=args.epochs))
    started = time.perf_counter()
    run = train(reduced, force=True)
    train_s = run.metrics["train_time_s"]
    proxy_images = len(full.proxy)
    settings = dataclasses.replace(cfg.attack, proxy_size=args.proxy_size) if args.proxy_size else cfg.attack
    proxy, _, same_classes = load_proxy(run.data, run.config.data, settings.proxy, settings.proxy_size, settings.seed)
    classifier_started = time.perf_counter()  # a sweep fits the attacker's classifier once per seed, not per cell
    classifier = fit_proxy_classifier(proxy, full.info.num_classes, settings.seed, settings.classifier_max_epochs) \
        if same_classes else None
    classifier_s = time.perf_counter() - classifier_started
    record = run_attacks(run, settings, classifier=classifier, progress=None)
    used = record["proxy"]["images"]
    scale = {label: proxy_images / used if "proxy" in attack["grants"] else 1.0 for label, attack in record["attacks"].items()}
    other_s = record["attack_time_s"] - sum(attack["fit_time_s"] for attack in record["attacks"].values())
    attack_s = other_s + sum(attack["fit_time_s"] * scale[label] for label, attack in record["attacks"].items())
    per_image_epoch = train_s / (min(args.train_size, images) * args.epochs)
    training = per_image_epoch * images * epochs * trainings
    attacks = attack_s * len(cells) + classifier_s * proxy_images / used * len(cfg.seeds)
    workers = cfg.workers if cfg.executor == "local" else 1
    print(f"{cfg.sweep_name()}: {len(cells)} cells, {trainings} trainings of {images} images x {epochs} epochs, "
          f"{workers} worker(s); measured here in {time.perf_counter() - started:.0f} s:")
    print(f"  training: {train_s:.1f} s for {min(args.train_size, images)} images x {args.epochs} epoch(s) "
          f"= {per_image_epoch * 1e3:.2f} ms per image-epoch")
    for label, attack in record["attacks"].items():
        summary = attack["summary"]
        epochs_text = f", {summary['epochs']} epochs (stopped by {summary['stopped']})" if "stopped" in summary else ""
        on_proxy = f" on {used} proxy images" if "proxy" in attack["grants"] else ""
        print(f"  attack {label}: {attack['fit_time_s']:.1f} s{on_proxy}{epochs_text}"
              + (f" -> x{scale[label]:.1f} for the config's {proxy_images}" if scale[label] != 1 else ""))
    print(f"  attack suite in all: {attack_s:.1f} s per cell (of which scoring, dCor and the figure {other_s:.1f} s); "
          f"the attacker's classifier {classifier_s:.1f} s on {used} proxy images, once per seed")
    print(f"projection: training {training / 3600:.1f} h + attacks {attacks / 3600:.1f} h = "
          f"{(training + attacks) / 3600:.1f} h of one process; {(training + attacks) / workers / 3600:.1f} h with "
          f"{workers} worker(s) (training: a lower bound, defended trainings cost more per step)")


if __name__ == "__main__":
    main()
