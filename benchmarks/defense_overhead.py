"""Training-step time with each defense at the cut, relative to no defense.

For each data set (digits, and MNIST when its data root is found) every configuration - no
defense, then each defense - trains small_cnn at its default cut (pool) from the same seed for
``--steps`` steps after ``--warmup``, in ``--rounds`` round-robin rounds (the machine is shared:
round-robin spreads load drift over all configurations). A Lightning callback times each full
split training step (client, server, defense hooks, optimizer steps). The script prints the
median step time per configuration and the ratio to no defense.

    python benchmarks/defense_overhead.py [--data-root ../shared/data] [--steps 10 --rounds 3 --threads 1]

MNIST is read from --data-root, else $SPLITPRIV_DATA; without it the MNIST part is skipped.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

from splitpriv.config import from_dict, RunConfig
from splitpriv.data import make_splits
from splitpriv.errors import DataNotFoundError
from splitpriv.experiment import quiet_lightning
from splitpriv.runs import build_module

DEFENSES = {
    "none": [],
    "distance_correlation": [{"name": "distance_correlation", "weight": 0.5}],
    "decoder_reconstruction": [{"name": "decoder_reconstruction", "weight": 5.0, "capacity": "small"}],
    "dp_noise (laplace)": [{"name": "dp_noise", "mechanism": "laplace", "epsilon": 32, "clip": "median"}],
    "dp_noise (gaussian)": [{"name": "dp_noise", "mechanism": "gaussian", "epsilon": 128, "clip": "median"}],
    "dp_sgd": [{"name": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}],
}


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times = warmup, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._started)


def step_times(cfg: RunConfig, data, steps: int, warmup: int) -> list[float]:
    """Per-step seconds of ``steps`` split training steps with ``cfg.defenses``, wired as in ``train``."""
    module = build_module(cfg, data.info.num_classes, data.info.in_channels, data.info.image_size)
    private_train = data.dataset("private_train")
    for defense in module.defenses:
        defense.setup(module, private_train)
    loader = DataLoader(private_train, batch_size=cfg.training.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    for defense in module.defenses:
        loader = defense.train_loader(loader)
    timer = StepTimer(warmup)
    # limit_train_batches, not max_steps: manual optimisation counts every optimizer's step
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps + warmup, accelerator="cpu", devices=1, logger=False, callbacks=[timer],
                        limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    return timer.times


def benchmark(label: str, base: dict, steps: int, warmup: int, rounds: int) -> None:
    data = make_splits(from_dict(RunConfig, base).data, seed=0)
    times = {name: [] for name in DEFENSES}
    for _ in range(rounds):
        for name, defenses in DEFENSES.items():
            times[name] += step_times(from_dict(RunConfig, {**base, "defenses": defenses}), data, steps, warmup)
    baseline = statistics.median(times["none"])
    print(f"\n{label}: median training-step time over {len(times['none'])} steps per configuration")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name:<24} {median * 1e3:8.2f} ms   ratio to no defense {median / baseline:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: less sensitive to a shared machine)")
    parser.add_argument("--data-root", help="folder holding MNIST/ (default: $SPLITPRIV_DATA)")
    parser.add_argument("--mnist-train-size", type=int, default=8192, help="private MNIST training images to load")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_lightning()
    warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU")
    common = {"model": {"name": "small_cnn"}, "training": {"progress_bar": False}}
    benchmark("small_cnn / digits (batch 64, cut pool)", {**common, "training": {"batch_size": 64}},
              args.steps, args.warmup, args.rounds)
    mnist = {**common, "data": {"dataset": "mnist", "root": args.data_root, "train_size": args.mnist_train_size},
             "training": {"batch_size": 128}}
    try:
        benchmark("small_cnn / MNIST (batch 128, cut pool)", mnist, args.steps, args.warmup, args.rounds)
    except DataNotFoundError as error:
        print(f"\nMNIST skipped: {error} (pass --data-root or set SPLITPRIV_DATA)")


if __name__ == "__main__":
    main()
