"""Predict a sweep's frontier before any private data is trained on (the survey's open issue, Sec. 3.2.3).

How much a cell (cut, defense, strength) leaks, and what accuracy it costs, is known only once the
cell is trained on the private data and attacked. ``predict`` estimates both for every cell of a
sweep's grid from the proxy images alone (the attacker's data, disjoint from the private data) by a
**rehearsal**: the cell's training run on a small public stand-in of the private set, then four
signals:

* ``linear_decoder_mse`` / ``_ssim``: a ridge regression from the rehearsal client's messages (as
  deployed: noise included) to the images, fitted on the rehearsal's attacker proxy and scored on its
  test images. The predicted worst-case MSE and SSIM of the ``black_box`` threat model.
* ``white_box_rehearsal_mse`` / ``_ssim``: the sweep's attacks that need the client's weights
  (optimisation inversion) against each cell's rehearsal client. With the linear decoder's, the
  predicted worst case of ``white_box`` (:func:`_predicted_white_box`).
* ``passive_rehearsal_mse`` / ``_ssim``: the sweep's passive attacks (those a ``passive`` adversary
  can run) against the undefended rehearsal client at each cut. Carried to each defended cell by its
  linear decoder's leakage (:func:`_predicted_passive`), the predicted worst case of ``passive``.
* ``fisher``: dFIL (Maeng et al. 2023, :mod:`splitpriv.fisher_leakage`) of the rehearsal client: for a
  noisy client the least MSE of any unbiased attacker, 1 / dFIL; for a deterministic one
  ||J_f||_F^2 / d, how much the message moves with its input (a ranking signal only).
* ``rehearsal_accuracy``: the rehearsal model's test accuracy, scaled to the private set's size by the
  undefended learning curve: with the undefended rehearsal's error e(n) at n and n/2 training images,
  e(n) = b n^-c gives c = log2(e(n/2) / e(n)), the undefended private accuracy is
  A = 1 - e(n) (N / n)^-c (N: ``private_samples``), and each cell keeps its rehearsal ratio to the
  undefended rehearsal: predicted accuracy = A * acc_cell / acc_undefended.

The rehearsal trains with the private run's settings, its batches scaled to keep the private run's
sampling rate and steps per epoch, for a share of its epochs (:func:`rehearsal_run_config`). When
the folder also holds the measured ``frontier.csv`` of the same sweep, ``predicted_vs_measured.png``
and ``agreement.json`` say how well each signal ranks the truth.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Callable

import torch

from splitpriv.attack_suite import _frozen, deployed_target, load_proxy
from splitpriv.attacks import build_attacks, default_attack_specs, evaluate
from splitpriv.attacks.metrics import reconstruction_metrics
from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.config import RunConfig
from splitpriv.data import SplitData
from splitpriv.defenses import build_defense
from splitpriv.cut import is_number
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.executors import cell_executor, inline_executor, submit
from splitpriv.experiment import train
from splitpriv.fisher_leakage import jacobian_norm_sq
from splitpriv.models import build_model
from splitpriv.provenance import provenance
from splitpriv.store import atomic_save_figure, atomic_write_csv, atomic_write_json, atomic_write_yaml, csv_value, pyplot
from splitpriv.sweep import (FRONTIER_CSV, NO_DEFENSE, SWEEP_FILE, Cell, SweepConfig, base_run_config, cell_run_config,
                             check_sweep_folder, failure_reason, grid, seed_splits, worker_setup)
from splitpriv.workers import exclusive_sweep_folder

PREDICTED_CSV, PREDICTED_PNG, AGREEMENT_FILE, REHEARSAL_DIR = "predicted.csv", "predicted_vs_measured.png", "agreement.json", "rehearsal"
# the proxy images' roles in a rehearsal (the attacker's proxy of the rehearsal last)
REHEARSAL_SHARES = {"private_train": 0.6, "val": 0.1, "private_test": 0.15, "proxy": 0.15}
# the share of the private run's epochs a rehearsal trains: on the default digits grid 0.5 keeps the
# prediction under 10 % of the sweep's time; 1.0 halves the accuracy's error (docs/prediction.md)
EPOCHS_SHARE = 0.5
SIGNALS = ["rehearsal_accuracy", "linear_decoder_mse", "linear_decoder_ssim", "passive_rehearsal_mse", "passive_rehearsal_ssim",
           "white_box_rehearsal_mse", "white_box_rehearsal_ssim", "fisher", "fisher_kind"]
PREDICTED_COLUMNS = ["key", "cut_layer", "cut_name", "defense", "strength", "strength_parameter", "seed", "compression", "exits",
                     "predicted_test_accuracy",
                     *(f"predicted_worst_{metric}_{model}" for model in THREAT_MODELS for metric in ("mse", "ssim")),
                     *SIGNALS, "rehearsal_time_s", "rehearsal_failure"]
NOT_ATTACKED = {f"{signal}_{metric}": None for signal in ("passive_rehearsal", "white_box_rehearsal")
                for metric in ("mse", "ssim")}
# the rehearsal test images a white-box attack reconstructs: optimisation inversion's cost grows with
# them (on the MNIST grid 4-200 s per cell for 128), and the mean MSE of 32 ranks and sizes the cells
WHITE_BOX_SAMPLES = 32
HALF = "-rehearsal-half"  # the training key's suffix of the undefended rehearsal on half the training share


def rehearsal_splits(data: SplitData, seed: int, train_share: float = 1.0) -> SplitData:
    """The proxy images of ``data`` divided into a rehearsal's roles (:data:`REHEARSAL_SHARES`);
    ``train_share`` keeps that share of the rehearsal's training images (the learning curve)."""
    order = torch.randperm(len(data.proxy), generator=torch.Generator().manual_seed(seed + 104729))
    start, roles = 0, {}
    for role, share in REHEARSAL_SHARES.items():
        count = max(2, round(share * len(order)))
        roles[role] = data.proxy.subset(order[start:start + count])
        start += count
    if start > len(order):
        raise SplitprivError(f"{len(order)} proxy images are too few for a rehearsal (it needs at least "
                             f"{start}); raise data.proxy_fraction or data.proxy_size")
    roles["private_train"] = roles["private_train"].subset(torch.arange(max(2, round(train_share * len(roles["private_train"])))))
    return SplitData(data.info, roles["private_train"], roles["val"], roles["private_test"], roles["proxy"],
                     {"proxy_source": "rehearsal: held-out slices of the proxy", **{r: len(s) for r, s in roles.items()}}, {})


def rehearsal_run_config(cfg: SweepConfig, cell: Cell, private_samples: int, rehearsal_samples: int, out: Path,
                         epochs_share: float = EPOCHS_SHARE) -> RunConfig:
    """The cell's run config as the sweep trains it, on a rehearsal of ``rehearsal_samples`` training
    images standing in for ``private_samples``: batches of B n / N keep the private run's sampling
    rate, so an epoch has the private run's number of steps; ``epochs_share`` of its epochs; each
    defense's :meth:`~splitpriv.defenses.base.Defense.rehearsal_spec` (DP-SGD keeps the private run's
    noise multiplier); no wandb; its folder under ``out``."""
    run_cfg = cell_run_config(cfg, cell, cell.cut_layer)
    training = run_cfg.training
    specs = [build_defense(spec).rehearsal_spec(spec, private_samples, training.batch_size, training.epochs)
             for spec in run_cfg.defenses]
    training = dataclasses.replace(training, batch_size=max(2, round(training.batch_size * rehearsal_samples / private_samples)),
                                   epochs=max(1, round(epochs_share * training.epochs)))
    return dataclasses.replace(run_cfg, out=str(out), training=training, defenses=specs,
                               wandb=dataclasses.replace(run_cfg.wandb, mode="disabled"))


def linear_decoder_leakage(proxy_messages: torch.Tensor, proxy_images: torch.Tensor, test_messages: torch.Tensor,
                           test_images: torch.Tensor) -> dict[str, float]:
    """MSE and SSIM of a ridge regression from messages to images (its penalty chosen by leave-one-out
    on the proxy), fitted on the proxy and scored on the test images; images in [0, 1]."""
    from sklearn.linear_model import RidgeCV

    ridge = RidgeCV(alphas=[10.0 ** k for k in range(-3, 5)]).fit(proxy_messages.flatten(1).double().numpy(),
                                                               proxy_images.flatten(1).double().numpy())
    predicted = torch.from_numpy(ridge.predict(test_messages.flatten(1).double().numpy())).float()
    metrics = reconstruction_metrics(predicted.clamp(0, 1).view_as(test_images), test_images)
    return {"linear_decoder_mse": metrics["mse"], "linear_decoder_ssim": metrics["ssim"]}


def rehearsal_attacks(cfg: SweepConfig, run, test_images: torch.Tensor, test_messages: torch.Tensor, seed: int,
                      sweep_proxy_images: int, passive: bool) -> dict[str, float | None]:
    """The worst MSE (and its SSIM) against the rehearsal client ``run`` of the sweep's white-box attacks
    (those that need the client's weights) and, with ``passive``, of its passive attacks; None where the
    sweep has no such attack.

    White-box: on the first :data:`WHITE_BOX_SAMPLES` test images, against the cell's own client,
    defenses included. Where a deterministic client is nearly invertible (the first layers) it
    reconstructs orders of magnitude better than any decoder, so the linear decoder alone would promise
    the white-box adversary far more MSE than the trained run leaves.

    Passive (the undefended clients): the passive adversary learns a surrogate of the client from proxy
    images and messages, and how well it does depends on the cut in ways no decoder with query access
    shows (on the default digits grid the first convolutions are harder for it than the second). It
    gets the sweep attacker's proxy (its source and size cap; by default a slice of the rehearsal's own
    proxy, smaller than the sweep's ``sweep_proxy_images``) and the sweep attacker's optimizer steps:
    its epoch-counted budgets grow with the steps an epoch loses on fewer images
    (:meth:`~splitpriv.attacks.base.Attack.matching_steps`). With the sweep's epochs on fewer images the
    surrogate is under-trained, and the rehearsal over-predicts the passive MSE."""
    attacks = build_attacks(cfg.attack.attacks or default_attack_specs(False, tuple(cfg.attack.decoder_capacities)))
    white_box = [a for a in attacks if "weights" in a.grants and THREAT_MODELS["white_box"].admits(a.grants)]
    passive_attacks = [a for a in attacks if THREAT_MODELS["passive"].admits(a.grants)] if passive else []
    if not (white_box or passive_attacks):
        return NOT_ATTACKED
    proxy, _, _ = load_proxy(run.data, run.config.data, cfg.attack.proxy, cfg.attack.proxy_size, seed)
    target = deployed_target(run, proxy, seed)
    images_set_for = sweep_proxy_size(cfg, sweep_proxy_images, len(proxy.inputs))
    passive_attacks = [a.matching_steps(images_set_for, len(proxy.inputs)) for a in passive_attacks]
    return {**_worst_of("passive_rehearsal", passive_attacks, target, test_messages, test_images),
            **_worst_of("white_box_rehearsal", white_box, target, test_messages[:WHITE_BOX_SAMPLES],
                        test_images[:WHITE_BOX_SAMPLES])}


def _worst_of(signal: str, attacks: list, target, messages: torch.Tensor, images: torch.Tensor) -> dict[str, float | None]:
    """``<signal>_mse`` and ``_ssim`` of the attack of ``attacks`` with the lowest MSE (None without one)."""
    if not attacks:
        return {f"{signal}_mse": None, f"{signal}_ssim": None}
    worst = min((evaluate(attack, target, messages, images).metrics for attack in attacks), key=lambda m: m["mse"])
    return {f"{signal}_mse": worst["mse"], f"{signal}_ssim": worst["ssim"]}


def sweep_proxy_size(cfg: SweepConfig, sweep_proxy_images: int, rehearsal_proxy_images: int) -> int:
    """How many proxy images the sweep's attacker holds: another source (``attack.proxy``) is the same
    for the rehearsal's; by default the private splits' proxy, at most ``attack.proxy_size``."""
    if cfg.attack.proxy is not None:
        return rehearsal_proxy_images
    return min(sweep_proxy_images, cfg.attack.proxy_size or sweep_proxy_images)


def fisher_signal(module, data: SplitData, images: torch.Tensor, seed: int) -> tuple[float, str]:
    """(1 / dFIL, 'unbiased_mse_bound') for a client adding noise; (||J_f||_F^2 / d, 'jacobian') otherwise."""
    noise = [t.noise_model() for t in module.active_transforms(training=False) if t.noise_model() is not None]
    client = lambda pixels: module.send(data.normalize(pixels), training=False, noisy=False)[1]  # noqa: E731
    norm = jacobian_norm_sq(client, images, probes=4, generator=torch.Generator().manual_seed(seed)) / images[0].numel()
    if not noise:
        return float(norm.mean()), "jacobian"
    scale_sq = sum(2 * m.scale ** 2 if m.family == "laplace" else m.scale ** 2 for m in noise)
    return float((scale_sq / norm).mean()), "unbiased_mse_bound"


def rehearse(cfg: SweepConfig, cells: list[Cell], sweep_dir: Path, private_samples: int, epochs_share: float,
             train_share: float = 1.0, training_key: str | None = None, attack: bool = True) -> list[dict]:
    """Train the rehearsal that ``cells`` share (one training key) and measure each cell's signals
    (``attack``: also attack every client with the sweep's white-box attacks, and the undefended ones
    with its passive attacks)."""
    started = time.perf_counter()
    worker_setup(cfg)
    first = cells[0]
    sweep_data = seed_splits(dataclasses.replace(base_run_config(cfg), seed=first.seed))
    data = rehearsal_splits(sweep_data, first.seed, train_share)
    run_cfg = rehearsal_run_config(cfg, first, private_samples, len(data.private_train), sweep_dir / REHEARSAL_DIR, epochs_share)
    run_cfg = dataclasses.replace(run_cfg, name=training_key or first.training_key)
    trained = train(run_cfg, force=True, data=data)
    trained_s = time.perf_counter() - started
    proxy_images, test_images = (data.proxy.images.float() / 255, data.private_test.images.float() / 255)
    rows = []
    for cell in cells:
        cell_started = time.perf_counter()
        run = trained if cell.trained_at_its_cut or cell.cut_layer == trained.cut_layer else trained.recut(cell.cut_layer)
        with _frozen(run.module.eval()), torch.no_grad():
            proxy_messages = run.module.send(data.normalize(proxy_images), training=False)[1]
            test_messages = run.module.send(data.normalize(test_images), training=False)[1]
        with _frozen(run.module):
            fisher, kind = fisher_signal(run.module, data, test_images, cell.seed)
            attacked = (rehearsal_attacks(cfg, run, test_images, test_messages, cell.seed, len(sweep_data.proxy),
                                          passive=not run.cut_pipeline) if attack else NOT_ATTACKED)
        rows.append({"key": cell.key, "rehearsal_accuracy": trained.metrics["test_accuracy"],
                     **linear_decoder_leakage(proxy_messages, proxy_images, test_messages, test_images), **attacked,
                     "fisher": fisher, "fisher_kind": kind,
                     "rehearsal_time_s": time.perf_counter() - cell_started + trained_s / len(cells)})
    return rows


def undefended_accuracy(full: float, half: float, private_samples: int, rehearsal_samples: int) -> float:
    """The undefended private accuracy from the rehearsal's learning curve (module docstring):
    A = 1 - e(n) (N / n)^-c, c = log2(e(n/2) / e(n)) clipped to [0, 1]."""
    error, half_error = max(1 - full, 1e-6), max(1 - half, 1e-6)
    exponent = min(max(math.log2(half_error / error), 0.0), 1.0)
    return 1 - error * (private_samples / rehearsal_samples) ** -exponent


def predict(cfg: SweepConfig, *, epochs_share: float = EPOCHS_SHARE, force: bool = False,
            progress: Callable[[str], None] = print) -> list[dict]:
    """Rehearse every training of ``cfg``'s grid (``epochs_share`` of its epochs), write ``predicted.csv``
    into the sweep folder, and compare with its measured frontier when there is one. A folder that
    holds the predictions of the same config and share keeps them (``force``: rehearse again); the
    comparison is redone. Returns the predicted rows in grid order."""
    if not (is_number(epochs_share) and 0 < epochs_share <= 1):
        raise ConfigError("epochs_share", epochs_share, "a fraction in (0, 1] of the private run's epochs")
    started = time.perf_counter()
    worker_setup(cfg)
    data = seed_splits(dataclasses.replace(base_run_config(cfg), seed=cfg.seeds[0]))
    model = build_model(cfg.model, data.info.num_classes, data.info.in_channels, data.info.image_size)
    cells = grid(cfg, model.cut_points(data.info.input_shape))
    sweep_dir = Path(cfg.out) / cfg.sweep_name()
    resolved = json.loads(json.dumps(dataclasses.asdict(dataclasses.replace(cfg, name=cfg.sweep_name()))))
    with exclusive_sweep_folder(sweep_dir):
        check_sweep_folder(sweep_dir, resolved, force=False)
        if not (sweep_dir / SWEEP_FILE).exists():  # a later sweep of the same config resumes into this folder
            atomic_write_yaml(sweep_dir / SWEEP_FILE, resolved)
        record_path = sweep_dir / AGREEMENT_FILE
        kept = json.loads(record_path.read_text()) if record_path.exists() and (sweep_dir / PREDICTED_CSV).exists() else {}
        if kept.get("epochs_share") == epochs_share and not force:
            progress(f"predict {cfg.sweep_name()}: the predictions in {sweep_dir / PREDICTED_CSV} (--force rehearses again)")
            rows, record = _numbers(sweep_dir / PREDICTED_CSV), kept
        else:
            rows = _rehearsed_rows(cfg, cells, data, sweep_dir, epochs_share, progress)
            record = {"provenance": provenance(), "wall_s": time.perf_counter() - started, "cells": len(cells),
                      "epochs_share": epochs_share,
                      "rehearsals": len({c.training_key for c in cells}) + len(cfg.seeds),
                      "private_samples": len(data.private_train),
                      "rehearsal_samples": len(rehearsal_splits(data, 0).private_train)}
            atomic_write_csv(sweep_dir / PREDICTED_CSV, rows, PREDICTED_COLUMNS)
            progress(f"predicted in {record['wall_s']:.0f}s")
        if (sweep_dir / FRONTIER_CSV).exists():
            record["agreement"] = agreement(rows, sweep_dir / FRONTIER_CSV)
            save_agreement_plot(rows, sweep_dir / FRONTIER_CSV, sweep_dir / PREDICTED_PNG)
        atomic_write_json(record_path, record)
    return rows


def _rehearsed_rows(cfg: SweepConfig, cells: list[Cell], data: SplitData, sweep_dir: Path, epochs_share: float,
                    progress: Callable[[str], None]) -> list[dict]:
    """Every cell's signals and predictions, from a rehearsal per training key and each seed's half-data one."""
    private_samples = len(data.private_train)
    rehearsal_samples = len(rehearsal_splits(data, 0).private_train)  # too few proxy images: refused before any work
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.training_key, []).append(cell)
    # the learning curve's second point: each seed's undefended rehearsal on half the training images
    halves = {f"{NO_DEFENSE}{HALF}-seed{seed}": dataclasses.replace(
        next(c for c in cells if c.seed == seed), defense=NO_DEFENSE, strength=None, defense_specs=[], transform_specs=[],
        compression=NO_DEFENSE) for seed in cfg.seeds}
    progress(f"predict {cfg.sweep_name()}: {len(cells)} cells, {len(groups) + len(halves)} rehearsals on "
             f"{len(data.proxy)} proxy images -> {sweep_dir / PREDICTED_CSV}")
    signals, half_accuracy, failures = _rehearse_all(cfg, groups, halves, sweep_dir, private_samples, epochs_share, progress)
    rows = []
    for cell in cells:
        if cell.training_key in failures:  # predicted to fail: no numbers, and the reason
            rows.append({"key": cell.key, **cell.labels(), "rehearsal_failure": failures[cell.training_key]})
            continue
        undefended = signals.get(dataclasses.replace(cell, defense=NO_DEFENSE, strength=None, defense_specs=[]).key)
        row = {"key": cell.key, **cell.labels(), **signals[cell.key]}
        row["predicted_test_accuracy"] = _predicted_accuracy(row, undefended, half_accuracy.get(cell.seed),
                                                             private_samples, rehearsal_samples)
        row["predicted_worst_mse_black_box"], row["predicted_worst_ssim_black_box"] = linear = _linear(row)
        row["predicted_worst_mse_white_box"], row["predicted_worst_ssim_white_box"] = _predicted_white_box(row)
        row["predicted_worst_mse_passive"], row["predicted_worst_ssim_passive"] = _predicted_passive(row, undefended, linear)
        rows.append(row)
    return rows


def _linear(row: dict) -> tuple[float, float]:
    """The black-box adversary's worst MSE and SSIM: the linear decoder's."""
    return row["linear_decoder_mse"], row["linear_decoder_ssim"]


def _predicted_white_box(row: dict) -> tuple[float, float]:
    """The white-box adversary's worst MSE and SSIM: the worse for the client of the linear decoder
    (the white-box adversary can query too) and the white-box attack on the rehearsal client."""
    linear = _linear(row)
    if row.get("white_box_rehearsal_mse") is None:
        return linear
    return min(linear[0], row["white_box_rehearsal_mse"]), max(linear[1], row["white_box_rehearsal_ssim"])


def _predicted_passive(row: dict, undefended: dict | None, black_box: tuple[float, float]) -> tuple[float, float]:
    """The passive adversary's worst MSE and SSIM: the undefended rehearsal's passive attack at the
    cell's cut, carried to the cell by the change the defense makes to its linear decoder's leakage,

        mse_passive(cell) = mse_passive(undefended) + mse_linear(cell) - mse_linear(undefended),
        ssim_passive(cell) = ssim_passive(undefended) + ssim_linear(cell) - ssim_linear(undefended),

    and never more leaky than the black-box prediction (the passive adversary is the weaker one), nor
    an MSE above 1 (images and clamped reconstructions lie in [0, 1]). Without a passive rehearsal: the
    linear decoder's, as for every threat model. A defense's noise adds an error no attacker removes,
    so the change is added, not scaled: the linear decoders' ratio explodes where the undefended one is
    near perfect (MNIST relu1), and scaling by it promised several times the measured MSE under
    dp_noise (the CHANGELOG has the numbers)."""
    if undefended is None or undefended.get("passive_rehearsal_mse") is None:
        return black_box
    mse = undefended["passive_rehearsal_mse"] + row["linear_decoder_mse"] - undefended["linear_decoder_mse"]
    ssim = undefended["passive_rehearsal_ssim"] + row["linear_decoder_ssim"] - undefended["linear_decoder_ssim"]
    return min(max(mse, black_box[0]), 1.0), min(ssim, black_box[1])


def _numbers(path: Path) -> list[dict]:
    """A CSV's rows with numbers as numbers and empty fields as None."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: csv_value(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _predicted_accuracy(row: dict, undefended: dict | None, half: float | None, private_samples: int,
                        rehearsal_samples: int) -> float:
    if undefended is None or half is None:
        return row["rehearsal_accuracy"]
    base = undefended["rehearsal_accuracy"]
    target = undefended_accuracy(base, half, private_samples, rehearsal_samples)
    return min(1.0, target * row["rehearsal_accuracy"] / max(base, 1e-6))


def _rehearse_all(cfg: SweepConfig, groups: dict[str, list[Cell]], halves: dict[str, Cell], sweep_dir: Path,
                  private_samples: int, epochs_share: float,
                  progress: Callable[[str], None]) -> tuple[dict[str, dict], dict[int, float], dict[str, str]]:
    """Every rehearsal on the sweep's executor: the signals by cell key, each seed's half-data accuracy,
    and why each failed rehearsal failed, by training key (a training that diverges on public data is
    a prediction too: the cell's private run is likely to fail as well)."""
    signals: dict[str, dict] = {}
    half_accuracy: dict[int, float] = {}
    failures: dict[str, str] = {}
    workers = min(cfg.workers, len(groups) + len(halves))
    inline = cfg.executor == "local" and workers == 1
    with (inline_executor() if inline else cell_executor(cfg.executor, workers, sweep_dir, address=cfg.address,
                                                         cpus=cfg.cell_cpus, gpus=cfg.cell_gpus)) as executor:
        futures = {submit(executor, rehearse, cfg, group, sweep_dir, private_samples, epochs_share): key
                   for key, group in groups.items()}
        futures.update({submit(executor, rehearse, cfg, [cell], sweep_dir, private_samples, epochs_share, 0.5, key, False): key
                        for key, cell in halves.items()})
        for done, future in enumerate(futures if inline else as_completed(futures), 1):
            key = futures[future]
            error = future.exception()
            if error is not None:
                failures[key] = failure_reason(error)
                progress(f"rehearsal {done}/{len(futures)} {key}: failed: {failures[key]}")
                continue
            rows = future.result()
            if key in halves:
                half_accuracy[halves[key].seed] = rows[0]["rehearsal_accuracy"]
            else:
                signals.update({row["key"]: row for row in rows})
            progress(f"rehearsal {done}/{len(futures)} {key}: accuracy {rows[0]['rehearsal_accuracy']:.3f}")
    return signals, half_accuracy, failures


# ----------------------------------------------------------------------------- agreement with a measured sweep


def _measured(frontier: Path) -> dict[str, dict]:
    with frontier.open() as handle:
        rows = list(csv.DictReader(handle))
    return {Cell(int(r["cut_layer"]), r["cut_name"], r["defense"], float(r["strength"]) if r["strength"] else None,
                 int(r["seed"]), [], compression=r["compression"], exits=r["exits"]).key: r for r in rows}


def _compared(rows: list[dict], frontier: Path) -> tuple[dict[str, dict], list[dict]]:
    """The measured rows by cell key, and the predicted rows (rehearsal not failed) that have one."""
    measured = _measured(frontier)
    return measured, [row for row in rows if row["key"] in measured and not row.get("rehearsal_failure")]


def agreement(rows: list[dict], frontier: Path) -> dict:
    """Spearman rank correlation of predicted and measured worst-case MSE per threat model (and of
    each signal), and the predicted accuracy's mean absolute error, over the cells both hold."""
    from scipy.stats import spearmanr

    measured, both = _compared(rows, frontier)
    record = {"cells": len(both), "threat_models": {},
              "failed_rehearsals": sorted(r["key"] for r in rows if r.get("rehearsal_failure"))}
    for model_name in THREAT_MODELS:
        truth = [_float(measured[r["key"]].get(f"worst_mse_{model_name}")) for r in both]
        pairs = [(r, t) for r, t in zip(both, truth) if t is not None]
        if len(pairs) < 3:
            continue
        values = [t for _, t in pairs]
        record["threat_models"][model_name] = {
            "spearman_predicted": _spearman(spearmanr, [r[f"predicted_worst_mse_{model_name}"] for r, _ in pairs], values),
            "spearman_linear_decoder_mse": _spearman(spearmanr, [r["linear_decoder_mse"] for r, _ in pairs], values),
            # a larger Jacobian norm leaks more, a larger bound less: ranked so both agree with the MSE's direction
            "spearman_fisher": _spearman(spearmanr, [r["fisher"] if r["fisher_kind"] == "unbiased_mse_bound" else 1 / max(r["fisher"], 1e-30)
                                                     for r, _ in pairs], values),
            "cells": len(pairs)}
    accuracy = [(r["predicted_test_accuracy"], float(measured[r["key"]]["test_accuracy"])) for r in both]
    record["accuracy_mae"] = sum(abs(p - m) for p, m in accuracy) / len(accuracy)
    record["accuracy_spearman"] = _spearman(spearmanr, [p for p, _ in accuracy], [m for _, m in accuracy])
    return record


def _float(value) -> float | None:
    return float(value) if value not in (None, "") else None


def _spearman(spearmanr, predicted: list[float], measured: list[float]) -> float:
    """nan when either side is constant (no ranking to compare)."""
    if len(set(predicted)) < 2 or len(set(measured)) < 2:
        return math.nan
    return float(spearmanr(predicted, measured).statistic)


def save_agreement_plot(rows: list[dict], frontier: Path, path: Path) -> None:
    """One panel per threat model (predicted against measured worst-case MSE, log scales) and one for accuracy."""
    plt = pyplot()
    measured, both = _compared(rows, frontier)
    defenses = sorted({r["defense"] for r in both})
    colours = {d: plt.get_cmap("tab10")(i) for i, d in enumerate(defenses)}
    figure, axes = plt.subplots(1, len(THREAT_MODELS) + 1, figsize=(4 * (len(THREAT_MODELS) + 1), 3.8))
    panels = [(f"worst-case MSE, {m}", f"predicted_worst_mse_{m}", f"worst_mse_{m}", True) for m in THREAT_MODELS]
    panels.append(("test accuracy", "predicted_test_accuracy", "test_accuracy", False))
    for axis, (title, predicted_key, measured_key, log) in zip(axes, panels):
        values = []
        for defense in defenses:
            points = [(r[predicted_key], _float(measured[r["key"]].get(measured_key))) for r in both if r["defense"] == defense]
            points = [(p, m) for p, m in points if m is not None]
            values += [v for point in points for v in point]
            axis.scatter([p for p, _ in points], [m for _, m in points], s=18, color=colours[defense], label=defense)
        # the diagonal: below it a cell leaks more than predicted (an MSE panel's unsafe side)
        low, high = (min(values), max(values)) if log and values else (0, 1)
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        if log:
            from matplotlib.ticker import NullFormatter

            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())  # the minor decades' labels overlap
            axis.set_xlabel("predicted (below the line: leaks more than predicted)", fontsize=8)
        else:
            axis.set_xlabel("predicted")
        axis.set_title(title, fontsize=10)
        axis.set_ylabel("measured")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    atomic_save_figure(figure, path)


def format_predictions(rows: list[dict]) -> str:
    """The predictions as a plain table, one line per cell."""
    header = f"{'cell':40s} {'accuracy':>8s} " + " ".join(f"{'mse ' + m:>14s}" for m in THREAT_MODELS)
    lines = [header] + [f"{r['key']:40s} rehearsal failed: {r['rehearsal_failure']}" if r.get("rehearsal_failure") else
                        f"{r['key']:40s} {r['predicted_test_accuracy']:8.3f} "
                        + " ".join(f"{r[f'predicted_worst_mse_{m}']:14.4f}" for m in THREAT_MODELS) for r in rows]
    return "\n".join(lines)


def read_predictions(path: Path) -> list[dict]:
    """``predicted.csv`` as frontier rows (``test_accuracy``, ``worst_mse_<threat model>``, ...), which
    the planner weighs like a measured frontier; cells whose rehearsal failed are left out."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return [{"cut_layer": int(r["cut_layer"]), "defense": r["defense"], "strength": _float(r["strength"]),
                 "strength_parameter": r["strength_parameter"] or None, "compression": r["compression"], "exits": r["exits"],
                 "test_accuracy": float(r["predicted_test_accuracy"]),
                 **{f"worst_{metric}_{model}": float(r[f"predicted_worst_{metric}_{model}"])
                    for model in THREAT_MODELS for metric in ("mse", "ssim")}} for r in rows if not r.get("rehearsal_failure")]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
        raise SplitprivError(f"{path} is not a predicted.csv of 'splitpriv predict' ({type(error).__name__}: {error}); "
                             f"rerun splitpriv predict to rewrite it") from None
