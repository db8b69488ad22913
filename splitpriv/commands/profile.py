"""``splitpriv profile``: sizes, FLOPs, parameters and measured time at every cut of a model."""
from __future__ import annotations

import argparse
from pathlib import Path

from splitpriv.errors import ConfigError

HELP = "profile every cut of a model: message size, FLOPs, parameters, measured time (profile.csv, profile.png)"


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1 or shape[1] != shape[2]:
        raise argparse.ArgumentTypeError(f"expected C,H,W with H == W >= 1, got {text!r}")
    return shape


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="vgg16", help="small_cnn, mlp, vgg11, vgg16, resnet18 or a --plugin's model")
    parser.add_argument("--dataset", default="cifar10",
                        help="whose input shape to profile (known sets need no data on disk)")
    parser.add_argument("--data-root", help="data root, only for data sets of unknown shape")
    parser.add_argument("--data-path", help="the .npz file for --dataset npz")
    parser.add_argument("--input-shape", type=_shape, help="C,H,W instead of the data set's (e.g. 3,64,64)")
    parser.add_argument("--num-classes", type=_positive, help="classes of the model's output (with --input-shape)")
    parser.add_argument("--batch-size", type=_positive, default=16, help="samples per message")
    parser.add_argument("--plugin", action="append", default=[], help="python file registering models (repeatable)")
    parser.add_argument("--repeats", type=_positive, default=5, help="timed runs per partition (median reported)")
    parser.add_argument("--warmup", type=_non_negative, default=1, help="unmeasured runs before timing")
    parser.add_argument("--no-timing", action="store_true", help="sizes and FLOPs only (instant)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit this machine's time per FLOP per layer type (R^2) and report the latency "
                             "prediction error against the measured split forward at every cut")
    parser.add_argument("--threads", type=_positive, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", help="output folder (default: runs/profile-<model>-<dataset>-b<batch>)")


def run(args: argparse.Namespace) -> int:
    import torch

    from splitpriv.data import dataset_shape
    from splitpriv.models import build_model, largest_activation_bytes
    from splitpriv.profiling import (calibrate, check_fits_in_memory, measure_partition_times, plot_activation_sizes, profile_cuts,
                                     write_profile_csv)
    from splitpriv.store import atomic_write_json, atomic_write_yaml, import_plugins

    if args.no_timing and args.calibrate:
        raise ConfigError("--calibrate", "with --no-timing", "--calibrate without --no-timing (calibration needs timing)")
    import_plugins(args.plugin)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.input_shape:
        num_classes, input_shape = args.num_classes or 10, args.input_shape
    else:
        num_classes, input_shape = dataset_shape(args.dataset, args.data_root, args.data_path)
    check_fits_in_memory(largest_activation_bytes(args.model, num_classes, input_shape, args.batch_size),
                         f"--input-shape {','.join(map(str, input_shape))} with --batch-size {args.batch_size}")
    model = build_model(args.model, num_classes, input_shape[0], input_shape[-1])
    source = "x".join(map(str, input_shape)) if args.input_shape else args.dataset
    out = Path(args.out or f"runs/profile-{args.model}-{source}-b{args.batch_size}")

    rows = profile_cuts(model, input_shape, args.batch_size)
    if not args.no_timing:
        measure_partition_times(model, rows, input_shape, args.batch_size, args.repeats, args.warmup, progress=print)
    write_profile_csv(rows, out / "profile.csv")
    input_bytes = args.batch_size * int(torch.Size(input_shape).numel()) * 4
    plot_activation_sizes(rows, input_bytes, out / "profile.png",
                          f"hidden variable size per split layer: {args.model}, {source}, batch {args.batch_size}")
    _print_table(rows)
    if args.calibrate:
        calibration = calibrate(model, input_shape, args.batch_size, rows, args.repeats, args.warmup)
        atomic_write_json(out / "calibration.json", calibration.to_dict())
        atomic_write_yaml(out / "this_machine.yaml", {"devices": {"this_machine": {
            "kind": "cpu", "flops_per_s": round(calibration.effective_flops_per_s),
            "price_per_hour": None}}})
        _print_calibration(calibration, torch.get_num_threads())
    print(f"wrote {out / 'profile.csv'} and {out / 'profile.png'}" + (f", {out / 'calibration.json'} and "
          f"{out / 'this_machine.yaml'} (use it with 'splitpriv plan --catalogue')" if args.calibrate else ""))
    return 0


def _print_table(rows) -> None:
    print(f"{'cut':>3}  {'layer':<18} {'output':<16} {'fp32 bytes':>11} {'client GFLOP':>12} {'server GFLOP':>12} "
          f"{'client ms':>9} {'server ms':>9}")
    for r in rows:
        print(f"{r.cut_layer:>3}  {r.cut_name:<18} {r.output_shape:<16} {r.activation_bytes_fp32:>11,} "
              f"{r.client_flops_forward / 1e9:>12.3f} {r.server_flops_forward / 1e9:>12.3f} "
              f"{_ms(r.client_time_s):>9} {_ms(r.server_time_s):>9}")


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1e3:.2f}"  # NaN: not timed


def _print_calibration(calibration, threads: int) -> None:
    print(f"\ncalibration on this machine ({threads} torch threads): per-layer-type regression R^2 = {calibration.r2:.3f}; "
          f"effective {calibration.effective_flops_per_s / 1e9:.1f} GFLOP/s overall")
    for layer_type, (slope, intercept) in calibration.coefficients.items():
        unit = calibration.units[layer_type]
        print(f"  {layer_type:<12} {slope * 1e12:10.3f} ps/{unit} + {intercept * 1e3:7.3f} ms")
    print(f"latency prediction error, end-to-end split forward: median |error| = {calibration.median_abs_error:.1%} "
          f"over {len(calibration.cut_errors)} cuts (client and server partitions alone: "
          f"{calibration.median_abs_partition_error:.1%})")
    print("  per cut (predicted / measured - 1): "
          + " ".join(f"{e['cut_layer']}:{e['end_to_end_error']:+.0%}" for e in calibration.cut_errors))
