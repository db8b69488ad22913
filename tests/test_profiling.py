"""Per-cut profile: exact sizes, FLOPs as torch counts them, timing and calibration."""
import csv
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from splitpriv.cli import main
from splitpriv.models import build_model
from splitpriv.profiling import (BlockProfile, calibrate, fit_calibration, measure_partition_times, profile_cuts,
                                 r_squared)

VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_sizes_by_hand(batch: int) -> list[int]:
    """fp32 bytes after every features layer of VGG16 on 32x32 inputs, from the architecture."""
    sizes, side, channels = [], 32, 3
    for entry in VGG16_CONFIG:
        if entry == "M":
            side //= 2
            sizes.append(batch * channels * side * side * 4)
        else:
            channels = entry
            sizes += [batch * channels * side * side * 4] * 2  # conv, then its ReLU
    return sizes


def test_vgg16_cifar10_batch16_activation_sizes_match_the_shapes():
    rows = profile_cuts(build_model("vgg16", 10, 3, 32), (3, 32, 32), batch_size=16)
    assert rows[0].activation_bytes_fp32 == 16 * 64 * 32 * 32 * 4
    assert [r.activation_bytes_fp32 for r in rows] == vgg16_sizes_by_hand(16)
    assert all(r.activation_bytes_fp16 * 2 == r.activation_bytes_fp32 == r.activation_bytes_int8 * 4 for r in rows)


def test_first_conv_flops_by_hand():
    rows = profile_cuts(build_model("vgg16", 10, 3, 32), (3, 32, 32), batch_size=16)
    # 2 FLOPs per multiply-add: 2 * batch * C_out * H * W * (C_in * 3 * 3)
    assert rows[0].client_flops_forward == 2 * 16 * 64 * 32 * 32 * (3 * 9)


def _torch_count(module, x, backward=False):
    with FlopCounterMode(display=False) as counter:
        out = module(x)
        if backward and out.requires_grad:  # a parameter-free client has no backward
            out.sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name,shape", [("small_cnn", (1, 28, 28)), ("mlp", (1, 8, 8)), ("resnet18", (3, 8, 8))])
def test_flops_match_torch_counter_on_real_tensors(name, shape):
    torch.manual_seed(0)
    model = build_model(name, 10, shape[0], shape[1])
    rows = profile_cuts(model, shape, batch_size=2)
    for row in random.Random(0).sample(rows, min(2, len(rows))):
        client, server = model.split(row.cut_layer)
        x = torch.randn(2, *shape)
        message = client(x).detach()
        assert row.client_flops_forward == _torch_count(client, x)
        assert row.server_flops_forward == _torch_count(server, message)
        assert row.client_flops_train == _torch_count(client, x, backward=True)
        assert row.server_flops_train == _torch_count(server, message.clone().requires_grad_(True), backward=True)
        assert row.client_params + row.server_params == sum(p.numel() for p in model.parameters())


def test_partition_times_are_measured():
    model = build_model("small_cnn", 10, 1, 8)
    rows = profile_cuts(model, (1, 8, 8), batch_size=4)
    measure_partition_times(model, rows, (1, 8, 8), 4, repeats=2, warmup=1)
    assert all(r.client_time_s > 0 and r.server_time_s > 0 for r in rows)


def test_calibration_recovers_a_linear_machine():
    rng = random.Random(1)
    per_flop, per_element = rng.uniform(1e-11, 1e-10), rng.uniform(1e-9, 1e-8)
    blocks = [BlockProfile(f"conv{i}", "Conv2d", (1,), 10, rng.randint(10**6, 10**8), 0, 0, 1, 4) for i in range(5)]
    blocks += [BlockProfile(f"relu{i}", "ReLU", (1,), rng.randint(10**3, 10**5), 0, 0, 0, 0, 0) for i in range(4)]
    times = [b.flops_forward * per_flop if b.flops_forward else b.output_elements * per_element for b in blocks]
    calibration = fit_calibration(blocks, times)
    assert calibration.r2 == pytest.approx(1.0)
    assert calibration.coefficients["Conv2d"][0] == pytest.approx(per_flop, rel=1e-6)
    assert calibration.coefficients["ReLU"][0] == pytest.approx(per_element, rel=1e-6)


def test_r_squared_of_a_bad_fit_is_low():
    measured = torch.tensor([1.0, 2.0, 3.0, 4.0]).numpy()
    assert r_squared(measured, measured) == pytest.approx(1.0)
    assert r_squared(measured, measured[::-1].copy()) < 0


def test_calibrate_reports_an_error_per_cut():
    model = build_model("small_cnn", 10, 1, 8)
    rows = profile_cuts(model, (1, 8, 8), batch_size=4)
    measure_partition_times(model, rows, (1, 8, 8), 4, repeats=2)
    calibration = calibrate(model, (1, 8, 8), 4, rows, repeats=2)
    assert [e["cut_layer"] for e in calibration.cut_errors] == [r.cut_layer for r in rows]
    assert calibration.median_abs_error == calibration.median_abs_error  # not NaN
    assert calibration.effective_flops_per_s > 0


def test_profile_command_without_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPLITPRIV_DATA", str(tmp_path / "no-data-here"))
    out = tmp_path / "profile"
    code = main(["profile", "--model", "vgg16", "--dataset", "cifar10", "--batch-size", "16", "--no-timing", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert [int(r["activation_bytes_fp32"]) for r in rows] == vgg16_sizes_by_hand(16)
    assert (out / "profile.png").stat().st_size > 0


def test_profile_command_on_a_users_registered_model(tmp_path):
    plugin = tmp_path / "tiny.py"
    plugin.write_text(
        "from torch import nn\nfrom splitpriv.models import register_model\n\n"
        "@register_model('tiny_profiled')\n"
        "def tiny(num_classes, in_channels, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 8), nn.ReLU(),\n"
        "                         nn.Linear(8, num_classes))\n")
    out = tmp_path / "profile"
    code = main(["profile", "--model", "tiny_profiled", "--dataset", "digits", "--plugin", str(plugin),
                 "--repeats", "2", "--calibrate", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "profile.csv").open()))
    assert [r["cut_name"] for r in rows] == ["0", "1", "2"]
    assert int(rows[1]["client_flops_forward"]) == 2 * 16 * 64 * 8  # batch 16 x 64 inputs x 8 outputs
    assert (out / "calibration.json").exists() and (out / "this_machine.yaml").exists()


def test_profile_bad_flags_exit_2(tmp_path, capsys):
    assert main(["profile", "--model", "no_such_model", "--no-timing", "--out", str(tmp_path)]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert main(["profile", "--model", "small_cnn", "--dataset", "digits", "--calibrate", "--no-timing"]) == 2
