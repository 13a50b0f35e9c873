#!/usr/bin/env python3
"""Side-by-side latency of ConvNeXt V2 on this CPU: PyTorch eager, torch.compile (inductor),
ONNX Runtime, and cnx (`cnx bench --json`), all in one run, same threads, same batch sizes,
random weights. Run by hand (needs torch, transformers, onnxruntime; see
tools/requirements-fixtures.txt), never in CI:

    python tools/bench_peers.py --model tiny-1k-224 --batch 1,8 --threads 2 --runs 10

Prints a Markdown table (median ms, min in brackets) and cnx's median as a ratio of each
peer's.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(fn, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1k-224")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--engines", default="eager,compile,onnx,cnx")
    ap.add_argument("--cnx", default=os.path.join(ROOT, "target", "release", "cnx"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    engines = args.engines.split(",")

    import torch  # after parsing, so --help is fast

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    config = ConvNextV2Config.from_json_file(os.path.join(ROOT, "models", "facebook", f"convnextv2-{args.model}", "config.json"))
    size = config.image_size
    torch.manual_seed(0)
    model = ConvNextV2ForImageClassification(config).eval()
    results = {}  # (engine, batch) -> (median, min)
    notes = []

    def run_torch(fn, name, b, warmup=3):
        x = torch.randn(b, 3, size, size)
        with torch.inference_mode():
            for _ in range(warmup):
                fn(x)
            results[(name, b)] = timed(lambda: fn(x), args.runs)

    if "eager" in engines:
        for b in batches:
            run_torch(model, "torch eager", b)
    if "compile" in engines:
        try:
            compiled = torch.compile(model)
            for b in batches:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    compiled(torch.randn(b, 3, size, size))
                notes.append(f"torch.compile batch {b}: first call (compile) {time.perf_counter() - t0:.1f} s")
                run_torch(compiled, "torch.compile", b)
        except Exception as e:  # report and go on
            notes.append(f"torch.compile failed: {e!r}")
    if "onnx" in engines:
        try:
            import onnxruntime as ort

            path = f"/tmp/convnextv2-{args.model}.onnx"
            if not os.path.exists(path):
                torch.onnx.export(model, (torch.randn(1, 3, size, size),), path, input_names=["pixel_values"],
                                  output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17,
                                  dynamo=False)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            notes.append(f"onnxruntime {ort.__version__}")
            for b in batches:
                x = torch.randn(b, 3, size, size).numpy()
                for _ in range(3):
                    sess.run(None, {"pixel_values": x})
                results[("onnxruntime", b)] = timed(lambda: sess.run(None, {"pixel_values": x}), args.runs)
        except Exception as e:
            notes.append(f"onnxruntime failed: {e!r}")
    if "cnx" in engines:
        if os.path.exists(args.cnx):
            cmd = [args.cnx, "bench", args.model, "--batch", args.batch, "--threads", str(args.threads),
                   "--runs", str(args.runs), "--json"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                r = json.loads(line)
                results[("cnx", r["batch"])] = (r["median_ms"], r["min_ms"])
        else:
            notes.append(f"cnx binary {args.cnx} not found (cargo build --release)")

    names = sorted({e for e, _ in results}, key=lambda e: ["torch eager", "torch.compile", "onnxruntime", "cnx"].index(e))
    print(f"# {args.model}, {size}x{size}, {args.threads} threads, median of {args.runs} runs (min)")
    print(f"command: {' '.join(sys.argv)}; torch {torch.__version__}")
    print("| engine | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---" * (len(batches) + 1) + "|")
    for e in names:
        cells = [f"{results[(e, b)][0]:.1f} ms ({results[(e, b)][1]:.1f})" if (e, b) in results else "-" for b in batches]
        print(f"| {e} | " + " | ".join(cells) + " |")
    if any(e == "cnx" for e, _ in results):
        for e in names:
            if e == "cnx":
                continue
            ratios = [f"{results[('cnx', b)][0] / results[(e, b)][0]:.2f}" if (e, b) in results and ("cnx", b) in results else "-" for b in batches]
            print(f"cnx / {e}: " + ", ".join(f"batch {b}: {r}" for b, r in zip(batches, ratios)))
    for n in notes:
        print(f"note: {n}")
    if args.json:
        for (e, b), (med, mn) in sorted(results.items()):
            print(json.dumps({"engine": e, "model": args.model, "batch": b, "threads": args.threads, "median_ms": med, "min_ms": mn}))


if __name__ == "__main__":
    main()
