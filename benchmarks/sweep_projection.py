"""What a sweep config would cost on this machine, from one of its cells measured at reduced scale.

The config's undefended cell at its first cut is trained on ``--train-size`` private images for
``--epochs`` epoch(s) (the validation and test sets, the proxy and the attack set as configured),
then attacked with the config's attack set. Projected:

    training  = seconds per image-epoch x (private training images x epochs) x trainings of the grid
    attacks   = measured attack seconds x cells of the grid
    sweep     = (training + attacks) / workers

A lower bound: defended trainings cost more per step than the undefended one (see
``benchmarks/defense_overhead.py``), and the reduced run's validation and test passes are counted in
its training time only in proportion. The accuracy and leakage of the reduced cell mean nothing.

    python benchmarks/sweep_projection.py --config experiments/cifar10_vgg11_sweep.yaml --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

from splitpriv.attack_suite import run_attacks
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
        data=dataclasses.replace(base.data, train_size=args.train_size),
        model=dataclasses.replace(base.model, cut_layer=cells[0].cut_layer),
        training=dataclasses.replace(base.training, epochs=args.epochs))
    started = time.perf_counter()
    run = train(reduced, force=True)
    train_s = run.metrics["train_time_s"]
    record = run_attacks(run, cfg.attack, progress=None)
    attack_s = record["attack_time_s"]
    per_image_epoch = train_s / (min(args.train_size, images) * args.epochs)
    training = per_image_epoch * images * epochs * trainings
    attacks = attack_s * len(cells)
    workers = cfg.workers if cfg.executor == "local" else 1
    print(f"{cfg.sweep_name()}: {len(cells)} cells, {trainings} trainings of {images} images x {epochs} epochs, "
          f"{workers} worker(s); measured here in {time.perf_counter() - started:.0f} s:")
    print(f"  training: {train_s:.1f} s for {min(args.train_size, images)} images x {args.epochs} epoch(s) "
          f"= {per_image_epoch * 1e3:.2f} ms per image-epoch")
    for label, attack in record["attacks"].items():
        print(f"  attack {label}: {attack['fit_time_s']:.1f} s")
    print(f"  attack suite in all: {attack_s:.1f} s per cell")
    print(f"projection: training {training / 3600:.1f} h + attacks {attacks / 3600:.1f} h = "
          f"{(training + attacks) / 3600:.1f} h of one process; {(training + attacks) / workers / 3600:.1f} h with "
          f"{workers} worker(s) (a lower bound: defended trainings cost more per step)")


if __name__ == "__main__":
    main()
