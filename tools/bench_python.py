"""The Python package's call overhead: `model(pixel_values)` from Python against `cnx bench` on
the same model, batch and threads, in alternating rounds (the machine is noisy; the ratio of
each round is what counts). Needs the `cnx` wheel installed in the running interpreter and a
release `cnx` binary.

usage: python tools/bench_python.py [--model tiny-1k-224] [--batch 1,8] [--threads 2]
                                    [--runs 20] [--rounds 5] [--cnx target/release/cnx]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import cnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_cli(binary, model_dir, batch, threads, runs):
    """`cnx bench`'s median (ms) on the model directory."""
    out = subprocess.run(
        [binary, "bench", model_dir, "--batch", str(batch), "--threads", str(threads),
         "--runs", str(runs), "--backend", "jit", "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[0])["median_ms"]


def bench_python(model, x, runs, warmup=3):
    """The median (ms) of `model(x)` after `warmup` calls."""
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny-1k-224")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cnx", default=os.path.join(ROOT, "target", "release", "cnx"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "model")
        subprocess.run([args.cnx, "random-model", args.model, "--output", model_dir],
                       check=True, capture_output=True)
        model = cnx.ConvNextV2ForImageClassification.from_pretrained(
            model_dir, threads=args.threads)
        size = model.config.image_size
        rng = np.random.default_rng(0)
        for batch in [int(b) for b in args.batch.split(",")]:
            x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
            cli, py = [], []
            for _ in range(args.rounds):
                cli.append(bench_cli(args.cnx, model_dir, batch, args.threads, args.runs))
                py.append(bench_python(model, x, args.runs))
            ratios = [p / c for p, c in zip(py, cli)]
            print(f"{args.model} batch {batch}, {args.threads} threads, {args.rounds} rounds: "
                  f"cnx bench {statistics.median(cli):.2f} ms (rounds "
                  f"{min(cli):.1f}-{max(cli):.1f}), model(pixel_values) "
                  f"{statistics.median(py):.2f} ms ({min(py):.1f}-{max(py):.1f}), "
                  f"ratio {statistics.median(ratios):.3f} "
                  f"(rounds {min(ratios):.3f}-{max(ratios):.3f})")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
