"""Ground truth for `cnx run --labels`: transformers' loss for each problem type.

Run by hand in the fixtures virtualenv (tools/requirements-fixtures.txt):

    /work/venv/bin/python tools/make_loss_fixtures.py

Writes tests/fixtures/losses/<case>/ with config.json and model.safetensors (save_pretrained;
every parameter random, as tools/make_fixtures.py draws them), pixel_values.npy, labels.npy and
expected.npz: `logits` and `loss` of the float32 model (`ConvNextV2ForImageClassification(
pixel_values, labels=labels)`, transformers' own loss_function), and `loss_f64` of a float64
copy with the same weights.

Cases (problem_type decides, as transformers' ForSequenceClassificationLoss does):
  single-label   problem_type unset, int64 labels (one -100, ignored)  -> cross-entropy
  multi-label    problem_type multi_label_classification, float 0/1    -> BCE with logits
  regression     num_labels 1, float labels                             -> mean squared error
  regression-3   problem_type regression, 3 labels, float (B, 3)        -> mean squared error
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "losses")


def case(name, seed, num_labels, make_labels, **config):
    rng = np.random.default_rng(seed)
    cfg = mf.hf_config([8, 16], [1, 1], num_labels, image_size=32, num_stages=2, **config)
    model = mf.new_classifier(cfg, rng)
    pv = mf.pixels(rng, 3, 3, 32, 32)
    labels = make_labels(rng)
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    np.save(os.path.join(out_dir, "pixel_values.npy"), pv.numpy())
    np.save(os.path.join(out_dir, "labels.npy"), labels)
    with torch.no_grad():
        out = model(pixel_values=pv, labels=torch.from_numpy(labels))
        twin = mf.f64_twin(model)
        twin.config.problem_type = model.config.problem_type
        out64 = twin(pixel_values=pv.double(), labels=torch.from_numpy(labels))
    np.savez(
        os.path.join(out_dir, "expected.npz"),
        logits=out.logits.numpy(),
        loss=out.loss.numpy().astype(np.float32),
        loss_f64=out64.loss.numpy().astype(np.float64),
    )
    print(f"{name}: problem_type {model.config.problem_type}, loss {out.loss.item():.6f}")


def main():
    case("single-label", 101, 5,
         lambda rng: np.array([3, -100, 0], dtype=np.int64))
    case("multi-label", 103, 4,
         lambda rng: (rng.random((3, 4)) < 0.5).astype(np.float32),
         problem_type="multi_label_classification")
    case("regression", 104, 1,
         lambda rng: rng.standard_normal(3).astype(np.float32))
    case("regression-3", 105, 3,
         lambda rng: rng.standard_normal((3, 3)).astype(np.float32),
         problem_type="regression")


if __name__ == "__main__":
    main()
