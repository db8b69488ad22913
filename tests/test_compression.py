import math
import re

import pytest
import torch
import yaml

from splitpriv.cut import MessageTransform
from splitpriv.errors import ConfigError
from splitpriv.transforms import build_transform
from splitpriv.cli import main
from splitpriv.transforms.compression import Quantize, TopK, measured_message
from splitpriv.config import load_run_config
from splitpriv.experiment import train
from splitpriv.runs import build_module
from splitpriv.models import build_model
from splitpriv.runs import load_run




def _message(seed=0, shape=(6, 8, 5, 5)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3 + 1


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", range(2, 9))
def test_quantize_round_trip_error_within_half_a_step(bits, per_channel):
    message = _message(bits)
    groups = message.flatten(2) if per_channel else message.flatten(1).unsqueeze(1)
    step = (groups.amax(2) - groups.amin(2)) / (2**bits - 1)  # the theoretical bound is step / 2
    error = (Quantize(bits, per_channel=per_channel).transform(message) - message).abs()
    bound = (step / 2).reshape(len(message), -1, *([1] * (message.dim() - 2 if per_channel else 0)))
    assert (error.reshape(groups.shape) <= bound.reshape(*bound.shape[:2], 1) * (1 + 1e-5) + 1e-6).all()
    assert error.max() > 0  # it does quantise


def test_fp16_round_trip_error_within_unit_roundoff():
    message = _message()
    error = (Quantize(format="fp16").transform(message) - message).abs()
    assert (error <= message.abs() * 2**-11).all()


@pytest.mark.parametrize("defense", [Quantize(3), Quantize(8, per_channel=True), Quantize(format="fp16"), TopK(7)],
                         ids=["int3", "int8-channel", "fp16", "topk"])
def test_serialised_bytes_carry_the_message_and_are_what_is_counted(defense):
    message = _message()
    payloads = defense.encode(message)
    assert torch.allclose(defense.decode(payloads, tuple(message.shape[1:])), defense.transform(message), atol=1e-5)
    assert defense.wire_bytes_per_sample(message) == len(payloads[0]) == len(payloads[-1])


def test_packed_sizes_follow_bit_width_and_sparse_encoding():
    message = _message()  # 200 entries per sample
    elements = message[0].numel()
    for bits in range(2, 9):
        assert len(Quantize(bits).encode(message)[0]) == 8 + math.ceil(elements * bits / 8)
    assert len(Quantize(format="fp16").encode(message)[0]) == 2 * elements
    # 200 entries: indices fit one byte; values are fp32
    assert len(TopK(10).encode(message)[0]) == 10 * (4 + 1)


def test_straight_through_gradient_and_topk_gradient_mask():
    message = _message().requires_grad_(True)
    Quantize(2).transform(message).sum().backward()
    assert torch.equal(message.grad, torch.ones_like(message))
    message.grad = None
    kept = TopK(5).transform(message)
    kept.sum().backward()
    assert torch.equal(message.grad != 0, kept != 0)
    assert (message.grad != 0).flatten(1).sum(1).tolist() == [5] * len(message)
    largest = message.detach().abs().flatten(1).topk(5, dim=1).values
    assert torch.equal(kept.detach().abs().flatten(1).topk(5, dim=1).values, largest)


class _Shift(MessageTransform):
    name = "shift_for_test"
    active_at_inference = True

    def transform(self, message):
        return message + 0.5


def test_a_transform_after_a_compression_makes_the_message_dense_again():
    cfg = load_run_config(None, {"transforms": [{"name": "quantize", "bits": 4}]})
    module = build_module(cfg, 10, 1, 8)
    message = module.send(torch.randn(4, 1, 8, 8), training=True)[1]
    assert module.wire_bytes(message) == len(module.cut_pipeline[0].encode(message)[0])
    module.cut_pipeline.append(_Shift())
    assert module.wire_bytes(message) == message[0].numel() * 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for name, transforms in {"fp32": [], "bottleneck": [{"name": "bottleneck", "rate": 0.25}],
                             "int4": [{"name": "quantize", "bits": 4}]}.items():
        cfg = load_run_config(None, {"out": str(out), "name": name, "training.epochs": 4, "training.progress_bar": False,
                                     "transforms": transforms})
        runs[name] = train(cfg)
    return runs


def test_bottleneck_reduces_bytes_by_its_rate_and_still_learns(trained):
    fp32, bottleneck = trained["fp32"], trained["bottleneck"]
    code_width = bottleneck.cut_pipeline[0].encoder.out_channels
    channels = bottleneck.cut_pipeline[0].encoder.in_channels
    assert code_width == round(0.25 * channels)
    for key in ("activation_bytes_per_sample", "gradient_bytes_per_sample"):
        assert bottleneck.metrics[key] == fp32.metrics[key] * code_width / channels
    x = bottleneck.data.dataset("private_test").tensors[0][:3]
    assert len(bottleneck.cut_pipeline[0].encode(bottleneck.client(x))[0]) == bottleneck.metrics["activation_bytes_per_sample"]
    assert bottleneck.metrics["test_accuracy"] > 0.5


def test_quantised_training_counts_serialised_bytes_and_reloads(trained):
    run = trained["int4"]
    x = run.data.dataset("private_test").tensors[0][:3]
    assert run.metrics["activation_bytes_per_sample"] == len(run.cut_pipeline[0].encode(run.send(x))[0])
    assert run.metrics["gradient_bytes_per_sample"] == trained["fp32"].metrics["gradient_bytes_per_sample"]
    measured = measured_message(run.path)  # what the planner reads
    assert (measured.label, measured.cut_layer, measured.bytes_per_sample, measured.learned_reduction) == (
        "quantize(bits=4)", run.cut_layer, run.metrics["activation_bytes_per_sample"], False)
    assert measured_message(trained["bottleneck"].path).learned_reduction
    reloaded = load_run(trained["bottleneck"].path)
    assert torch.equal(reloaded.send(x), trained["bottleneck"].send(x))


@pytest.mark.parametrize("spec, key", [
    ({"name": "quantize", "bits": 1}, "bits"), ({"name": "quantize", "bits": 9}, "bits"),
    ({"name": "quantize", "format": "int4"}, "format"), ({"name": "quantize", "format": "fp16", "bits": 4}, "bits"),
    ({"name": "topk", "k": 0}, "k"),
    ({"name": "bottleneck", "rate": 0}, "rate"), ({"name": "bottleneck", "rate": 1.5}, "rate"),
])
def test_bad_compression_parameters_fail_with_exit_code_2(spec, key, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"transforms": [spec], "out": str(tmp_path)}))
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"transforms[0].{key}" in error and repr(spec[key]) in error
    assert not (tmp_path / "digits-small_cnn-cutNone-seed0").exists()


def test_topk_larger_than_the_message_is_refused():
    cfg = load_run_config(None, {"transforms": [{"name": "topk", "k": 10**6}]})
    with pytest.raises(ValueError, match="at most"):
        build_module(cfg, 10, 1, 8)
    assert build_transform({"name": "topk", "k": 3}).k == 3


@pytest.mark.parametrize("key, name, belongs", [("defenses", "quantize", "transforms"), ("transforms", "dp_noise", "defenses")])
def test_a_component_under_the_wrong_key_is_refused_with_the_right_one(key, name, belongs):
    cfg = load_run_config(None, {key: [{"name": name}]})
    with pytest.raises(ConfigError) as error:
        build_module(cfg, 10, 1, 8)
    assert error.value.key == f"{key}[0].name" and f"under '{belongs}:'" in str(error.value)


def test_planner_enumerates_measured_compressions_at_their_cut(trained):
    from splitpriv.catalogue import load_catalogue
    from splitpriv.errors import SplitprivError
    from splitpriv.models import build_model
    from splitpriv.planner import load_scenario, message_options, model_shape, plan

    int4, bottleneck = trained["int4"], trained["bottleneck"]
    values = {"model": "small_cnn", "dataset": "digits", "chain": ["raspberry_pi_4b", "v100"], "links": ["lte"],
              "compression": ["fp32"], "compression_runs": [str(int4.path), str(bottleneck.path)]}
    scenario = load_scenario(None, values)
    shape = model_shape(build_model("small_cnn", 10, 1, 8), (1, 8, 8), 1)
    options = {o.label: o for o in message_options(scenario, shape)}
    fp32_bytes = trained["fp32"].metrics["activation_bytes_per_sample"]
    assert options["quantize(bits=4)"].kappa == pytest.approx(1 - int4.metrics["activation_bytes_per_sample"] / fp32_bytes)
    assert options["bottleneck(rate=0.25)"].gamma == pytest.approx(0.75) and options["bottleneck(rate=0.25)"].kappa == 0
    plans = plan(scenario, load_catalogue([]), shape, None).plans
    measured = [p for p in plans if p.compression == "quantize(bits=4)"]
    assert measured and all(p.first_cut_layer == int4.cut_layer for p in measured)
    assert all(p.accuracy == pytest.approx(int4.metrics["test_accuracy"]) for p in measured)
    same_cut = {p.links + p.devices: p for p in plans if p.first_cut_layer == int4.cut_layer and p.compression == "fp32"}
    assert all(p.transmission_s[0] < same_cut[p.links + p.devices].transmission_s[0] for p in measured)
    with pytest.raises(SplitprivError, match="mlp"):
        message_options(load_scenario(None, {**values, "model": "mlp"}), shape)


def test_sweep_crosses_compressions_and_exits_and_attacks_each_exit_cut(tmp_path):
    import csv

    import splitpriv.sweep as sweep

    config = {
        "name": "adaptations", "out": str(tmp_path), "cuts": ["pool"], "workers": 1, "defenses": [{"name": "none"}],
        "compressions": [{"name": "none"}, {"name": "quantize", "bits": 4}], "exits": [{}, {"at": ["relu2"]}],
        "training": {"epochs": 1},
        "attack": {"attacks": [{"name": "decoder_inversion", "capacity": "small", "max_epochs": 2, "patience": 1}],
                   "samples": 8, "dcor_samples": 8, "classifier_max_epochs": 1},
        "wandb": {"mode": "disabled"},
    }
    sweep.run_sweep(sweep.load_sweep_config(config), progress=lambda line: None)
    with open(tmp_path / "adaptations" / "frontier.csv", newline="") as handle:
        rows = {(r["cut_name"], r["compression"], r["exits"]): r for r in csv.DictReader(handle)}
    # the exit model is attacked at the sweep's cut and at its exit's cut
    assert set(rows) == {(cut, compression, exits) for compression in ("none", "quantize_bits4")
                         for exits, cuts in (("none", ["pool"]), ("relu2", ["pool", "relu2"])) for cut in cuts}
    for exits in ("none", "relu2"):
        plain, quantised = rows[("pool", "none", exits)], rows[("pool", "quantize_bits4", exits)]
        assert float(quantised["activation_bytes_per_sample"]) < float(plain["activation_bytes_per_sample"])
    assert all(r["worst_mse_white_box"] not in ("", None) for r in rows.values())
    cut_points = build_model("small_cnn", 10, 1, 8).cut_points((1, 8, 8))
    for change, key in (({"exits": [{"at": [99]}]}, "exits[0].at[0]"), ({"compressions": [{"name": "topk", "k": 0}]}, "compressions[0].k")):
        with pytest.raises(ValueError, match=re.escape(key)):
            sweep.grid(sweep.load_sweep_config({**config, **change}), cut_points)


def test_mnist_adaptations_sweep_config_is_valid():
    from pathlib import Path

    import splitpriv.sweep as sweep

    path = Path(__file__).resolve().parents[1] / "experiments" / "mnist_adaptations_sweep.yaml"
    cfg = sweep.load_sweep_config(yaml.safe_load(path.read_text()))
    cells = sweep.grid(cfg, build_model(cfg.model, 10, 1, 28).cut_points((1, 28, 28)))
    assert {c.compression for c in cells} >= {"none", "quantize_bits4", "bottleneck_rate0.25"}
    assert {c.cut_name for c in cells if c.exits != "none"} == {"relu1", "pool", "relu2", "relu3"}
