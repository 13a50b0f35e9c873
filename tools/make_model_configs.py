#!/usr/bin/env python3
"""Write the preset configs of the published ConvNeXt V2 checkpoints into models/.

For every checkpoint published on the Hugging Face hub as
``facebook/convnextv2-<size>-<pretrain>-<resolution>`` this script writes

    models/facebook/convnextv2-<size>-<pretrain>-<resolution>/config.json
    models/facebook/convnextv2-<size>-<pretrain>-<resolution>/preprocessor_config.json

``config.json`` is produced by the real ``transformers.ConvNextV2Config`` and its
``save_pretrained`` so that it is byte-for-byte what transformers writes
(modulo the ``transformers_version`` field).  ``preprocessor_config.json``
mirrors the hub's ``ConvNextImageProcessor`` file.

All checkpoints (including the ImageNet-22k pre-trained ones, which are
fine-tuned on ImageNet-1k) classify into the 1000 ImageNet-1k classes listed,
in class-index order, in ``models/imagenet-1k-labels.txt``.

No network access is needed; nothing is downloaded.  The script is
deterministic and re-runnable (it overwrites the files it owns).

Usage:  /work/venv/bin/python tools/make_model_configs.py [--out models]
"""

import argparse
import json
import os
import sys

from transformers import ConvNextV2Config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# size name -> (hidden_sizes, depths), from the ConvNeXt V2 paper / official repo.
SIZES = {
    "atto": ([40, 80, 160, 320], [2, 2, 6, 2]),
    "femto": ([48, 96, 192, 384], [2, 2, 6, 2]),
    "pico": ([64, 128, 256, 512], [2, 2, 6, 2]),
    "nano": ([80, 160, 320, 640], [2, 2, 8, 2]),
    "tiny": ([96, 192, 384, 768], [3, 3, 9, 3]),
    "base": ([128, 256, 512, 1024], [3, 3, 27, 3]),
    "large": ([192, 384, 768, 1536], [3, 3, 27, 3]),
    "huge": ([352, 704, 1408, 2816], [3, 3, 27, 3]),
}

# The published checkpoints, as (size, pretraining data, resolution).
CHECKPOINTS = (
    [(s, "1k", 224) for s in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")]
    + [(s, "22k", 224) for s in ("nano", "tiny", "base", "large")]
    + [(s, "22k", 384) for s in ("nano", "tiny", "base", "large", "huge")]
    + [("huge", "22k", 512)]
)


def read_labels(path):
    """Return the class labels, one per line, in class-index order."""
    with open(path, encoding="utf-8") as f:
        labels = [line.rstrip("\n") for line in f]
    if len(labels) != 1000 or any(not label for label in labels):
        sys.exit(f"{path}: expected 1000 non-empty lines, got {len(labels)}")
    return labels


def preprocessor_config(image_size):
    """The hub's ConvNextImageProcessor config for a checkpoint of this resolution."""
    return {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "ConvNextImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,  # PIL.Image.BICUBIC
        "rescale_factor": 1 / 255,  # serialises as 0.00392156862745098
        "size": {"shortest_edge": image_size},
    }


def write_checkpoint(out_dir, size, pretrain, image_size, labels):
    hidden_sizes, depths = SIZES[size]
    name = f"convnextv2-{size}-{pretrain}-{image_size}"
    target = os.path.join(out_dir, "facebook", name)
    os.makedirs(target, exist_ok=True)

    id2label = {i: label for i, label in enumerate(labels)}
    # transformers 5.x writes "label2id": null unless it is given explicitly; the
    # hub files have it.  A label that occurs twice ("crane" is classes 134 and
    # 517) maps to its later index, as in transformers' own num_labels setter.
    label2id = {label: i for i, label in id2label.items()}
    config = ConvNextV2Config(
        architectures=["ConvNextV2ForImageClassification"],
        num_channels=3,
        patch_size=4,
        num_stages=4,
        hidden_sizes=hidden_sizes,
        depths=depths,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        drop_path_rate=0.0,
        image_size=image_size,
        id2label=id2label,
        label2id=label2id,
    )
    assert config.num_labels == 1000, config.num_labels
    config.save_pretrained(target)

    with open(os.path.join(target, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(preprocessor_config(image_size), f, indent=2, sort_keys=True)
        f.write("\n")
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "models"), help="output directory")
    args = parser.parse_args()

    labels = read_labels(os.path.join(args.out, "imagenet-1k-labels.txt"))
    for size, pretrain, image_size in CHECKPOINTS:
        name = write_checkpoint(args.out, size, pretrain, image_size, labels)
        print(f"wrote {os.path.join(args.out, 'facebook', name)}")


if __name__ == "__main__":
    main()
