"""Are the default black-box decoders strong enough? Against a plain strong decoder, at deep cuts.

MNIST, the classic CNN trained once, attacked at ``pool`` and ``relu3`` (deep cuts, where a decoder
that stops early would overstate privacy most) by the default set's black-box decoders
(``decoder_inversion`` small and large, early stopping with patience 10 on 10 % of the proxy) and by
a plain strong decoder: the ``xlarge`` capacity (64 channels, 3 hidden convolutions), patience 20,
learning rate halved after 5 epochs without improvement, up to 300 epochs, on the whole proxy. Every
decoder sees the same proxy: by default 3,000 held-out MNIST training images, as the MNIST frontier
sweep attacks with (``--proxy-size``). Prints each decoder's MSE and SSIM on the private test images,
whether its early stopping ended it (``patience``: converged) or its epoch cap did, and the ratio of
the best default decoder's MSE to the strong one's (1.0: the default loses nothing; above 1: the
default understates the leak by that factor). Times are each job's CPU seconds (one thread: its wall
time on an idle core), which neither other work on the machine nor a paused job inflates.

Each (cut, decoder) is one job, ``--jobs`` at a time, one thread each. The strong decoder takes hours
on a CPU, so the benchmark keeps what it finished: the trained client and each job's result stay in
``--out``, and a rerun attacks only what is missing (a result counts only for the client checkpoint
it was computed on; ``--fresh`` trains the client again). Each result row names the commit that
produced it.

    python benchmarks/decoder_strength.py --data-root ../shared/data          # CPU: about two hours, two cores
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml
from mnist_bench import parser, train_undefended

from splitpriv.attack_suite import AttackSettings, run_attacks
from splitpriv.attacks import default_attack_specs
from splitpriv.store import CHECKPOINT, CONFIG_FILE, METRICS_FILE, atomic_write_json
from splitpriv.provenance import provenance, source_commit
from splitpriv.runs import load_run

STRONG = {"name": "decoder_inversion", "capacity": "xlarge", "patience": 20, "lr_patience": 5, "max_epochs": 300}
BLACK_BOX = [spec for spec in default_attack_specs(False) if spec["name"] == "decoder_inversion"]
CLIENT = "mnist-undefended"


def result_path(out: str, cut: str, spec: dict) -> Path:
    return Path(out) / cut / f"decoder_inversion-{spec['capacity']}.json"


def attack_one(run_dir: str, client: str, cut: str, spec: dict, samples: int, proxy_size: int, out: str) -> dict:
    """One decoder against the trained client cut at ``cut``; its result is kept in ``out``."""
    torch.set_num_threads(1)
    started = time.process_time()
    settings = AttackSettings(attacks=[spec], samples=samples, proxy_size=proxy_size, classifier_max_epochs=1)
    record = run_attacks(load_run(run_dir).recut(cut), settings, out_dir=result_path(out, cut, spec).with_suffix(""),
                         progress=lambda line: print(f"{cut} {spec['capacity']}: {line}", flush=True))
    result = record["attacks"][f"decoder_inversion/{spec['capacity']}"]
    kept = {"client": client, "spec": spec, "provenance": provenance(), "result": result, "cpu_s": time.process_time() - started}
    atomic_write_json(result_path(out, cut, spec), kept)
    return kept


def kept_result(out: str, cut: str, spec: dict, client: str) -> dict | None:
    path = result_path(out, cut, spec)
    if not path.exists():
        return None
    kept = json.loads(path.read_text())
    return kept if kept["client"] == client and kept["spec"] == spec else None


def main() -> None:
    arguments = parser(__doc__, "/tmp/splitpriv-decoder-strength")
    arguments.add_argument("--cuts", nargs="+", default=["pool", "relu3"])
    arguments.add_argument("--proxy-size", type=int, default=3000, help="proxy images every decoder learns from")
    arguments.add_argument("--jobs", type=int, default=2, help="decoders trained at once, one thread each")
    arguments.add_argument("--fresh", action="store_true", help="train the client again (every kept result is then stale)")
    args = arguments.parse_args()
    run_dir = Path(args.out) / CLIENT
    if args.fresh or not (run_dir / METRICS_FILE).exists():
        run_dir = train_undefended(args, CLIENT, proxy_fraction=0.1).path
    else:
        trained_at = yaml.safe_load((run_dir / CONFIG_FILE).read_text())["resolved"]["provenance"]["commit"]
        print(f"the client trained earlier in {run_dir} (commit {trained_at}): test accuracy "
              f"{json.loads((run_dir / METRICS_FILE).read_text())['test_accuracy']:.4f}")
    client = hashlib.sha256((run_dir / CHECKPOINT).read_bytes()).hexdigest()
    jobs = [(cut, spec) for spec in [*BLACK_BOX, STRONG] for cut in args.cuts]
    results = {(cut, spec["capacity"]): kept_result(args.out, cut, spec, client) for cut, spec in jobs}
    missing = [(cut, spec) for cut, spec in jobs if results[cut, spec["capacity"]] is None]
    print(f"{len(jobs) - len(missing)} of {len(jobs)} decoders kept from earlier runs; attacking {len(missing)}", flush=True)
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {(cut, spec["capacity"]): pool.submit(attack_one, str(run_dir), client, cut, spec, args.samples,
                                                        args.proxy_size, args.out) for cut, spec in missing}
        results.update({key: future.result() for key, future in futures.items()})
    commit = source_commit()
    print(f"\n{'cut':6s} {'decoder':26s} {'MSE':>8s} {'SSIM':>6s} {'epochs':>6s} {'stopped':>9s} {'CPU s':>6s}  commit")
    for cut, spec in sorted(jobs, key=lambda job: args.cuts.index(job[0])):
        kept = results[cut, spec["capacity"]]
        result, summary = kept["result"], kept["result"]["summary"]
        produced = "this one" if kept["provenance"]["commit"] == commit else kept["provenance"]["commit"][:12]
        print(f"{cut:6s} decoder_inversion/{spec['capacity']:8s} {result['mse']:8.4f} {result['ssim']:6.3f} "
              f"{summary['epochs']!s:>6s} {summary.get('stopped', '-'):>9s} {kept['cpu_s']:6.0f}  {produced}")
    for cut in args.cuts:
        default = min(results[cut, spec["capacity"]]["result"]["mse"] for spec in BLACK_BOX)
        strong = results[cut, STRONG["capacity"]]["result"]["mse"]
        print(f"{cut:6s} best default decoder MSE / strong decoder MSE = {default / strong:.2f}")


if __name__ == "__main__":
    main()
