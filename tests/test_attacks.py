"""The attack suite: interface contract, leakage metrics, worst case, ``splitpriv attack``."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from splitpriv.attacks import ATTACKS, AttackTarget, ProxyData, build_attack, evaluate
from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.attacks.metrics import reconstruction_metrics, worst_case
from splitpriv.cli import main
from splitpriv.config import load_run_config
from splitpriv.experiment import train



# tiny budgets for speed; the defaults are what users get
FAST = {"decoder_inversion": {"capacity": "small", "max_epochs": 4, "patience": 2},
        "noise_aware": {"capacity": "small", "max_epochs": 4, "patience": 2},
        "optimization_inversion": {"max_steps": 30, "check_every": 10},
        "surrogate_client": {"capacity": "small", "surrogate_epochs": 2, "max_epochs": 4, "patience": 2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = load_run_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "plain", "model.cut_layer": 1,
                                 "training.epochs": 2, "training.progress_bar": False, "wandb.mode": "disabled"})
    return train(cfg)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    cfg = load_run_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "noisy", "model.cut_layer": 4,
                                 "training.epochs": 1, "training.progress_bar": False, "wandb.mode": "disabled",
                                 "defenses": [{"name": "dp_noise", "epsilon": 32.0}]})
    return train(cfg)


def _unit_images(n=24, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _target(client: nn.Module, randomized=False) -> AttackTarget:
    images = _unit_images(48, seed=1)
    normalize = lambda unit: (unit - 0.5) / 0.25  # noqa: E731
    proxy = ProxyData(normalize(images), images, torch.randint(0, 10, (48,)), "random test images")

    def query(x):
        with torch.no_grad():
            return client(x)

    shape = tuple(query(proxy.inputs[:2]).shape[1:])
    architecture = lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())  # noqa: E731
    server = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    observed = query(normalize(_unit_images(32, seed=4)))
    return AttackTarget((1, 8, 8), shape, normalize, randomized, 0, query, client, proxy=proxy, architecture=architecture,
                        server=server, observed=observed, num_classes=10)


# ----------------------------------------------------------------------------- metrics


def test_identical_images_have_zero_mse_and_unit_ssim():
    images = _unit_images()
    metrics = reconstruction_metrics(images.clone(), images)
    assert metrics["mse"] == 0.0
    assert metrics["ssim"] == pytest.approx(1.0, abs=1e-6)


def test_known_offset_gives_known_mse_and_psnr():
    target = _unit_images() * 0.8  # room for a +0.1 shift inside [0, 1]
    metrics = reconstruction_metrics(target + 0.1, target)
    assert metrics["mse"] == pytest.approx(0.01, rel=1e-4)
    assert metrics["psnr"] == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)
    assert metrics["ssim"] < 1.0



def test_one_perfect_image_counts_at_the_psnr_cap_so_the_mean_stays_finite_and_recorded():
    """Per-image PSNR is infinite for a perfect image: its mean was inf, which attack.json wrote as null."""
    from splitpriv.attacks.metrics import MAX_PSNR
    from splitpriv.store import finite_or_none

    target = _unit_images() * 0.8
    shifted = target + 0.1
    shifted[0] = target[0]
    psnr = reconstruction_metrics(shifted, target)["psnr"]
    assert psnr == pytest.approx((MAX_PSNR + 20.0 * (len(target) - 1)) / len(target), rel=1e-4)
    assert finite_or_none(psnr) == psnr

def test_metrics_refuse_images_outside_the_unit_range():
    normalised = (_unit_images() - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reconstruction_metrics(normalised, _unit_images())


def test_worst_case_is_the_strongest_attack_on_each_metric():
    per_attack = {"a": {"mse": 0.02, "psnr": 17.0, "ssim": 0.9, "classifier_accuracy": 0.5},
                  "b": {"mse": 0.01, "psnr": 20.0, "ssim": 0.8, "classifier_accuracy": 0.7},
                  "c": {"mse": 0.05, "psnr": 13.0, "ssim": 0.95, "classifier_accuracy": None}}
    worst = worst_case(per_attack)
    assert (worst["mse"], worst["mse_attack"]) == (min(a["mse"] for a in per_attack.values()), "b")
    assert (worst["ssim"], worst["ssim_attack"]) == (max(a["ssim"] for a in per_attack.values()), "c")
    assert worst["psnr_attack"] == "b" and worst["classifier_accuracy_attack"] == "b"


# ----------------------------------------------------------------------------- the interface


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_uses_only_its_grants_and_returns_unit_images(name):
    client = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    full = _target(client)
    attack = build_attack({"name": name, **FAST.get(name, {})})
    private = _unit_images(6, seed=2)
    messages = full.query(full.normalize(private))

    withheld = full.granted(attack.grants)
    for grant, attribute in (("query", "query"), ("weights", "client"), ("proxy", "proxy"), ("architecture", "architecture"),
                             ("server", "server")):
        assert (getattr(withheld, attribute) is None) == (grant not in attack.grants)
    assert withheld.observed is not None  # every attacker at the server sees the messages
    result = evaluate(attack, full, messages, private)
    assert result.reconstructions.shape == private.shape
    assert 0 <= result.reconstructions.min() and result.reconstructions.max() <= 1
    assert set(result.metrics) == {"mse", "psnr", "ssim", "mse_p10", "mse_p50", "mse_p90", "recognisable_share"}
    assert result.record["grants"] == sorted(attack.grants)


def test_optimization_inversion_inverts_an_invertible_client():
    attack = build_attack({"name": "optimization_inversion", "tv_weight": 0.0, "max_steps": 300})
    target = _target(nn.Identity())
    private = _unit_images(8, seed=3)
    result = evaluate(attack, target, target.query(target.normalize(private)), private)
    assert result.metrics["mse"] < 1e-3


def test_noise_aware_equals_decoder_inversion_against_a_deterministic_client():
    client = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
    target = _target(client)
    private = _unit_images(6, seed=2)
    messages = target.query(target.normalize(private))
    plain = evaluate(build_attack({"name": "decoder_inversion", **FAST["decoder_inversion"]}), target, messages, private)
    aware = evaluate(build_attack({"name": "noise_aware", **FAST["noise_aware"]}), target, messages, private)
    torch.testing.assert_close(aware.reconstructions, plain.reconstructions)


def test_unknown_attack_parameters_are_refused():
    with pytest.raises(ValueError, match="capacity"):
        build_attack({"name": "decoder_inversion", "capacity": "huge"})
    with pytest.raises(ValueError, match="parameters of decoder_inversion"):
        build_attack({"name": "decoder_inversion", "epochs": 3})
    for batch_size in (0, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            build_attack({"name": "decoder_inversion", "batch_size": batch_size})
    build_attack({"name": "decoder_inversion", "batch_size": None})  # auto


def test_decoders_fit_with_enough_steps_per_epoch_on_a_small_proxy():
    """A fixed batch of 64 gave 4 steps per epoch on the digits proxy and under-fitted decoders."""
    from splitpriv.attacks.base import EarlyStopping, fit_with_early_stopping

    torch.manual_seed(0)
    for n, batch_size in ((259, 32), (100, 16), (9000, 64)):
        model = torch.nn.Linear(4, 1)
        inputs, targets = torch.randn(n, 4), torch.randn(n, 1)
        summary = fit_with_early_stopping(model, torch.nn.functional.mse_loss, inputs, targets, inputs[:8], targets[:8],
                                          EarlyStopping(max_epochs=1), torch.Generator().manual_seed(0))
        assert summary["batch_size"] == batch_size  # >= 8 steps per epoch, within [16, 64]


def test_early_stopping_says_whether_patience_or_the_epoch_cap_ended_the_fit():
    from splitpriv.attacks.base import EarlyStopping, fit_with_early_stopping

    torch.manual_seed(0)
    inputs = torch.randn(64, 4)
    targets = inputs @ torch.randn(4, 1)
    fit = lambda stopping: fit_with_early_stopping(torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, inputs, targets,
                                                   inputs[:16], targets[:16], stopping, torch.Generator().manual_seed(0))
    capped = fit(EarlyStopping(max_epochs=3, patience=10))  # still improving after 3 epochs
    assert (capped["epochs"], capped["stopped"]) == (3, "max_epochs")
    noise = fit_with_early_stopping(torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, inputs, torch.randn(64, 1),
                                    inputs[:16], torch.randn(16, 1), EarlyStopping(max_epochs=500, patience=2),
                                    torch.Generator().manual_seed(0))  # nothing to learn: patience ends it
    assert noise["stopped"] == "patience" and noise["epochs"] < 500


def test_lr_patience_halves_the_rate_on_plateaus_and_a_constant_rate_stays():
    from splitpriv.attacks.base import EarlyStopping, fit_with_early_stopping

    torch.manual_seed(0)
    inputs = torch.randn(64, 4)
    fit = lambda lr_patience: fit_with_early_stopping(  # noqa: E731 -- nothing to learn: the held-out loss plateaus
        torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, inputs, torch.randn(64, 1), inputs[:16], torch.randn(16, 1),
        EarlyStopping(max_epochs=500, patience=12, lr=1e-2, lr_patience=lr_patience), torch.Generator().manual_seed(0))
    assert fit(None)["final_lr"] == 1e-2
    halved = fit(2)["final_lr"]
    assert halved <= 1e-2 / 4 and math.log2(1e-2 / halved) == pytest.approx(round(math.log2(1e-2 / halved)))


def test_refinements_go_back_to_the_best_weights_at_half_the_rate_and_never_lose_ground():
    from splitpriv.attacks.base import EarlyStopping, fit_with_early_stopping

    class Restores(torch.nn.Linear):
        def __init__(self):
            torch.manual_seed(0)
            super().__init__(4, 1)
            self.restored = 0

        def load_state_dict(self, *args, **kwargs):
            self.restored += 1
            return super().load_state_dict(*args, **kwargs)

    inputs = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    targets = inputs @ torch.ones(4, 1) + 0.5 * torch.randn(64, 1, generator=torch.Generator().manual_seed(2))
    fits = {}
    for refinements in (0, 3):
        model = Restores()
        fits[refinements] = fit_with_early_stopping(model, torch.nn.functional.mse_loss, inputs, targets, inputs[:16], targets[:16],
                                                    EarlyStopping(max_epochs=2000, patience=3, lr=0.3, refinements=refinements),
                                                    torch.Generator().manual_seed(0))
        # the best weights are loaded at each refinement and once at the end
        assert (fits[refinements]["refinements"], model.restored) == (refinements, refinements + 1)
        assert fits[refinements]["final_lr"] == 0.3 / 2 ** refinements and fits[refinements]["stopped"] == "patience"
    # the first plateau is the same fit; the refined one continues from its best weights
    assert fits[3]["holdout_loss"] < fits[0]["holdout_loss"] and fits[3]["epochs"] > fits[0]["epochs"]
    with pytest.raises(ValueError, match="refinements"):
        build_attack({"name": "decoder_inversion", "refinements": -1})


# ----------------------------------------------------------------------------- run_attacks


def test_run_attacks_writes_every_attack_and_the_worst_case(trained, tmp_path):
    specs = [{"name": "decoder_inversion", **FAST["decoder_inversion"]}, {"name": "optimization_inversion", **FAST["optimization_inversion"]}]
    record = run_attacks(trained, AttackSettings(attacks=specs, samples=16, classifier_max_epochs=2), out_dir=tmp_path, progress=None)
    assert json.loads((tmp_path / "attack.json").read_text())["worst_case"] == record["worst_case"]
    assert (tmp_path / "reconstructions.png").stat().st_size > 0
    per_attack = record["attacks"]
    assert set(per_attack) == {"decoder_inversion/small", "optimization_inversion"}
    worst = record["worst_case"]
    assert worst["white_box"]["mse"] == min(a["mse"] for a in per_attack.values())  # admits every attack
    assert worst["white_box"]["ssim"] == max(a["ssim"] for a in per_attack.values())
    assert worst["black_box"]["mse"] == per_attack["decoder_inversion/small"]["mse"]  # no weights: no optimisation
    assert worst["passive"] is None  # neither attack is within a passive server's means
    assert record["threat_models"]["black_box"]["attacks"] == ["decoder_inversion/small"]
    assert record["proxy"]["images"] == len(trained.data.proxy)
    assert -0.1 <= record["dcor_sq_bias_corrected"] <= 1
    assert record["private_test_samples"] == 16
    assert record["observation"]["grants"]["optimization_inversion"] == ["weights"]


def test_a_run_trained_for_a_gpu_is_attacked_on_this_machines_device_and_left_where_it_was(trained, tmp_path):
    import dataclasses

    gpu_config = dataclasses.replace(trained.config, training=dataclasses.replace(trained.config.training, accelerator="gpu"))
    gpu_trained = dataclasses.replace(trained, config=gpu_config)  # as if trained on a GPU machine
    flags = [p.requires_grad for p in trained.module.parameters()]
    specs = [{"name": "decoder_inversion", **FAST["decoder_inversion"]}]
    record = run_attacks(gpu_trained, AttackSettings(attacks=specs, samples=8, classifier_max_epochs=1), out_dir=tmp_path,
                         progress=None)
    assert record["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert {p.device.type for p in trained.module.parameters()} == {"cpu"}
    assert [p.requires_grad for p in trained.module.parameters()] == flags
    if not torch.cuda.is_available():
        from splitpriv.errors import ConfigError

        with pytest.raises(ConfigError, match="accelerator.*no GPU"):
            run_attacks(trained, AttackSettings(attacks=specs, samples=8, accelerator="gpu"), out_dir=tmp_path, progress=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is tested above)")
def test_every_attack_runs_on_the_gpu_and_leaks_like_on_the_cpu(trained, tmp_path):
    specs = [{"name": name, **FAST[name]} for name in FAST]
    leakage = {}
    for accelerator in ("gpu", "cpu"):
        record = run_attacks(trained, AttackSettings(attacks=specs, samples=32, classifier_max_epochs=2, accelerator=accelerator),
                             out_dir=tmp_path / accelerator, progress=None)
        assert record["device"].startswith("cuda" if accelerator == "gpu" else "cpu")
        leakage[accelerator] = {label: attack["mse"] for label, attack in record["attacks"].items()}
    assert {p.device.type for p in trained.module.parameters()} == {"cpu"}
    for label, mse in leakage["cpu"].items():  # other kernels, other rounding: close, not equal
        assert leakage["gpu"][label] == pytest.approx(mse, rel=0.5), label


def test_default_set_adds_the_noise_aware_attacker_for_randomized_defenses(noisy, trained, tmp_path):
    from splitpriv.attacks import default_attack_specs
    from splitpriv.attack_suite import deployed_target, load_proxy

    for run, expected in ((noisy, True), (trained, False)):
        proxy, _, _ = load_proxy(run.data, run.config.data, None, None, 0)
        target = deployed_target(run, proxy, 0)
        assert target.randomized is expected
        names = [spec["name"] for spec in default_attack_specs(target.randomized)]
        assert ("noise_aware" in names) is expected
    # messages of a randomised defense differ query by query
    x = noisy.data.dataset("private_test").tensors[0][:4]
    assert not torch.equal(noisy.send(x), noisy.send(x))


def test_the_fisher_bound_is_in_pixel_units_through_the_clipping_and_only_for_noisy_clients(noisy, trained):
    """1 / dFIL per image = s^2 d / ||J||_F^2 of pixels -> normalised inputs -> client -> clip, checked
    against the exact Jacobian of that chain; a deterministic client has no bound."""
    from splitpriv.attack_suite import deployed_target, fisher_leakage_bound, load_proxy

    proxy, _, _ = load_proxy(trained.data, trained.config.data, None, None, 0)
    assert fisher_leakage_bound(deployed_target(trained, proxy, 0), proxy.images[:4]) is None
    target = deployed_target(noisy, proxy, 0)
    images = noisy.data.private_test.images[:2].float() / 255
    bound = fisher_leakage_bound(target, images, probes=300)
    exact = [float(torch.autograd.functional.jacobian(lambda x: target.client(target.normalize(x[None]))[0], image)
                   .square().sum()) for image in images]
    expected = sum(target.noise.scale ** 2 * image.numel() / norm for norm, image in zip(exact, images)) / len(images)
    assert bound["unbiased_mse_bound_mean"] == pytest.approx(expected, rel=0.15)
    assert bound["noise"] == "laplace" and bound["images"] == 2


# ----------------------------------------------------------------------------- the command


def test_attack_command_writes_attack_json(trained, capsys):
    code = main(["attack", "--run", str(trained.path), "--samples", "8", "--classifier-max-epochs", "2",
                 "--attacks", "decoder_inversion:capacity=small,max_epochs=2", "optimization_inversion:max_steps=10"])
    assert code == 0
    record = json.loads((trained.path / "attack.json").read_text())
    assert set(record["attacks"]) == {"decoder_inversion/small", "optimization_inversion"}
    assert "worst case" in capsys.readouterr().out


def test_attack_command_logs_an_offline_wandb_run(trained, monkeypatch, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    folder = shutil.copytree(trained.path, tmp_path / "run")  # with the tracking mode left to the environment
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["wandb"]["mode"] = None
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["attack", "--run", str(folder), "--samples", "8", "--classifier-max-epochs", "2",
                 "--attacks", "decoder_inversion:capacity=small,max_epochs=2", "optimization_inversion:max_steps=10"]) == 0
    record = json.loads((folder / "attack.json").read_text())
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json",
                          str(folder / "attack-wandb" / "wandb" / "latest-run")],
                         capture_output=True, text=True, check=True).stdout
    logged = json.loads(out)
    assert logged["summary"]["worst_mse_white_box"] == pytest.approx(record["worst_case"]["white_box"]["mse"], rel=1e-6)
    assert logged["summary"]["dcor_sq_bias_corrected"] == pytest.approx(record["dcor_sq_bias_corrected"], rel=1e-6)
    config = {key: value["value"] if isinstance(value, dict) and "value" in value else value
              for key, value in logged["config"].items()}
    assert (config["cut_name"], config["defense"]) == (record["cut_name"], "none")


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "unknown_attack", "overlapping_proxy"])
def test_attack_command_bad_inputs_exit_2(case, trained, tmp_path, capsys):
    run_arg = str(trained.path)
    extra: list[str] = []
    if case == "missing":
        run_arg = str(tmp_path / "nothing")
    elif case == "no_checkpoint":
        (tmp_path / "config.yaml").write_text((trained.path / "config.yaml").read_text())
        run_arg = str(tmp_path)
    elif case == "unknown_attack":
        extra = ["--attacks", "mind_reading"]
    else:  # the private data set's own training split holds the private training images
        extra = ["--proxy", "digits"]
    assert main(["attack", "--run", run_arg, *extra]) == 2
    message = capsys.readouterr().err
    expected = {"missing": "no run at", "no_checkpoint": "no checkpoint", "unknown_attack": "mind_reading",
                "overlapping_proxy": "disjoint"}[case]
    assert expected in message and "Traceback" not in message


# ----------------------------------------------------------------------------- leakage per image and per threat model


def test_leakage_per_image_shows_a_defense_that_protects_most_images_but_leaks_some():
    originals = _unit_images(20, seed=5)
    reconstructions = torch.full_like(originals, 0.5)  # most images: nothing recovered
    reconstructions[:5] = originals[:5]  # a quarter leaked exactly
    metrics = reconstruction_metrics(reconstructions, originals)
    assert metrics["recognisable_share"] == pytest.approx(0.25)
    assert metrics["mse_p10"] == pytest.approx(0.0, abs=1e-7)  # the best-reconstructed tenth
    assert metrics["mse_p90"] > 0.05 and metrics["mse"] > metrics["mse_p10"]


def test_threat_models_nest_so_that_a_stronger_adversary_runs_every_weaker_attack():
    from splitpriv.attacks.threat_models import THREAT_MODELS

    passive, black, white = (THREAT_MODELS[name] for name in ("passive", "black_box", "white_box"))
    assert passive.grants < black.grants < white.grants
    for name, cls in ATTACKS.items():
        assert any(model.admits(cls.grants) for model in THREAT_MODELS.values()), name
    assert [name for name, m in THREAT_MODELS.items() if m.admits(ATTACKS["surrogate_client"].grants)] == \
        ["passive", "black_box", "white_box"]
    assert [name for name, m in THREAT_MODELS.items() if m.admits(ATTACKS["optimization_inversion"].grants)] == ["white_box"]


def test_the_passive_surrogate_client_attack_recovers_more_than_the_attackers_prior(trained):
    """Without queries or weights: a surrogate client trained on proxy data through the server and matched
    to the observed messages, then a decoder. It must beat guessing the proxy's mean image by far."""
    from splitpriv.attack_suite import deployed_target, load_proxy

    run = trained.recut("pool")
    proxy, _, _ = load_proxy(run.data, run.config.data, None, None, 0)
    target = deployed_target(run, proxy, 0)
    originals = run.data.private_test.images[:128].float() / 255
    run.module.eval().requires_grad_(False)
    result = evaluate(build_attack({"name": "surrogate_client", "capacity": "small"}), target,
                      target.query(run.data.normalize(originals)), originals)
    prior = float(((originals - proxy.images.mean(0, keepdim=True)) ** 2).mean())
    assert result.metrics["mse"] < 0.5 * prior
