"""What the DP defenses guarantee: noise no attacker can replay, every release of a sample accounted
(across a resume too), per-sample gradients that depend on their own sample, and a white-box
attacker that uses the noise's likelihood."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splitpriv.attacks import AttackTarget, build_attack, evaluate
from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.attack_suite import deployed_target, load_proxy
from splitpriv.defenses import DPNoise
from splitpriv.defenses.accounting import composed_epsilon, sampled_composed_epsilon
from splitpriv.defenses.dp_noise import analytic_gaussian_sigma
from splitpriv.config import RunConfig, from_dict
from splitpriv.experiment import train
from splitpriv.runs import build_module
from splitpriv.runs import load_run

QUICK = {"epochs": 2, "progress_bar": False}
TINY_ATTACKS = AttackSettings(attacks=[{"name": "decoder_inversion", "capacity": "small", "max_epochs": 2, "patience": 1},
                                       {"name": "optimization_inversion", "max_steps": 20}],
                              samples=16, dcor_samples=16, classifier_max_epochs=1)


def run_config(out, name, defenses, cut="relu3", **training) -> RunConfig:
    return from_dict(RunConfig, {"out": str(out), "name": name, "model": {"cut_layer": cut},
                                 "training": {**QUICK, **training}, "defenses": defenses, "wandb": {"mode": "disabled"}})


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    return train(run_config(tmp_path_factory.mktemp("dp"), "laplace", [{"name": "dp_noise", "epsilon": 8.0}]))


# ----------------------------------------------------------------------------- randomness


def test_reseeding_the_global_rng_does_not_replay_the_defense_noise(noisy_run):
    """The attack suite's seed is public (attack.json); the noise must not follow it."""
    x = noisy_run.data.dataset("private_test").tensors[0][:32]
    torch.manual_seed(0)
    observed = noisy_run.send(x)
    torch.manual_seed(0)
    replayed = noisy_run.send(x)
    scale = noisy_run.defenses[0].noise_scale
    assert (observed - replayed).abs().mean() > 0.5 * scale  # two independent Laplace(b) draws differ by ~1.5 b


def test_the_attack_suite_records_no_noise_seed_and_its_observation_cannot_be_replayed(noisy_run, tmp_path):
    record = run_attacks(noisy_run, TINY_ATTACKS, out_dir=tmp_path, progress=None)
    assert "noise_seed" not in json.dumps(record)
    proxy, _, _ = load_proxy(noisy_run.data, noisy_run.config.data, None, None, 0)
    target = deployed_target(noisy_run, proxy, record["settings"]["seed"])
    x = noisy_run.data.dataset("private_test").tensors[0][:16]
    torch.manual_seed(record["settings"]["seed"])
    first = target.query(x)
    torch.manual_seed(record["settings"]["seed"])
    assert not torch.allclose(first, target.query(x))
    # what the white-box attacker differentiates through is the deterministic part: no draw at all
    torch.testing.assert_close(target.client(x), target.client(x))


def test_unseeded_defenses_draw_from_the_operating_systems_entropy():
    first, second = DPNoise(clip=1.0), DPNoise(clip=1.0)
    assert not torch.equal(first.generator.get_state(), second.generator.get_state())
    message = torch.zeros(4, 16)
    assert not torch.equal(first.transform(message), second.transform(message))


def test_a_copied_defense_draws_its_own_noise():
    import copy
    import pickle

    original = DPNoise(clip=1.0)
    message = torch.zeros(4, 16)
    for clone in (copy.deepcopy(original), pickle.loads(pickle.dumps(original))):
        assert not torch.equal(clone.transform(message), original.transform(message))


def test_a_fixed_noise_seed_reproduces_a_run_and_its_absence_does_not(tmp_path):
    def client_weights(name, seed):
        spec = {"name": "dp_noise", "epsilon": 8.0, **({"noise_seed": seed} if seed is not None else {})}
        run = train(run_config(tmp_path, name, [spec], epochs=1))
        return torch.cat([p.detach().flatten() for p in run.client.parameters()])

    assert torch.equal(client_weights("seeded-a", 3), client_weights("seeded-b", 3))
    assert not torch.equal(client_weights("entropy-a", None), client_weights("entropy-b", None))


# ----------------------------------------------------------------------------- accounting


def _gaussian_delta(epsilon: float, mu: float) -> float:
    """delta(epsilon) of a Gaussian mechanism with sensitivity / sigma = mu (Balle & Wang 2018, Thm 8)."""
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    return phi(-epsilon / mu + mu / 2) - math.exp(epsilon) * phi(-epsilon / mu - mu / 2)


@pytest.mark.parametrize("noise_multiplier, releases", [(0.8, 1), (0.8, 16), (2.0, 100)])
def test_composed_gaussian_releases_match_the_closed_form(noise_multiplier, releases):
    """k releases of a Gaussian mechanism with sigma / Delta = z are one with z / sqrt(k): exact epsilon by bisection."""
    delta, mu = 1e-5, math.sqrt(releases) / noise_multiplier
    low, high = 0.0, 100.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if _gaussian_delta(middle, mu) > delta else (low, middle)
    accounted = composed_epsilon("gaussian", noise_multiplier, releases, delta)
    assert high <= accounted <= 1.01 * high + 0.01  # an upper bound (pessimistic grid), and a tight one


def _laplace_privacy_losses(shifts: list[float], draws: int, seed: int) -> np.ndarray:
    """Samples of the privacy loss of Laplace(0, 1) noise per coordinate against a shift per coordinate."""
    rng = np.random.default_rng(seed)
    loss = np.zeros(draws)
    for shift in shifts:
        x = rng.laplace(0, 1, draws)
        loss += np.abs(x - shift) - np.abs(x)
    return loss


def _hockey_stick(losses: np.ndarray, epsilon: float) -> float:
    return float(np.mean(np.maximum(0, 1 - np.exp(epsilon - losses))))


def test_composed_laplace_releases_are_a_tight_upper_bound():
    """4 releases at epsilon 1 per message, delta 1e-2 (resolvable by 2e6 Monte-Carlo draws)."""
    delta, releases = 1e-2, 4
    accounted = composed_epsilon("laplace", 1.0, releases, delta)
    assert composed_epsilon("laplace", 1.0, 1, 1e-9) == pytest.approx(1.0, abs=0.02)  # one release: epsilon
    assert accounted < releases * 1.0  # composition beats k * epsilon
    losses = _laplace_privacy_losses([1.0] * releases, 2_000_000, seed=0)
    assert _hockey_stick(losses, accounted) <= delta * 1.03
    assert _hockey_stick(losses, 0.9 * accounted) > delta


def test_an_l1_shift_spread_over_coordinates_leaks_less_than_one_concentrated():
    """Why the one-dimensional Laplace accountant covers a message of any dimension."""
    concentrated = _laplace_privacy_losses([1.0], 1_000_000, seed=1)
    for split in ([0.5, 0.5], [0.8, 0.2], [0.25] * 4):
        spread = _laplace_privacy_losses(split, 1_000_000, seed=2)
        for epsilon in (0.2, 0.5, 0.8):
            assert _hockey_stick(spread, epsilon) <= _hockey_stick(concentrated, epsilon) + 2e-3


def test_dp_noise_reports_the_privacy_of_a_person_over_every_release(noisy_run):
    metrics, epsilon = noisy_run.metrics, 8.0
    releases = noisy_run.config.training.epochs + 1  # one message per epoch, and one at inference
    assert metrics["dp_noise/releases_per_sample"] == releases
    assert metrics["dp_noise/epsilon_per_message"] == epsilon
    assert metrics["dp_noise/epsilon_per_sample_pure"] == releases * epsilon
    assert metrics["dp_noise/epsilon_per_sample"] == pytest.approx(composed_epsilon("laplace", 1 / epsilon, releases, 1e-5))
    assert metrics["dp_noise/delta_per_sample"] == 1e-5


def test_a_resumed_run_continues_its_accounting(tmp_path):
    spec = [{"name": "dp_noise", "mechanism": "gaussian", "epsilon": 4.0, "clip": 1.0}]
    first = train(run_config(tmp_path, "resumed", spec, epochs=2))
    assert first.metrics["dp_noise/releases_per_sample"] == 3
    finished = train(run_config(tmp_path, "resumed", spec, epochs=3), resume=True)  # a finished run, trained on
    assert finished.metrics["dp_noise/releases_per_sample"] == 4
    (tmp_path / "resumed" / "metrics.json").unlink()  # as if killed after the third epoch's checkpoint
    interrupted = train(run_config(tmp_path, "resumed", spec, epochs=4), resume=True)
    # 3 passes restored + the interrupted epoch's messages (counted, they were sent) + epoch 4 + inference
    assert interrupted.metrics["dp_noise/releases_per_sample"] == 6
    sigma, sensitivity = analytic_gaussian_sigma(4.0, 1e-5, 2.0), 2.0
    assert interrupted.metrics["dp_noise/epsilon_per_sample"] == pytest.approx(
        composed_epsilon("gaussian", sigma / sensitivity, 6, 1e-5))
    assert load_run(tmp_path / "resumed").defenses[0].releases_per_sample == 6



def _bisect_epsilon(delta_of, delta: float) -> float:
    low, high = 0.0, 200.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_of(middle) > delta else (low, middle)
    return high


@pytest.mark.parametrize("noise_multiplier", [0.6, 1.5])
def test_poisson_sampled_releases_are_the_binomial_mixture_of_compositions(noise_multiplier):
    """A sample drawn with q = 1/16 at each of 160 steps (10 epochs), then released once more:
    delta(epsilon) = sum_k P(K = k) delta_{k+1}(epsilon), K ~ Binomial(160, 1/16), in closed form
    for the Gaussian. Counting 10 + 1 releases instead (what was reported) is below it."""
    steps, q, delta = 160, 1 / 16, 1e-5
    pmf = [math.comb(steps, k) * q ** k * (1 - q) ** (steps - k) for k in range(steps + 1)]
    exact = _bisect_epsilon(lambda e: sum(p * _gaussian_delta(e, math.sqrt(k + 1) / noise_multiplier)
                                          for k, p in enumerate(pmf) if p > 1e-300), delta)
    accounted = sampled_composed_epsilon("gaussian", noise_multiplier, steps, q, 1, delta)
    assert exact <= accounted <= 1.01 * exact + 0.01
    assert accounted > 1.1 * composed_epsilon("gaussian", noise_multiplier, 11, delta)


@pytest.mark.parametrize("mechanism, noise_multiplier", [("gaussian", 1.0), ("laplace", 0.5), ("laplace", 1 / 32)])
def test_sampled_accounting_without_sampling_is_the_plain_composition(mechanism, noise_multiplier):
    """q = 1: every sample at every step, K = steps exactly."""
    fixed = composed_epsilon(mechanism, noise_multiplier, 6, 1e-5)
    assert sampled_composed_epsilon(mechanism, noise_multiplier, 5, 1.0, 1, 1e-5) == pytest.approx(fixed, rel=1e-3)


def test_laplace_poisson_accounting_lies_between_the_expected_count_and_every_step():
    """Laplace at epsilon 8 per message (z = 1/8), 10 epochs of 16 steps, one release after."""
    accounted = sampled_composed_epsilon("laplace", 1 / 8, 160, 1 / 16, 1, 1e-5)
    assert composed_epsilon("laplace", 1 / 8, 11, 1e-5) < accounted < 8 * 161


@pytest.mark.parametrize("dp_sgd_first", [False, True])
def test_dp_noise_next_to_dp_sgd_accounts_the_poisson_sampled_releases(tmp_path, dp_sgd_first):
    """dp_sgd's loader draws each sample at each step with q = 1 / steps per epoch: a sample's
    messages in training are Binomial, not one per epoch (in either order of the two)."""
    spec = [{"name": "dp_noise", "mechanism": "gaussian", "epsilon": 4.0, "clip": 1.0},
            {"name": "dp_sgd", "noise_multiplier": 1.0}]
    run = train(run_config(tmp_path, "both", spec[::-1] if dp_sgd_first else spec, epochs=2))
    metrics = run.metrics
    noise = next(defense for defense in load_run(tmp_path / "both").defenses if defense.name == "dp_noise")
    q = metrics["dp_noise/sample_rate"]
    steps_per_epoch = round(1 / q)
    assert noise.training_steps == 2 * steps_per_epoch and noise.sample_rate == q  # restored from the checkpoint
    multiplier = analytic_gaussian_sigma(4.0, 1e-5, 2.0) / 2.0
    expected = sampled_composed_epsilon("gaussian", multiplier, 2 * steps_per_epoch, q, 1, 1e-5)
    assert metrics["dp_noise/epsilon_per_sample"] == pytest.approx(expected)
    assert expected > composed_epsilon("gaussian", multiplier, 3, 1e-5)  # 2 epochs + inference, as if unsampled
    assert noise.epsilon_per_sample() == pytest.approx(expected)


def test_a_dp_sgd_run_with_a_target_is_not_resumed_for_more_epochs_than_its_noise_was_chosen_for(tmp_path):
    """sigma comes from the checkpoint, chosen to spend target_epsilon over the first schedule."""
    from splitpriv.errors import ConfigError

    spec = [{"name": "dp_sgd", "target_epsilon": 8.0}]
    first = train(run_config(tmp_path, "target", spec, epochs=1))
    assert first.metrics["dp_sgd/epsilon_per_sample"] <= 8.0
    (tmp_path / "target" / "metrics.json").unlink()  # as if killed after its one epoch's checkpoint
    with pytest.raises(ConfigError, match="training.epochs.*target_epsilon 8"):
        train(run_config(tmp_path, "target", spec, epochs=3), resume=True)
    resumed = train(run_config(tmp_path, "target", spec, epochs=1), resume=True)  # the same schedule resumes
    assert resumed.metrics["dp_sgd/epsilon_per_sample"] <= 8.0

# ----------------------------------------------------------------------------- the white-box attacker


@pytest.mark.parametrize("relative_noise", [0.2, 0.5])
def test_white_box_inversion_of_noisy_messages_uses_the_noise_likelihood(relative_noise):
    """An attacker holding the weights fits the noise-free client to the observed message under the
    Laplace likelihood. Differentiating through fresh noise and normalising by the noisy message
    (what it did before) recovered 25-40 % worse at every noise level tried (0.05 to 1)."""
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    normalize = lambda unit: (unit - 0.5) / 0.25  # noqa: E731
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).requires_grad_(False)
    clean = conv(normalize(images))
    clip = float(clean.flatten(1).abs().sum(1).max())  # nothing is clipped
    b = relative_noise * float(clean.abs().mean())
    defense = DPNoise(mechanism="laplace", epsilon=2 * clip / b, clip=clip, noise_seed=1)  # b = Delta_1 / epsilon
    messages = defense.transform(clean)
    target = AttackTarget((1, 8, 8), tuple(messages.shape[1:]), normalize, True, 0, None,
                          lambda x: defense.noise_free(conv(x)), defense.noise_model(), None)
    fresh_noise = dataclasses.replace(target, client=lambda x: defense.transform(conv(x)), noise=None)
    attack = {"name": "optimization_inversion", "tv_weight": 0.0}
    likelihood = evaluate(build_attack(attack), target, messages, images).metrics["mse"]
    replaying = evaluate(build_attack(attack), fresh_noise, messages, images).metrics["mse"]
    assert likelihood < 0.85 * replaying


# ----------------------------------------------------------------------------- dp_sgd


def _client_per_sample_gradients(module, x, y) -> list[torch.Tensor]:
    """The client's per-sample gradients as the split step computes them (server in training mode)."""
    message = module.client(x)
    sent = message.detach().requires_grad_(True)
    F.cross_entropy(module.server(sent), y).backward()
    (message * sent.grad).sum().backward()
    grads = [p.grad_sample.detach().clone() for p in module.client.parameters()]
    for p in module.client.parameters():
        p.grad_sample, p.grad = None, None
    return grads


def test_dp_sgd_per_sample_gradients_depend_on_their_own_sample_through_a_batchnorm_server():
    """resnet18 cut after its first block: BatchNorm after the cut made sample 0's clipped gradient
    change by 70 % when only sample 3 changed, so the per-sample bound (and epsilon) did not hold."""
    cfg = from_dict(RunConfig, {"model": {"name": "resnet18", "cut_layer": 1}, "defenses": [{"name": "dp_sgd"}]})
    module = build_module(cfg, 10, 3, 32).train()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    defense = module.defenses[0]
    defense.sample_rate, defense.expected_batch_size = 0.1, 6
    defense.configure_client(module, torch.optim.SGD(module.client.parameters(), lr=0.1))
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32, generator=generator), torch.randint(0, 10, (6,), generator=generator)
    before = _client_per_sample_gradients(module, x, y)
    x[3] = torch.randn(3, 32, 32, generator=generator)
    after = _client_per_sample_gradients(module, x, y)
    for first, second in zip(before, after):
        torch.testing.assert_close(first[0], second[0], rtol=1e-4, atol=1e-6)
        assert not torch.allclose(first[3], second[3])


@pytest.fixture
def cifar_shaped_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cifar_shaped.npz"
    np.savez(path, x=rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8), y=np.arange(80) % 10)
    return path


def test_resnet18_trains_with_dp_sgd(tmp_path, cifar_shaped_npz):
    """It crashed at its first forward: in-place ReLU and residual add against Opacus' hooks."""
    cfg = from_dict(RunConfig, {"out": str(tmp_path), "name": "resnet-dp", "model": {"name": "resnet18", "cut_layer": 1},
                                "data": {"dataset": "npz", "path": str(cifar_shaped_npz)},
                                "training": {"epochs": 1, "batch_size": 16, "progress_bar": False},
                                "defenses": [{"name": "dp_sgd", "noise_multiplier": 1.0}], "wandb": {"mode": "disabled"}})
    run = train(cfg)
    assert run.metrics["dp_sgd/steps"] > 0 and run.metrics["dp_sgd/epsilon_per_sample"] > 0


def test_a_freshly_trained_dp_sgd_run_is_attacked_in_the_same_process(tmp_path):
    """Opacus' hooks stayed on the client after training and the first attack raised IndexError."""
    run = train(run_config(tmp_path, "dp-sgd", [{"name": "dp_sgd", "noise_multiplier": 1.0}], cut="pool", epochs=1))
    assert not any(hasattr(p, "grad_sample") for p in run.client.parameters())
    record = run_attacks(run, TINY_ATTACKS, out_dir=tmp_path / "attack", progress=None)
    assert record["worst_case"]["white_box"]["mse"] > 0


def test_the_cached_accounting_equals_a_fresh_accountant_at_every_epoch_of_two_interleaved_trainings(tmp_path):
    """The per-process cache of DP-SGD's epsilon and sigma is a shortcut in a privacy path: the epsilon each
    epoch logs, and the one a run reports, must equal Opacus' plain computation over that run's own history,
    also when two runs of different noise share the process (no value from one served to the other)."""
    import csv

    from opacus.accountants import create_accountant

    from splitpriv.config import RunConfig, from_dict
    from splitpriv.experiment import train

    runs = [train(from_dict(RunConfig, {"out": str(tmp_path), "name": f"dp{i}", "defenses": [spec],
                                        "training": {"epochs": 4, "progress_bar": False}, "wandb": {"mode": "disabled"}}))
            for i, spec in enumerate([{"name": "dp_sgd", "target_epsilon": 8.0}, {"name": "dp_sgd", "noise_multiplier": 1.3},
                                      {"name": "dp_sgd", "target_epsilon": 8.0}])]
    for run in runs:
        sigma, steps = run.metrics["dp_sgd/noise_multiplier"], int(run.metrics["dp_sgd/steps"])
        sample_rate = 1 / math.ceil(len(run.data.private_train) / 64)

        def plain(step_count: int) -> float:
            accountant = create_accountant("rdp")
            accountant.history = [(sigma, sample_rate, step_count)]
            return accountant.get_epsilon(delta=1e-5)

        assert run.metrics["dp_sgd/epsilon_per_sample"] == pytest.approx(plain(steps), rel=1e-12)
        with (run.path / "logs" / "metrics.csv").open() as handle:
            logged = [float(row["dp_sgd/epsilon_per_sample"]) for row in csv.DictReader(handle)
                      if row.get("dp_sgd/epsilon_per_sample")]
        assert len(logged) >= 4
        per_epoch = steps // 4
        # the logger stores float32: equal to its precision
        assert logged[:4] == pytest.approx([plain(per_epoch * epoch) for epoch in range(1, 5)], rel=1e-6)
