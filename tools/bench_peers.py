#!/usr/bin/env python3
"""Forward-pass latency of ConvNeXt V2 side by side, in one run on this machine: PyTorch eager,
torch.compile (inductor, default mode), ONNX Runtime (CPU execution provider), OpenVINO (CPU
plugin) and cnx's own `cnx bench --json`, in float32; in bfloat16 (issue 30, AMX-BF16 where the
CPU has it): torch.compile with inductor's freezing under torch.autocast(bfloat16), OpenVINO with
INFERENCE_PRECISION_HINT bf16 and `cnx bench --precision bf16`; and in int8: ONNX Runtime's
`quantize_dynamic` (QInt8 weights per channel, the MatMuls; reduce_range where the CPU has no
VNNI), PyTorch's dynamic quantisation of `nn.Linear` (x86 engine), OpenVINO on an NNCF
post-training-quantised model (`nncf.quantize`, static int8 convolutions and MatMuls) and
`cnx bench --precision int8`. Random weights (timing only), same threads and batch sizes for all.

    python tools/bench_peers.py --model tiny-1k-224 --batch 1,8 --threads 2 --runs 10 \
        [--engines eager,compile,onnx,ov,cnx,eager-int8,onnx-int8,ov-int8,cnx-int8,compile-bf16,ov-bf16,cnx-bf16] \
        [--cnx target/release/cnx] [--warmup 3] [--json] [--check-amx]

The model is `transformers.ConvNextV2ForImageClassification` built from the committed
`models/facebook/convnextv2-<model>/config.json` (never the network: HF_HUB_OFFLINE=1), input
image_size x image_size. Each engine/batch: warm-up runs (torch.compile: the first call, which
compiles, is timed and reported apart, then --warmup more), then --runs timed forward passes
(time.perf_counter, inside torch.inference_mode() for the torch engines); median and min ms,
images/s. The ONNX file (torch.onnx.export, dynamic batch axis) is cached under /tmp.

OpenVINO: `openvino.convert_model` of the same torch module (TorchScript trace), reshaped to a
static batch x 3 x size x size and compiled once per batch size on "CPU" with PERFORMANCE_HINT
LATENCY, NUM_STREAMS 1, INFERENCE_NUM_THREADS --threads; `ov` sets INFERENCE_PRECISION_HINT f32,
`ov-bf16` bf16 (the plugin's default on AMX/AVX512-BF16 CPUs). `ov-int8`: `nncf.quantize` with
its defaults (performance preset: symmetric int8 weights per output channel and activations per
tensor; fast bias correction), calibrated on 30 images made from the photos in
tests/fixtures/images (astronaut, camera, chelsea, coffee, rocket: seeded random square crops of
50-100% of the short side, randomly mirrored, bicubic resize, /255, the model's preprocessor
mean/std), or on random normal pixels if those can't be read (the report says which). The
quantised IR is cached under /tmp (keyed by the torch, OpenVINO and NNCF versions); it compiles
with no precision hint, so the ops left in floating point run in the plugin's default, bf16 on
this kind of CPU. The timed call is the plain `InferRequest.infer(x, share_inputs=True)`.
torch.compile bf16: inductor with `torch._inductor.config.freezing = True` (weights folded,
convolutions/linears to oneDNN with prepacked weights), called under
torch.autocast("cpu", torch.bfloat16) in inference_mode; its logits are cast to float32 for the
check below.

Every peer's logits (batch by batch, the first call) are checked against eager float32 logits:
the report gives max |logits - eager logits| per engine (bf16 and int8 ones included; the cnx
engines are timed only, through their own binary).

--check-amx: for each peer engine, on the first batch size, which kernels did its convolutions
and matmuls. Torch engines: one extra forward with oneDNN's and MKL's verbose output on
(torch.backends.mkldnn.verbose / torch.backends.mkl.verbose, the same lines as ONEDNN_VERBOSE=1
and MKL_VERBOSE=1), counting the executed convolution / matmul / inner_product primitives by
implementation and source/weight data type (AMX: an implementation name with "amx", e.g.
brg_conv_fwd:avx512_core_amx or brg_matmul:avx10_1_512_amx) and the MKL GEMM calls (f32 SGEMM:
no AMX, AMX has no f32). OpenVINO: the compiled model's execution graph
(get_runtime_model(): layerType, primitiveType, runtimePrecision of each Convolution /
FullyConnected / MatMul node; AMX: e.g. brgconv_avx512_amx_bf16, brgemm_avx512_amx_i8).
ONNX Runtime int8 and torch dynamic int8 don't say which kernel ran: the check runs them in a
child process and reads, with arch_prctl(ARCH_GET_XCOMP_PERM), whether that process asked Linux
for the AMX tile state (no AMX instruction can run without it): ONNX Runtime's MLAS asks at start
exactly when it installs its AMX u8s8 GEMM (MlasGemmU8S8DispatchAmx), which then serves the
quantised MatMuls; FBGEMM (torch dynamic int8) is checked on one quantised nn.Linear alone.
ONNX Runtime float32 is not probed: MLAS has no float32 AMX kernel (AMX has no f32 arithmetic).

Output: a Markdown table (engine rows x batch columns, "median ms (min)"), images/s, the ratio
of each cnx engine's median to each engine's and to the best peer of each precision (f32, int8,
bf16), max logit errors, versions and the exact command line. With --json, stdout holds only
one JSON object per (engine, batch) line and the Markdown report goes to stderr. An engine that
fails is reported (error message) and the others go on. Needs torch, transformers, onnxruntime,
onnx, onnxscript (tools/requirements-fixtures.txt) and, for the ov engines, openvino and nncf
(tools/requirements-peers.txt: one virtualenv with all of them); never run in CI.
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
ENGINES = ["eager", "compile", "onnx", "ov", "cnx", "eager-int8", "onnx-int8", "ov-int8", "cnx-int8",
           "compile-bf16", "ov-bf16", "cnx-bf16"]
LABEL = {"eager": "torch eager", "compile": "torch.compile", "onnx": "onnxruntime", "ov": "OpenVINO", "cnx": "cnx",
         "eager-int8": "torch dynamic int8", "onnx-int8": "onnxruntime int8", "ov-int8": "OpenVINO int8 (NNCF)",
         "cnx-int8": "cnx int8", "compile-bf16": "torch.compile bf16", "ov-bf16": "OpenVINO bf16",
         "cnx-bf16": "cnx bf16"}
F32_PEERS = ["eager", "compile", "onnx", "ov"]
INT8_PEERS = ["eager-int8", "onnx-int8", "ov-int8"]
BF16_PEERS = ["ov-bf16", "compile-bf16"]
CNX_PRECISION = {"cnx": "f32", "cnx-int8": "int8", "cnx-bf16": "bf16"}


def has_amx():
    """Whether the CPU has AMX tiles with int8 and bf16 (/proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l for l in f if l.startswith("flags")), "").split()
        return "amx_tile" in flags and "amx_int8" in flags and "amx_bf16" in flags
    except OSError:
        return False


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
CALIBRATION_PHOTOS = ["astronaut.png", "camera_grey.png", "chelsea.png", "coffee.png", "rocket.png"]


def calibration_images(size, count, preprocessor_path):
    """`count` float32 1x3xsize x size inputs for int8 calibration, and a phrase saying what they
    are: seeded random square crops (50-100% of the short side, randomly mirrored) of the
    photos in tests/fixtures/images, bicubic resize, /255, the model's preprocessor mean/std;
    random normal pixels if Pillow or the photos are missing."""
    import numpy as np

    rng = np.random.default_rng(0)
    try:
        from PIL import Image

        try:
            with open(preprocessor_path) as f:
                pre = json.load(f)
            mean, std = pre["image_mean"], pre["image_std"]
        except (OSError, KeyError, ValueError):
            mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
        mean = np.asarray(mean, np.float32)[:, None, None]
        std = np.asarray(std, np.float32)[:, None, None]
        photos = []
        for name in CALIBRATION_PHOTOS:
            with Image.open(os.path.join(ROOT, "tests", "fixtures", "images", name)) as im:
                photos.append(im.convert("RGB"))
        out = []
        for i in range(count):
            im = photos[i % len(photos)]
            w, h = im.size
            c = int(min(w, h) * rng.uniform(0.5, 1.0))
            x0, y0 = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
            crop = im.crop((x0, y0, x0 + c, y0 + c)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            a = (np.asarray(crop, np.float32).transpose(2, 0, 1) / 255 - mean) / std
            out.append(np.ascontiguousarray(a[None], dtype=np.float32))
        return out, f"{count} crops of {len(photos)} photos in tests/fixtures/images ({', '.join(CALIBRATION_PHOTOS)})"
    except Exception as e:  # no Pillow, no photos: random pixels
        log(f"calibration photos unavailable ({type(e).__name__}: {e}); random normal pixels instead")
        return ([rng.standard_normal((1, 3, size, size), dtype=np.float32) for _ in range(count)],
                f"{count} random normal images (the photos were unavailable: {type(e).__name__})")


GEMM_PRIMITIVES = ("convolution", "deconvolution", "matmul", "inner_product")


def amx_check(fn):
    """fn()'s --check-amx summary, or why it failed: a check never fails its engine."""
    try:
        return fn()
    except Exception as e:
        return f"check failed: {type(e).__name__}: {str(e)[:300]}"


def capture_fd1(fn):
    """Run fn() with file descriptor 1 sent to a temporary file (the C libraries' verbose
    lines); returns that text. Python's stdout is flushed around it, so nothing is lost."""
    import tempfile

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            fn()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return f.read()


def torch_kernel_summary(torch, fn):
    """One call of fn() with oneDNN's and MKL's verbose output on (what ONEDNN_VERBOSE=1 and
    MKL_VERBOSE=1 print): the executed convolution/matmul/inner_product primitives counted by
    implementation and src/weight data type, the MKL calls by function. A summary line."""

    def run():
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON))
            try:
                stack.enter_context(torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON))
            except Exception:  # a build without MKL: oneDNN only
                pass
            fn()

    text = capture_fd1(run)
    prims, mkl = {}, {}
    for line in text.splitlines():
        f = line.split(",")
        if f[0] == "onednn_verbose" and "exec" in f:
            i = f.index("exec")  # ...,exec,cpu,<kind>,<implementation>,<prop>,<memory descriptors>,...
            if len(f) < i + 5 or f[i + 2] not in GEMM_PRIMITIVES:
                continue
            dt = {}
            for md in f[i + 5].split():
                arg, _, rest = md.partition(":")
                if arg in ("src", "wei"):
                    dt[arg] = rest.split(":")[0]
            key = (f[i + 2], f[i + 3], "/".join(dt.get(a, "?") for a in ("src", "wei")))
            prims[key] = prims.get(key, 0) + 1
        elif line.startswith("MKL_VERBOSE ") and "(" in line.split()[1]:  # a call, not the banner
            name = line.split()[1].split("(")[0]
            mkl[name] = mkl.get(name, 0) + 1
    amx = sum(v for k, v in prims.items() if "amx" in k[1])
    total = sum(prims.values())
    parts = [f"{v}x {kind} {impl} {dt}" for (kind, impl, dt), v in sorted(prims.items(), key=lambda kv: -kv[1])]
    parts += [f"{v}x MKL {name}" for name, v in sorted(mkl.items(), key=lambda kv: -kv[1])]
    verdict = f"AMX {'yes' if amx else 'no'}: {amx} of {total} oneDNN conv/matmul calls on AMX"
    if mkl:
        verdict += f", {sum(mkl.values())} MKL calls (f32 GEMM: no AMX)"
    return verdict + ("; " + ", ".join(parts) if parts else "; no oneDNN conv/matmul or MKL call seen")


def ov_kernel_summary(compiled):
    """The OpenVINO CPU plugin's execution graph: its Convolution / FullyConnected / MatMul nodes
    counted by primitiveType and runtimePrecision. A summary line."""
    counts = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else node.get_type_name()
        if layer not in ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"):
            continue
        key = (layer, rt["primitiveType"].astype(str), rt["runtimePrecision"].astype(str))
        counts[key] = counts.get(key, 0) + 1
    amx = sum(v for k, v in counts.items() if "amx" in k[1].lower())
    parts = [f"{v}x {layer} {prim} {prec}" for (layer, prim, prec), v in sorted(counts.items(), key=lambda kv: -kv[1])]
    return (f"AMX {'yes' if amx else 'no'}: {amx} of {sum(counts.values())} conv/matmul nodes on AMX; "
            + ", ".join(parts))


# In a child process: whether it holds Linux's permission for the AMX tile data state
# (arch_prctl ARCH_GET_XCOMP_PERM = 0x1022, XFEATURE_XTILEDATA = bit 18), which a library must
# request (ARCH_REQ_XCOMP_PERM) before its first AMX instruction.
AMX_PERM_SNIPPET = """
import ctypes, json
def amx_permitted():
    mask = ctypes.c_uint64(0)
    if ctypes.CDLL(None, use_errno=True).syscall(158, 0x1022, ctypes.byref(mask)) != 0:
        return None
    return bool(mask.value >> 18 & 1)
steps = [("start", amx_permitted())]
"""


def amx_permission_probe(code, threads):
    """Run AMX_PERM_SNIPPET + code (which appends (step, permitted) to `steps`) in a child
    process with `threads` threads; returns the steps, e.g. [["start", False], ["run", True]]."""
    code = AMX_PERM_SNIPPET + code + "\nprint(json.dumps(steps))\n"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"AMX probe exit status {p.returncode}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def steps_text(steps):
    return ", ".join(f"{name}: {'unknown' if ok is None else 'granted' if ok else 'not requested'}" for name, ok in steps)


def ort_amx_summary(model_path, threads, n, size):
    """ONNX Runtime int8: MLAS asks for the AMX tile state at start-up when, and only when, it
    installs its AMX u8s8 GEMM (platform.cpp: GemmU8S8Dispatch = &MlasGemmU8S8DispatchAmx after
    MlasInitAMX()); the quantised MatMuls (u8 activations x s8 weights) go through that dispatch."""
    steps = amx_permission_probe(f"""
import numpy as np
import onnxruntime as ort
steps.append(("import onnxruntime", amx_permitted()))
so = ort.SessionOptions()
so.intra_op_num_threads = {threads}
so.inter_op_num_threads = 1
sess = ort.InferenceSession({model_path!r}, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal(({n}, 3, {size}, {size}), dtype=np.float32)
sess.run(None, {{sess.get_inputs()[0].name: x}})
steps.append(("session + one run", amx_permitted()))
""", threads)
    granted = bool(steps[-1][1]) and not steps[0][1]
    return (f"AMX {'yes (MLAS installed its AMX u8s8 GEMM: MlasGemmU8S8DispatchAmx)' if granted else 'no'}"
            f"; not observable per kernel; AMX tile permission in a fresh process: {steps_text(steps)}")


def fbgemm_amx_summary(channels, rows, threads):
    """torch dynamic int8 (FBGEMM): one quantised nn.Linear(c, 4c) alone, in a fresh process
    (the full model's oneDNN depthwise convolutions would ask for the AMX state themselves)."""
    steps = amx_permission_probe(f"""
import torch
torch.set_num_threads({threads})
steps.append(("import torch", amx_permitted()))
torch.backends.quantized.engine = "x86"
m = torch.nn.Sequential(torch.nn.Linear({channels}, {4 * channels})).eval()
q = torch.ao.quantization.quantize_dynamic(m, {{torch.nn.Linear}}, dtype=torch.qint8)
with torch.inference_mode():
    for _ in range(3):
        q(torch.randn({rows}, {channels}))
steps.append(("dynamic int8 Linear x3", amx_permitted()))
""", threads)
    used = bool(steps[-1][1]) and not steps[-2][1]
    verdict = "possible (permission requested)" if used else "no: it ran without the AMX tile permission"
    return (f"FBGEMM's quantised Linear: AMX {verdict} "
            f"({steps_text(steps)}, Linear {channels}->{4 * channels}, {rows} rows)")


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
    ap.add_argument("--check-amx", action="store_true",
                    help="also show, per peer engine and for the first batch size, which kernels ran its "
                         "convolutions/matmuls and whether on AMX (oneDNN/MKL verbose for torch, the execution "
                         "graph for OpenVINO, the AMX tile permission of a child process for ONNX Runtime int8)")
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
        self.amx = {}  # engine -> --check-amx summary
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
    precision = CNX_PRECISION[engine]
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
    for engine in CNX_PRECISION:
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

        def eager_logits_uncached(n):
            with torch.inference_mode():
                return model(inputs[n])

        def max_diff(n, out):
            return float((torch.as_tensor(out).float() - eager_logits(n)).abs().max())

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
                    if args.check_amx and n == args.batches[0]:
                        b.amx["eager"] = amx_check(lambda: torch_kernel_summary(torch, lambda: eager_logits_uncached(n)))
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
                        if args.check_amx and n == args.batches[0]:
                            with torch.inference_mode():
                                summary = amx_check(lambda: torch_kernel_summary(torch, lambda: qmodel(inputs[n])))
                            c, rows = int(config.hidden_sizes[0]), n * (size // 4) ** 2  # the first stage's pwconv1
                            b.amx["eager-int8"] = (summary + "; "
                                                   + amx_check(lambda: fbgemm_amx_summary(c, rows, args.threads)))
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
                    if args.check_amx:
                        b.amx["onnx-int8"] = amx_check(lambda: ort_amx_summary(qpath, args.threads, args.batches[0], size))
                if "onnx" in torch_engines and args.check_amx:
                    b.amx["onnx"] = "AMX no: MLAS float32 SGEMM/convolutions (AMX has no f32 path); not observable per kernel"
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

        ov_engines = [e for e in ("ov", "ov-bf16", "ov-int8") if e in torch_engines]
        if ov_engines:
            run_openvino(b, args, torch, model, config_path, size, inputs, max_diff, ov_engines)

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
                        if args.check_amx and n == args.batches[0]:
                            with torch.inference_mode():
                                b.amx["compile"] = amx_check(lambda: torch_kernel_summary(torch, lambda: compiled(inputs[n])))
                        med, mn, _ = time_torch(compiled, n)
                        b.record("compile", n, med, mn, compile_s=compile_s, max_abs_diff_vs_eager=diff)
                    except Exception as e:
                        b.fail(("compile", n), e)
            except Exception as e:
                b.fail("compile", e)

        if "compile-bf16" in torch_engines:
            try:
                # Inductor with freezing (weights become constants: folded, prepacked for oneDNN's
                # bf16 convolutions and linears), one static graph per batch size, called under
                # autocast to bfloat16. Compiled afresh: nothing shared with the f32 engine.
                import torch._inductor.config as inductor_config

                torch._dynamo.reset()
                compiled_bf16 = torch.compile(model, backend="inductor", mode=None, dynamic=False)

                def run_bf16(x):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return compiled_bf16(x)

                for n in args.batches:
                    try:
                        log(f"torch.compile bf16 batch {n}: compiling ...")
                        t0 = time.perf_counter()
                        with inductor_config.patch(freezing=True), torch.inference_mode():
                            out = run_bf16(inputs[n])
                        compile_s = time.perf_counter() - t0
                        log(f"torch.compile bf16 batch {n}: first call (compile) {compile_s:.1f} s")
                        diff = max_diff(n, out)
                        if args.check_amx and n == args.batches[0]:
                            with torch.inference_mode():
                                b.amx["compile-bf16"] = amx_check(
                                    lambda: torch_kernel_summary(torch, lambda: run_bf16(inputs[n])))
                        med, mn, _ = time_torch(run_bf16, n)
                        b.record("compile-bf16", n, med, mn, compile_s=compile_s, max_abs_diff_vs_eager=diff)
                    except Exception as e:
                        b.fail(("compile-bf16", n), e)
            except Exception as e:
                b.fail("compile-bf16", e)

    report(b, args, size)


def run_openvino(b, args, torch, model, config_path, size, inputs, max_diff, engines):
    """The OpenVINO engines: the torch module converted once (openvino.convert_model, TorchScript
    trace, dynamic input shape), for ov-int8 quantised by NNCF (cached IR), then per batch size
    reshaped to a static shape, compiled on CPU (LATENCY, one stream, --threads threads), checked
    against eager, warmed up and timed on one InferRequest."""
    try:
        import openvino as ov

        b.versions["openvino"] = ov.get_version()
        core = ov.Core()
        converted = {}

        def f32_model():
            # Traced once; shared by ov and ov-bf16 (reshape() changes it in place, which is fine:
            # compile_model copies what it needs) and the input of NNCF.
            if "model" not in converted:
                import warnings

                log("openvino: convert_model ...")
                t0 = time.perf_counter()
                with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                    warnings.simplefilter("ignore")  # the tracer's and transformers' deprecation noise
                    converted["model"] = ov.convert_model(model, example_input=torch.randn(2, 3, size, size))
                b.notes.append(f"openvino convert_model (TorchScript trace): {time.perf_counter() - t0:.1f} s")
            return converted["model"]

        for engine in engines:
            try:
                config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": args.threads}
                if engine == "ov-int8":
                    ov_model = ov_quantized_model(b, args, torch, ov, core, f32_model, config_path, size)
                else:
                    ov_model = f32_model()
                    config["INFERENCE_PRECISION_HINT"] = "f32" if engine == "ov" else "bf16"
                for n in args.batches:
                    compiled = request = None
                    try:
                        log(f"{LABEL[engine]} batch {n} ...")
                        ov_model.reshape([n, 3, size, size])
                        t0 = time.perf_counter()
                        compiled = core.compile_model(ov_model, "CPU", config)
                        compile_s = time.perf_counter() - t0
                        if n == args.batches[0]:  # the properties in force, hint set or not
                            props = {k: compiled.get_property(k) for k in
                                     ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")}
                            b.notes.append(f"{engine}: compile_model on CPU: " + ", ".join(
                                f"{k}={v.to_string() if hasattr(v, 'to_string') else v}"
                                + ("" if k in config else " (plugin default)") for k, v in props.items()))
                        request = compiled.create_infer_request()
                        x = inputs[n].numpy()
                        out = request.infer(x, share_inputs=True)[0]
                        diff = max_diff(n, out)
                        if args.check_amx and n == args.batches[0]:
                            b.amx[engine] = amx_check(lambda: ov_kernel_summary(compiled))
                        for _ in range(args.warmup):
                            request.infer(x, share_inputs=True)
                        med, mn, _ = timed(lambda: request.infer(x, share_inputs=True), args.runs)
                        b.record(engine, n, med, mn, compile_s=compile_s, max_abs_diff_vs_eager=diff)
                    except Exception as e:
                        b.fail((engine, n), e)
                    finally:
                        request = compiled = None  # its threads must not overlap the next engine
            except Exception as e:
                b.fail(engine, e)
    except Exception as e:
        for engine in engines:
            b.fail(engine, e)


def ov_quantized_model(b, args, torch, ov, core, f32_model, config_path, size):
    """NNCF post-training quantisation of the converted model (nncf.quantize, defaults: the
    performance preset, i.e. symmetric int8 weights per output channel and activations per
    tensor, for the convolutions and MatMuls), calibrated on 30 preprocessed crops of the
    repository's test photos; the IR is cached (weights kept in f32, not compressed to f16)."""
    import logging

    import nncf

    b.versions["nncf"] = nncf.__version__
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"convnextv2-{args.model}-torch{torch.__version__}-ov{ov.__version__.split('-')[0]}"
                               f"-nncf{nncf.__version__}-seed0-int8.xml")
    if os.path.isfile(path) and os.path.isfile(path[:-4] + ".bin"):
        b.notes.append(f"ov-int8: cached {path}")
        return core.read_model(path)
    samples, what = calibration_images(size, 30, os.path.join(os.path.dirname(config_path), "preprocessor_config.json"))
    fp32 = f32_model()
    fp32.reshape([1, 3, size, size])
    nncf.set_log_level(logging.WARNING)
    log(f"ov-int8: nncf.quantize on {what} ...")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars
        quantized = nncf.quantize(fp32, nncf.Dataset(samples), subset_size=len(samples))
    b.notes.append(f"ov-int8: nncf.quantize (performance preset, subset_size={len(samples)}) on {what}: "
                   f"{time.perf_counter() - t0:.1f} s -> {path}")
    tmp = path[:-4] + ".partial.xml"
    ov.save_model(quantized, tmp, compress_to_fp16=False)
    os.replace(tmp[:-4] + ".bin", path[:-4] + ".bin")
    os.replace(tmp, path)  # last: the .xml marks a complete cache entry
    return quantized


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
    for mine in CNX_PRECISION:
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
        for group, peers in (("best f32 peer", F32_PEERS), ("best int8 peer", INT8_PEERS), ("best bf16 peer", BF16_PEERS)):
            cells = []
            for n in batches:
                times = [b.results[(e, n)]["median_ms"] for e in peers if (e, n) in b.results]
                if (mine, n) in b.results and times:
                    cells.append(f"{b.results[(mine, n)]['median_ms'] / min(times):.2f}x")
                else:
                    cells.append("-")
            p(f"| {group} | " + " | ".join(cells) + " |")
        p()
    for e in ("compile", "compile-bf16"):
        for n in batches:
            r = b.results.get((e, n))
            if r:
                p(f"{LABEL[e]} batch {n}: first call (compile + one forward) {r['compile_s']:.1f} s"
                  + (" (inductor caches disabled)" if args.cold_compile else
                     " (inductor's on-disk caches enabled: a repeat run compiles faster; --cold-compile for a cold one)"))
    for e in engines:
        diffs = [b.results[(e, n)]["max_abs_diff_vs_eager"] for n in batches
                 if "max_abs_diff_vs_eager" in b.results.get((e, n), {})]
        if diffs:
            p(f"{LABEL[e]}: max |logits - eager logits| = {max(diffs):.2e}")
    if b.amx:
        p()
        p(f"AMX check (batch {batches[0]}, the CPU {'has' if has_amx() else 'lacks'} amx_bf16/amx_int8):")
        for e in engines:
            if e in b.amx:
                p(f"- {LABEL[e]}: {b.amx[e]}")
        p()
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
                if e in b.amx and n == batches[0]:
                    obj["amx_check"] = b.amx[e]
                obj["versions"] = b.versions
                print(json.dumps(obj), flush=True)


if __name__ == "__main__":
    main()
