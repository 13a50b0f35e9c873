#!/usr/bin/env python3
"""Train transformers' own ConvNextV2ForImageClassification on scikit-learn's handwritten digits.

Run by hand (never in CI), in a virtualenv outside the repository:

    python3 -m venv /work/venv
    /work/venv/bin/pip install -r tools/requirements-fixtures.txt
    /work/venv/bin/python tools/train_digits.py

It (re)writes models/convnextv2-digits/:

  config.json, preprocessor_config.json, model.safetensors
                            `save_pretrained` of the model and of the image processor
                            (id2label "0".."9")
  held-out/<digit>/<index>.png
                            the held-out 20% as an ImageFolder tree (`cnx eval` reads it);
                            <index> is the image's index in `load_digits()`
  held-out-transformers.json
                            per held-out image (keyed "<digit>/<index>.png"): transformers'
                            float32 logits and top-1, and float64 logits of a float64 copy of
                            the model on the same (float32) pixel values; the float32 top-1
                            accuracy; the float32-vs-float64 gap of the logits (the test
                            tolerance is derived from it, as for tests/fixtures)
  training.json             config, split, schedule, per-epoch loss and held-out accuracy,
                            training time, versions

The data: `sklearn.datasets.load_digits()` (1,797 8x8 grey digits, values 0..16, shipped
inside the wheel). Each digit becomes a file a user would have: dark ink on white paper,
value v -> grey 255 - round(255 v / 16), upscaled 8x8 -> 64x64 with PIL's bicubic filter,
saved as an RGB PNG. The images go through transformers' ConvNeXt image processor (the PIL
one, which cnx reproduces bit for bit) with size {"shortest_edge": 32} and crop_pct 0.875:
bicubic resize 64 -> 36, centre crop 32x32, rescale, ImageNet mean/std. The model sees 32x32.

Split: stratified 80 / 20 (`train_test_split(test_size=0.2, stratify=y, random_state=0)`):
1,437 training and 360 held-out images. Training: AdamW, cosine schedule with warm-up,
random shifts of up to 2 pixels (of 32) on the training images only, fixed seeds; the
held-out images are never used to choose anything but are reported per epoch.

Deterministic on one machine and package set (torch.use_deterministic_algorithms, one
thread); re-running elsewhere may train to slightly different weights.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import PIL
import sklearn
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "models" / "convnextv2-digits"

IMAGE_SIDE = 64  # the PNG files
MODEL_SIDE = 32  # the processor's output
CROP_PCT = 0.875
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]

CONFIG = dict(
    num_channels=3,
    patch_size=2,
    num_stages=4,
    hidden_sizes=[16, 32, 64, 128],
    depths=[1, 2, 3, 1],
    hidden_act="gelu",
    drop_path_rate=0.0,
    image_size=MODEL_SIDE,
)


def render(digit: np.ndarray) -> Image.Image:
    """An 8x8 digit (0..16) as a 64x64 RGB image of dark ink on white."""
    grey = 255 - np.rint(digit * (255.0 / 16.0)).astype(np.uint8)
    small = Image.fromarray(grey, mode="L")
    return small.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BICUBIC).convert("RGB")


def make_processor():
    """transformers' PIL ConvNeXt image processor (what cnx reproduces bit for bit)."""
    kwargs = dict(
        do_resize=True, size={"shortest_edge": MODEL_SIDE}, crop_pct=CROP_PCT, resample=3,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=MEAN, image_std=STD,
    )
    cls = getattr(transformers, "ConvNextImageProcessorPil", None)  # transformers 5.x
    if cls is None:  # 4.x: the slow ConvNextImageProcessor is the PIL path
        cls = transformers.ConvNextImageProcessor
    return cls(**kwargs)


def pixel_values(processor, images) -> torch.Tensor:
    out = processor(images, return_tensors="np")["pixel_values"]
    out = np.asarray(out)
    assert out.dtype == np.float32 and out.shape[1:] == (3, MODEL_SIDE, MODEL_SIDE), out.shape
    return torch.from_numpy(out)


def shift(batch: torch.Tensor, background: torch.Tensor, gen: torch.Generator, max_shift: int):
    """Each image moved by a random whole number of pixels (up to max_shift each way), the
    uncovered border filled with the background (white paper, normalised)."""
    n, c, h, w = batch.shape
    pad = max_shift
    padded = background.view(1, c, 1, 1).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, :, pad:pad + h, pad:pad + w] = batch
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def accuracy(model, pv: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=pv).logits
    return float((logits.argmax(-1) == labels).float().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(
        indices, test_size=0.2, stratify=digits.target, random_state=0
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    processor = make_processor()

    if OUT.exists():
        shutil.rmtree(OUT)
    held_out = OUT / "held-out"
    # The held-out images are written first and read back from the files, as a user would.
    test_paths = []
    for i in test_idx:
        rel = f"{digits.target[i]}/{i:04d}.png"
        path = held_out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        render(digits.images[i]).save(path)
        test_paths.append(rel)
    test_pv = pixel_values(processor, [Image.open(held_out / p).convert("RGB") for p in test_paths])
    test_y = torch.from_numpy(digits.target[test_idx]).long()
    train_pv = pixel_values(processor, [render(digits.images[i]) for i in train_idx])
    train_y = torch.from_numpy(digits.target[train_idx]).long()
    # White paper after normalisation: what a shifted image's uncovered border shows.
    white = pixel_values(processor, [Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), (255, 255, 255))])
    background = white[0, :, 0, 0]

    id2label = {i: str(i) for i in range(10)}
    config = ConvNextV2Config(
        **CONFIG, num_labels=10, id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    model = ConvNextV2ForImageClassification(config)
    params = sum(p.numel() for p in model.parameters())

    steps_per_epoch = math.ceil(len(train_idx) / args.batch)
    total = args.epochs * steps_per_epoch
    warmup = 3 * steps_per_epoch
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))),
    )
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_idx), generator=gen)
        running = 0.0
        for s in range(steps_per_epoch):
            idx = order[s * args.batch:(s + 1) * args.batch]
            x = shift(train_pv[idx], background, gen, max_shift=2)
            loss = F.cross_entropy(model(pixel_values=x).logits, train_y[idx], label_smoothing=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            running += float(loss) * len(idx)
        acc = accuracy(model, test_pv, test_y)
        history.append({"epoch": epoch + 1, "train_loss": running / len(train_idx), "held_out_top1": acc})
        print(f"epoch {epoch + 1:3d}  loss {running / len(train_idx):.4f}  held-out top-1 {acc:.4f}", flush=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    model.save_pretrained(OUT)  # config.json + model.safetensors (float32)
    processor.save_pretrained(OUT)

    # Ground truth from the saved files, as a user would load them.
    model = ConvNextV2ForImageClassification.from_pretrained(OUT).eval()
    with torch.no_grad():
        logits32 = model(pixel_values=test_pv).logits.numpy()
        model64 = ConvNextV2ForImageClassification.from_pretrained(OUT).double().eval()
        logits64 = model64(pixel_values=test_pv.double()).logits.numpy()
    predicted = logits32.argmax(-1)
    top1 = float((predicted == test_y.numpy()).mean())
    gap = float(np.abs(logits32.astype(np.float64) - logits64).max())
    if (predicted != logits64.argmax(-1)).any():
        raise RuntimeError("float32 and float64 disagree on a top-1: the test's ground truth would be ambiguous")
    if top1 < 0.97:
        raise RuntimeError(f"held-out top-1 {top1:.4f} is below 0.97")
    size = (OUT / "model.safetensors").stat().st_size

    truth = {
        "description": "transformers' ConvNextV2ForImageClassification on the held-out digits "
                       "(tools/train_digits.py); logits of the float32 model and of a float64 copy "
                       "on the same float32 pixel values",
        "images": len(test_paths),
        "top1": top1,
        "correct": int((predicted == test_y.numpy()).sum()),
        "f32_vs_f64_max_abs": {"logits": gap},
        "output_max_abs": {"logits": float(np.abs(logits64).max())},
        "predictions": {
            rel: {
                "label": int(y),
                "predicted": int(p),
                "logits": [float(v) for v in l32],
                "logits_f64": [float(v) for v in l64],
            }
            for rel, y, p, l32, l64 in zip(test_paths, test_y.numpy(), predicted, logits32, logits64)
        },
        "versions": versions(),
    }
    (OUT / "held-out-transformers.json").write_text(json.dumps(truth, indent=1) + "\n")
    training = {
        "config": CONFIG,
        "parameters": params,
        "checkpoint_bytes": size,
        "data": "sklearn.datasets.load_digits: 1797 8x8 images, 10 classes",
        "images": f"{IMAGE_SIDE}x{IMAGE_SIDE} RGB PNG (8x8 upscaled with PIL bicubic), dark ink on white",
        "preprocessing": {"shortest_edge": MODEL_SIDE, "crop_pct": CROP_PCT, "mean": MEAN, "std": STD},
        "split": {"train": len(train_idx), "held_out": len(test_idx),
                  "how": "train_test_split(test_size=0.2, stratify=y, random_state=0)"},
        "optimiser": {"name": "AdamW", "lr": args.lr, "weight_decay": args.weight_decay,
                      "batch": args.batch, "epochs": args.epochs, "warmup_epochs": 3,
                      "schedule": "cosine", "label_smoothing": 0.1,
                      "augmentation": "random shift of up to 2 pixels each way"},
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "threads": 1,
        "machine": platform.processor() or platform.machine(),
        "held_out_top1": top1,
        "history": history,
        "versions": versions(),
    }
    (OUT / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    print(f"{params} parameters, {size} bytes; trained in {train_seconds:.0f} s; "
          f"held-out top-1 {top1:.4f} ({truth['correct']}/{len(test_paths)}); f32-f64 gap {gap:.3g}")
    return 0


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "scikit-learn": sklearn.__version__,
    }


if __name__ == "__main__":
    sys.exit(main())
