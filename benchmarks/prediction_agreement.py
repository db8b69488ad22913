"""How well ``splitpriv predict`` foresees a measured sweep, and what it costs.

Runs ``splitpriv predict`` and ``splitpriv sweep`` on the same config (default: the default digits
sweep) into one fresh folder, each timed, then prints from the folder's ``agreement.json``:

- per threat model, the Spearman rank correlation over all cells between the measured worst-case MSE
  and the prediction, and that of each signal alone (the linear decoder's MSE; dFIL: the unbiased
  bound for noisy clients, 1 / Jacobian norm for deterministic ones): which one carries the prediction;
- the predicted test accuracy's mean absolute error and rank correlation;
- the prediction's wall time as a fraction of the sweep's (target <= 10 %);
- the same with rehearsals as long as the private runs (``--epochs-share 1``; ``--no-full-share`` skips it).

``--from FOLDER`` runs nothing and prints the same from a sweep folder where ``splitpriv predict`` ran,
then ``splitpriv sweep``, then ``splitpriv predict`` again (which writes the agreement): predict's wall
time as it recorded it, the sweep's from its start (``provenance.json``) to its ``frontier.csv``.

    python benchmarks/prediction_agreement.py                                    # digits: ~13 min on 2 cores
    python benchmarks/prediction_agreement.py --config experiments/mnist_prediction_sweep.yaml \
        --data-root ../shared/data --no-full-share                               # MNIST: ~75 min on 2 cores
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="a sweep config (default: the default digits sweep)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="parent folder of the sweep folder (default: a temporary one)")
    parser.add_argument("--plot", default=None, help="also copy predicted_vs_measured.png here")
    parser.add_argument("--no-full-share", action="store_true", help="skip the --epochs-share 1 measurement")
    parser.add_argument("--from", dest="existing", type=Path, default=None,
                        help="a sweep folder where predict, sweep and predict ran: run nothing, print its numbers")
    args = parser.parse_args()
    folder, record, predict_s, sweep_s, full, full_s = recorded(args.existing) if args.existing else measured(args)
    if args.plot:
        shutil.copyfile(folder / "predicted_vs_measured.png", args.plot)
    agreement = record["agreement"]
    print(f"sweep {folder.name}: {agreement['cells']} cells; prediction from {record['rehearsals']} rehearsals on "
          f"{record['rehearsal_samples']} public training images (the private runs train on {record['private_samples']})")
    print(f"\n{'threat model':12s} {'Spearman: predicted':>20s} {'linear decoder':>15s} {'dFIL':>7s} {'cells':>6s}")
    for model, row in agreement["threat_models"].items():
        print(f"{model:12s} {row['spearman_predicted']:20.3f} {row['spearman_linear_decoder_mse']:15.3f} "
              f"{row['spearman_fisher']:7.3f} {row['cells']:6d}")
    print(f"\ntest accuracy: mean absolute error {agreement['accuracy_mae']:.3f}, Spearman {agreement['accuracy_spearman']:.3f}")
    print(f"wall time: predict {predict_s:.0f} s, sweep {sweep_s:.0f} s; predict / sweep = {predict_s / sweep_s:.1%} (target <= 10 %)")
    if full is not None:
        print(f"with --epochs-share 1: predict {full_s:.0f} s ({full_s / sweep_s:.1%}); accuracy error "
              f"{full['agreement']['accuracy_mae']:.3f}; Spearman "
              + ", ".join(f"{m} {r['spearman_predicted']:.3f}" for m, r in full["agreement"]["threat_models"].items()))


def measured(args) -> tuple[Path, dict, float, float, dict | None, float | None]:
    """Run predict, sweep, (predict --epochs-share 1,) predict into a fresh folder, each timed."""
    out = Path(args.out or tempfile.mkdtemp(prefix="splitpriv-prediction-"))
    shared = ["--out", str(out), "--wandb-mode", "disabled", *(["--config", args.config] if args.config else []),
              *(["--data-root", args.data_root] if args.data_root else [])]
    cli = [sys.executable, "-m", "splitpriv.cli"]
    predict_s = timed([*cli, "predict", *shared])  # first: nothing measured exists yet
    sweep_s = timed([*cli, "sweep", *shared])
    full = full_s = None
    if not args.no_full_share:
        full_s = timed([*cli, "predict", *shared, "--epochs-share", "1"])  # each rehearsal as long as the private run
        full = agreement_record(out)
    timed([*cli, "predict", *shared])  # the default share again, now beside the measured frontier
    folder = next(path.parent for path in out.glob("*/agreement.json"))
    return folder, agreement_record(out), predict_s, sweep_s, full, full_s


def recorded(folder: Path) -> tuple[Path, dict, float, float, None, None]:
    """The same from a folder where predict, sweep and predict ran; prints what produced it."""
    record = json.loads((folder / "agreement.json").read_text())
    if "agreement" not in record:
        raise SystemExit(f"{folder} holds no agreement: run `splitpriv predict` there again after the sweep")
    provenance = json.loads((folder / "provenance.json").read_text())
    if provenance["resumed"]:
        raise SystemExit(f"the sweep in {folder} was resumed, so its wall time is not recorded; time a fresh one")
    started = provenance["started"]
    print(f"tabulated from {folder.name}: `{record['provenance']['command']}` at commit {record['provenance']['commit']}, "
          f"then `{started['command']}` at commit {started['commit']}\n")
    # one uninterrupted sweep: from its start to its frontier.csv
    sweep_s = (folder / "frontier.csv").stat().st_mtime - datetime.datetime.fromisoformat(started["created_utc"]).timestamp()
    return folder, record, record["wall_s"], sweep_s, None, None


def agreement_record(out: Path) -> dict:
    return json.loads(next(out.glob("*/agreement.json")).read_text())


if __name__ == "__main__":
    main()
