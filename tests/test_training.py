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


def test_a_checkpoint_with_one_optimizer_per_party_resumes_into_one_optimizer(tmp_path, monkeypatch):
    """A run interrupted while each party had its own optimizer (the two-pass layout, and every
    checkpoint of splitpriv before one optimizer stepped both) resumes into the one-optimizer layout
    with each party's Adam state: the same weights as the two-optimizer run resumed as it was."""
    from splitpriv.training import SplitLearningModule

    def train_then_resume(name):
        train(quick_config(tmp_path, name=name, **{"training.epochs": 1}))
        return train(quick_config(tmp_path, name=name, **{"training.epochs": 2}), resume=True)

    with monkeypatch.context() as two_optimizers:
        two_optimizers.setattr(SplitLearningModule, "one_backward_pass", property(lambda self: False))
        as_saved = train_then_resume("two")
        train(quick_config(tmp_path, name="joined", **{"training.epochs": 1}))
    joined = train(quick_config(tmp_path, name="joined", **{"training.epochs": 2}), resume=True)
    for name, value in as_saved.module.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, joined.module.state_dict()[name]), name


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


# ----------------------------------------------------------------------------- precision and accelerators


class CountBackwardsAndSteps(__import__("lightning").Callback):
    """Lightning calls these hooks only for backward passes and steps that go through its API."""

    def __init__(self):
        self.backwards, self.steps = 0, 0

    def on_before_backward(self, trainer, module, loss):
        self.backwards += 1

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.steps += 1


def count_passes(tmp_path, **overrides) -> tuple[int, int, int]:
    """(backward passes, optimizer steps, batches) of one epoch of training."""
    import lightning as L

    from splitpriv.data import make_splits
    from splitpriv.experiment import loaders
    from splitpriv.runs import build_module

    cfg = quick_config(tmp_path, **overrides)
    data = make_splits(cfg.data, cfg.seed)
    module = build_module(cfg, data.info.num_classes, data.info.in_channels, data.info.image_size)
    counter = CountBackwardsAndSteps()
    train_loader, _, _ = loaders(data, 64, 0)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[counter], enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, train_loader)
    return counter.backwards, counter.steps, len(train_loader)


def test_both_parties_update_through_lightnings_precision_plugin(tmp_path):
    """Backward passes and steps go through manual_backward and the wrapped optimizers, which is
    what lets a precision plugin or strategy act on them: one pass through both parties and one step
    (a parameter group per party) per batch; two passes and a step of each party's optimizer when a
    client loss term needs the server's returned gradient, or when the parties' optimizers differ."""
    backwards, steps, batches = count_passes(tmp_path)
    assert (backwards, steps) == (batches, batches)
    backwards, steps, batches = count_passes(tmp_path, **{"training.server_optimizer.name": "sgd"})
    assert (backwards, steps) == (batches, 2 * batches)
    backwards, steps, batches = count_passes(tmp_path, defenses=[{"name": "distance_correlation"}])
    assert (backwards, steps) == (2 * batches, 2 * batches)


@pytest.mark.parametrize("pipeline", [
    {},
    {"defenses": [{"name": "dp_noise", "epsilon": 8.0, "noise_seed": 1}]},
    {"transforms": [{"name": "quantize", "bits": 4}], "exits.at": ["relu1", "fc1"]},
    {"training.precision": "bf16-mixed"},
    {"training.client_optimizer.name": "sgd", "training.client_optimizer.lr": 0.05, "training.client_optimizer.momentum": 0.5,
     "training.server_optimizer.name": "sgd", "training.server_optimizer.lr": 0.02, "training.server_optimizer.weight_decay": 1e-3},
    {"training.client_optimizer.lr": 3e-3, "training.server_optimizer.name": "adamw", "training.server_optimizer.weight_decay": 0.1},
], ids=["undefended", "dp_noise", "quantize+exits", "bf16-mixed", "sgd-per-party-settings", "adam-client-adamw-server"])
def test_one_backward_pass_trains_the_same_weights_as_the_split_passes(tmp_path, monkeypatch, pipeline):
    """The one-pass shortcut (one optimizer, a parameter group per party, when both parties name the
    same optimizer) against the plain split step (server backward and its own optimizer's step,
    then the client back-propagating the returned gradient and stepping its own), over three epochs
    of training: the same weights."""
    from splitpriv.training import SplitLearningModule

    one_pass = train(quick_config(tmp_path, name="one", **pipeline))
    monkeypatch.setattr(SplitLearningModule, "one_backward_pass", property(lambda self: False))
    two_passes = train(quick_config(tmp_path, name="two", **pipeline))
    weights = two_passes.module.state_dict()
    assert weights.keys() == one_pass.module.state_dict().keys()
    for name, value in one_pass.module.state_dict().items():
        if isinstance(value, torch.Tensor):  # not a component's extra state (its accounting)
            assert torch.equal(value, weights[name]), name
    assert one_pass.metrics["test_accuracy"] == two_passes.metrics["test_accuracy"]


def test_bf16_mixed_sends_bfloat16_messages_and_learns(tmp_path):
    """Under bf16-mixed the client's forward is autocast: the message crossing the cut is bfloat16
    (half the bytes on the wire), and training still learns the digits."""
    full = train(quick_config(tmp_path, name="fp32"))
    half = train(quick_config(tmp_path, name="bf16", **{"training.precision": "bf16-mixed"}))
    assert half.metrics["activation_bytes_per_sample"] * 2 == full.metrics["activation_bytes_per_sample"]
    assert half.metrics["gradient_bytes_per_sample"] * 2 == full.metrics["gradient_bytes_per_sample"]
    assert half.metrics["test_accuracy"] > 0.5  # chance is 0.1; 32-true reaches about 0.8 in 3 epochs


@pytest.mark.parametrize("defense", ["dp_sgd", "dp_noise"])
def test_a_dp_defense_under_bf16_is_refused_naming_both(tmp_path, defense):
    """dp_sgd: Opacus' per-sample gradients are float32; dp_noise: its noise would be rounded to bfloat16."""
    from splitpriv.errors import ConfigError

    with pytest.raises(ConfigError, match=f"training.precision.*32-true with {defense}"):
        train(quick_config(tmp_path, defenses=[{"name": defense}], **{"training.precision": "bf16-mixed"}))
    assert not any(tmp_path.iterdir())  # refused before a run folder is made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU path is tested above)")
def test_a_gpu_trained_bf16_run_is_attacked_and_resumed_on_the_cpu(tmp_path):
    from splitpriv.attack_suite import AttackSettings, run_attacks

    run = train(quick_config(tmp_path, name="gpu", **{"training.accelerator": "gpu", "training.precision": "bf16-mixed"}))
    assert run.metrics["test_accuracy"] > 0.5
    loaded = load_run(tmp_path / "gpu")  # read onto the CPU
    assert next(loaded.module.parameters()).device.type == "cpu"
    for accelerator, device in ((None, "cuda"), ("cpu", "cpu")):  # the run's own device, then the CPU
        record = run_attacks(loaded, AttackSettings(attacks=[{"name": "decoder_inversion", "capacity": "small", "max_epochs": 3}],
                                                    samples=16, classifier_max_epochs=1, accelerator=accelerator), progress=None)
        assert record["device"].startswith(device)
        assert record["attacks"]["decoder_inversion/small"]["mse"] < 1
    resumed = train(quick_config(tmp_path, name="gpu", **{"training.accelerator": "cpu", "training.epochs": 4}), resume=True)
    assert resumed.metrics["epochs"] == 4
