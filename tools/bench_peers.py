#!/usr/bin/env python3
"""Forward-pass latency of ConvNeXt V2 side by side, in one run on this machine: PyTorch eager,
torch.compile (inductor, default mode), ONNX Runtime (CPU execution provider) and cnx's own
`cnx bench --json`, in float32; and in int8: ONNX Runtime's `quantize_dynamic` (QInt8 weights
per channel, the MatMuls; reduce_range where the CPU has no VNNI), PyTorch's dynamic
quantisation of `nn.Linear` (x86 engine) and `cnx bench --precision int8`. Random weights
(timing only), same threads and batch sizes for all.

    python tools/bench_peers.py --model tiny-1k-224 --batch 1,8 --threads 2 --runs 10 \
        [--engines eager,compile,onnx,cnx,eager-int8,onnx-int8,cnx-int8] \
        [--cnx target/release/cnx] [--warmup 3] [--json]

The model is `transformers.ConvNextV2ForImageClassification` built from the committed
`models/facebook/convnextv2-<model>/config.json` (never the network: HF_HUB_OFFLINE=1), input
image_size x image_size. Each engine/batch: warm-up runs (torch.compile: the first call, which
compiles, is timed and reported apart, then --warmup more), then --runs timed forward passes
(time.perf_counter, inside torch.inference_mode() for the torch engines); median and min ms,
images/s. The ONNX file (torch.onnx.export, dynamic batch axis) is cached under /tmp.

Output: a Markdown table (engine rows x batch columns, "median ms (min)"), images/s, the ratio
of cnx's median to each engine's, versions and the exact command line. With --json, stdout
holds only one JSON object per (engine, batch) line and the Markdown report goes to stderr.
An engine that fails is reported (error message) and the others go on. Needs torch,
transformers, onnxruntime, onnx, onnxscript (tools/requirements-fixtures.txt); never run in CI.
"""

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ["eager", "compile", "onnx", "cnx", "eager-int8", "onnx-int8", "cnx-int8"]
LABEL = {"eager": "torch eager", "compile": "torch.compile", "onnx": "onnxruntime", "cnx": "cnx",
         "eager-int8": "torch dynamic int8", "onnx-int8": "onnxruntime int8", "cnx-int8": "cnx int8"}
F32_PEERS = ["eager", "compile", "onnx"]
INT8_PEERS = ["eager-int8", "onnx-int8"]


def has_vnni():
    """Whether the CPU has AVX-512 VNNI or AVX-VNNI (/proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "").split()
        return "avx512_vnni" in flags or "avx_vnni" in flags
    except OSError:
        return False


def quantize_onnx(src, dst, vnni):
    """ONNX Runtime's dynamic quantisation of `src`: QInt8 weights per output channel, the
    MatMul ops (the 1x1 convs and the classifier), activations u8 per tensor at run time;
    reduce_range (7-bit weights) without VNNI, as its documentation advises."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=not vnni, op_types_to_quantize=["MatMul"])
CACHE = "/tmp/cnx-bench-peers"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(fn, runs):
    """Median and min wall time of `runs` calls, in ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), times


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_busy(interval=0.5):
    """Share of all CPUs' time spent busy over `interval` s (Linux /proc/stat), else None."""

    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return sum(v), idle

    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
        return 1 - (i1 - i0) / max(t1 - t0, 1)
    except (OSError, ValueError, IndexError):
        return None


def numpy_sgemm_gflops(threads, n=2048, runs=9):
    """numpy's float32 matmul n^3 (OpenBLAS), in a child process whose BLAS has `threads`
    threads: the median rate of `runs` products after one warm-up."""
    code = f"""
import time, statistics, numpy as np
rng = np.random.default_rng(0)
a, b = (rng.standard_normal(({n}, {n})).astype(np.float32) for _ in range(2))
a @ b
times = []
for _ in range({runs}):
    t = time.perf_counter(); a @ b; times.append(time.perf_counter() - t)
print(2 * {n} ** 3 / statistics.median(times) / 1e9)
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-1k-224", help="e.g. tiny-1k-224 (models/facebook/convnextv2-<model>)")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="timed runs per engine and batch")
    ap.add_argument("--warmup", type=int, default=3, help="warm-up runs (torch.compile: after compiling)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="subset of " + ",".join(ENGINES))
    ap.add_argument("--cnx", default=os.path.join(ROOT, "target", "release", "cnx"), help="the cnx binary")
    ap.add_argument("--cnx-backend", default="jit", choices=["jit", "interp"], help="cnx bench --backend (default: jit, cnx run's)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="disable inductor's on-disk caches, so the compile time is a cold one")
    ap.add_argument("--json", action="store_true", help="one JSON object per (engine, batch) on stdout")
    ap.add_argument("--sgemm", action="store_true",
                    help="also measure numpy's float32 GEMM 2048^3 on --threads threads (the machine's "
                         "SGEMM peak that issue 14's efficiency targets divide by)")
    args = ap.parse_args()
    try:
        args.batches = [int(b) for b in args.batch.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batch: expected comma-separated integers, got {args.batch!r}")
    if not args.batches or min(args.batches) < 1:
        ap.error("--batch: batch sizes must be >= 1")
    if args.runs < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--runs and --threads must be >= 1, --warmup >= 0")
    args.engine_list = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_list if e not in ENGINES]
    if unknown:
        ap.error(f"--engines: unknown {unknown}; choose from {ENGINES}")
    if not os.path.isabs(args.cnx) and not os.path.exists(args.cnx):
        args.cnx = os.path.join(ROOT, args.cnx)  # relative to the repository root
    return args


class Bench:
    def __init__(self, args):
        self.args = args
        self.results = {}  # (engine, batch) -> dict
        self.errors = {}  # engine -> message (whole engine) ; (engine, batch) -> message
        self.notes = []
        self.versions = {"python": platform.python_version()}

    def record(self, engine, batch, median, mn, **extra):
        self.results[(engine, batch)] = dict(median_ms=median, min_ms=mn, images_per_s=batch / (median / 1e3), **extra)

    def fail(self, key, exc):
        msg = f"{type(exc).__name__}: {exc}".strip()
        if len(msg) > 2000:
            msg = msg[:2000] + " ..."
        self.errors[key] = msg
        log(f"error: {key_name(key)} failed: {msg}")
        if os.environ.get("BENCH_PEERS_TRACEBACK"):
            traceback.print_exc()


def key_name(key):
    return f"{LABEL[key[0]]} batch {key[1]}" if isinstance(key, tuple) else LABEL[key]


def run_cnx(b, args, engine="cnx"):
    """`cnx bench --json` as a subprocess, before torch is loaded so nothing else holds the CPU."""
    if not os.path.isfile(args.cnx) or not os.access(args.cnx, os.X_OK):
        msg = f"cnx binary {args.cnx} not found (build it: cargo build --release); skipped"
        log(msg)
        b.errors[engine] = msg
        return
    precision = "int8" if engine == "cnx-int8" else "f32"
    cmd = [args.cnx, "bench", args.model, "--batch", ",".join(map(str, args.batches)),
           "--threads", str(args.threads), "--runs", str(args.runs), "--json", "--backend", args.cnx_backend,
           "--precision", precision]
    b.notes.append("cnx: " + shlex.join(cmd))
    log("cnx: " + shlex.join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            raise RuntimeError(f"exit status {p.returncode}: {p.stderr.strip()[-1500:]}")
        found = 0
        for line in p.stdout.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            batch = int(r["batch"])
            extra = {k: r[k] for k in ("gflops", "first_inference_ms", "peak_rss_mib", "backend", "fused") if k in r}
            b.record(engine, batch, float(r["median_ms"]), float(r["min_ms"]), **extra)
            b.results[(engine, batch)]["images_per_s"] = float(r.get("images_per_s", batch / (r["median_ms"] / 1e3)))
            if "isa" in r:
                b.versions["cnx kernels"] = r["isa"]
            found += 1
        if not found:
            raise RuntimeError(f"no JSON lines in its output: {p.stdout.strip()[-500:]!r}")
    except Exception as e:  # report and go on
        b.fail(engine, e)


def main():
    args = parse_args()
    # Before importing torch / transformers: no network, and optionally no inductor caches.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if args.cold_compile:
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    b = Bench(args)
    busy = cpu_busy()
    if busy is not None and busy > 0.2:
        b.notes.append(f"the CPUs were {100 * busy:.0f}% busy before the start: "
                       "other work on this machine distorts these numbers")
    config_path = os.path.join(ROOT, "models", "facebook", f"convnextv2-{args.model}", "config.json")
    if not os.path.isfile(config_path):
        sys.exit(f"error: no committed config {config_path}")

    if args.sgemm:
        b.sgemm_gflops = numpy_sgemm_gflops(args.threads)
        b.notes.append(f"numpy sgemm 2048^3, {args.threads} threads: {b.sgemm_gflops:.1f} GFLOP/s (median of 9)")
    for engine in ("cnx", "cnx-int8"):
        if engine in args.engine_list:
            run_cnx(b, args, engine)

    torch_engines = [e for e in args.engine_list if not e.startswith("cnx")]
    size = None
    if torch_engines:
        import torch

        # Threads first, before any torch work (interop threads can only be set once, early).
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
        b.versions["torch"] = torch.__version__
        import transformers
        from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

        transformers.logging.set_verbosity_error()
        b.versions["transformers"] = transformers.__version__

        config = ConvNextV2Config.from_json_file(config_path)
        size = int(getattr(config, "image_size", 224) or 224)
        torch.manual_seed(0)  # same random weights every run, so the cached .onnx matches
        hf = ConvNextV2ForImageClassification(config).eval().float()

        class Logits(torch.nn.Module):
            """The classifier's logits only (no ModelOutput), the same work for every engine."""

            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, pixel_values):
                return self.m(pixel_values=pixel_values).logits

        model = Logits(hf).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        inputs = {n: torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)) for n in args.batches}
        reference = {}  # batch -> eager logits, for a sanity check of the other engines

        def eager_logits(n):
            if n not in reference:
                with torch.inference_mode():
                    reference[n] = model(inputs[n])
            return reference[n]

        def max_diff(n, out):
            return float((torch.as_tensor(out) - eager_logits(n)).abs().max())

        def time_torch(fn, n):
            x = inputs[n]
            with torch.inference_mode():
                for _ in range(args.warmup):
                    fn(x)
                return timed(lambda: fn(x), args.runs)

        if "eager" in torch_engines:
            for n in args.batches:
                try:
                    log(f"torch eager batch {n} ...")
                    med, mn, _ = time_torch(model, n)
                    b.record("eager", n, med, mn)
                except Exception as e:
                    b.fail(("eager", n), e)

        if "eager-int8" in torch_engines:
            try:
                # PyTorch's dynamic quantisation: nn.Linear (the 1x1 convs and the classifier)
                # with int8 weights per tensor, u8 activations quantised per call; x86 engine.
                torch.backends.quantized.engine = "x86"
                b.versions["torch quantized engine"] = torch.backends.quantized.engine
                qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
                for n in args.batches:
                    try:
                        log(f"torch dynamic int8 batch {n} ...")
                        with torch.inference_mode():
                            diff = max_diff(n, qmodel(inputs[n]))
                        med, mn, _ = time_torch(qmodel, n)
                        b.record("eager-int8", n, med, mn, max_abs_diff_vs_eager=diff)
                    except Exception as e:
                        b.fail(("eager-int8", n), e)
            except Exception as e:
                b.fail("eager-int8", e)

        if "onnx" in torch_engines or "onnx-int8" in torch_engines:
            sess = None
            try:
                import onnxruntime as ort

                b.versions["onnxruntime"] = ort.__version__
                try:
                    import onnx

                    b.versions["onnx"] = onnx.__version__
                except ImportError:
                    pass
                os.makedirs(CACHE, exist_ok=True)
                path = os.path.join(CACHE, f"convnextv2-{args.model}-torch{torch.__version__}-seed0.onnx")
                export_s = None
                if not os.path.isfile(path):
                    log(f"onnx: exporting to {path} ...")
                    t0 = time.perf_counter()
                    export_onnx(torch, model, size, path, b)
                    export_s = time.perf_counter() - t0
                    b.notes.append(f"onnx export: {export_s:.1f} s -> {path}")
                else:
                    b.notes.append(f"onnx: cached {path}")
                variants = []
                if "onnx" in torch_engines:
                    variants.append(("onnx", path))
                if "onnx-int8" in torch_engines:
                    vnni = has_vnni()
                    qpath = path.replace(".onnx", f"-int8{'' if vnni else '-reduce-range'}.onnx")
                    if not os.path.isfile(qpath):
                        log(f"onnx-int8: quantize_dynamic -> {qpath} ...")
                        quantize_onnx(path, qpath, vnni)
                    b.notes.append(f"onnx-int8: quantize_dynamic(QInt8, per_channel, MatMul, reduce_range={not vnni}) -> {qpath}")
                    variants.append(("onnx-int8", qpath))
                for engine, model_path in variants:
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = args.threads
                    so.inter_op_num_threads = 1
                    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    t0 = time.perf_counter()
                    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
                    session_s = time.perf_counter() - t0
                    in_name = sess.get_inputs()[0].name
                    for n in args.batches:
                        try:
                            log(f"{LABEL[engine]} batch {n} ...")
                            x = inputs[n].numpy()
                            feed = {in_name: x}
                            out = sess.run(None, feed)[0]
                            diff = max_diff(n, out)
                            for _ in range(args.warmup):
                                sess.run(None, feed)
                            med, mn, _ = timed(lambda: sess.run(None, feed), args.runs)
                            b.record(engine, n, med, mn, session_s=session_s, export_s=export_s,
                                     max_abs_diff_vs_eager=diff)
                        except Exception as e:
                            b.fail((engine, n), e)
                    del sess  # its spinning thread pool must not overlap the next engine
                    sess = None
            except Exception as e:
                b.fail("onnx", e)
            finally:
                del sess  # its spinning thread pool must not overlap the next engine

        if "compile" in torch_engines:
            try:
                # Inductor, default mode; one static graph per batch size (dynamic=False), the
                # fastest kernels torch.compile offers for a fixed input shape.
                compiled = torch.compile(model, backend="inductor", mode=None, dynamic=False)
                for n in args.batches:
                    try:
                        log(f"torch.compile batch {n}: compiling ...")
                        t0 = time.perf_counter()
                        with torch.inference_mode():
                            out = compiled(inputs[n])
                        compile_s = time.perf_counter() - t0
                        log(f"torch.compile batch {n}: first call (compile) {compile_s:.1f} s")
                        diff = max_diff(n, out)
                        med, mn, _ = time_torch(compiled, n)
                        b.record("compile", n, med, mn, compile_s=compile_s, max_abs_diff_vs_eager=diff)
                    except Exception as e:
                        b.fail(("compile", n), e)
            except Exception as e:
                b.fail("compile", e)

    report(b, args, size)


def export_onnx(torch, model, size, path, b):
    """torch.onnx.export with a dynamic batch axis: the dynamo exporter (onnxscript), else the
    TorchScript one. Small models go to a temporary name first, so a failed export leaves no
    cache; past protobuf's 2 GB limit the weights go to <path>.data, which the .onnx refers to
    by name, so those are written under their final names."""
    tmp = path + ".partial"
    x = torch.randn(2, 3, size, size)  # batch 2, so the batch dimension isn't specialised to 1
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5e9
    target = path if big else tmp
    errors = []
    for dynamo in (True, False):
        try:
            if os.path.exists(tmp):
                os.remove(tmp)
            # The exporter prints progress on stdout: keep stdout for the report / JSON lines.
            with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["pixel_values"],
                                             output_names=["logits"], dynamic_shapes={"pixel_values": {0: batch}},
                                             opset_version=18, optimize=True)
                    prog.save(target, external_data=big)
                else:
                    torch.onnx.export(model, (x,), target, dynamo=False, input_names=["pixel_values"],
                                      output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}},
                                      opset_version=17)
            if target != path:
                os.replace(target, path)
            b.notes.append(f"onnx exporter: {'dynamo (opset 18)' if dynamo else 'TorchScript (opset 17)'}")
            return
        except Exception as e:
            errors.append(f"dynamo={dynamo}: {type(e).__name__}: {str(e)[:800]}")
            log(f"onnx export with dynamo={dynamo} failed: {type(e).__name__}: {str(e)[:300]}")
    raise RuntimeError("torch.onnx.export failed: " + " | ".join(errors))


def report(b, args, size):
    out = sys.stderr if args.json else sys.stdout

    def p(s=""):
        print(s, file=out)

    engines = [e for e in ENGINES if e in args.engine_list]
    batches = args.batches
    hw = f"{size}x{size}" if size else "(config size)"
    p(f"## {args.model}, {hw}, random weights, {args.threads} threads, "
      f"median of {args.runs} runs after {args.warmup} warm-ups (min in brackets)")
    p()
    p("| engine | " + " | ".join(f"batch {n}" for n in batches) + " |")
    p("|---" * (len(batches) + 1) + "|")

    def cell(e, n, fmt):
        if (e, n) in b.results:
            return fmt(b.results[(e, n)])
        if "skipped" in b.errors.get(e, ""):
            return "skipped"
        return "failed" if (e, n) in b.errors or e in b.errors else "-"

    for e in engines:
        p(f"| {LABEL[e]} | " + " | ".join(cell(e, n, lambda r: f"{r['median_ms']:.1f} ms ({r['min_ms']:.1f})") for n in batches) + " |")
    p()
    p("| images/s | " + " | ".join(f"batch {n}" for n in batches) + " |")
    p("|---" * (len(batches) + 1) + "|")
    for e in engines:
        p(f"| {LABEL[e]} | " + " | ".join(cell(e, n, lambda r: f"{r['images_per_s']:.1f}") for n in batches) + " |")
    p()
    for mine in ("cnx", "cnx-int8"):
        if not any(e == mine for e, _ in b.results):
            continue
        p(f"{LABEL[mine]} median / engine median (below 1: {LABEL[mine]} faster):")
        p()
        p(f"| {LABEL[mine]} vs | " + " | ".join(f"batch {n}" for n in batches) + " |")
        p("|---" * (len(batches) + 1) + "|")
        for e in engines:
            if e.startswith("cnx") and e != "cnx" or e == mine:
                continue
            cells = []
            for n in batches:
                if (mine, n) in b.results and (e, n) in b.results:
                    cells.append(f"{b.results[(mine, n)]['median_ms'] / b.results[(e, n)]['median_ms']:.2f}x")
                else:
                    cells.append("-")
            p(f"| {LABEL[e]} | " + " | ".join(cells) + " |")
        for group, peers in (("best f32 peer", F32_PEERS), ("best int8 peer", INT8_PEERS)):
            cells = []
            for n in batches:
                times = [b.results[(e, n)]["median_ms"] for e in peers if (e, n) in b.results]
                if (mine, n) in b.results and times:
                    cells.append(f"{b.results[(mine, n)]['median_ms'] / min(times):.2f}x")
                else:
                    cells.append("-")
            p(f"| {group} | " + " | ".join(cells) + " |")
        p()
    for n in batches:
        r = b.results.get(("compile", n))
        if r:
            p(f"torch.compile batch {n}: first call (compile + one forward) {r['compile_s']:.1f} s"
              + (" (inductor caches disabled)" if args.cold_compile else
                 " (inductor's on-disk caches enabled: a repeat run compiles faster; --cold-compile for a cold one)"))
    for e in ("compile", "onnx", "eager-int8", "onnx-int8"):
        diffs = [b.results[(e, n)]["max_abs_diff_vs_eager"] for n in batches if (e, n) in b.results]
        if diffs:
            p(f"{LABEL[e]}: max |logits - eager logits| = {max(diffs):.2e}")
    for note in b.notes:
        p(f"note: {note}")
    for key, msg in b.errors.items():
        p(f"error: {key_name(key)}: {msg}")
    p()
    p("versions: " + ", ".join(f"{k} {v}" for k, v in b.versions.items()))
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "KMP_"))}
    p(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs"
      + (", env " + " ".join(f"{k}={v}" for k, v in env.items()) if env else ""))
    p("command: " + shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv)))

    if args.json:
        for e in engines:
            for n in batches:
                obj = {"engine": LABEL[e], "model": args.model, "batch": n, "threads": args.threads,
                       "height": size, "width": size, "runs": args.runs, "warmup": args.warmup}
                if (e, n) in b.results:
                    obj.update(b.results[(e, n)])
                    if ("cnx", n) in b.results and e != "cnx":
                        obj["cnx_ratio"] = b.results[("cnx", n)]["median_ms"] / obj["median_ms"]
                else:
                    obj["error"] = b.errors.get((e, n)) or b.errors.get(e) or "not run"
                obj["versions"] = b.versions
                print(json.dumps(obj), flush=True)


if __name__ == "__main__":
    main()
