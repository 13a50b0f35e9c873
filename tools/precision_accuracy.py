#!/usr/bin/env python3
"""bf16 and int8 accuracy, measured (issue 30): cnx's `--precision bf16|int8` and the bf16 and
int8 peers against float32.

    python tools/precision_accuracy.py [--cnx target/release/cnx] [--threads 2] \
        [--cnx-variants bf16,bf16@avx512-bf16,int8,int8@avx512-vnni] [--torch-bf16 eager,compile] \
        [--calibration train|held-out|random] [--skip-digits] [--skip-random]

cnx runs as a subprocess (`cnx run --precision P --threads T`, on an .npy of pixel values), one
per --cnx-variants entry PRECISION[@CNX_ISA]: with no @ the CPU's best kernels (AMX tiles where
the CPU has them), else under that CNX_ISA (avx512-bf16: the AVX512_BF16 bf16 kernels, no AMX;
avx512-vnni: the VNNI int8 kernels). The kernels column is what `cnx bench --json` names under
that CNX_ISA. cnx float32 always runs, on the CPU's best kernels.

Every engine sees the same float32 pixel values.

1. The trained digits model (models/convnextv2-digits), its 360 held-out images through
   transformers' ConvNeXt image processor (the PIL one; cnx reproduces it bit for bit), one
   batch: top-1 accuracy, the share of images whose top-1 is transformers' float32 top-1 (the
   reference; it must equal the committed held-out-transformers.json's) and max |logits -
   transformers float32 logits|, for: transformers float32 (eager); cnx float32 and each cnx
   variant; torch bf16: eager under torch.autocast("cpu", torch.bfloat16) and, with --torch-bf16
   compile, torch.compile (inductor, freezing) called under that autocast, as bench_peers.py's
   compile-bf16; OpenVINO (a TorchScript-traced `openvino.convert_model`, compiled on CPU with
   --threads threads) with INFERENCE_PRECISION_HINT f32 and bf16; OpenVINO int8: `nncf.quantize`
   with its defaults (bench_peers.py's ov-int8: performance preset, symmetric int8 weights per
   output channel, activations per tensor), compiled with no precision hint (what is left in
   floating point runs in the plugin's default, bf16 on an AMX/AVX512_BF16 CPU), calibrated by
   default (--calibration train) on 100 images of the digits' *training* split, rebuilt exactly
   as tools/train_digits.py makes it (sklearn's load_digits, the same stratified split, its
   render and processor; a seeded choice of 100 of the 1,437); --calibration held-out takes a
   seeded 100 of the held-out batch itself, random 100 random normal images (the report says
   which ran); ONNX Runtime's `quantize_dynamic` (QInt8 weights per channel, MatMul;
   reduce_range where the CPU has no VNNI) and PyTorch's dynamic quantisation of nn.Linear (x86
   engine).
2. Random-weight tiny and base (`cnx random-model PRESET --output DIR`, seed 0: every parameter
   random) on the committed photos (tests/fixtures/images, the 10 decodable ones) through
   `cnx preprocess`. transformers loads the same weights (ConvNextV2ForImageClassification.
   from_pretrained(DIR); refused if any weight is missing or unused). Per output (logits,
   pooler_output): max absolute error, max relative error (max |x - ref| / max |ref|), top-1
   agreement, top-5 overlap (mean share of the reference's top-5 found in the engine's top-5)
   and the share of images with the same top-5 set; for each cnx variant against cnx float32,
   torch bf16 (eager autocast; compiled) against torch float32, OpenVINO bf16 against OpenVINO
   float32, and, for scale, the float32 engines against each other (torch vs cnx, OpenVINO vs
   torch). Random weights are a harsh case (no trained structure).

Checks that the peers ran in the precision they claim, printed under the tables: for the torch
engines one extra forward with oneDNN's / MKL's verbose output (bench_peers.torch_kernel_summary:
conv/matmul primitives by implementation and source/weight data type); for OpenVINO the compiled
model's execution graph (bench_peers.ov_kernel_summary: runtimePrecision per conv/matmul node)
and the precision hint in force; for ONNX Runtime int8 the quantised graph's integer ops; for
torch dynamic int8 the quantised Linear modules. A bf16/int8 engine whose outputs equal its
float32 reference bit for bit is flagged.

Prints Markdown tables, the notes, versions, the machine, the wall time and the command. Never
run in CI: needs torch, transformers, onnxruntime, onnx, onnxscript, openvino, nncf and pillow
(tools/requirements-peers.txt) and, for --calibration train, scikit-learn
(tools/requirements-fixtures.txt's version; without it the held-out subset is used, and said).
"""

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench_peers  # noqa: E402  (has_vnni, has_amx, cpu_name, kernel summaries, ONNX helpers)

DIGITS = os.path.join(ROOT, "models", "convnextv2-digits")
PHOTOS = ["astronaut.png", "camera_grey.png", "chelsea.png", "coffee.png", "rocket.png",
          "chelsea.jpg", "rocket_exif6.jpg", "coffee.bmp", "astronaut.webp", "tall_260x600.png"]
CALIBRATION_IMAGES = 100
OUTPUTS = ("logits", "pooler_output")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, isa=None):
    env = dict(os.environ)
    env.pop("CNX_ISA", None)
    if isa:
        env["CNX_ISA"] = isa
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{'CNX_ISA=' + isa + ' ' if isa else ''}{shlex.join(cmd)} failed "
                           f"({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


class Report:
    def __init__(self):
        self.notes = []
        self.versions = {"python": platform.python_version(), "numpy": np.__version__}

    def note(self, msg):
        self.notes.append(msg)
        log("note: " + msg)

    def fail(self, what, exc):
        msg = f"{type(exc).__name__}: {exc}".strip()
        self.note(f"{what} failed: {msg[:1500]}")
        if os.environ.get("PRECISION_ACCURACY_TRACEBACK"):
            traceback.print_exc()


# ---------------------------------------------------------------- cnx


def cnx_variants(args):
    """[(label, precision, isa)] for cnx float32 and each --cnx-variants entry."""
    out = [("f32", "f32", "")]
    for v in args.cnx_variants:
        precision, _, isa = v.partition("@")
        out.append((v, precision, isa))
    return out


def kernels(args, isa):
    """What `cnx bench --json` names as its kernels under CNX_ISA=isa ('' = the CPU's best)."""
    if isa not in args.kernels:
        line = sh([args.cnx, "bench", "atto-1k-224", "--runs", "1", "--threads", str(args.threads), "--json"],
                  isa).strip().splitlines()[-1]
        args.kernels[isa] = json.loads(line).get("isa") or isa or "default"
    return args.kernels[isa]


def cnx_label(args, precision, isa):
    return f"cnx {precision} ({kernels(args, isa)})"


def cnx_run(args, model, pv_path, precision, isa, tmp):
    out = os.path.join(tmp, f"out-{precision}-{isa or 'best'}.npz")
    sh([args.cnx, "run", "--model", model, "--input", pv_path, "--output", out, "--precision", precision,
        "--threads", str(args.threads)], isa)
    with np.load(out) as z:
        return {k: np.array(z[k]) for k in OUTPUTS}


def cnx_kernel_notes(args, rep, where, outs):
    """Whether cnx's kernel families give the same outputs at one precision (e.g. bf16 on AMX
    tiles and on AVX512_BF16): bit for bit, or the largest difference."""
    for precision in ("f32", "bf16", "int8"):
        runs = [(isa, o) for (p, isa), o in outs.items() if p == precision]
        for isa, o in runs[1:]:
            isa0, o0 = runs[0]
            diff = {n: float(np.abs(o[n].astype(np.float64) - o0[n]).max()) for n in OUTPUTS}
            same = all(np.array_equal(o[n], o0[n]) for n in OUTPUTS)
            rep.note(f"{where}: {cnx_label(args, precision, isa)} vs {cnx_label(args, precision, isa0)}: "
                     + ("identical outputs, bit for bit" if same else
                        "max |difference| " + ", ".join(f"{n} {d:.2e}" for n, d in diff.items())))


# ---------------------------------------------------------------- torch / OpenVINO


def outputs_module(torch, hf):
    """(logits, pooler_output) of a ConvNextV2ForImageClassification, as its forward computes them."""

    class Outputs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            pooled = self.m.convnextv2(pixel_values).pooler_output
            return self.m.classifier(pooled), pooled

    model = Outputs(hf).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def as_outputs(pair):
    return {name: np.asarray(t.float().numpy() if hasattr(t, "numpy") else t, dtype=np.float32)
            for name, t in zip(OUTPUTS, pair)}


def torch_f32(torch, model, x):
    with torch.inference_mode():
        return as_outputs(model(torch.from_numpy(x)))


def torch_bf16_eager(torch, model, x, rep, what):
    t = torch.from_numpy(x)

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(t)

    out = run()
    rep.note(f"{what}: output dtypes {[str(o.dtype) for o in out]}; kernels: "
             + bench_peers.amx_check(lambda: bench_peers.torch_kernel_summary(torch, run)))
    return as_outputs(out)


def torch_bf16_compile(torch, model, x, rep, what):
    """bench_peers.py's compile-bf16: inductor with freezing, static shapes, under autocast."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="inductor", mode=None, dynamic=False)
    t = torch.from_numpy(x)

    def run():
        with inductor_config.patch(freezing=True), torch.inference_mode(), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            return compiled(t)

    t0 = time.perf_counter()
    out = run()
    rep.note(f"{what}: compiled in {time.perf_counter() - t0:.0f} s; output dtypes {[str(o.dtype) for o in out]}; "
             "kernels: " + bench_peers.amx_check(lambda: bench_peers.torch_kernel_summary(torch, run)))
    out = as_outputs(out)
    torch._dynamo.reset()
    return out


def ov_convert(ov, torch, model, x):
    import warnings

    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the tracer's and transformers' deprecation noise
        return ov.convert_model(model, example_input=torch.from_numpy(x[:2].copy()))


def ov_run(ov, core, ov_model, x, threads, hint, rep, what):
    """Compile (static shape x.shape, LATENCY, one stream, `threads` threads, the precision hint
    or none) and infer once; notes the hint in force and the execution graph's kernels."""
    ov_model.reshape(list(x.shape))
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core.compile_model(ov_model, "CPU", config)
    in_force = compiled.get_property("INFERENCE_PRECISION_HINT")
    in_force = in_force.to_string() if hasattr(in_force, "to_string") else str(in_force)
    request = compiled.create_infer_request()
    res = request.infer(np.ascontiguousarray(x))
    out = {name: np.array(res[i], dtype=np.float32) for i, name in enumerate(OUTPUTS) if i < len(compiled.outputs)}
    rep.note(f"{what}: INFERENCE_PRECISION_HINT={in_force}{'' if hint else ' (plugin default)'}; "
             + bench_peers.amx_check(lambda: bench_peers.ov_kernel_summary(compiled)))
    del request, compiled
    return out


# ---------------------------------------------------------------- metrics


def compare(ref, out):
    """Per output: max abs error, max relative error (max |x - ref| / max |ref|); top-1
    agreement, top-5 overlap and same top-5 set on the logits."""
    r = {}
    for name in OUTPUTS:
        if name in ref and name in out:
            a, b = ref[name].astype(np.float64), out[name].astype(np.float64)
            err = float(np.abs(b - a).max())
            r[name] = (err, err / float(np.abs(a).max()))
    a, b = ref["logits"], out["logits"]
    r["top1"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    t5a, t5b = np.argsort(-a, -1, kind="stable")[:, :5], np.argsort(-b, -1, kind="stable")[:, :5]
    r["top5_overlap"] = float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(t5a, t5b)]))
    r["top5_same"] = float(np.mean([set(x) == set(y) for x, y in zip(t5a, t5b)]))
    r["identical"] = all(np.array_equal(ref[n], out[n]) for n in OUTPUTS if n in ref and n in out)
    return r


# ---------------------------------------------------------------- 1. digits


def digits_calibration(args, pv, names, rep):
    """CALIBRATION_IMAGES 1x3x32x32 inputs for NNCF and a phrase saying what they are."""
    rng = np.random.default_rng(0)
    if args.calibration == "train":
        try:
            import train_digits  # tools/train_digits.py: render(), make_processor()
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            d = load_digits()
            idx = np.arange(len(d.target))
            train_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=d.target, random_state=0)
            held = sorted(int(n.split("/")[1].split(".")[0]) for n in names)
            if held != sorted(int(i) for i in test_idx):
                raise RuntimeError("the rebuilt split's held-out indices differ from models/convnextv2-digits/held-out")
            chosen = np.sort(rng.choice(np.sort(train_idx), CALIBRATION_IMAGES, replace=False))
            proc = train_digits.make_processor()
            cal = np.asarray(proc([train_digits.render(d.images[i]) for i in chosen], return_tensors="np")["pixel_values"],
                             dtype=np.float32)
            return ([c[None] for c in cal],
                    f"{CALIBRATION_IMAGES} images of the digits' training split ({len(train_idx)} images, "
                    "rebuilt as tools/train_digits.py makes them; none held out), seeded choice")
        except Exception as e:
            rep.note(f"calibration on the training split impossible ({type(e).__name__}: {e}); held-out subset instead")
    if args.calibration in ("train", "held-out"):
        chosen = np.sort(rng.choice(len(pv), CALIBRATION_IMAGES, replace=False))
        return ([pv[i:i + 1] for i in chosen],
                f"{CALIBRATION_IMAGES} of the {len(pv)} held-out images themselves (seeded choice)")
    return ([rng.standard_normal((1,) + pv.shape[1:], dtype=np.float32) for _ in range(CALIBRATION_IMAGES)],
            f"{CALIBRATION_IMAGES} random normal images")


def digits(args, rep):
    import torch
    import transformers
    from PIL import Image
    from transformers import ConvNextV2ForImageClassification

    truth = json.load(open(os.path.join(DIGITS, "held-out-transformers.json")))
    names = sorted(truth["predictions"])
    labels = np.array([truth["predictions"][n]["label"] for n in names])
    fixture_top1 = np.array([truth["predictions"][n]["predicted"] for n in names])
    proc_cls = getattr(transformers, "ConvNextImageProcessorPil", None) or transformers.ConvNextImageProcessor
    proc = proc_cls.from_pretrained(DIGITS)
    images = [Image.open(os.path.join(DIGITS, "held-out", n)).convert("RGB") for n in names]
    pv = np.ascontiguousarray(proc(images, return_tensors="np")["pixel_values"], dtype=np.float32)
    hf = ConvNextV2ForImageClassification.from_pretrained(DIGITS).eval()
    model = outputs_module(torch, hf)

    ref = torch_f32(torch, model, pv)["logits"]
    assert (ref.argmax(-1) == fixture_top1).all(), "transformers' f32 predictions moved since the fixture"
    f32_top1 = ref.argmax(-1)
    rows = []

    def add(engine, logits):
        if isinstance(logits, Exception):
            rows.append((engine, None))
            rep.fail(f"digits: {engine}", logits)
            return
        top1 = logits.argmax(-1)
        rows.append((engine, (float((top1 == labels).mean()), int((top1 == labels).sum()),
                              float((top1 == f32_top1).mean()), float(np.abs(logits.astype(np.float64) - ref).max()),
                              bool(np.array_equal(logits, ref)))))

    def attempt(engine, fn):
        log(f"digits: {engine} ...")
        try:
            add(engine, fn())
        except Exception as e:
            add(engine, e)

    add("transformers float32 (reference)", ref)

    with tempfile.TemporaryDirectory() as tmp:
        pv_path = os.path.join(tmp, "digits.npy")
        np.save(pv_path, pv)
        cnx = {}
        for _, precision, isa in cnx_variants(args):
            def run_cnx(precision=precision, isa=isa):
                cnx[(precision, isa)] = cnx_run(args, DIGITS, pv_path, precision, isa, tmp)
                return cnx[(precision, isa)]["logits"]

            attempt(cnx_label(args, precision, isa), run_cnx)
        cnx_kernel_notes(args, rep, "digits", cnx)

    if "eager" in args.torch_bf16:
        attempt("torch bf16 autocast (eager)",
                lambda: torch_bf16_eager(torch, model, pv, rep, "digits torch bf16 eager")["logits"])
    if "compile" in args.torch_bf16:
        attempt("torch.compile bf16 (freezing, autocast)",
                lambda: torch_bf16_compile(torch, model, pv, rep, "digits torch.compile bf16")["logits"])

    try:
        import nncf
        import openvino as ov

        rep.versions["openvino"] = ov.get_version()
        rep.versions["nncf"] = nncf.__version__
        core = ov.Core()
        ov_model = ov_convert(ov, torch, model, pv)
        attempt("OpenVINO f32", lambda: ov_run(ov, core, ov_model, pv, args.threads, "f32", rep,
                                                "digits OpenVINO f32")["logits"])
        attempt("OpenVINO bf16", lambda: ov_run(ov, core, ov_model, pv, args.threads, "bf16", rep,
                                                 "digits OpenVINO bf16")["logits"])

        def ov_int8():
            import logging

            samples, what = digits_calibration(args, pv, names, rep)
            ov_model.reshape([1] + list(pv.shape[1:]))
            nncf.set_log_level(logging.WARNING)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars
                q = nncf.quantize(ov_model, nncf.Dataset(samples), subset_size=len(samples))
            rep.note(f"digits OpenVINO int8: nncf.quantize (defaults, subset_size={len(samples)}) on {what}, "
                     f"{time.perf_counter() - t0:.0f} s")
            return ov_run(ov, core, q, pv, args.threads, None, rep, "digits OpenVINO int8 (NNCF)")["logits"]

        attempt("OpenVINO int8 (NNCF)", ov_int8)
    except Exception as e:
        for engine in ("OpenVINO f32", "OpenVINO bf16", "OpenVINO int8 (NNCF)"):
            if engine not in [r[0] for r in rows]:
                add(engine, e)

    def ort_int8():
        import onnx
        import onnxruntime as ort

        rep.versions["onnxruntime"] = ort.__version__
        rep.versions["onnx"] = onnx.__version__

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, pixel_values):
                return self.m(pixel_values=pixel_values).logits

        vnni = bench_peers.has_vnni()
        with tempfile.TemporaryDirectory() as tmp:
            f32_path, q_path = os.path.join(tmp, "digits.onnx"), os.path.join(tmp, "digits-int8.onnx")
            holder = Report()
            bench_peers.export_onnx(torch, Logits(hf).eval(), int(hf.config.image_size), f32_path, holder)
            bench_peers.quantize_onnx(f32_path, q_path, vnni)
            ops = {}
            for node in onnx.load(q_path).graph.node:
                ops[node.op_type] = ops.get(node.op_type, 0) + 1
            integer = {k: v for k, v in ops.items() if "Integer" in k or "Quantize" in k}
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            sess = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
            out = sess.run(None, {sess.get_inputs()[0].name: pv})[0]
            rep.note(f"digits onnxruntime int8: quantize_dynamic(QInt8, per_channel, MatMul, reduce_range={not vnni}); "
                     f"{'; '.join(holder.notes)}; quantised graph: "
                     + ", ".join(f"{v}x {k}" for k, v in sorted(integer.items()))
                     + f" (of {sum(ops.values())} nodes; {ops.get('MatMul', 0)} float MatMul left)")
            return out

    attempt(f"onnxruntime int8 (reduce_range={not bench_peers.has_vnni()})", ort_int8)

    def torch_int8():
        torch.backends.quantized.engine = "x86"
        qmodel = torch.ao.quantization.quantize_dynamic(hf, {torch.nn.Linear}, dtype=torch.qint8)
        quantised = sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in qmodel.modules())
        floats = sum(type(m) is torch.nn.Linear for m in qmodel.modules())
        rep.note(f"digits torch dynamic int8: engine {torch.backends.quantized.engine}, {quantised} quantised "
                 f"Linear modules, {floats} float nn.Linear left")
        with torch.inference_mode():
            return qmodel(pixel_values=torch.from_numpy(pv)).logits.numpy()

    attempt("torch dynamic int8 (x86)", torch_int8)

    print(f"### Digits held-out set ({len(names)} images), top-1\n")
    print("All engines on the same pixel values (transformers' image processor). Reference: transformers "
          "float32 (eager); its top-1 equals the committed held-out-transformers.json's.\n")
    print("| engine | top-1 | correct | same top-1 as float32 | max \\|logits - float32 logits\\| |")
    print("|---|---|---|---|---|")
    for engine, r in rows:
        if r is None:
            print(f"| {engine} | failed | | | |")
            continue
        acc, correct, agree, err, identical = r
        print(f"| {engine} | {100 * acc:.2f}% | {correct}/{len(names)} | {100 * agree:.2f}% | {err:.2e} |")
        if identical and ("bf16" in engine or "int8" in engine):
            rep.note(f"digits: {engine}'s logits equal transformers float32's bit for bit: did it run in reduced precision?")
    print()


# ---------------------------------------------------------------- 2. random-weight models


def random_models(args, rep):
    import torch
    import transformers
    from transformers import ConvNextV2ForImageClassification

    transformers.logging.set_verbosity_error()
    photos = [os.path.join(ROOT, "tests", "fixtures", "images", p) for p in PHOTOS]
    rows = []  # (model, engine, reference, compare dict or None)
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            log(f"random {preset} ...")
            model_dir = os.path.join(tmp, preset)
            pv_path = os.path.join(tmp, f"{preset}.npy")
            sh([args.cnx, "random-model", preset, "--output", model_dir])
            sh([args.cnx, "preprocess", "--model", model_dir, *photos, "--output", pv_path])
            pv = np.load(pv_path)
            assert pv.shape[0] == len(photos), pv.shape

            def row(engine, reference, ref, fn):
                log(f"random {preset}: {engine} ...")
                try:
                    out = fn() if callable(fn) else fn
                    if ref is None:
                        raise RuntimeError(f"its reference ({reference}) failed")
                    r = compare(ref, out)
                    rows.append((preset, engine, reference, r))
                    if r["identical"] and ("bf16" in engine or "int8" in engine):
                        rep.note(f"{preset}: {engine}'s outputs equal {reference}'s bit for bit: "
                                 "did it run in reduced precision?")
                    return out
                except Exception as e:
                    rows.append((preset, engine, reference, None))
                    rep.fail(f"{preset}: {engine}", e)
                    return None

            # cnx
            cnx = {}
            for _, precision, isa in cnx_variants(args):
                label = cnx_label(args, precision, isa)
                try:
                    log(f"random {preset}: {label} ...")
                    cnx[(precision, isa)] = cnx_run(args, model_dir, pv_path, precision, isa, tmp)
                except Exception as e:
                    rep.fail(f"{preset}: {label}", e)
            cnx_kernel_notes(args, rep, preset, cnx)
            cnx_ref = cnx.get(("f32", ""))
            cnx_ref_label = cnx_label(args, "f32", "")
            for _, precision, isa in cnx_variants(args)[1:]:
                label = cnx_label(args, precision, isa)
                if (precision, isa) in cnx:
                    row(label, cnx_ref_label, cnx_ref, cnx[(precision, isa)])
                else:
                    rows.append((preset, label, cnx_ref_label, None))

            # transformers, on the same weights
            hf, info = ConvNextV2ForImageClassification.from_pretrained(model_dir, output_loading_info=True)
            bad = {k: v for k, v in info.items() if v}
            if bad:
                raise RuntimeError(f"transformers did not load {model_dir} cleanly: {bad}")
            model = outputs_module(torch, hf.eval().float())
            t32 = None
            try:
                t32 = torch_f32(torch, model, pv)
            except Exception as e:
                rep.fail(f"{preset}: torch float32", e)
            row("torch float32 (eager)", cnx_ref_label, cnx_ref, t32)
            if "eager" in args.torch_bf16:
                row("torch bf16 autocast (eager)", "torch float32 (eager)", t32,
                    lambda: torch_bf16_eager(torch, model, pv, rep, f"{preset} torch bf16 eager"))
            if "compile" in args.torch_bf16:
                row("torch.compile bf16 (freezing, autocast)", "torch float32 (eager)", t32,
                    lambda: torch_bf16_compile(torch, model, pv, rep, f"{preset} torch.compile bf16"))

            # OpenVINO
            try:
                import openvino as ov

                rep.versions["openvino"] = ov.get_version()
                core = ov.Core()
                ov_model = ov_convert(ov, torch, model, pv)
                o32 = row("OpenVINO f32", "torch float32 (eager)", t32,
                          lambda: ov_run(ov, core, ov_model, pv, args.threads, "f32", rep, f"{preset} OpenVINO f32"))
                row("OpenVINO bf16", "OpenVINO f32", o32,
                    lambda: ov_run(ov, core, ov_model, pv, args.threads, "bf16", rep, f"{preset} OpenVINO bf16"))
                del ov_model, core
            except Exception as e:
                rep.fail(f"{preset}: OpenVINO", e)
            del model, hf

    print(f"### Random-weight models on the {len(PHOTOS)} committed photos: bf16 and int8 against float32\n")
    print("Max rel. error = max |x - reference| / max |reference|, per output over all images; top-5 overlap = "
          "mean share of the reference's top-5 found in the engine's top-5; same top-5 = share of images whose "
          "top-5 sets are equal. The float32 rows give the float32 engines' own spread.\n")
    print("| model | engine | against | logits max abs | logits max rel. | pooler_output max abs | "
          "pooler_output max rel. | top-1 agree | top-5 overlap | same top-5 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset, engine, reference, r in rows:
        if r is None:
            print(f"| {preset} | {engine} | {reference} | failed | | | | | | |")
            continue
        lg, po = r["logits"], r.get("pooler_output", (float("nan"),) * 2)
        print(f"| {preset} | {engine} | {reference} | {lg[0]:.2e} | {lg[1]:.2e} | {po[0]:.2e} | {po[1]:.2e} | "
              f"{100 * r['top1']:.0f}% | {100 * r['top5_overlap']:.0f}% | {100 * r['top5_same']:.0f}% |")
    print()


# ---------------------------------------------------------------- main


def main():
    t_start = time.perf_counter()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnx", default=os.path.join(ROOT, "target", "release", "cnx"))
    ap.add_argument("--threads", type=int, default=2, help="for cnx, torch, OpenVINO and ONNX Runtime")
    ap.add_argument("--cnx-variants", default="bf16,bf16@avx512-bf16,int8,int8@avx512-vnni",
                    help="PRECISION[@CNX_ISA] entries, comma-separated (no @: the CPU's best kernels); "
                         "cnx f32 always runs")
    ap.add_argument("--torch-bf16", default="eager,compile",
                    help="torch bf16 peers: eager (autocast) and/or compile (torch.compile, freezing, autocast)")
    ap.add_argument("--calibration", default="train", choices=["train", "held-out", "random"],
                    help="OpenVINO int8 (NNCF) calibration images for the digits model")
    ap.add_argument("--presets", default="tiny-1k-224,base-1k-224", help="random-weight models")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--skip-random", action="store_true")
    args = ap.parse_args()
    args.cnx_variants = [v.strip() for v in args.cnx_variants.split(",") if v.strip()]
    args.torch_bf16 = [v.strip() for v in args.torch_bf16.split(",") if v.strip()]
    args.presets = [v.strip() for v in args.presets.split(",") if v.strip()]
    args.kernels = {}
    if not os.path.isabs(args.cnx) and not os.path.exists(args.cnx):
        args.cnx = os.path.join(ROOT, args.cnx)
    for v in args.cnx_variants:
        if v.partition("@")[0] not in ("f32", "bf16", "int8"):
            ap.error(f"--cnx-variants: unknown precision in {v!r}")
    if set(args.torch_bf16) - {"eager", "compile"}:
        ap.error("--torch-bf16: eager and/or compile")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    transformers.logging.set_verbosity_error()
    rep = Report()
    rep.versions["torch"] = torch.__version__
    rep.versions["transformers"] = transformers.__version__
    rep.versions["cnx"] = sh([args.cnx, "--version"]).strip().removeprefix("cnx ")
    try:
        import sklearn

        rep.versions["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    for _, _, isa in cnx_variants(args):
        kernels(args, isa)

    if not args.skip_digits:
        digits(args, rep)
    if not args.skip_random:
        random_models(args, rep)

    for n in rep.notes:
        print(f"- {n}")
    print()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in rep.versions.items()))
    print(f"machine: {bench_peers.cpu_name()}, {os.cpu_count()} logical CPUs, AMX {bench_peers.has_amx()}, "
          f"VNNI {bench_peers.has_vnni()}; cnx kernels: "
          + ", ".join(f"{isa or 'default'} -> {k}" for isa, k in args.kernels.items())
          + f"; {args.threads} threads everywhere")
    print(f"wall time: {time.perf_counter() - t_start:.0f} s")
    print("command: " + shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv)))


if __name__ == "__main__":
    main()
