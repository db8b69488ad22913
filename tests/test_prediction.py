"""splitpriv predict: rehearsals on proxy data only, the signals, the agreement with a measured sweep, the planner."""
from __future__ import annotations

import csv
import hashlib
import json

import pytest
import yaml

from splitpriv.cli import main
from splitpriv.data import DataConfig, make_splits
from splitpriv.prediction import PREDICTED_CSV, agreement, linear_decoder_leakage, predict, read_predictions, rehearsal_splits
from splitpriv.sweep import load_sweep_config

from conftest import assert_higher

TINY = {"cuts": ["relu1"], "seeds": [0, 1, 2], "training": {"epochs": 3}, "wandb": {"mode": "disabled"},
        "attack": {"attacks": [{"name": "decoder_inversion", "capacity": "small", "max_epochs": 20},
                               {"name": "surrogate_client", "capacity": "small", "surrogate_epochs": 5, "max_epochs": 20},
                               {"name": "optimization_inversion", "max_steps": 300}],
                   "samples": 64,
                   "dcor_samples": 64, "classifier_max_epochs": 1},
        "defenses": [{"name": "none"}, {"name": "dp_noise", "parameter": "epsilon", "strengths": [8.0],
                                        "params": {"mechanism": "laplace", "clip": "median"}}]}


def _hashes(images) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}


def test_a_rehearsal_holds_proxy_images_only_each_role_disjoint():
    data = make_splits(DataConfig(), seed=0)
    rehearsal = rehearsal_splits(data, seed=0)
    roles = [rehearsal.private_train, rehearsal.val, rehearsal.private_test, rehearsal.proxy]
    proxy, private = _hashes(data.proxy.images), _hashes(data.private_train.images) | _hashes(data.private_test.images)
    seen: set[str] = set()
    for role in roles:
        hashes = _hashes(role.images)
        assert hashes <= proxy and not hashes & private and not hashes & seen
        seen |= hashes
    assert len(rehearsal_splits(data, seed=0, train_share=0.5).private_train) == round(len(rehearsal.private_train) / 2)


def test_the_linear_decoder_recovers_an_invertible_message_and_not_noise():
    import torch

    torch.manual_seed(0)
    images = torch.rand(200, 1, 8, 8)
    mixing = torch.randn(64, 64)
    invertible = linear_decoder_leakage(images[:150].flatten(1) @ mixing, images[:150], images[150:].flatten(1) @ mixing, images[150:])
    noise = linear_decoder_leakage(torch.randn(150, 64), images[:150], torch.randn(50, 64), images[150:])
    assert invertible["linear_decoder_mse"] < 1e-3 < noise["linear_decoder_mse"]
    assert noise["linear_decoder_mse"] == pytest.approx(float(images[150:].var(0, unbiased=False).mean()), rel=0.25)


def _frontier(path, rows, values):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["cut_layer", "cut_name", "defense", "strength", "seed", "compression", "exits",
                                         "test_accuracy", "worst_mse_passive", "worst_mse_black_box", "worst_mse_white_box"])
        writer.writeheader()
        for row, value in zip(rows, values):
            writer.writerow({**{k: row[k] for k in ("cut_layer", "cut_name", "defense", "seed", "compression", "exits")},
                             "strength": row["strength"] or "", "test_accuracy": 0.9, "worst_mse_passive": value,
                             "worst_mse_black_box": value, "worst_mse_white_box": value})


def test_agreement_is_the_rank_correlation_over_the_cells_both_hold(tmp_path):
    rows = [{"key": f"cut{i}-none-seed0", "cut_layer": i, "cut_name": f"c{i}", "defense": "none", "strength": None, "seed": 0,
             "compression": "none", "exits": "none", "linear_decoder_mse": 0.01 * (i + 1), "fisher": 1.0 / (i + 1),
             "fisher_kind": "jacobian", "predicted_test_accuracy": 0.9,
             **{f"predicted_worst_mse_{m}": 0.01 * (i + 1) for m in ("passive", "black_box", "white_box")}} for i in range(6)]
    _frontier(tmp_path / "same.csv", rows, [0.1 * (i + 1) ** 2 for i in range(6)])  # monotone: rank correlation 1
    _frontier(tmp_path / "reversed.csv", rows[:5], [1.0 / (i + 1) for i in range(5)])
    same, reverse = agreement(rows, tmp_path / "same.csv"), agreement(rows, tmp_path / "reversed.csv")
    assert same["threat_models"]["white_box"]["spearman_predicted"] == pytest.approx(1.0)
    assert same["threat_models"]["white_box"]["spearman_fisher"] == pytest.approx(1.0)
    assert (reverse["cells"], reverse["threat_models"]["passive"]["spearman_predicted"]) == (5, pytest.approx(-1.0))
    assert same["accuracy_mae"] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict")
    rows = predict(load_sweep_config({**TINY, "out": str(out), "name": "tiny"}), progress=lambda line: None)
    return out / "tiny", rows


def test_predict_writes_every_cell_and_noise_predicts_more_mse_over_seeds(predicted):
    folder, rows = predicted
    written = list(csv.DictReader((folder / PREDICTED_CSV).open()))
    assert [r["key"] for r in written] == [r["key"] for r in rows] and len(rows) == 6
    noisy = [r["predicted_worst_mse_black_box"] for r in rows if r["defense"] == "dp_noise"]
    plain = [r["predicted_worst_mse_black_box"] for r in rows if r["defense"] == "none"]
    assert_higher(noisy, plain, "dp_noise's predicted MSE over the undefended one")
    noisy = [r["predicted_worst_mse_passive"] for r in rows if r["defense"] == "dp_noise"]
    plain = [r["predicted_worst_mse_passive"] for r in rows if r["defense"] == "none"]
    assert_higher(noisy, plain, "dp_noise's predicted passive MSE over the undefended one")
    # the passive attack runs on the undefended rehearsals only, and the weaker adversary never leaks more
    assert {r["defense"] for r in rows if r["passive_rehearsal_mse"] is not None} == {"none"}
    assert all(r["predicted_worst_mse_passive"] >= r["predicted_worst_mse_black_box"] for r in rows)
    # the white-box attack runs on every rehearsal client; it inverts the first convolution better than a
    # linear decoder, and the white-box prediction is the better of the two for the adversary
    assert all(r["white_box_rehearsal_mse"] is not None for r in rows)
    assert all(r["predicted_worst_mse_white_box"] == min(r["linear_decoder_mse"], r["white_box_rehearsal_mse"])
               for r in rows)
    plain = [r for r in rows if r["defense"] == "none"]
    assert_higher([r["linear_decoder_mse"] for r in plain], [r["white_box_rehearsal_mse"] for r in plain],
                  "the linear decoder's MSE over the white-box attack's, undefended relu1")
    assert {r["fisher_kind"] for r in rows if r["defense"] == "dp_noise"} == {"unbiased_mse_bound"}
    assert all(0 <= r["predicted_test_accuracy"] <= 1 for r in rows)
    assert not list(folder.glob("train")), "a prediction trains nothing on the private data"


def test_the_planner_weighs_predictions_and_says_so(predicted, tmp_path, capsys):
    folder, _ = predicted
    assert {row["defense"] for row in read_predictions(folder / PREDICTED_CSV)} == {"none", "dp_noise"}
    config = tmp_path / "scenario.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "model": "small_cnn", "dataset": "digits",
                                      "chain": ["raspberry_pi_4b", "v100"], "links": ["wifi"], "slo_s": 1.0}))
    assert main(["plan", "--config", str(config), "--sweep", str(folder), "--out", str(tmp_path / "plan")]) == 0
    assert "PREDICTED by splitpriv predict" in capsys.readouterr().out


def test_predict_refuses_a_folder_of_another_sweep(predicted, capsys):
    folder, _ = predicted
    assert main(["predict", "--out", str(folder.parent), "--name", "tiny"]) == 2
    assert "another config" in capsys.readouterr().err


def test_tune_trains_the_predicted_choice_once_and_reports_how_close_it_landed(predicted, capsys):
    folder, rows = predicted
    noisy = min(r["predicted_worst_mse_black_box"] for r in rows if r["defense"] == "dp_noise")
    plain = max(r["predicted_worst_mse_black_box"] for r in rows if r["defense"] == "none")
    target = (noisy + plain) / 2  # only the noisy setting is predicted to leave this much error
    config = folder.parent / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    args = ["tune", "--config", str(config), "--out", str(folder.parent), "--name", "tiny", "--threat-model", "black_box",
            "--max-accuracy-drop", "1"]
    code = main([*args, "--target-mse", str(target)])
    record = json.loads((folder / "tune" / "tune.json").read_text())
    assert record["chosen"]["defense"] == "dp_noise" and code == (0 if record["target_met"] else 1)
    assert record["measured"]["worst_mse"] == pytest.approx(record["mse_ratio_to_target"] * target)
    assert len(list((folder / "tune").glob("*/metrics.json"))) == 1, "one private training"
    assert "chosen from predictions: cut 1, dp_noise 8" in capsys.readouterr().out

    (folder / "tune" / "tune.json").unlink()
    assert main([*args, "--target-mse", str(10 * noisy)]) == 1
    assert "INFEASIBLE" in capsys.readouterr().out and json.loads((folder / "tune" / "tune.json").read_text())["chosen"] is None
    assert main([*args, "--target-mse", "-1"]) == 2
    assert "target_mse" in capsys.readouterr().err


def test_a_shorter_dp_sgd_rehearsal_keeps_the_private_runs_noise_multiplier(tmp_path):
    from splitpriv.config import RunConfig, from_dict
    from splitpriv.defenses import build_defense
    from splitpriv.experiment import train

    spec = {"name": "dp_sgd", "target_epsilon": 8.0, "max_grad_norm": 1.0}
    private = train(from_dict(RunConfig, {"out": str(tmp_path), "name": "private", "defenses": [spec],
                                          "training": {"epochs": 2, "progress_bar": False}, "wandb": {"mode": "disabled"}}))
    rehearsal = build_defense(spec).rehearsal_spec(spec, len(private.data.private_train), 64, 2)
    assert "target_epsilon" not in rehearsal
    assert rehearsal["noise_multiplier"] == pytest.approx(private.metrics["dp_sgd/noise_multiplier"], rel=1e-9)
    assert main(["predict", "--out", str(tmp_path), "--epochs-share", "0"]) == 2


def test_too_few_proxy_images_for_a_rehearsal_is_one_message(tmp_path, capsys):
    config = tmp_path / "few.yaml"
    config.write_text(yaml.safe_dump({"data": {"proxy_size": 5}}))
    assert main(["predict", "--config", str(config), "--out", str(tmp_path)]) == 2
    assert "too few for a rehearsal" in capsys.readouterr().err


def test_a_rehearsal_that_diverges_is_a_predicted_failure_and_the_other_cells_are_predicted(tmp_path, monkeypatch, capsys):
    """A cell whose rehearsal diverges on public data is written with the reason and no numbers (the
    planner and tune leave it out); the other cells are predicted, and predict ends normally."""
    import splitpriv.prediction as prediction
    from splitpriv.errors import TrainingDiverged

    real_train = prediction.train

    def diverging_for_noise(run_cfg, **kwargs):
        if any(spec["name"] == "dp_noise" for spec in run_cfg.defenses):
            raise TrainingDiverged("training diverged in epoch 1: the mean training loss is nan")
        return real_train(run_cfg, **kwargs)

    monkeypatch.setattr(prediction, "train", diverging_for_noise)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "seeds": [0], "workers": 1, "training": {"epochs": 1}}))
    assert main(["predict", "--config", str(config), "--out", str(tmp_path), "--name", "tiny"]) == 0
    assert "cut1-dp_noise-8-seed0" in capsys.readouterr().out.split("rehearsal failed: training diverged")[0]
    written = {r["key"]: r for r in csv.DictReader((tmp_path / "tiny" / PREDICTED_CSV).open())}
    failed, kept = written["cut1-dp_noise-8-seed0"], written["cut1-none-seed0"]
    assert "diverged" in failed["rehearsal_failure"] and failed["predicted_worst_mse_white_box"] == ""
    assert kept["rehearsal_failure"] == "" and float(kept["predicted_worst_mse_white_box"]) > 0
    assert [row["defense"] for row in read_predictions(tmp_path / "tiny" / PREDICTED_CSV)] == ["none"]


def test_the_rehearsals_passive_attacker_has_the_sweeps_proxy_size(tmp_path, monkeypatch):
    """The passive rehearsal attack mirrors the sweep's attacker, whose proxy ``attack.proxy_size`` caps."""
    import splitpriv.prediction as prediction

    proxy_sizes, real_evaluate = [], prediction.evaluate

    def recording(attack, target, *args):
        proxy_sizes.append(len(target.proxy.images))
        return real_evaluate(attack, target, *args)

    monkeypatch.setattr(prediction, "evaluate", recording)
    attack = {**TINY["attack"], "attacks": TINY["attack"]["attacks"][1:2], "proxy_size": 20}
    config = {**TINY, "seeds": [0], "workers": 1, "training": {"epochs": 1}, "defenses": [{"name": "none"}], "attack": attack}
    predict(load_sweep_config({**config, "out": str(tmp_path), "name": "capped"}), progress=lambda line: None)
    assert proxy_sizes == [20]


def test_the_rehearsals_passive_attacker_takes_as_many_steps_as_the_sweeps_on_its_fewer_proxy_images(tmp_path, monkeypatch):
    """The rehearsal's attacker holds a slice of the sweep's proxy: its epoch-counted budgets grow with the
    steps an epoch loses on fewer images, so that it trains as long, in optimizer steps, as the sweep's."""
    import splitpriv.prediction as prediction

    fitted, real_evaluate = [], prediction.evaluate

    def recording(attack, target, *args):
        fitted.append((attack, len(target.proxy.images)))
        return real_evaluate(attack, target, *args)

    monkeypatch.setattr(prediction, "evaluate", recording)
    attack = {**TINY["attack"], "attacks": TINY["attack"]["attacks"][1:2]}
    config = {**TINY, "seeds": [0], "workers": 1, "training": {"epochs": 1}, "defenses": [{"name": "none"}], "attack": attack}
    predict(load_sweep_config({**config, "out": str(tmp_path), "name": "steps"}), progress=lambda line: None)
    sweep_proxy = len(make_splits(DataConfig(), 0).proxy)
    [(surrogate, rehearsal_proxy)] = fitted
    assert rehearsal_proxy < sweep_proxy / 2

    def surrogate_steps(images):  # batches of 64
        return -(-images // 64)

    def decoder_steps(images):  # 10 % held out; batches of n / 8 within [16, 64]
        train = images - round(0.1 * images)
        return -(-train // min(64, max(16, train // 8)))

    for budget, set_for_the_sweep, steps in ((surrogate.surrogate_epochs, 5, surrogate_steps),
                                             (surrogate.stopping.max_epochs, 20, decoder_steps),
                                             (surrogate.stopping.patience, 10, decoder_steps)):
        assert budget > set_for_the_sweep
        assert abs(budget * steps(rehearsal_proxy) - set_for_the_sweep * steps(sweep_proxy)) <= steps(rehearsal_proxy) / 2


def test_a_defenses_added_linear_error_is_added_to_the_passive_prediction_not_multiplied():
    """Noise adds an error no attacker removes: a defense that raises the linear decoder's MSE from
    0.001 to 0.071 raises the passive prediction by 0.07 (a ratio of 71 would predict an MSE of 1)."""
    from splitpriv.prediction import _predicted_passive

    undefended = {"linear_decoder_mse": 0.001, "linear_decoder_ssim": 0.95, "passive_rehearsal_mse": 0.02,
                  "passive_rehearsal_ssim": 0.8}
    noisy = {"linear_decoder_mse": 0.071, "linear_decoder_ssim": 0.35}
    assert _predicted_passive(noisy, undefended, (0.071, 0.35)) == (pytest.approx(0.09), pytest.approx(0.2))
    assert _predicted_passive(undefended, undefended, (0.001, 0.95)) == (pytest.approx(0.02), pytest.approx(0.8))
