"""``splitpriv sweep`` and ``splitpriv compare``: grid, resume, shared training, frontier, wandb."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import splitpriv.sweep as sweep
from splitpriv.cli import main
from splitpriv.errors import SplitprivError
from splitpriv.models import build_model
from splitpriv.profiling import count_flops

from conftest import assert_higher



# a tiny grid with tiny attack budgets (the defaults are what users get)
TINY = {
    "name": "tiny", "cuts": [1, "pool"], "workers": 1,
    # a fixed noise seed: the parallel and sequential sweeps must agree to the digit
    "defenses": [{"name": "none"}, {"name": "dp_noise", "parameter": "epsilon", "strengths": [32.0], "params": {"noise_seed": 0}}],
    "training": {"epochs": 1},
    "attack": {"attacks": [{"name": "surrogate_client", "capacity": "small", "surrogate_epochs": 1, "max_epochs": 2},
                           {"name": "decoder_inversion", "capacity": "small", "max_epochs": 2, "patience": 1},
                           {"name": "optimization_inversion", "max_steps": 10}],
               "samples": 8, "dcor_samples": 8, "classifier_max_epochs": 1},
    "wandb": {"mode": "disabled"},
}


def tiny(tmp_path: Path, **changes) -> dict:
    return {**TINY, "out": str(tmp_path), **changes}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    real_train = sweep.train

    def counting_train(cfg, **kwargs):
        calls.append(cfg.name)
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(sweep, "train", counting_train)
    return calls


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """One tiny sweep, shared by the read-only checks below."""
    out = tmp_path_factory.mktemp("sweeps")
    rows = sweep.run_sweep(sweep.load_sweep_config(tiny(out, wandb={"mode": "offline"})), progress=lambda line: None)
    return out / "tiny", rows


def test_parallel_workers_give_the_sequential_frontier(finished_sweep, tmp_path):
    """Two worker processes (the shared training runs in the pool while the classifier is fitted):
    every cell once, one undefended training, and the sequential sweep's numbers."""
    folder, rows = finished_sweep
    parallel = sweep.run_sweep(sweep.load_sweep_config(tiny(tmp_path, workers=2)), progress=lambda line: None)
    lines = (tmp_path / "tiny" / sweep.RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == sorted(json.loads(line)["key"] for line in
                                                                      (folder / sweep.RESULTS_FILE).read_text().splitlines())
    assert sorted(p.name for p in (tmp_path / "tiny" / "train").iterdir()) == ["cut1-dp_noise-32-seed0", "cut4-dp_noise-32-seed0", "none-seed0"]
    for sequential, concurrent in zip(rows, parallel):
        assert (concurrent["cut_name"], concurrent["defense"]) == (sequential["cut_name"], sequential["defense"])
        for column in ("test_accuracy", "worst_mse_passive", "worst_mse_white_box", "dcor_sq_bias_corrected"):
            assert concurrent[column] == pytest.approx(sequential[column], rel=1e-4), column


def test_frontier_has_one_row_per_cell_with_the_contract_columns(finished_sweep):
    folder, rows = finished_sweep
    table = read_csv(folder / "frontier.csv")
    assert list(table[0]) == sweep.FRONTIER_COLUMNS
    assert {(r["cut_name"], r["defense"]) for r in table} == {(c, d) for c in ("relu1", "pool") for d in ("none", "dp_noise")}
    assert len(table) == len(rows) == 4
    stored = yaml.safe_load((folder / "sweep.yaml").read_text())
    assert (stored["dataset"], stored["model"]) == ("digits", "small_cnn")
    assert (folder / "frontier.png").stat().st_size > 0
    for row in table:  # the privacy of a person, in its own columns; the strength says what it is
        noisy = row["defense"] == "dp_noise"
        assert row["strength_parameter"] == ("epsilon (per message)" if noisy else "")
        assert (row["message_dp_releases_per_sample"] != "" and float(row["message_dp_releases_per_sample"]) == 2) is noisy  # 1 epoch + inference
        assert (row["message_dp_epsilon_per_sample"] != "") is noisy and row["parameter_dp_epsilon_per_sample"] == ""
    for row in rows:  # every cell was attacked: its attack.json holds the row's worst case
        attack = json.loads((folder / "attacks" / f"cut{row['cut_layer']}-{row['defense']}"
                             f"{'' if row['strength'] is None else '-32'}-seed0" / "attack.json").read_text())
        for model in ("passive", "black_box", "white_box"):  # one worst case per threat model, naming its attack
            assert attack["worst_case"][model]["mse"] == row[f"worst_mse_{model}"]
            assert attack["worst_case"][model]["mse_attack"] == row[f"worst_attack_{model}"]
        # the threat models nest: a stronger adversary can run every weaker one's attack
        assert row["worst_mse_white_box"] <= row["worst_mse_black_box"] <= row["worst_mse_passive"]
        assert row["worst_attack_passive"] == "surrogate_client/small"


def test_undefended_cells_share_one_training(tmp_path, count_trainings):
    cfg = sweep.load_sweep_config(tiny(tmp_path, cuts=[0, 7], defenses=[{"name": "none"}]))
    rows = sweep.run_sweep(cfg, progress=lambda line: None)
    assert count_trainings == ["none-seed0"]
    assert [r["cut_layer"] for r in rows] == [0, 7]
    assert len({r["test_accuracy"] for r in rows}) == 1  # one network, cut anywhere
    assert len({r["activation_bytes_per_sample"] for r in rows}) > 1  # but each cut sends its own message
    # the client's FLOPs per sample, as torch counts them by hand here: conv1 at cut 0; the whole
    # network but its last layer at cut 7 (relu3)
    model = build_model("small_cnn", 10, 1, 8)
    x = torch.zeros(1, 1, 8, 8)
    assert rows[0]["client_flops_per_sample"] == count_flops(model.split(0)[0], x) == 2 * 16 * 9 * 8 * 8
    assert rows[1]["client_flops_per_sample"] == count_flops(model.split(7)[0], x) > rows[0]["client_flops_per_sample"]


def test_resume_after_a_kill_loses_and_duplicates_nothing(tmp_path, monkeypatch, count_trainings):
    cfg = sweep.load_sweep_config(tiny(tmp_path, cuts=[0, 4, 7], defenses=[{"name": "none"}]))
    real_run_cell, attacked = sweep.run_cell, []

    def killed_after_two(*args, **kwargs):
        if len(attacked) == 2:
            raise KeyboardInterrupt  # the process dies mid-sweep
        attacked.append(args[1].key)
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(sweep, "run_cell", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, progress=lambda line: None)
    assert len(sweep.finished_rows(tmp_path / "tiny")) == 2

    monkeypatch.setattr(sweep, "run_cell", lambda *a, **k: (attacked.append(a[1].key), real_run_cell(*a, **k))[1])
    rows = sweep.run_sweep(cfg, progress=lambda line: None)
    lines = (tmp_path / "tiny" / "results.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 3 == len(rows)
    assert len(attacked) == 3 and len(set(attacked)) == 3  # no finished cell attacked twice
    assert count_trainings == ["none-seed0"]  # the shared training survived the kill


def test_a_changed_config_is_refused_unless_forced(finished_sweep, tmp_path):
    folder, _ = finished_sweep
    copy = tmp_path / "tiny"
    shutil.copytree(folder, copy)
    changed = sweep.load_sweep_config(tiny(tmp_path, cuts=[1], defenses=[{"name": "none"}], seeds=[1]))
    with pytest.raises(SplitprivError, match="seeds"):
        sweep.run_sweep(changed, progress=lambda line: None)
    forced = sweep.run_sweep(changed, force=True, progress=lambda line: None)
    assert {r["seed"] for r in forced} == {1}
    assert {json.loads(line)["seed"] for line in (copy / "results.jsonl").read_text().splitlines()} == {1}


@pytest.mark.parametrize("change, key", [
    ({"defenses": []}, "at least one"),
    ({"cuts": []}, "at least one"),
    ({"cuts": ["nowhere"]}, "nowhere"),
    ({"defenses": [{"name": "dp_noise", "parameter": "epsilon"}]}, "strengths"),
    ({"defenses": [{"name": "dp_noise", "parameter": "sigma", "strengths": [1.0]}]}, "sigma"),
    ({"attack": {"attacks": [{"name": "mind_reading"}]}}, "mind_reading"),
    ({"data": {"dataset": "mnist"}}, "data.dataset"),
    ({"epochs": 3}, "epochs"),
])
def test_bad_sweep_configs_exit_2_before_any_work(change, key, tmp_path, capsys, count_trainings):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(tiny(tmp_path, **change)))
    assert main(["sweep", "--config", str(config)]) == 2
    message = capsys.readouterr().err
    assert key in message and "Traceback" not in message
    assert count_trainings == []


def test_compare_prints_sweeps_side_by_side(finished_sweep, tmp_path, capsys):
    folder, rows = finished_sweep
    other = tmp_path / "other"
    other.mkdir()
    table = read_csv(folder / "frontier.csv")
    for row in table:
        row["worst_mse_white_box"] = str(float(row["worst_mse_white_box"]) * 2)
    with open(other / "frontier.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, sweep.FRONTIER_COLUMNS)
        writer.writeheader()
        writer.writerows(table[:3])
    assert main(["compare", str(folder), str(other), "--metrics", "test_accuracy", "worst_mse_white_box"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "tiny:w_mse_white_box" in lines[0] and "other:w_mse_white_box" in lines[0]
    assert len(lines) == 1 + len(rows)
    for row in rows:
        line = next(l for l in lines if l.split()[0] == f"{row['cut_layer']}:{row['cut_name']}" and row["defense"] in l)
        assert f"{row['worst_mse_white_box']:.4f}" in line
    missing = next(l for l in lines if l.split()[0] == "4:pool" and "dp_noise" in l)
    assert missing.rstrip().endswith("-")  # the cell absent from 'other'
    assert main(["compare", str(tmp_path / "absent")]) == 2



def test_compare_keeps_cells_that_differ_in_compression_apart(finished_sweep, tmp_path, capsys):
    """Two seeds each of a plain and a quantized cell: two lines of n=2, not one of n=4 pooling both."""
    folder, _ = finished_sweep
    first = read_csv(folder / "frontier.csv")[0]
    table = [{**first, "seed": str(seed), "compression": compression, "worst_mse_white_box": str(mse)}
             for compression, mse in (("none", 0.01), ("quantize_bits4", 0.05)) for seed in (0, 1)]
    other = tmp_path / "adapted"
    other.mkdir()
    with open(other / "frontier.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, sweep.FRONTIER_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    assert main(["compare", str(other), "--metrics", "worst_mse_white_box"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 2
    assert any("compression quantize_bits4" in line and "0.0500 ± 0.0000 (n=2)" in line for line in lines)
    assert any("compression" not in line and "0.0100 ± 0.0000 (n=2)" in line for line in lines)

def test_provenance_names_a_cap_on_the_cpu_kernels(monkeypatch):
    from splitpriv.provenance import provenance

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert provenance()["cpu_kernels"] == f"{torch.backends.cpu.get_cpu_capability()} (ONEDNN_MAX_CPU_ISA=AVX2)"


def test_the_frontier_plot_shows_each_cell_once_as_its_seeds_mean_and_spread(finished_sweep):
    _, rows = finished_sweep
    seeded = [{**row, "seed": seed, "test_accuracy": row["test_accuracy"] + shift,
               "worst_mse_black_box": row["worst_mse_black_box"] * (1 + shift)}
              for row in rows for seed, shift in ((0, -0.01), (1, 0.0), (2, 0.01))]
    for row in seeded:
        row["worst_mse_passive"] = None  # no passive attack ran: no passive panel
    figure = sweep.frontier_figure({"tiny": seeded}, "tiny")
    try:
        assert [axis.get_title() for axis in figure.axes] == ["black-box", "white-box"]
        assert any("mean ± std over 3 seeds" in text.get_text() for text in figure.texts)  # the title
        black_box = figure.axes[0]
        drawn = [(x, y) for line in black_box.lines if line.get_marker() == "o"
                 for x, y in zip(line.get_xdata(), line.get_ydata())]
        assert len(drawn) == len(rows)  # one marker per cell, not one per seed
        for row in rows:  # the middle seed is each cell's mean
            assert any(x == pytest.approx(row["worst_mse_black_box"]) and y == pytest.approx(row["test_accuracy"])
                       for x, y in drawn)
        assert black_box.collections  # the error bars
    finally:
        sweep.pyplot().close(figure)


def test_compare_plots_several_frontiers_in_one_figure_a_marker_shape_each(finished_sweep, tmp_path, monkeypatch):
    folder, rows = finished_sweep
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "frontier.csv", other / "frontier.csv")
    figures = []
    real_figure = sweep.frontier_figure
    monkeypatch.setattr(sweep, "frontier_figure", lambda *a, **k: figures.append(real_figure(*a, **k)) or figures[-1])
    assert main(["compare", str(folder), str(other), "--plot", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").stat().st_size > 0
    white_box = figures[0].axes[-1]
    markers = [line.get_marker() for line in white_box.lines if line.get_marker() not in ("None", "|", "_")]
    drawn = sum(len(line.get_xdata()) for line in white_box.lines if line.get_marker() in markers)
    assert set(markers) == {"o", "s"} and drawn == 2 * len(rows)
    assert any(text.startswith("other: ") for text in (t.get_text() for t in white_box.get_legend().get_texts()))
    assert main(["compare", str(folder), "--cuts", "pool", "--plot", str(tmp_path / "pool.png")]) == 0
    pool_only = figures[-1].axes[-1]
    assert {text.get_text() for text in pool_only.texts} == {"pool"}  # --cuts chooses the plotted cells too


def test_compare_writes_markdown_naming_the_command_and_commit(finished_sweep, tmp_path):
    folder, rows = finished_sweep
    provenance = json.loads((folder / "provenance.json").read_text())["started"]
    assert provenance["commit"] and provenance["command"]
    table = tmp_path / "table.md"
    assert main(["compare", str(folder), "--markdown", str(table), "--metrics", "worst_mse_passive", "worst_attack_passive",
                 "message_dp_epsilon_per_sample"]) == 0
    text = table.read_text()
    assert f"`{provenance['command']}` at commit `{provenance['commit']}`" in text
    assert provenance["cpu_kernels"].startswith(torch.backends.cpu.get_cpu_capability())
    assert f"CPU kernels {provenance['cpu_kernels']}" in text  # the fits differ between instruction sets
    noisy = next(r for r in rows if r["defense"] == "dp_noise")
    line = next(l for l in text.splitlines() if l.startswith(f"| {noisy['cut_layer']}:") and "dp_noise" in l)
    assert "epsilon (per message) 32" in line and f"{noisy['message_dp_epsilon_per_sample']:.1f}" in line
    assert "surrogate_client/small" in line


def test_wandb_offline_runs_match_the_frontier(finished_sweep):
    folder, rows = finished_sweep
    frontier = read_csv(folder / "frontier.csv")
    wandb_cli = Path(sys.executable).with_name("wandb")
    for row, csv_row in zip(rows, frontier):
        key = f"cut{row['cut_layer']}-{row['defense']}{'' if row['strength'] is None else '-32'}-seed0"
        run_dir = folder / "attacks" / key / "wandb" / "latest-run"
        out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(run_dir)],
                             capture_output=True, text=True, check=True).stdout
        assert not (run_dir / "files" / "requirements.txt").exists()  # the package list: once, in the summary run
        logged = json.loads(out)
        summary, config = logged["summary"], logged["config"]
        for column in ("cut_layer", "cut_name", "defense", "strength", "seed"):
            assert _value(config[column]) == _value(row[column])
        for column in ("test_accuracy", "worst_mse_passive", "worst_mse_white_box", "worst_psnr_black_box", "worst_ssim_white_box",
                       "recognisable_share_white_box", "dcor_sq_bias_corrected", "activation_bytes_per_sample"):
            assert summary[column] == pytest.approx(float(csv_row[column]), rel=1e-6)
    assert (folder / "wandb" / "latest-run" / "files" / "requirements.txt").exists()  # the summary run


def _value(value):
    if isinstance(value, dict) and "value" in value:
        return value["value"]
    return value


@pytest.fixture(scope="module")
def mnist_frontier(tmp_path_factory):
    """experiments/mnist_frontier_sweep.yaml on real MNIST: two cuts, each defense, three seeds."""
    from conftest import real_data_root

    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found: set SPLITPRIV_DATA to a folder holding MNIST/raw")
    values = yaml.safe_load((Path(__file__).parents[1] / "experiments" / "mnist_frontier_sweep.yaml").read_text())
    cfg = sweep.load_sweep_config({**values, "out": str(tmp_path_factory.mktemp("mnist_frontier")),
                                   "data": {**values["data"], "root": str(root)}, "wandb": {"mode": "disabled"}})
    rows = sweep.run_sweep(cfg)
    print(sweep.format_table(rows))
    worst: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        worst.setdefault((row["cut_name"], row["defense"]), []).append(row["worst_mse_white_box"])
    return worst


@pytest.mark.slow
def test_mnist_undefended_leakage_falls_with_depth(mnist_frontier):
    assert_higher(mnist_frontier["relu3", "none"], mnist_frontier["relu1", "none"], "undefended worst-case MSE, relu3 vs relu1")


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["distance_correlation", "dp_noise"])
def test_mnist_defense_leaks_less_than_none_at_the_deepest_cut(mnist_frontier, defense):
    """At relu3, where the client (two convs, pool, fc) is far from injective, NoPeek and per-message
    noise raise the worst-case MSE beyond the spread of three seeds. (At relu1 the white-box attack
    inverts a first conv+ReLU under the training-time regularisers whatever their weight.)"""
    assert_higher(mnist_frontier["relu3", defense], mnist_frontier["relu3", "none"], f"worst-case MSE at relu3, {defense} vs none")
