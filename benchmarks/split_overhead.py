"""Split training's overhead over a plain PyTorch loop: same model, weights and batches.

(a) the whole model as one module, one Adam optimizer, a plain loop;
(b) splitpriv's split training step (client/server optimizers, detach at the cut, gradient sent
    back) driven by Lightning, no defense;
(c) the whole model as one module driven by Lightning the same way (manual optimisation, one
    wrapped optimizer): what Lightning's loop costs without any split.

Each Lightning run times a plain step (a) on the same batch before each of its steps, interleaved
in one process (the machine is shared and noisy), and the script prints the ratios of median
per-step times over >= 30 steps after warm-up: (b)/(a), the headline; (c)/(a), Lightning's share;
and (b)/(c) = [(b)/(a)] / [(c)/(a)], the split's own. The ideal is 1.00: the split adds no
arithmetic, only the bookkeeping of the cut.

Every built-in model: small_cnn and mlp on digits (batch 64), vgg11, vgg11_bn, vgg16 and resnet18 on
32x32 RGB inputs (batch 16), each cut at its default (middle) cut.

    python benchmarks/split_overhead.py [--steps 40] [--accelerator cpu|gpu] [--models small_cnn ...]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from splitpriv.config import OptimizerConfig
from splitpriv.data import DataConfig, make_splits
from splitpriv.experiment import quiet_lightning
from splitpriv.models import build_model
from splitpriv.training import SplitLearningModule, make_optimizer


SMALL_MODELS = ("small_cnn", "mlp")  # timed on digits; the others on 32x32 RGB


class InterleavedTimer(L.Callback):
    """Before each split step, times one plain step of a twin model on the same batch."""

    def __init__(self, plain_model: torch.nn.Module, warmup: int, sync):
        self.plain_model, self.warmup, self.sync = plain_model, warmup, sync
        self.plain_optimizer = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
        self.plain_times: list[float] = []
        self.split_times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        x, y = batch
        self.sync()
        started = time.perf_counter()
        self.plain_optimizer.zero_grad()
        F.cross_entropy(self.plain_model(x), y).backward()
        self.plain_optimizer.step()
        self.sync()
        if batch_idx >= self.warmup:
            self.plain_times.append(time.perf_counter() - started)
        self._split_started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.sync()
        if batch_idx >= self.warmup:
            self.split_times.append(time.perf_counter() - self._split_started)


class OneModule(L.LightningModule):
    """(c): the unsplit model under Lightning's manual optimisation, the split step's optimizer."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.automatic_optimization = False
        self.model = model

    def configure_optimizers(self):
        return make_optimizer(self.model.parameters(), OptimizerConfig())

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(F.cross_entropy(self.model(x), y))
        optimizer.step()


def time_against_plain(module: L.LightningModule, model, inputs, labels, batch_size: int, steps: int, warmup: int,
                       accelerator: str) -> tuple[float, float, int]:
    """(median plain step, median step of ``module`` under Lightning, steps timed)."""
    device = "cuda" if accelerator == "gpu" else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = InterleavedTimer(copy.deepcopy(model).to(device), warmup, sync)
    n = batch_size * (steps + warmup)
    repeat = -(-n // len(inputs))
    loader = DataLoader(TensorDataset(inputs.repeat(repeat, 1, 1, 1)[:n], labels.repeat(repeat)[:n]),
                        batch_size=batch_size, shuffle=False)
    trainer = L.Trainer(max_epochs=1, accelerator=accelerator, devices=1, logger=False, callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return statistics.median(timer.plain_times), statistics.median(timer.split_times), len(timer.split_times)


def measure(label: str, model, cut: int, inputs, labels, batch_size: int, steps: int, warmup: int, accelerator: str):
    timing = (inputs, labels, batch_size, steps, warmup, accelerator)
    split_module = SplitLearningModule(copy.deepcopy(model), cut, int(labels.max()) + 1, OptimizerConfig(), OptimizerConfig())
    plain, split, timed = time_against_plain(split_module, model, *timing)
    plain_c, whole, _ = time_against_plain(OneModule(copy.deepcopy(model)), model, *timing)
    lightning_share = whole / plain_c
    print(f"{label:<27} (a) {plain * 1e3:7.2f} ms  (b) {split * 1e3:7.2f} ms  (b)/(a) {split / plain:.3f}"
          f"  (c)/(a) {lightning_share:.3f}  (b)/(c) {split / plain / lightning_share:.3f}  ({timed} steps)")
    return split / plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--models", nargs="+", default=[*SMALL_MODELS, "vgg11", "vgg11_bn", "vgg16", "resnet18"])
    args = parser.parse_args()
    quiet_lightning()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, accelerator {args.accelerator}")

    digits = make_splits(DataConfig(), seed=0)
    inputs, labels = digits.dataset("private_train").tensors
    random_images = torch.randn(16 * 4, 3, 32, 32)  # timing does not depend on pixel values
    ratios = {}
    for name in args.models:
        small = name in SMALL_MODELS
        model = build_model(name, 10, 1, 8) if small else build_model(name, 10, 3, 32)
        label = f"{name}, {'digits, batch 64' if small else '32x32, batch 16'}"
        ratios[name] = measure(label, model, model.default_cut(), *((inputs, labels, 64) if small else
                               (random_images, torch.arange(64) % 10, 16)), args.steps, args.warmup, args.accelerator)
    print(f"worst (b)/(a): {max(ratios.values()):.3f} ({max(ratios, key=ratios.get)})")

if __name__ == "__main__":
    main()
