import json

import pytest
import torch

from splitpriv.cli import main
from splitpriv.config import load_run_config
from splitpriv.experiment import train
from splitpriv.lighten import distill, lighten, nonzero_parameters, prune_magnitude, split_accuracy

# the stated bound: a half-width student distilled for 10 epochs loses at most 5 points on digits
MAX_DISTILLATION_DROP = 0.05




@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    cfg = load_run_config(None, {"out": str(tmp_path_factory.mktemp("runs")), "name": "teacher", "training.progress_bar": False})
    return train(cfg)


def test_distilled_student_is_smaller_and_close_in_accuracy(teacher):
    rows = {r["method"]: r for r in lighten(teacher, methods=("distill",), width=0.5, epochs=10)}
    original, student = rows["original"], rows["distill"]
    assert original["accuracy"] == pytest.approx(teacher.metrics["test_accuracy"], abs=1e-6)
    assert student["parameters"] < original["parameters"] and student["flops"] < original["flops"]
    assert student["size_bytes"] < original["size_bytes"]
    assert student["accuracy_drop"] <= MAX_DISTILLATION_DROP


def test_pruning_zeroes_the_requested_share_of_weights(teacher):
    pruned = prune_magnitude(teacher.client, 0.6)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.6, abs=0.01)
    assert nonzero_parameters(pruned) < nonzero_parameters(teacher.client)
    # the original client is untouched
    assert split_accuracy(teacher.client, teacher.module, teacher.data.dataset("private_test")) == pytest.approx(
        teacher.metrics["test_accuracy"], abs=1e-6)


def test_lighten_command_reports_every_method(teacher, capsys):
    assert main(["lighten", "--run", str(teacher.path), "--methods", "prune", "int8"]) == 0
    rows = json.loads((teacher.path / "lighten.json").read_text())
    assert [r["method"] for r in rows] == ["original", "prune", "int8"]
    int8 = rows[2]
    assert int8["size_bytes"] < rows[0]["size_bytes"] and int8["accuracy_drop"] <= 0.05
    assert all(r["latency_ms"] > 0 for r in rows)
    assert "int8" in capsys.readouterr().out


@pytest.mark.parametrize("flag, value", [("--width", "1.5"), ("--amount", "0"), ("--width", "0")])
def test_bad_fractions_exit_2(flag, value, teacher, capsys):
    assert main(["lighten", "--run", str(teacher.path), flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_distillation_refuses_bad_parameters(teacher):
    with pytest.raises(ValueError, match="temperature"):
        distill(teacher, temperature=0)
