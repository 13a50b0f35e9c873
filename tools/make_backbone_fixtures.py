"""Ground truth for `cnx run --backbone`: transformers' ConvNextV2Backbone feature maps.

Run by hand in the fixtures virtualenv (tools/requirements-fixtures.txt):

    /work/venv/bin/python tools/make_backbone_fixtures.py

Writes tests/fixtures/backbones/<case>/: config.json and model.safetensors (save_pretrained of
a ConvNextV2Backbone: `embeddings.*`, `encoder.*`, `hidden_states_norms.<stage>.*`; every
parameter random, the norms included, as tools/make_fixtures.py draws them), pixel_values.npy,
and expected.npz: `feature_maps_<k>` and `last_hidden_state` of the float32 model, and
`<name>_f64` of a float64 copy with the same weights (for the tolerance).

Cases: two `out_features` choices (one with the stem), one at a non-square input size.
"""

import os
import sys

import numpy as np
import torch
from transformers import ConvNextV2Backbone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "backbones")


def case(name, seed, out_features, height, width, batch=2):
    rng = np.random.default_rng(seed)
    cfg = mf.hf_config([8, 16, 24], [1, 2, 1], 3, image_size=64, num_stages=3,
                       out_features=out_features)
    cfg.architectures = ["ConvNextV2Backbone"]
    model = ConvNextV2Backbone(cfg).eval()
    mf.randomize_parameters(model, rng)
    pv = mf.pixels(rng, batch, 3, height, width)
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    np.save(os.path.join(out_dir, "pixel_values.npy"), pv.numpy())
    twin = mf.f64_twin(model)
    with torch.no_grad():
        out = model(pixel_values=pv, output_hidden_states=True)
        out64 = twin(pixel_values=pv.double(), output_hidden_states=True)
    arrays = {}
    for k, (a, b) in enumerate(zip(out.feature_maps, out64.feature_maps)):
        arrays[f"feature_maps_{k}"] = a.numpy()
        arrays[f"feature_maps_{k}_f64"] = b.numpy()
    arrays["last_hidden_state"] = out.hidden_states[-1].numpy()
    arrays["last_hidden_state_f64"] = out64.hidden_states[-1].numpy()
    np.savez(os.path.join(out_dir, "expected.npz"), **arrays)
    shapes = [tuple(f.shape) for f in out.feature_maps]
    print(f"{name}: out_features {model.out_features} -> {shapes}")


def main():
    case("stem-stage2", 201, ["stem", "stage2"], 64, 64)
    case("stages-1-3-nonsquare", 202, ["stage1", "stage3"], 72, 40)


if __name__ == "__main__":
    main()
