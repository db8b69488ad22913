"""``splitpriv tune``: choose the cut and defense strength from predictions, then train once on the private data."""
from __future__ import annotations

import argparse

from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.commands import predict as predict_command
from splitpriv.commands import sweep as sweep_command

HELP = ("choose the cut, defense and strength of a sweep's grid that meets --target-mse within --max-accuracy-drop "
        "from predictions on public data, train it once on the private data and report how close it landed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    predict_command.add_arguments(parser)
    parser.add_argument("--target-mse", type=float, required=True,
                        help="the least worst-case reconstruction MSE the private run may leave (e.g. 0.02)")
    parser.add_argument("--max-accuracy-drop", type=float, required=True,
                        help="test-accuracy points the defense may cost against the undefended model (e.g. 0.03)")
    parser.add_argument("--threat-model", default="white_box", choices=list(THREAT_MODELS),
                        help="the adversary whose worst case must meet the target (default: white_box)")


def run(args: argparse.Namespace) -> int:
    from splitpriv.tuning import tune

    record = tune(sweep_command.sweep_config(args), args.target_mse, args.max_accuracy_drop, args.threat_model,
                  epochs_share=args.epochs_share, force=args.force)
    chosen = record["chosen"]
    if chosen is None:
        nearest = record["nearest"]
        print(f"INFEASIBLE: no setting of the grid is predicted to leave a worst-case MSE >= {args.target_mse:g} "
              f"({args.threat_model}) within {args.max_accuracy_drop:g} of the undefended accuracy "
              f"{record['predicted_undefended_accuracy']:.3f}; nothing was trained on private data."
              + (f" Nearest: cut {nearest['cut_layer']} {nearest['defense']} {nearest['strength'] or ''}, predicted MSE "
                 f"{nearest['predicted_mse']:.4f}." if nearest else "")
              + " Add stronger settings to the grid or relax a target.")
        return 1
    measured = record["measured"]
    strength = "" if chosen["strength"] is None else f" {chosen['strength']:g}"
    print(f"chosen from predictions: cut {chosen['cut_layer']}, {chosen['defense']}{strength}")
    print(f"{'':28s} {'predicted':>10s} {'measured':>10s}")
    print(f"{'worst-case MSE (' + args.threat_model + ')':28s} {chosen['predicted_mse']:10.4f} {measured['worst_mse']:10.4f}"
          f"   target >= {args.target_mse:g}: {measured['worst_mse'] / args.target_mse:.2f}x the target ({measured['worst_attack']})")
    print(f"{'test accuracy':28s} {chosen['predicted_accuracy']:10.3f} {measured['test_accuracy']:10.3f}"
          f"   drop vs predicted undefended {record['predicted_undefended_accuracy']:.3f}: "
          f"{record['predicted_undefended_accuracy'] - measured['test_accuracy']:+.3f} (max {args.max_accuracy_drop:g})")
    print(f"{'target met' if record['target_met'] else 'TARGET MISSED'}; the private run: {measured['run']}")
    return 0 if record["target_met"] else 1
