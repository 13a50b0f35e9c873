#!/usr/bin/env python3
"""int8 accuracy, measured: cnx's `--precision int8` and the two int8 peers against float32.

    /work/venv/bin/python tools/int8_accuracy.py [--cnx target/release/cnx] [--threads 2]

1. The trained digits model (models/convnextv2-digits) on its 360 held-out images: top-1
   accuracy in float32 (transformers) and in int8 for cnx (`cnx eval --precision int8`),
   ONNX Runtime's `quantize_dynamic` (QInt8 weights per channel, MatMul; reduce_range where
   the CPU has no VNNI) and PyTorch's dynamic quantisation of nn.Linear (x86 engine); and the
   share of images whose int8 top-1 is the float32 top-1.
2. Random-weight tiny and base (`cnx random-model`: every parameter random) on the committed
   photos (tests/fixtures/images, the decodable ones): cnx int8 against cnx float32, per
   output (logits, pooler_output) the max relative error (max |int8 - f32| / max |f32|) and
   the top-1 / top-5 agreement. Random weights are a harsh case (no trained structure).

Prints Markdown tables (the BENCHMARKS.md section) and the command. Never run in CI: needs
torch, transformers, onnxruntime, onnx, onnxscript, pillow (tools/requirements-fixtures.txt).
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "convnextv2-digits")
PHOTOS = ["astronaut.png", "camera_grey.png", "chelsea.png", "coffee.png", "rocket.png",
          "chelsea.jpg", "rocket_exif6.jpg", "coffee.bmp", "astronaut.webp", "tall_260x600.png"]


def sh(cmd, isa=None):
    env = dict(os.environ)
    if isa:
        env["CNX_ISA"] = isa
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout


def has_vnni():
    with open("/proc/cpuinfo") as f:
        flags = next((l for l in f if l.startswith("flags")), "").split()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def digits(args):
    import torch
    import transformers
    from PIL import Image
    from transformers import ConvNextV2ForImageClassification

    torch.set_num_threads(args.threads)
    truth = json.load(open(os.path.join(DIGITS, "held-out-transformers.json")))
    names = sorted(truth["predictions"])
    labels = np.array([truth["predictions"][n]["label"] for n in names])
    f32_top1 = np.array([truth["predictions"][n]["predicted"] for n in names])
    proc_cls = getattr(transformers, "ConvNextImageProcessorPil", None) or transformers.ConvNextImageProcessor
    proc = proc_cls.from_pretrained(DIGITS)
    images = [Image.open(os.path.join(DIGITS, "held-out", n)).convert("RGB") for n in names]
    pv = np.asarray(proc(images, return_tensors="np")["pixel_values"], dtype=np.float32)
    model = ConvNextV2ForImageClassification.from_pretrained(DIGITS).eval()

    rows = []

    def add(engine, top1):
        rows.append((engine, float((top1 == labels).mean()), int((top1 == labels).sum()),
                     float((top1 == f32_top1).mean())))

    with torch.inference_mode():
        f32 = model(pixel_values=torch.from_numpy(pv)).logits.numpy()
    assert (f32.argmax(-1) == f32_top1).all(), "transformers' f32 predictions moved since the fixture"
    add("transformers float32", f32.argmax(-1))

    # cnx int8, through its own preprocessing of the files, on each kernel family.
    for isa in args.isas:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "p.jsonl")
            sh([args.cnx, "eval", "--model", DIGITS, os.path.join(DIGITS, "held-out"), "--precision", "int8",
                "--threads", str(args.threads), "--predictions", out, "--json"], isa)
            by_path = {}
            for line in open(out):
                r = json.loads(line)
                rel = os.path.relpath(r["path"], os.path.join(DIGITS, "held-out"))
                by_path[rel] = int(np.argmax(r["logits"]))
            add(f"cnx int8 ({isa_label(args, isa)})", np.array([by_path[n] for n in names]))

    # PyTorch dynamic quantisation.
    torch.backends.quantized.engine = "x86"
    qmodel = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.inference_mode():
        add("torch dynamic int8 (x86)", qmodel(pixel_values=torch.from_numpy(pv)).logits.numpy().argmax(-1))

    # ONNX Runtime dynamic quantisation.
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).logits

    vnni = has_vnni()
    with tempfile.TemporaryDirectory() as tmp:
        f32_path, q_path = os.path.join(tmp, "digits.onnx"), os.path.join(tmp, "digits-int8.onnx")
        batch = torch.export.Dim("batch", min=1, max=4096)
        prog = torch.onnx.export(Logits(model).eval(), (torch.from_numpy(pv[:2]),), dynamo=True,
                                 input_names=["pixel_values"], output_names=["logits"],
                                 dynamic_shapes={"pixel_values": {0: batch}}, opset_version=18)
        prog.save(f32_path)
        quantize_dynamic(f32_path, q_path, weight_type=QuantType.QInt8, per_channel=True,
                         reduce_range=not vnni, op_types_to_quantize=["MatMul"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: pv})[0]
        add(f"onnxruntime int8 (reduce_range={not vnni})", out.argmax(-1))

    print(f"### Digits held-out set ({len(names)} images), top-1\n")
    print("| engine | top-1 | correct | same top-1 as float32 |")
    print("|---|---|---|---|")
    for engine, acc, correct, agree in rows:
        print(f"| {engine} | {100 * acc:.2f}% | {correct}/{len(names)} | {100 * agree:.2f}% |")
    print()


def random_models(args):
    photos = [os.path.join(ROOT, "tests", "fixtures", "images", p) for p in PHOTOS]
    print("### Random-weight models on the committed photos: cnx int8 against cnx float32\n")
    print("| model | kernels | images | logits max rel. error | pooler_output max rel. error | top-1 agree | top-5 overlap |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, isa in [(p, i) for p in ("tiny-1k-224", "base-1k-224") for i in args.isas]:
            model = os.path.join(tmp, preset)
            pv = os.path.join(tmp, f"{preset}.npy")
            if not os.path.isdir(model):
                sh([args.cnx, "random-model", preset, "--output", model])
                sh([args.cnx, "preprocess", "--model", model, *photos, "--output", pv])
            outs = {}
            for precision in ("f32", "int8"):
                out = os.path.join(tmp, f"{preset}-{precision}.npz")
                sh([args.cnx, "run", "--model", model, "--input", pv, "--output", out, "--precision", precision,
                    "--threads", str(args.threads)], isa)
                outs[precision] = np.load(out)
            errs = {}
            for name in ("logits", "pooler_output"):
                a, b = outs["f32"][name].astype(np.float64), outs["int8"][name].astype(np.float64)
                errs[name] = np.abs(b - a).max() / np.abs(a).max()
            a, b = outs["f32"]["logits"], outs["int8"]["logits"]
            top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
            t5a, t5b = np.argsort(-a, -1)[:, :5], np.argsort(-b, -1)[:, :5]
            overlap = float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(t5a, t5b)]))
            print(f"| {preset} | {isa_label(args, isa)} | {len(photos)} | {errs['logits']:.2e} | {errs['pooler_output']:.2e} | "
                  f"{100 * top1:.0f}% | {100 * overlap:.0f}% |")
    print()


def isa_label(args, isa):
    return args.kernels[isa]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cnx", default=os.path.join(ROOT, "target", "release", "cnx"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isas", default=",avx2",
                    help="CNX_ISA values to run cnx under, comma-separated ('' = the CPU's best)")
    ap.add_argument("--skip-random", action="store_true")
    args = ap.parse_args()
    args.isas = [i.strip() for i in args.isas.split(",")]
    args.kernels = {}
    for isa in args.isas:
        line = sh([args.cnx, "bench", "atto-1k-224", "--runs", "1", "--json"], isa).splitlines()[-1]
        args.kernels[isa] = json.loads(line).get("isa")
    kernels = ", ".join(args.kernels.values())
    digits(args)
    if not args.skip_random:
        random_models(args)
    print(f"machine: {platform.processor() or platform.machine()}, cnx kernels {kernels}, VNNI {has_vnni()}")
    print("command: " + shlex.join([sys.executable] + sys.argv))


if __name__ == "__main__":
    main()
