#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into tests/fuzz/corpus/<target>/seed-*.

Usage: tools/make_fuzz_seeds.py [path/to/cnx]   (run from the repo root, in the fixtures venv:
numpy, safetensors and Pillow). Seeds are small valid inputs of every kind each parser takes
(every dtype, naming scheme and image format), plus a few known-bad ones; libFuzzer mutates
from there. The kept corpus is committed; rerunning this only rewrites the seed-* files.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
# Keep in step with cnx_tests::fuzzing::SMALL_CONFIG and SHARD_SEPARATOR.
SMALL_CONFIG = {"model_type": "convnextv2", "num_stages": 2, "hidden_sizes": [8, 16],
                "depths": [1, 1], "image_size": 32, "num_labels": 3}
SHARD_SEPARATOR = b"\n--shard--\n"


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def checkpoints(cnx):
    tmp = tempfile.mkdtemp()
    try:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump(SMALL_CONFIG, f)
        subprocess.run([cnx, "random-model", cfg, "--output", os.path.join(tmp, "m")], check=True)
        tensors = load_file(os.path.join(tmp, "m", "model.safetensors"))
        with open(os.path.join(tmp, "m", "pixel_values.npy"), "rb") as f:
            pixels = f.read()
    finally:
        shutil.rmtree(tmp)
    return tensors, pixels


def main():
    cnx = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "cnx")
    tensors, pixels = checkpoints(cnx)

    # safetensors: every dtype, the bare and timm-like spellings, a truncated file.
    write("safetensors", "small-f32", save(tensors))
    write("safetensors", "small-f16", save({k: v.astype(np.float16) for k, v in tensors.items()}))
    write("safetensors", "small-f64", save({k: v.astype(np.float64) for k, v in tensors.items()}))
    # A bare ConvNextV2Model checkpoint: no prefix, no classifier.
    write("safetensors", "small-bare", save({k.removeprefix("convnextv2."): v
                                             for k, v in tensors.items()
                                             if not k.startswith("classifier.")}))
    write("safetensors", "small-i32", save({k: v.astype(np.int32) for k, v in tensors.items()}))
    write("safetensors", "truncated", save(tensors)[:-7])
    write("safetensors", "empty-header", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")

    # sharded: index, then the two shards.
    names = sorted(tensors)
    half = len(names) // 2
    shards = [{k: tensors[k] for k in names[:half]}, {k: tensors[k] for k in names[half:]}]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {"total_size": 0},
             "weight_map": {k: files[i] for i, s in enumerate(shards) for k in s}}
    write("safetensors_sharded", "two-shards",
          SHARD_SEPARATOR.join([json.dumps(index).encode(), save(shards[0]), save(shards[1])]))
    index["weight_map"][names[0]] = "../escape.safetensors"
    write("safetensors_sharded", "escaping-name",
          SHARD_SEPARATOR.join([json.dumps(index).encode(), save(shards[0]), save(shards[1])]))

    # config: the fixtures' configs, the small one, and the hostile ones of issue 17.
    fixtures = os.path.join(ROOT, "tests", "fixtures")
    for case in sorted(os.listdir(fixtures)):
        path = os.path.join(fixtures, case, "config.json")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                write("config", case, f.read())
    write("config", "small", json.dumps(SMALL_CONFIG))
    write("config", "huge-widths", '{"hidden_sizes": [1048576, 2097152, 4194304, 8388608]}')
    write("config", "deep", '{"depths": [100000, 1, 1, 1]}')
    write("config", "huge-image", '{"image_size": 1000000}')
    write("config", "backbone", json.dumps({**SMALL_CONFIG, "out_features": ["stem", "stage2"]}))

    # npy: the small model's pixel values, f64, Fortran order, a lying header.
    write("npy", "pixels-f32", pixels)
    arr = np.load(io.BytesIO(pixels))
    for name, a in [("pixels-f64", arr.astype(np.float64)), ("fortran", np.asfortranarray(arr)),
                    ("nan", np.full((1, 3, 32, 32), np.nan, np.float32)),
                    ("int", arr.astype(np.int16))]:
        buf = io.BytesIO()
        np.save(buf, a)
        write("npy", name, buf.getvalue())
    write("npy", "truncated", pixels[:200])

    # image: every format classify reads, grey / alpha / 16-bit / palette, a rotated JPEG.
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))
    for name, img, fmt, kw in [
        ("rgb.png", rgb, "PNG", {}), ("grey.png", rgb.convert("L"), "PNG", {}),
        ("rgba.png", rgb.convert("RGBA"), "PNG", {}), ("palette.gif", rgb.convert("P"), "GIF", {}),
        ("rgb.jpg", rgb, "JPEG", {"quality": 80}), ("grey.jpg", rgb.convert("L"), "JPEG", {}),
        ("rgb.webp", rgb, "WEBP", {"lossless": True}), ("rgb.bmp", rgb, "BMP", {}),
        ("i16.png", Image.fromarray(rng.integers(0, 65535, (5, 7), dtype=np.uint16)), "PNG", {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        write("image", name, buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=exif.tobytes())
    write("image", "exif6.jpg", buf.getvalue())
    for name in ["tiny_1x1.png", "thin_3x500.png", "not_an_image.jpg"]:
        with open(os.path.join(fixtures, "images", name), "rb") as f:
            write("image", name, f.read())

    # preprocessor_config.json as the checkpoints ship it, and variants.
    base = {"crop_pct": 0.875, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "ConvNextImageProcessor",
            "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 224}}
    write("preprocessor", "tiny-224", json.dumps(base))
    write("preprocessor", "384", json.dumps({**base, "size": {"shortest_edge": 384}}))
    write("preprocessor", "hw", json.dumps({**base, "size": {"height": 32, "width": 32}}))
    write("preprocessor", "no-resize", json.dumps({**base, "do_resize": False}))
    write("preprocessor", "tiny-crop", json.dumps({**base, "crop_pct": 1e-9}))

    # macro arguments, as users write them.
    for i, args in enumerate([
        'config = "tiny-1k-224"',
        'config = "atto-1k-224", name = Atto, image_size = (97, 75), fuse = false',
        'config = "facebook/convnextv2-nano-22k-384", image_size = 384',
        'config = "models/atto/config.json", weights = "model.safetensors"',
        'config = "tiny-1k-224", image_size = 3',
        'config = "tiny-1k-224", name = 3',
    ]):
        write("macro_args", f"{i}", args)


if __name__ == "__main__":
    main()
