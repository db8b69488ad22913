"""Bad inputs and damaged state, as a careless or hostile user would give them, against every command.

Each case builds its files, runs the CLI in-process and expects exit code 2 with one message that
names the problem and no traceback; cases that could lose data or run code also check that nothing
was deleted, rewritten or executed.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from splitpriv.cli import main
from splitpriv.config import load_run_config
from splitpriv.experiment import train

FAST_TRAIN = ["--epochs", "1", "--no-progress", "--wandb-mode", "disabled"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny trained run, copied by the cases that damage it."""
    out = tmp_path_factory.mktemp("trained")
    cfg = load_run_config(None, {"out": str(out), "name": "run", "training.epochs": 1, "training.progress_bar": False,
                                 "wandb.mode": "disabled"})
    return train(cfg).path


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    config = {"name": "tiny", "out": str(out), "cuts": [4], "workers": 1, "defenses": [{"name": "none"}],
              "training": {"epochs": 1}, "wandb": {"mode": "disabled"},
              "attack": {"attacks": [{"name": "optimization_inversion", "max_steps": 5}], "samples": 8,
                         "dcor_samples": 8, "classifier_max_epochs": 1}}
    assert main(["sweep", "--config", str(_yaml(out / "sweep.yaml", config))]) == 0
    return out / "tiny"


def _yaml(path: Path, values) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _images(n=40, side=8, dtype=np.uint8):
    return np.random.default_rng(0).integers(0, 255, (n, side, side)).astype(dtype)


def _labels(n=40, classes=4):
    return np.arange(n) % classes


def _copy_run(trained: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(trained, tmp / "copy"))


class Evil:
    """A pickled object that runs a command when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_checkpoint(run: Path, tmp: Path) -> Path:
    torch.save({"state_dict": {"x": Evil(tmp / "PWNED")}, "epoch": 0}, run / "checkpoints" / "last.ckpt")
    return run


def _plugin(tmp: Path, body: str) -> Path:
    path = tmp / "plugin.py"
    path.write_text(body)
    return path


def _truncated_mnist(tmp: Path) -> Path:
    raw = tmp / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        for kind, n in (("images", 3), ("labels", 1)):
            with gzip.open(raw / f"{prefix}-{kind}-idx{n}-ubyte.gz", "wb") as handle:
                handle.write(b"\x00\x00\x08" + bytes([n]) + (1000).to_bytes(4, "big") + b"\x00" * 50)
    return tmp / "data"


@dataclass
class Case:
    name: str
    argv: Callable[[Path, Path, Path], list[str]]  # (tmp, trained run, tiny sweep) -> argv
    expected: str  # in the message
    after: Callable[[Path], None] | None = None  # checks on tmp afterwards (nothing lost, nothing run)


def _unchanged(path: Path, text: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        assert (tmp / path).read_text() == text
    return check


def _absent(name: str) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        assert not (tmp / name).exists(), f"{name} exists: code from a file ran"
    return check


def _victim(tmp: Path) -> list[str]:
    (tmp / "victim").mkdir()
    (tmp / "victim" / "thesis.tex").write_text("precious")
    return ["train", "--out", str(tmp / "a" / "b"), "--name", "../../victim", "--force", *FAST_TRAIN]


def _plugin_run(tmp: Path, trained: Path) -> list[str]:
    run = _copy_run(trained, tmp)
    plugin = _plugin(tmp, f"open({str(tmp / 'PLUGIN_RAN')!r}, 'w').close()\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["plugins"] = [str(plugin)]
    _yaml(run / "config.yaml", config)
    return ["attack", "--run", str(run)]


def _foreign_folder(tmp: Path) -> list[str]:
    (tmp / "runs" / "mine").mkdir(parents=True)
    (tmp / "runs" / "mine" / "notes.txt").write_text("keep me")
    return ["train", "--out", str(tmp / "runs"), "--name", "mine", "--force", *FAST_TRAIN]


def _failed_resume(tmp: Path, trained: Path, damage: Callable[[Path], None]) -> list[str]:
    run = _copy_run(trained, tmp)
    damage(run / "checkpoints" / "last.ckpt")
    (tmp / "config_before.yaml").write_text((run / "config.yaml").read_text())
    return ["train", "--out", str(tmp), "--name", "copy", "--resume", *FAST_TRAIN]


def _config_kept(tmp: Path) -> None:
    assert (tmp / "copy" / "config.yaml").read_text() == (tmp / "config_before.yaml").read_text()


def _sweep_with(tmp: Path, **changes) -> list[str]:
    values = {"name": "bad", "out": str(tmp), "cuts": [1], "workers": 1, "defenses": [{"name": "none"}],
              "training": {"epochs": 1}, "wandb": {"mode": "disabled"}, **changes}
    return ["sweep", "--config", str(_yaml(tmp / "sweep.yaml", values))]


def _foreign_sweep(tmp: Path) -> list[str]:
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "data.txt").write_text("keep")
    return [*_sweep_with(tmp, name="foreign"), "--force"]


def _sweep_copy(tmp: Path, sweep: Path) -> Path:
    copy = Path(shutil.copytree(sweep, tmp / "tiny"))
    values = yaml.safe_load((copy / "sweep.yaml").read_text())
    _yaml(tmp / "sweep.yaml", {**values, "out": str(tmp)})
    return copy


def _junk_cell(tmp: Path, sweep: Path) -> list[str]:
    copy = _sweep_copy(tmp, sweep)
    (copy / "train" / "none-seed0" / "checkpoints" / "last.ckpt").write_bytes(b"junk\n")
    (copy / "results.jsonl").unlink()  # its cell runs again and opens the training
    return ["sweep", "--config", str(tmp / "sweep.yaml")]


def _damaged_record(tmp: Path, sweep: Path) -> list[str]:
    copy = _sweep_copy(tmp, sweep)
    (copy / "sweep.yaml").write_text("- not\n- a mapping\n")
    return ["sweep", "--config", str(tmp / "sweep.yaml")]


def _frontier(tmp: Path, text: str) -> Path:
    (tmp / "s").mkdir()
    (tmp / "s" / "frontier.csv").write_text(text)
    return tmp / "s"


def _scenario(tmp: Path, **changes) -> list[str]:
    values = {**yaml.safe_load(Path("experiments/plan_pi4_v100.yaml").read_text()), **changes}
    return ["plan", "--config", str(_yaml(tmp / "scenario.yaml", values)), "--out", str(tmp / "plan")]


def _cost(tmp: Path, **changes) -> list[str]:
    values = {**yaml.safe_load(Path("experiments/cost_c6i_lambda.yaml").read_text()), **changes}
    return ["cost", "--config", str(_yaml(tmp / "cost.yaml", values)), "--out", str(tmp / "cost")]


def _damaged_config(run: Path) -> None:
    (run / "config.yaml").write_text("model: [unclosed\n")


CASES = [
    # ------------------------------------------------------------------ train: names and folders
    Case("name escapes --out", lambda tmp, r, s: _victim(tmp), "folder name", lambda tmp: (tmp / "victim" / "thesis.tex").read_text() == "precious"),
    Case("absolute name", lambda tmp, r, s: ["train", "--out", str(tmp), "--name", str(tmp / "abs"), *FAST_TRAIN], "--name"),
    Case("hidden name", lambda tmp, r, s: ["train", "--out", str(tmp), "--name", ".hidden", *FAST_TRAIN], "folder name"),
    Case("empty name", lambda tmp, r, s: ["train", "--out", str(tmp), "--name", "", *FAST_TRAIN], "folder name"),
    Case("force on a folder splitpriv did not make", lambda tmp, r, s: _foreign_folder(tmp), "did not create",
         _unchanged(Path("runs/mine/notes.txt"), "keep me")),
    Case("out is a file", lambda tmp, r, s: ["train", "--out", str(_yaml(tmp / "f", {})), *FAST_TRAIN], "is a file"),
    Case("out cannot be created", lambda tmp, r, s: ["train", "--out", "/proc/splitpriv-runs", *FAST_TRAIN], "/proc/splitpriv-runs"),
    Case("finished run without --force", lambda tmp, r, s: ["train", "--out", str(r.parent), "--name", "run", *FAST_TRAIN],
         "already holds a finished run"),
    # ------------------------------------------------------------------ train: numbers
    Case("epsilon inf", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_noise", "--mechanism", "gaussian",
                                           "--epsilon", "inf", *FAST_TRAIN], "--epsilon"),
    Case("epsilon nan", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_noise", "--epsilon", "nan", *FAST_TRAIN], "finite"),
    Case("gaussian epsilon that overflows", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_noise", "--mechanism",
                                                               "gaussian", "--epsilon", "1e6", *FAST_TRAIN], "at most 700"),
    Case("lr inf", lambda tmp, r, s: ["train", "--out", str(tmp), "--lr", "inf", *FAST_TRAIN], "--lr"),
    Case("client lr nan", lambda tmp, r, s: ["train", "--out", str(tmp), "--client-lr", "nan", *FAST_TRAIN], "--client-lr"),
    Case("weight nan", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "distance_correlation", "--weight", "nan",
                                          *FAST_TRAIN], "finite"),
    Case("absurd epochs", lambda tmp, r, s: ["train", "--out", str(tmp), "--epochs", "1000000000", "--no-progress"], "--epochs"),
    Case("zero epochs", lambda tmp, r, s: ["train", "--out", str(tmp), "--epochs", "0"], "--epochs"),
    Case("batch of one with dCor", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "distance_correlation",
                                                      "--batch-size", "1", *FAST_TRAIN], "training.batch_size"),
    Case("negative seed", lambda tmp, r, s: ["train", "--out", str(tmp), "--seed", "-1", *FAST_TRAIN], "--seed"),
    Case("cut out of range", lambda tmp, r, s: ["train", "--out", str(tmp), "--cut-layer", "99", *FAST_TRAIN], "--cut-layer"),
    Case("unknown model", lambda tmp, r, s: ["train", "--out", str(tmp), "--model", "vgg99", *FAST_TRAIN], "--model"),
    Case("unknown dataset", lambda tmp, r, s: ["train", "--out", str(tmp), "--dataset", "imagenet", *FAST_TRAIN], "--dataset"),
    Case("unknown proxy dataset", lambda tmp, r, s: ["train", "--out", str(tmp), "--proxy-dataset", "imagenet", *FAST_TRAIN],
         "proxy_dataset"),
    Case("proxy fraction above one", lambda tmp, r, s: ["train", "--out", str(tmp), "--proxy-fraction", "1.5", *FAST_TRAIN],
         "--proxy-fraction"),
    Case("zero training images", lambda tmp, r, s: ["train", "--out", str(tmp), "--train-size", "0", *FAST_TRAIN], "--train-size"),
    Case("more test images than exist", lambda tmp, r, s: ["train", "--out", str(tmp), "--test-size", "100000", *FAST_TRAIN],
         "at most"),
    Case("threads zero", lambda tmp, r, s: ["train", "--out", str(tmp), "--threads", "0", *FAST_TRAIN], "integer >= 1"),
    Case("unknown defense", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "magic", *FAST_TRAIN], "--defense"),
    Case("defense parameter without defense", lambda tmp, r, s: ["train", "--out", str(tmp), "--epsilon", "8", *FAST_TRAIN],
         "--defense"),
    Case("exit at null", lambda tmp, r, s: ["train", "--config", str(_yaml(tmp / "c.yaml", {"exits": {"at": [None]}})),
                                            "--out", str(tmp), *FAST_TRAIN], "exits.at[0]"),
    Case("lr above 1000", lambda tmp, r, s: ["train", "--out", str(tmp), "--lr", "1e300", *FAST_TRAIN], "(0, 1000]"),
    Case("training that diverges", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "decoder_reconstruction",
                                                      "--weight", "1e300", *FAST_TRAIN], "diverged"),
    Case("dp_sgd budget out of reach", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_sgd", "--target-epsilon",
                                                          "1e-9", *FAST_TRAIN], "target_epsilon"),
    Case("dp_sgd noise multiplier too small", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_sgd",
                                                                 "--noise-multiplier", "1e-300", *FAST_TRAIN], "--noise-multiplier"),
    Case("clip below float32", lambda tmp, r, s: ["train", "--out", str(tmp), "--defense", "dp_noise", "--clip", "1e-300",
                                                  *FAST_TRAIN], "--clip"),
    Case("GPU asked for on a machine without one", lambda tmp, r, s: ["train", "--config", str(_yaml(
        tmp / "c.yaml", {"training": {"accelerator": "gpu"}})), "--out", str(tmp)] if not torch.cuda.is_available()
        else ["train", "--epochs", "0"], "accelerator" if not torch.cuda.is_available() else "--epochs"),
    # ------------------------------------------------------------------ train: config files
    Case("config is a folder", lambda tmp, r, s: ["train", "--config", str(tmp), *FAST_TRAIN], "not a file"),
    Case("config is not UTF-8", lambda tmp, r, s: ["train", "--config", str(_bytes(tmp / "c.yaml", b"\xff\xfe\x00bad")),
                                                   *FAST_TRAIN], "UTF-8"),
    Case("config missing", lambda tmp, r, s: ["train", "--config", str(tmp / "none.yaml"), *FAST_TRAIN], "not found"),
    Case("scalar where a section goes", lambda tmp, r, s: ["train", "--config", str(_yaml(tmp / "c.yaml", {"training": 5})),
                                                           "--out", str(tmp)], "training"),
    Case("list config", lambda tmp, r, s: ["train", "--config", str(_yaml(tmp / "c.yaml", [1, 2]))], "mapping"),
    Case("invalid YAML", lambda tmp, r, s: ["train", "--config", str(_bytes(tmp / "c.yaml", b"a: [b\n"))], "not valid YAML"),
    Case("nan nested in a defense list", lambda tmp, r, s: ["train", "--config", str(_yaml(
        tmp / "c.yaml", {"defenses": [{"name": "dp_noise", "epsilon": float("nan")}]})), "--out", str(tmp)], "defenses[0].epsilon"),
    # ------------------------------------------------------------------ train: data files
    Case("npz float images", lambda tmp, r, s: _npz_argv(tmp, x=_images(dtype=np.float32), y=_labels()), "uint8"),
    Case("npz wrong rank", lambda tmp, r, s: _npz_argv(tmp, x=_images().reshape(40, -1), y=_labels()), "images must be"),
    Case("npz negative label", lambda tmp, r, s: _npz_argv(tmp, x=_images(), y=_labels() - 1), ">= 0"),
    Case("npz zero images", lambda tmp, r, s: _npz_argv(tmp, x=_images(0), y=_labels(0)), "no images"),
    Case("npz mismatched lengths", lambda tmp, r, s: _npz_argv(tmp, x=_images(40), y=_labels(39)), "one per image"),
    Case("npz missing keys", lambda tmp, r, s: _npz_argv(tmp, images=_images(), labels=_labels()), "lacks"),
    Case("npz stray huge label", lambda tmp, r, s: _npz_argv(tmp, x=_images(), y=np.where(np.arange(40) == 3, 1_000_000, _labels())),
         "class indices"),
    Case("npz test label outside training classes", lambda tmp, r, s: _npz_argv(
        tmp, x_train=_images(), y_train=_labels(), x_test=_images(10), y_test=np.full(10, 7)), "outside the training split"),
    Case("npz float labels", lambda tmp, r, s: _npz_argv(tmp, x=_images(), y=_labels() + 0.5), "integer class indices"),
    Case("npz path missing", lambda tmp, r, s: ["train", "--dataset", "npz", "--data-path", str(tmp / "no.npz"), *FAST_TRAIN],
         "not found"),
    Case("npz path is a folder", lambda tmp, r, s: ["train", "--dataset", "npz", "--data-path", str(tmp), *FAST_TRAIN], "a folder"),
    Case("npz not a zip", lambda tmp, r, s: ["train", "--dataset", "npz", "--data-path", str(_bytes(tmp / "x.npz", b"garbage")),
                                             "--out", str(tmp), *FAST_TRAIN], "x.npz"),
    Case("truncated MNIST gz", lambda tmp, r, s: ["train", "--dataset", "mnist", "--data-root", str(_truncated_mnist(tmp)),
                                                  "--out", str(tmp), *FAST_TRAIN], "idx1-ubyte.gz is not a complete IDX file"),
    Case("missing data root", lambda tmp, r, s: ["train", "--dataset", "mnist", "--data-root", str(tmp / "nowhere"), *FAST_TRAIN],
         "--download"),
    # ------------------------------------------------------------------ train: plugins and resume
    Case("plugin raises", lambda tmp, r, s: ["train", "--plugin", str(_plugin(tmp, "x = 1\nraise RuntimeError('boom')\n")),
                                             "--out", str(tmp), *FAST_TRAIN], "line 2"),
    Case("plugin syntax error", lambda tmp, r, s: ["train", "--plugin", str(_plugin(tmp, "def (:\n")), *FAST_TRAIN], "SyntaxError"),
    Case("plugin missing", lambda tmp, r, s: ["train", "--plugin", str(tmp / "no.py"), *FAST_TRAIN], "plugin file not found"),
    Case("resume without a checkpoint", lambda tmp, r, s: ["train", "--out", str(tmp), "--name", "new", "--resume", *FAST_TRAIN],
         "no checkpoint"),
    Case("resume a truncated checkpoint", lambda tmp, r, s: _failed_resume(tmp, r, lambda p: p.write_bytes(p.read_bytes()[:500])),
         "truncated or corrupt", _config_kept),
    Case("resume an empty checkpoint", lambda tmp, r, s: _failed_resume(tmp, r, lambda p: p.write_bytes(b"")),
         "cannot be read", _config_kept),
    Case("resume a malicious checkpoint", lambda tmp, r, s: _failed_resume(tmp, r, lambda p: _malicious_checkpoint(p.parents[1], tmp)),
         "could run code", lambda tmp: (_config_kept(tmp), _absent("PWNED")(tmp))),
    Case("resume with another config", lambda tmp, r, s: [*_failed_resume(tmp, r, lambda p: None), "--cut-layer", "1"],
         "does not fit", _config_kept),
    # ------------------------------------------------------------------ attack
    Case("attack a missing run", lambda tmp, r, s: ["attack", "--run", str(tmp / "nothing")], "no run at"),
    Case("attack a malicious checkpoint", lambda tmp, r, s: ["attack", "--run", str(_malicious_checkpoint(_copy_run(r, tmp), tmp))],
         "could run code", _absent("PWNED")),
    Case("attack a truncated checkpoint", lambda tmp, r, s: ["attack", "--run", str(_truncate(_copy_run(r, tmp) / "checkpoints" / "last.ckpt"))],
         "truncated or corrupt"),
    Case("attack a corrupt config", lambda tmp, r, s: ["attack", "--run", str(_damage(_copy_run(r, tmp), _damaged_config))],
         "config.yaml"),
    Case("attack a config without its resolved section", lambda tmp, r, s: ["attack", "--run", str(_damage(
        _copy_run(r, tmp), lambda run: _yaml(run / "config.yaml", {k: v for k, v in yaml.safe_load((run / "config.yaml").read_text()).items()
                                                                    if k != "resolved"})))], "resolved"),
    Case("attack a damaged metrics.json", lambda tmp, r, s: ["attack", "--run", str(_damage(
        _copy_run(r, tmp), lambda run: (run / "metrics.json").write_text("{not json")))], "metrics.json"),
    Case("attack a run that names a plugin", lambda tmp, r, s: _plugin_run(tmp, r), "--plugin", _absent("PLUGIN_RAN")),
    Case("unknown attack", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", "mind_reading"], "mind_reading"),
    Case("attack parameter of the wrong type", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", "decoder_inversion:lr=abc"],
         "lr"),
    Case("attack lr_patience zero", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", "decoder_inversion:lr_patience=0"],
         "lr_patience"),
    Case("attack parameter nan", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", "optimization_inversion:tv_weight=.nan"],
         "finite"),
    Case("attack spec without a name", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", ":x=1"], "NAME"),
    Case("two attacks under one label", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks", "optimization_inversion",
                                                           "optimization_inversion:tv_weight=0"], "labelled other than"),
    Case("attack zero samples", lambda tmp, r, s: ["attack", "--run", str(r), "--samples", "0"], "--samples"),
    Case("attack three samples (dCor needs 4)", lambda tmp, r, s: ["attack", "--run", str(r), "--samples", "3"], "--samples"),
    Case("attack negative refinements", lambda tmp, r, s: ["attack", "--run", str(r), "--attacks",
                                                           "decoder_inversion:refinements=-1"], "refinements"),
    Case("attack missing proxy file", lambda tmp, r, s: ["attack", "--run", str(r), "--proxy", str(tmp / "p.npz")], "not found"),
    Case("attack proxy overlapping the private data", lambda tmp, r, s: ["attack", "--run", str(r), "--proxy", "digits"], "disjoint"),
    Case("attack unknown proxy data set", lambda tmp, r, s: ["attack", "--run", str(r), "--proxy", "imagenet"], "--proxy"),
    # ------------------------------------------------------------------ predict and tune
    Case("predict name escapes", lambda tmp, r, s: ["predict", *_sweep_with(tmp, name="../x")[1:]], "folder name"),
    Case("predict epochs share above 1", lambda tmp, r, s: ["predict", *_sweep_with(tmp)[1:], "--epochs-share", "2"],
         "epochs_share"),
    Case("predict too few proxy images", lambda tmp, r, s: ["predict", *_sweep_with(tmp, data={"proxy_size": 5})[1:]],
         "too few for a rehearsal"),
    Case("tune negative target", lambda tmp, r, s: ["tune", *_sweep_with(tmp)[1:], "--target-mse", "-1",
                                                     "--max-accuracy-drop", "0.1"], "target_mse"),
    Case("tune accuracy drop above 1", lambda tmp, r, s: ["tune", *_sweep_with(tmp)[1:], "--target-mse", "0.01",
                                                           "--max-accuracy-drop", "2"], "max_accuracy_drop"),
    Case("tune unknown threat model", lambda tmp, r, s: ["tune", *_sweep_with(tmp)[1:], "--target-mse", "0.01",
                                                          "--max-accuracy-drop", "0.1", "--threat-model", "god"], "--threat-model"),
    # ------------------------------------------------------------------ sweep
    Case("sweep cut null", lambda tmp, r, s: _sweep_with(tmp, cuts=[None]), "cuts"),
    Case("sweep cut 1.7", lambda tmp, r, s: _sweep_with(tmp, cuts=[1.7]), "cuts"),
    Case("sweep name escapes", lambda tmp, r, s: _sweep_with(tmp, name="../x"), "folder name"),
    Case("sweep negative seed", lambda tmp, r, s: _sweep_with(tmp, seeds=[-1]), "seeds"),
    Case("sweep nan strength", lambda tmp, r, s: _sweep_with(tmp, defenses=[{"name": "dp_noise", "parameter": "epsilon",
                                                                             "strengths": [float("nan")]}]), "finite"),
    Case("sweep zero workers", lambda tmp, r, s: [*_sweep_with(tmp), "--workers", "0"], "--workers"),
    Case("sweep out is a file", lambda tmp, r, s: [*_sweep_with(tmp), "--out", str(_yaml(tmp / "f", {}))], "is a file"),
    Case("sweep folder with another config", lambda tmp, r, s: ["sweep", "--out", str(s.parent), "--name", "tiny"], "another config"),
    Case("sweep --force on a foreign folder", lambda tmp, r, s: _foreign_sweep(tmp), "did not create",
         lambda tmp: _unchanged(Path("foreign/data.txt"), "keep")(tmp) or sorted(p.name for p in (tmp / "foreign").iterdir()) == ["data.txt"]),
    Case("sweep config unknown key", lambda tmp, r, s: _sweep_with(tmp, epochs=3), "epochs"),
    Case("sweep whose finished training has a junk checkpoint", lambda tmp, r, s: _junk_cell(tmp, s), "cannot be read"),
    Case("sweep record that is not a mapping", lambda tmp, r, s: _damaged_record(tmp, s), "sweep record"),
    # ------------------------------------------------------------------ compare
    Case("compare a missing folder", lambda tmp, r, s: ["compare", str(tmp / "nothing")], "no such folder"),
    Case("compare a frontier without its columns", lambda tmp, r, s: ["compare", str(_frontier(tmp, "a,b\n1,2\n"))],
         "lacks the column"),
    Case("compare a frontier with text in a number", lambda tmp, r, s: ["compare", str(_frontier(
        tmp, "cut_layer,cut_name,defense,strength,test_accuracy,worst_mse,worst_ssim\n1,relu1,none,,0.9,oops,0.5\n"))], "line 2"),
    Case("compare an unknown metric", lambda tmp, r, s: ["compare", str(s), "--metrics", "bogus"], "no such column"),
    Case("compare plotted to a file type matplotlib does not write",
         lambda tmp, r, s: ["compare", str(s), "--plot", str(tmp / "frontier.csv")], "--plot"),
    Case("compare a folder of other files", lambda tmp, r, s: ["compare", str(tmp)], "neither a sweep"),
    # ------------------------------------------------------------------ profile
    Case("profile a terabyte input", lambda tmp, r, s: ["profile", "--input-shape", "3,100000,100000", "--no-timing",
                                                        "--out", str(tmp)], "memory"),
    Case("profile an input too small for the model", lambda tmp, r, s: ["profile", "--model", "vgg11", "--input-shape", "3,8,8",
                                                                       "--no-timing", "--out", str(tmp)], "at least 32x32"),
    Case("profile unknown model", lambda tmp, r, s: ["profile", "--model", "vgg99", "--no-timing", "--out", str(tmp)], "vgg99"),
    Case("profile npz without its path", lambda tmp, r, s: ["profile", "--dataset", "npz", "--no-timing", "--out", str(tmp)],
         "data.path"),
    Case("profile calibrate without timing", lambda tmp, r, s: ["profile", "--no-timing", "--calibrate"], "--calibrate"),
    # ------------------------------------------------------------------ plan and cost
    Case("plan slo nan", lambda tmp, r, s: [*_scenario(tmp), "--slo-s", "nan"], "--slo-s"),
    Case("plan unknown device", lambda tmp, r, s: _scenario(tmp, chain=["toaster", "v100"]), "toaster"),
    Case("plan nan exit rate", lambda tmp, r, s: _scenario(tmp, exit_rates=[float("nan")]), "exit_rates"),
    Case("plan with a damaged sweep", lambda tmp, r, s: [*_scenario(tmp, model="small_cnn", dataset="digits"), "--sweep", str(
        _damage(Path(shutil.copytree(s, tmp / "sweepcopy")), lambda f: (f / "frontier.csv").write_text("x\n1\n")))],
        "frontier.csv"),
    Case("plan with a missing sweep", lambda tmp, r, s: [*_scenario(tmp), "--sweep", str(tmp)], "missing"),
    Case("plan scenario is a list", lambda tmp, r, s: ["plan", "--config", str(_yaml(tmp / "s.yaml", [1]))], "mapping"),
    Case("cost nan slo", lambda tmp, r, s: _cost(tmp, slos_s=[0.02, float("nan")]), "slos_s[1]"),
    Case("cost unknown large vm", lambda tmp, r, s: _cost(tmp, large_vm="m9.huge"), "large_vm"),
    Case("cost large vm without a price", lambda tmp, r, s: _cost(tmp, large_vm="raspberry_pi_4b"), "large_vm"),
    Case("cost catalogue bandwidth nan", lambda tmp, r, s: [*_cost(tmp), "--catalogue", str(_yaml(
        tmp / "cat.yaml", {"links": {"datacenter": {"bandwidth_mbps": float("nan"), "rtt_ms": 1}}}))], "finite"),
    # ------------------------------------------------------------------ exits and lighten
    Case("exits target accuracy above one", lambda tmp, r, s: ["exits", "--run", str(r), "--target-accuracy", "2"], "--target-accuracy"),
    Case("exits on a run without exits", lambda tmp, r, s: ["exits", "--run", str(r), "--target-accuracy", "0.9"],
         "no internal classifiers"),
    Case("exits missing run", lambda tmp, r, s: ["exits", "--run", str(tmp / "none"), "--target-accuracy", "0.9"], "no run folder"),
    Case("lighten width above one", lambda tmp, r, s: ["lighten", "--run", str(r), "--width", "1.5"], "--width"),
    Case("lighten width nan", lambda tmp, r, s: ["lighten", "--run", str(r), "--width", "nan"], "--width"),
    Case("lighten zero epochs", lambda tmp, r, s: ["lighten", "--run", str(r), "--epochs", "0"], "epochs"),
    Case("lighten missing run", lambda tmp, r, s: ["lighten", "--run", str(tmp / "none")], "no run at"),
    # ------------------------------------------------------------------ serve / client
    Case("serve without a shared secret", lambda tmp, r, s: ["serve", "--out", str(tmp)], "shared secret of at least 16"),
    Case("serve negative bandwidth", lambda tmp, r, s: ["serve", "--out", str(tmp), "--bandwidth-mbps", "-1"], "--bandwidth-mbps"),
    Case("client address without a port", lambda tmp, r, s: ["client", "--out", str(tmp), "--server", "host:x"], "expected HOST:PORT"),
    Case("serve with no clients", lambda tmp, r, s: ["serve", "--out", str(tmp), "--clients", "0"], "--clients"),
    Case("serve a fed server for sequential clients", lambda tmp, r, s: ["serve", "--out", str(tmp), "--clients", "2",
                                                                         "--federation", "sequential", "--separate-fed-server"],
         "a fed server averages SplitFed's partitions"),
    Case("client fed server address without a port", lambda tmp, r, s: ["client", "--out", str(tmp), "--fed-server", "h:x"],
         "expected HOST:PORT"),
    Case("federate one client", lambda tmp, r, s: ["federate", "--out", str(tmp), "--clients", "1"], "--clients 2 or more"),
    Case("federate without a shared secret", lambda tmp, r, s: ["federate", "--out", str(tmp)], "shared secret of at least 16"),
    Case("client negative round trip", lambda tmp, r, s: ["client", "--out", str(tmp), "--rtt-ms", "-5"], "--rtt-ms"),
    Case("client secret file missing", lambda tmp, r, s: ["client", "--out", str(tmp), "--secret-file", str(tmp / "none")],
         "cannot read the secret file"),
    Case("client resume without a checkpoint", lambda tmp, r, s: ["client", "--out", str(tmp), "--resume", "--secret-file",
                                                                  str(_secret_file(tmp))], "no checkpoint at"),
    Case("client resume of a local run", lambda tmp, r, s: ["client", "--out", str(r.parent), "--name", r.name, "--resume",
                                                            "--secret-file", str(_secret_file(tmp)), *FAST_TRAIN],
         "not written by 'splitpriv client'"),
    Case("serve resume without a state", lambda tmp, r, s: ["serve", "--out", str(tmp), "--resume", "--secret-file",
                                                            str(_secret_file(tmp))], "no server state at"),
    Case("serve resume of a damaged state", lambda tmp, r, s: ["serve", "--out", str(tmp), "--name", "x", "--resume",
                                                               "--secret-file", str(_secret_file(tmp, "x-server"))],
         "cannot be read"),
    Case("serve resume of sequential clients", lambda tmp, r, s: ["serve", "--out", str(tmp), "--resume", "--clients", "2",
                                                                  "--federation", "sequential", "--secret-file",
                                                                  str(_secret_file(tmp))], "SplitFed's clients averaging"),
    Case("serve resume of one client's state for two", lambda tmp, r, s: [
        "serve", "--out", str(tmp), "--name", "x", "--resume", "--clients", "2", "--secret-file",
        str(_secret_file(tmp, "x-server", one_client_state=True))], "not saved by a serve process of 2 SplitFed clients"),
]


def _secret_file(tmp: Path, damaged_state: str | None = None, one_client_state: bool = False) -> Path:
    """A shared secret in a file (and, for ``damaged_state``, a truncated server state in that folder, or
    with ``one_client_state`` a state saved for one client)."""
    if damaged_state:
        (tmp / damaged_state).mkdir()
        state = tmp / damaged_state / "server.ckpt"
        if one_client_state:
            torch.save({"server": {}, "optimizer": {}, "step": 9}, state)
        else:
            state.write_bytes(b"PK\x03\x04 truncated")
    path = tmp / "secret"
    path.write_text("a-test-secret-of-32-characters!!\n")
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:1000])
    return path.parents[1]


def _damage(path: Path, damage: Callable[[Path], None]) -> Path:
    damage(path)
    return path


def _npz_argv(tmp: Path, **arrays) -> list[str]:
    return ["train", "--dataset", "npz", "--data-path", str(_npz(tmp / "data.npz", **arrays)), "--out", str(tmp / "runs"), *FAST_TRAIN]


def test_there_are_at_least_60_cases_and_every_command_has_some(tmp_path, trained, tiny_sweep, monkeypatch):
    from splitpriv.cli import COMMANDS

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    commands = []
    for i, case in enumerate(CASES):
        (tmp_path / str(i)).mkdir()
        commands.append(case.argv(tmp_path / str(i), trained, tiny_sweep)[0])
    assert len(CASES) >= 60 and set(commands) == set(COMMANDS)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_message_and_exit_2(case, tmp_path, trained, tiny_sweep, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # experiments/ paths
    monkeypatch.delenv("SPLITPRIV_SECRET", raising=False)
    argv = case.argv(tmp_path, trained, tiny_sweep)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == 2, f"exit {code}: {output[-2000:]}"
    assert "Traceback" not in output and "unexpected internal error" not in output, output[-2000:]
    assert case.expected in output, output[-2000:]
    if case.after:
        assert case.after(tmp_path) is not False


def test_wandb_online_without_a_key_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    assert main(["train", "--out", str(tmp_path), "--wandb-mode", "online", "--epochs", "1", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "wandb login" in error and "--wandb-mode offline" in error and "Traceback" not in error


def test_an_internal_bug_keeps_its_traceback_and_says_so(monkeypatch, capsys):
    import splitpriv.commands.compare as compare

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(compare, "run", broken)
    assert main(["compare", "."]) == 1
    error = capsys.readouterr().err
    assert "Traceback" in error and "ZeroDivisionError: a bug" in error and "a bug in splitpriv" in error
