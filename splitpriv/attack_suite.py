"""Attack one trained run several ways and report every attack and the worst case.

``run_attacks(run)`` observes the messages the deployed client sends for the private test set,
fits each attack with exactly its grants, scores the reconstructions (MSE / PSNR / SSIM on
[0, 1] images, semantic leakage through the attacker's proxy classifier), adds dCor(x, message),
and writes ``attack.json`` and ``reconstructions.png`` into the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from splitpriv.accelerators import torch_device
from splitpriv.attacks import build_attacks, default_attack_specs
from splitpriv.attacks.base import AttackResult, AttackTarget, ProxyData, evaluate
from splitpriv.attacks.metrics import LEAKAGE_METRICS, message_dcor, worst_case
from splitpriv.attacks.semantic import classifier_accuracy, fit_proxy_classifier
from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.cut import MessageTransform, NoiseModel
from splitpriv.config import POSITIVE_INT, check
from splitpriv.fields import one_of
from splitpriv.decoders import CAPACITIES
from splitpriv.data import ImageSet, load_images, make_splits, match_shape
from splitpriv.errors import SplitprivError
from splitpriv.fisher_leakage import dfil, mse_lower_bound
from splitpriv.runs import build_module
from splitpriv.store import atomic_save_figure, atomic_write_json, pyplot, read_tensors

ATTACK_FILE, GRID_FILE = "attack.json", "reconstructions.png"
QUERY_CHUNK = 1024  # inputs per client query: bounds memory for large messages (e.g. 32x26x26 on MNIST)


# the bias-corrected distance correlation of the messages is defined from 4 samples on
AT_LEAST_FOUR = check(lambda v: v >= 4, "an integer >= 4 (the distance correlation of the messages needs 4 images)")


@dataclass
class AttackSettings:
    """What ``splitpriv attack`` and every sweep cell run (``attack:`` in a sweep config)."""

    attacks: list[dict] | None = None  # attack specs, e.g. [{name: decoder_inversion, capacity: large}]; None: the default set
    decoder_capacities: list[str] = field(default_factory=lambda: ["small", "large"], metadata=check(
        lambda v: len(v) > 0 and all(c in CAPACITIES for c in v), f"a non-empty list of {sorted(CAPACITIES)}"))
    samples: int = field(default=256, metadata=AT_LEAST_FOUR)  # private test images attacked and scored
    proxy: str | None = None  # None: the run's proxy data; else a data set name or an .npz file (x uint8, y)
    proxy_size: int | None = field(default=None, metadata=POSITIVE_INT)  # at most this many proxy images
    grid_images: int = field(default=8, metadata=check(lambda v: v >= 1, "an integer >= 1"))
    dcor_samples: int = field(default=512, metadata=AT_LEAST_FOUR)  # O(n²) memory
    classifier_max_epochs: int = field(default=100, metadata=POSITIVE_INT)  # the attacker's proxy classifier (early stopping)
    seed: int = field(default=0, metadata=check(lambda v: v >= 0, "an integer >= 0"))
    # None: the attacked run's own device (attack_accelerator)
    accelerator: str | None = field(default=None, metadata=one_of("auto", "cpu", "gpu"))


def attack_accelerator(run_accelerator: str) -> str:
    """Where a run is attacked by default: on the CPU if it trained there, else on a GPU when this
    machine has one, so a run trained on a GPU is attacked on a machine without one, and back."""
    return "cpu" if run_accelerator == "cpu" else "auto"


# ----------------------------------------------------------------------------- the threat model


def _image_hashes(images: torch.Tensor) -> set[bytes]:
    return {hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() for image in images}


def load_proxy(data, data_config, source: str | None, size: int | None, seed: int) -> tuple[ProxyData, dict, bool]:
    """The attacker's proxy data for splits ``data`` built from ``data_config`` (a DataConfig),
    its description, and whether its labels are the private classes.

    Refuses proxy images that also occur in the private training or test set: an attacker
    holding the private images would measure memory, not leakage.
    """
    dataset = data_config.dataset
    if source is None:
        images = data.proxy
        description = data.description["proxy_source"]
        same_classes = data_config.proxy_dataset in (None, dataset)
    else:
        is_file = source.endswith(".npz")
        raw = load_images("npz", path=source, key="proxy") if is_file else load_images(source, data_config.root, True, key="proxy")
        images = ImageSet(match_shape(raw.images, data.info.in_channels, data.info.image_size), raw.labels)
        description = f"{source}{'' if is_file else ':train'} mapped to {data.info.input_shape}"
        same_classes = source == dataset
    if size is not None and size < len(images):
        images = images.subset(torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size])
    overlap = len(_image_hashes(images.images) & (_image_hashes(data.private_test.images) | _image_hashes(data.private_train.images)))
    if overlap:
        raise SplitprivError(
            f"the proxy data ({description}) holds {overlap} images of the run's private train/test sets; "
            f"an attacker's proxy must be disjoint from the private data: pick another --proxy (e.g. another "
            f"data set) or leave it unset to use the run's held-out proxy slice")
    unit = images.images.float() / 255
    proxy = ProxyData(data.normalize(unit), unit, images.labels, description, same_classes)
    return proxy, {"source": description, "images": len(images), "labels_are_private_classes": same_classes}, same_classes


@contextlib.contextmanager
def _frozen(module: torch.nn.Module):
    """Attacks differentiate w.r.t. images only: the client's weights stay untouched, and the module
    goes back to the device it came from (attacks may move it to theirs)."""
    flags = [p.requires_grad for p in module.parameters()]
    home = next(module.parameters()).device
    module.requires_grad_(False)
    try:
        yield
    finally:
        module.to(home)
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


def deployed_target(run, proxy: ProxyData, seed: int, device: torch.device = torch.device("cpu"),
                    observed_samples: int = 1024) -> AttackTarget:
    """Everything the server could be granted about the client of ``run``, as deployed on ``device``
    (the run's module is moved there), and the messages of ``observed_samples`` private training
    images that the server saw. Queries accept inputs anywhere and answer on ``device``."""
    module = run.module.to(device)
    proxy = proxy.to(device)

    def query(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([module.send(chunk.to(device), training=False)[1] for chunk in inputs.split(QUERY_CHUNK)])

    def client(inputs: torch.Tensor) -> torch.Tensor:
        return module.send(inputs.to(device), training=False, noisy=False)[1]

    def architecture() -> torch.nn.Module:
        config = dataclasses.replace(run.config, model=dataclasses.replace(run.config.model, cut_layer=run.cut_layer))
        return fresh_client(config, run.data.info, seed).to(device)

    message_shape = tuple(query(proxy.inputs[:2]).shape[1:])
    deployed = module.active_transforms(training=False)
    randomized = any(t.randomized for t in deployed)
    training_inputs = run.data.dataset("private_train").tensors[0]
    observed = query(training_inputs[:observed_samples])
    return AttackTarget(run.data.info.input_shape, message_shape, run.data.normalize, randomized, seed, query,
                        client, deployed_noise(deployed), proxy, architecture, module.server, observed,
                        run.data.info.num_classes, device)


def fresh_client(config, info, seed: int) -> torch.nn.Module:
    """A fresh client of ``config``'s architecture (defenses' adaptations such as GroupNorm included),
    initialised from the attacker's own ``seed``, not the run's."""
    attacker = dataclasses.replace(config, seed=seed + 7919)
    return build_module(attacker, info.num_classes, info.in_channels, info.image_size).client


def _evaluate_each(attacks, target: AttackTarget, messages: torch.Tensor, originals: torch.Tensor,
                   progress: Callable[[str], None] | None) -> list[AttackResult]:
    """Fit and score every attack in turn, saying how each went."""
    say = progress or (lambda message: None)
    results: list[AttackResult] = []
    for i, attack in enumerate(attacks, 1):
        say(f"  attack {i}/{len(attacks)} {attack.label} ...")
        attack.progress = progress
        results.append(evaluate(attack, target, messages, originals))
        metrics = results[-1].metrics
        say(f"  attack {i}/{len(attacks)} {attack.label}: mse {metrics['mse']:.4f} ssim {metrics['ssim']:.3f} "
            f"({results[-1].fit_time_s:.1f}s)")
    return results


def deployed_noise(transforms: list[MessageTransform]) -> NoiseModel | None:
    """The noise the deployed ``transforms`` add to the message: one randomised transform's own model;
    several are summed as one Gaussian of their total variance (Laplace(b): 2 b²), an approximation."""
    models = [t.noise_model() for t in transforms if t.noise_model() is not None]
    if len(models) <= 1:
        return models[0] if models else None
    variance = sum(2 * m.scale ** 2 if m.family == "laplace" else m.scale ** 2 for m in models)
    return NoiseModel("gaussian", variance ** 0.5)


def fisher_leakage_bound(target: AttackTarget, images: torch.Tensor, probes: int = 16) -> dict | None:
    """For a client that adds noise: its dFIL about the images in pixel units (through the data's
    normalisation, the client and the clipping before the noise) and the least per-element MSE an
    *unbiased* attacker reaches, 1 / dFIL per image (:mod:`splitpriv.fisher_leakage`). Attacks with a
    prior (every learned decoder) may go below it. None for a deterministic client."""
    if target.noise is None:
        return None
    leakage = dfil(lambda pixels: target.client(target.normalize(pixels)), images.to(target.device), target.noise.scale,
                   probes, torch.Generator().manual_seed(target.seed)).cpu()
    return {"noise": target.noise.family, "noise_scale": target.noise.scale, "images": len(images), "probes": probes,
            "dfil_mean": float(leakage.mean()), "unbiased_mse_bound_mean": float(mse_lower_bound(leakage).mean())}


# ----------------------------------------------------------------------------- the suite


def run_attacks(run, settings: AttackSettings | None = None, *, out_dir: str | Path | None = None,
                classifier: torch.nn.Module | None = None, progress: Callable[[str], None] | None = print) -> dict:
    """Attack ``run`` with every attack of ``settings`` and return the attack.json record.

    ``out_dir`` (default: the run folder) receives attack.json and reconstructions.png.
    ``classifier`` reuses an attacker's proxy classifier (a sweep trains it once per data set).
    Attacks compute on ``settings.accelerator`` (default: the run's); scores are computed on the CPU.
    """
    settings = settings or AttackSettings()
    started = time.perf_counter()
    device = torch_device(settings.accelerator or attack_accelerator(run.config.training.accelerator), "accelerator")
    proxy, proxy_record, same_classes = load_proxy(run.data, run.config.data, settings.proxy, settings.proxy_size, settings.seed)
    private = run.data.private_test.subset(torch.arange(min(settings.samples, len(run.data.private_test))))
    originals = private.images.float() / 255
    num_classes = run.data.info.num_classes

    with _frozen(run.module.eval()):
        target = deployed_target(run, proxy, settings.seed, device)
        specs = settings.attacks if settings.attacks is not None else default_attack_specs(
            target.randomized, tuple(settings.decoder_capacities))
        attacks = build_attacks(specs)
        messages = target.query(run.data.normalize(originals))  # what the server observes, once per image
        results = _evaluate_each(attacks, target, messages, originals, progress)
        dcor_count = min(settings.dcor_samples, len(originals))
        dcor = message_dcor(originals[:dcor_count], messages[:dcor_count].cpu())
        fisher = fisher_leakage_bound(target, originals[:dcor_count])

    semantic: dict[str, Any] = {"classifier_accuracy_on_originals": None}
    if same_classes:
        classifier = classifier or fit_proxy_classifier(target.proxy, num_classes, settings.seed, settings.classifier_max_epochs)
        semantic["classifier_accuracy_on_originals"] = classifier_accuracy(
            classifier, run.data.normalize(originals), private.labels, num_classes)
    per_attack = {}
    for result in results:
        result.metrics["classifier_accuracy"] = (
            classifier_accuracy(classifier, run.data.normalize(result.reconstructions), private.labels, num_classes)
            if same_classes else None)
        per_attack[result.label] = {**result.record, **result.metrics, "fit_time_s": result.fit_time_s}

    record = {
        "run": str(run.path), "dataset": run.config.data.dataset, "model": run.config.model.name,
        "cut_layer": run.cut_layer, "cut_name": run.cut_name,
        **run.module.pipeline_record(),
        "observation": {
            "server": "observes one message per private test image, as deployed (transforms active at inference "
                      "applied, fresh noise per query), and the messages of private training images in training",
            "randomized_defense": target.randomized,
            "observed_training_messages": len(target.observed),
            "grants": {label: a["grants"] for label, a in per_attack.items()},
        },
        "proxy": proxy_record,
        "private_test_samples": len(originals),
        "device": str(device),
        "settings": {k: v for k, v in asdict(settings).items() if k != "attacks"} | {"attacks": specs},
        "attacks": per_attack,
        "threat_models": {name: {"adversary": model.adversary, "grants": sorted(model.grants),
                                 "attacks": [label for label, a in per_attack.items() if model.admits(frozenset(a["grants"]))]}
                          for name, model in THREAT_MODELS.items()},
        "worst_case": worst_case_by_threat_model(per_attack),
        "semantic_leakage": semantic,
        "dcor_sq_bias_corrected": dcor, "dcor_samples": dcor_count,
        "fisher_leakage": fisher,
        "attack_time_s": time.perf_counter() - started,
    }
    out = Path(out_dir) if out_dir is not None else Path(run.path)
    save_reconstruction_grid(out / GRID_FILE, originals, results, settings.grid_images)
    atomic_write_json(out / ATTACK_FILE, record)
    return record


OBSERVED_KEYS = ("train_messages", "train_labels", "returned_gradients", "test_messages", "server_state")


def attack_observed(cfg, observed: str | Path, settings: AttackSettings | None = None, *,
                    out_dir: str | Path | None = None, progress: Callable[[str], None] | None = print) -> dict:
    """The passive adversary from what ``splitpriv serve --record`` kept, and nothing else.

    The server holds its trained partition, the client's architecture (the shared config), the
    messages it received in the last training epoch and in the client's test pass, and proxy data of
    its own; no query access and no client weights, so only attacks within the ``passive`` grants run
    (default: the surrogate-client attack). The reconstructions of the test pass's messages are scored
    against the private test images they came from, which the evaluator (not the attacker) rebuilds from
    ``cfg`` in the test loader's order. Writes attack.json and reconstructions.png beside the record."""
    settings = settings or AttackSettings()
    started = time.perf_counter()
    path = Path(observed)
    record = read_tensors(path, "observation record")
    if not isinstance(record, dict) or any(not isinstance(record.get(k), (torch.Tensor, dict)) for k in OBSERVED_KEYS):
        raise SplitprivError(f"{path} is not a record of 'splitpriv serve --record' (it needs {list(OBSERVED_KEYS)})")
    data = make_splits(cfg.data, cfg.seed)
    info = data.info
    module = build_module(cfg, info.num_classes, info.in_channels, info.image_size)
    try:
        module.server.load_state_dict(record["server_state"])
    except RuntimeError:
        raise SplitprivError(f"the server partition in {path} does not fit the config's model and cut; pass the "
                             f"config the server ran with") from None
    server = module.server.eval().requires_grad_(False)
    test_messages = record["test_messages"].float()
    count = min(settings.samples, len(test_messages), len(data.private_test))
    if len(test_messages) != len(data.private_test):
        raise SplitprivError(f"{path} holds {len(test_messages)} test-pass messages but the config's private test set "
                             f"has {len(data.private_test)} images; pass the config the client ran with")
    originals = data.private_test.images[:count].float() / 255
    proxy, proxy_record, _ = load_proxy(data, cfg.data, settings.proxy, settings.proxy_size, settings.seed)

    target = AttackTarget(info.input_shape, tuple(test_messages.shape[1:]), data.normalize, False, settings.seed,
                          proxy=proxy, architecture=lambda: fresh_client(cfg, info, settings.seed), server=server,
                          observed=record["train_messages"].float(), num_classes=info.num_classes)
    specs = settings.attacks or [{"name": "surrogate_client", "capacity": settings.decoder_capacities[-1]}]
    attacks = build_attacks(specs)
    passive = THREAT_MODELS["passive"]
    beyond = [a.label for a in attacks if not passive.admits(a.grants)]
    if beyond:
        raise SplitprivError(f"{', '.join(beyond)} need(s) more than a record grants (query access or the client's "
                             f"weights); from --observed only attacks within the passive grants "
                             f"{sorted(passive.grants)} run, e.g. surrogate_client")
    results = _evaluate_each(attacks, target, test_messages[:count], originals, progress)
    per_attack = {r.label: {**r.record, **r.metrics, "fit_time_s": r.fit_time_s} for r in results}
    out = Path(out_dir) if out_dir is not None else path.parent
    attack_record = {
        "observed": str(path), "dataset": cfg.data.dataset, "model": cfg.model.name, "cut_layer": module.cut_layer,
        "cut_name": module.cut_name, "threat_model": "passive",
        "observation": {"observed_training_messages": len(record["train_messages"]),
                        "test_pass_messages": len(test_messages)},
        "proxy": proxy_record, "private_test_samples": count, "attacks": per_attack,
        "worst_case": {"passive": worst_case({label: {k: a.get(k) for k in LEAKAGE_METRICS}
                                              for label, a in per_attack.items()})},
        "attack_time_s": time.perf_counter() - started,
    }
    save_reconstruction_grid(out / GRID_FILE, originals, results, settings.grid_images)
    atomic_write_json(out / ATTACK_FILE, attack_record)
    return attack_record


def worst_case_by_threat_model(per_attack: dict[str, dict]) -> dict[str, dict | None]:
    """For each threat model, the worst case over the attacks it admits (None when it admits none)."""
    leakage = {label: {k: a.get(k) for k in LEAKAGE_METRICS} for label, a in per_attack.items()}
    worst = {}
    for name, model in THREAT_MODELS.items():
        admitted = {label: leakage[label] for label, a in per_attack.items() if model.admits(frozenset(a["grants"]))}
        worst[name] = worst_case(admitted) if admitted else None
    return worst


def save_reconstruction_grid(path: Path, originals: torch.Tensor, results: list[AttackResult], count: int) -> None:
    """Originals on top, one row per attack, ``count`` private test images (written atomically)."""
    plt = pyplot()
    from torchvision.utils import make_grid

    count = min(count, len(originals))
    rows = [("private", originals)] + [(r.label, r.reconstructions) for r in results]
    tiles = torch.cat([images[:count] for _, images in rows])
    grid = make_grid(tiles, nrow=count, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    figure, axis = plt.subplots(figsize=(0.9 * count + 2.2, 0.9 * len(rows) + 0.2))
    axis.imshow(grid, vmin=0, vmax=1)  # one image: a grid of subplots costs seconds per cell
    row_height = grid.shape[0] / len(rows)
    axis.set_yticks([row_height * (i + 0.5) for i in range(len(rows))], [label for label, _ in rows], fontsize=8)
    axis.set_xticks([])
    figure.tight_layout()
    atomic_save_figure(figure, path, dpi=80)
