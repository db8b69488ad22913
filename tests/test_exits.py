import csv

import numpy as np
import pytest
import yaml

from splitpriv.cli import main
from splitpriv.config import load_run_config
from splitpriv.exits import FINAL, ExitWeights, choose, chosen_exits, collect, evaluate, sweep
from splitpriv.experiment import train
from splitpriv.runs import build_module




@pytest.fixture(scope="module")
def exit_run(tmp_path_factory):
    # exits at conv1 (client), pool (the cut itself: client) and fc1 (server)
    cfg = load_run_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "exits", "training.epochs": 5,
                                 "training.progress_bar": False, "exits.at": ["relu1", "pool", "fc1"]})
    return train(cfg)


@pytest.fixture(scope="module")
def outputs(exit_run):
    return collect(exit_run.module, exit_run.data.dataset("val"), exit_run.data.info.input_shape)


def test_exits_are_placed_on_the_party_that_runs_them_and_trained(exit_run):
    module = exit_run.module
    assert list(module.client_exits) == ["relu1", "pool"] and list(module.server_exits) == ["fc1"]
    client_group = module.configure_optimizers()[0].param_groups[0]  # the client's optimizer, or its group
    client_params = {id(p) for p in client_group["params"]}
    assert not any(id(p) in client_params for p in module.server_exits.parameters())
    assert all(id(p) in client_params for p in module.client_exits.parameters())
    # trained jointly: every internal classifier beats chance (10 classes) on the test set
    for name in ("relu1", "pool", "fc1"):
        assert exit_run.metrics[f"test_exit_{name}_acc"] > 0.2


def test_no_exits_leaves_the_module_unchanged():
    plain = build_module(load_run_config(), 10, 1, 8)
    assert not plain.client_exits and not plain.server_exits
    assert all(not k.startswith(("client_exits", "server_exits")) for k in plain.state_dict())


def test_exit_rates_add_up_and_accuracies_are_consistent(outputs):
    rng = np.random.default_rng(0)
    for alphas in rng.uniform(0, 1, size=(5, 3)):
        record = evaluate(outputs, alphas)
        betas = np.array([record[f"beta_{n}"] for n in outputs.names])
        assert betas.sum() == pytest.approx(1.0)
        accuracies = np.array([record[f"accuracy_{n}"] for n in outputs.names])
        left = betas > 0
        assert record["accuracy"] == pytest.approx((betas[left] * accuracies[left]).sum())
        assert record["mean_flops"] == pytest.approx((betas * outputs.flops).sum())


def test_alpha_zero_exits_all_at_the_first_exit_and_alpha_above_one_none_early(outputs):
    everything_first = evaluate(outputs, [0.0, 0.0, 0.0])
    assert everything_first[f"beta_{outputs.names[0]}"] == 1.0
    assert everything_first["mean_bytes"] == 0.0  # the first exit is on the client: nothing is sent
    nothing_early = evaluate(outputs, [1.01, 1.01, 1.01])
    assert nothing_early[f"beta_{FINAL}"] == 1.0 and nothing_early["early_exit_rate"] == 0.0
    assert nothing_early["accuracy"] == pytest.approx(outputs.correct[:, -1].mean())
    assert nothing_early["mean_flops"] == outputs.flops[-1] > everything_first["mean_flops"]


def test_flops_grow_with_depth_and_bytes_only_after_the_cut(outputs, exit_run):
    assert np.all(np.diff(outputs.flops) > 0)
    assert outputs.bytes_sent.tolist() == [0, 0] + [exit_run.metrics["activation_bytes_per_sample"]] * 2


def test_calibrated_thresholds_meet_the_target_on_validation(outputs):
    records = sweep(outputs)
    final_accuracy = outputs.correct[:, -1].mean()
    for target in (final_accuracy - 0.05, final_accuracy - 0.01):
        chosen = choose(records, target)
        assert chosen is not None
        replay = evaluate(outputs, [chosen[f"alpha_{n}"] for n in outputs.names[:-1]])
        assert replay["accuracy"] >= target
        # the most early exits among every feasible combination of the grid
        assert all(r["early_exit_rate"] <= chosen["early_exit_rate"] for r in records if r["accuracy"] >= target)


def test_sdn_schedule_grows_to_the_relative_depth():
    weights = ExitWeights(schedule="sdn", depth=(("a", 0.3),))
    values = [weights("a", epoch, 5) for epoch in range(5)]
    assert values == sorted(values) and values[0] == pytest.approx(0.01) and values[-1] == pytest.approx(0.3)


def test_exits_command_writes_csv_and_plot(exit_run, capsys):
    best = max(r["accuracy"] for r in sweep(collect(exit_run.module, exit_run.data.dataset("val"), exit_run.data.info.input_shape)))
    assert main(["exits", "--run", str(exit_run.path), "--target-accuracy", f"{best - 0.02:.4f}"]) == 0
    assert "thresholds (calibrated on the validation split)" in capsys.readouterr().out
    rows = list(csv.DictReader((exit_run.path / "exits.csv").open()))
    assert sum(r["chosen"] == "True" for r in rows) == 1
    assert {"alpha_relu1", "beta_final", "accuracy", "mean_flops", "mean_bytes"} <= set(rows[0])
    assert (exit_run.path / "exits.png").stat().st_size > 0
    chosen = next(r for r in rows if r["chosen"] == "True")
    rates, accuracy = chosen_exits(exit_run.path)  # what the planner reads
    assert accuracy == float(chosen["accuracy"]) >= round(best - 0.02, 4)
    assert rates == {name: float(chosen[f"beta_{name}"]) for name in ("relu1", "pool", "fc1", FINAL)}
    assert sum(rates.values()) == pytest.approx(1.0)
    if best < 1:
        assert main(["exits", "--run", str(exit_run.path), "--target-accuracy", "1.0"]) == 0
        assert f"best reachable is {best:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("target", ["0", "1.5", "-0.2", "nan"])
def test_target_accuracy_outside_unit_interval_exits_2(target, exit_run, capsys):
    assert main(["exits", "--run", str(exit_run.path), "--target-accuracy", target]) == 2
    assert "--target-accuracy" in capsys.readouterr().err


def test_exits_on_a_run_without_exits_and_an_exit_at_an_invalid_cut_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"exits": {"at": [1, 99]}, "out": str(tmp_path)}))
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "exits.at[1]" in error and "99" in error
    plain = train(load_run_config(None, {"out": str(tmp_path), "name": "plain", "training.epochs": 1,
                                         "training.progress_bar": False, "data.train_size": 200}))
    assert main(["exits", "--run", str(plain.path), "--target-accuracy", "0.9"]) == 2
    assert "no internal classifiers" in capsys.readouterr().err


def test_planner_uses_the_measured_exit_rates(exit_run):
    from splitpriv.catalogue import load_catalogue
    from splitpriv.exit_calibration import calibrate_run
    from splitpriv.models import build_model
    from splitpriv.planner import load_scenario, model_shape, plan

    report = calibrate_run(exit_run.path, 0.8)
    scenario = load_scenario(None, {"model": "small_cnn", "dataset": "digits", "chain": ["raspberry_pi_4b", "v100"],
                                    "links": ["wifi"], "exits_run": str(exit_run.path)})
    model = build_model("small_cnn", 10, 1, 8)
    plans = plan(scenario, load_catalogue([]), model_shape(model, (1, 8, 8), 1), None).plans
    betas = {name: report.chosen[f"beta_{name}"] for name in ("relu1", "pool", "fc1")}
    position = {name: model.block_names.index(name) for name in betas}
    crossing = [p for p in plans if p.first_cut_layer is not None]
    assert {p.boundaries[0] for p in crossing} >= {"relu1", "pool", "fc1"}
    for p in crossing:
        block = model.block_names.index(p.boundaries[0])
        assert p.exit_rate == pytest.approx(sum(b for n, b in betas.items() if position[n] <= block))
        assert p.accuracy == pytest.approx(report.chosen["accuracy"])


def test_the_cost_study_takes_its_reach_rates_from_the_measured_exits(exit_run, tmp_path, capsys):
    """beta_pid = 1 - the shares leaving at exits up to partition pid's end, as 'splitpriv exits' chose them."""
    from splitpriv.exit_calibration import calibrate_run

    report = calibrate_run(exit_run.path, 0.8)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "digits", "model": "small_cnn", "dataset": "digits",
                                     "partition_after": ["pool", "fc1"], "exits_run": str(exit_run.path),
                                     "slos_s": [1.0], "billing": ["amortised"]}))
    assert main(["cost", "--config", str(study), "--out", str(tmp_path / "measured")]) == 0
    out = capsys.readouterr().out
    shares = {name: report.chosen[f"beta_{name}"] for name in ("relu1", "pool", "fc1")}
    expected = [1.0, 1 - shares["relu1"] - shares["pool"], 1 - sum(shares.values())]
    assert "reach rates beta: " + ", ".join(f"{b:.3g}" for b in expected) + " (measured by 'splitpriv exits')" in out
    assert f"accuracy {report.chosen['accuracy']:.4f}" in out
    study.write_text(yaml.safe_dump({"name": "digits", "model": "small_cnn", "dataset": "digits",
                                     "partition_after": ["pool", "fc1"], "exits_run": str(exit_run.path),
                                     "reach_rates": [1, 1, 1]}))
    assert main(["cost", "--config", str(study), "--out", str(tmp_path / "both")]) == 2
    assert "null with exits_run" in capsys.readouterr().err
