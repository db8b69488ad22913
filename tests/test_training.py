"""Split training end to end: accuracy, determinism, run folders, resume, load_run."""
import json

import pytest
import torch
import yaml

from splitpriv import RunConfig, load_run, load_run_config, train
from splitpriv.store import atomic_write_json


def quick_config(tmp_path, **overrides) -> RunConfig:
    values = {"out": str(tmp_path), "training.progress_bar": False, "training.epochs": 3}
    values.update(overrides)
    return load_run_config(None, values)


def test_default_training_on_digits_reaches_093(tmp_path):
    run = train(quick_config(tmp_path, **{"training.epochs": RunConfig().training.epochs}))
    assert run.metrics["test_accuracy"] >= 0.93
    assert run.metrics["cut_name"] == "pool" and run.metrics["epochs"] == RunConfig().training.epochs
    # the message at the pool cut of the 8x8 small_cnn is 32x4x4 floats
    assert run.metrics["activation_bytes_per_sample"] == run.metrics["gradient_bytes_per_sample"] == 32 * 4 * 4 * 4


def test_run_folder_is_complete_and_loadable(tmp_path):
    run = train(quick_config(tmp_path, name="r", **{"model.cut_layer": "relu1"}))
    folder = tmp_path / "r"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) >= {"test_accuracy", "test_loss", "activation_bytes_per_sample", "gradient_bytes_per_sample",
                            "train_time_s", "epochs", "cut_layer", "cut_name"}
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["cut_layer"] == 1 and config["seed"] == 0
    assert config["resolved"]["data_splits"]["private_test"] == 359
    assert (folder / "checkpoints" / "last.ckpt").exists() and (folder / "logs" / "metrics.csv").exists()

    loaded = load_run(folder)
    assert loaded.cut_layer == 1 and loaded.cut_name == "relu1" and loaded.metrics == metrics
    inputs, labels = loaded.data.dataset("private_test").tensors
    with torch.no_grad():
        accuracy = (loaded.server(loaded.client(inputs)).argmax(1) == labels).float().mean().item()
        assert torch.equal(loaded.model(inputs), run.model(inputs))
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


def test_same_seed_same_metrics(tmp_path):
    first = train(quick_config(tmp_path, name="a", **{"training.epochs": 2})).metrics
    second = train(quick_config(tmp_path, name="b", **{"training.epochs": 2})).metrics
    other_seed = train(quick_config(tmp_path, name="c", seed=1, **{"training.epochs": 2})).metrics
    for key in ("test_accuracy", "test_loss"):
        assert first[key] == second[key]
    assert first["test_loss"] != other_seed["test_loss"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    train(quick_config(tmp_path, name="r", **{"training.epochs": 1}))
    resumed = train(quick_config(tmp_path, name="r", **{"training.epochs": 3}), resume=True)
    straight = train(quick_config(tmp_path, name="s", **{"training.epochs": 3}))
    assert resumed.metrics["epochs"] == 3
    # 1 epoch + 2 resumed epochs is the same computation as 3 epochs in a row
    assert resumed.metrics["test_loss"] == pytest.approx(straight.metrics["test_loss"], rel=1e-5)


def test_finished_run_is_not_overwritten_silently(tmp_path):
    from splitpriv.errors import SplitprivError

    train(quick_config(tmp_path, name="r", **{"training.epochs": 1}))
    with pytest.raises(SplitprivError, match="--force"):
        train(quick_config(tmp_path, name="r", **{"training.epochs": 1}))


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"test_accuracy": 0.5})

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(target, {"test_accuracy": 0.9})
    assert json.loads(target.read_text()) == {"test_accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
