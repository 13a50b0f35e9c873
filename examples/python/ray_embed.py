#!/usr/bin/env python3
"""A folder of images -> parquet of path, label, score and embedding, on a Ray cluster.

Ray Data reads the images, a pool of actors classifies and embeds them in batches with cnx
(`cnx.ray.ConvNextV2Predictor`, one model per actor), and the rows are written as parquet:

    pip install "cnx[ray]"           # or bindings/python, built with maturin
    python examples/python/ray_embed.py --model facebook/convnextv2-tiny-1k-224 \
        --images photos/ --output embeddings/ --actors 4 --cpus-per-actor 1

`--address` joins a running cluster (`ray start --head` on one machine, `ray start
--address=HEAD:6379` on the others; `auto` finds a local one); without it Ray starts one on
this machine. `--reader images` decodes with Ray (`read_images`, PIL, no EXIF rotation);
`--reader binary` hands the encoded files to cnx, which decodes them as `cnx embed` does (EXIF
rotation applied) and records an unreadable file as a row with its `error` instead of failing.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import ray

from cnx.ray import ConvNextV2Predictor

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif"]


def embed_folder(model: str, images: str, output: str, *, reader: str = "images",
                 actors: int = 2, cpus_per_actor: float = 1.0, read_cpus: float = 1.0,
                 batch_size: int = 16,
                 threads: Optional[int] = None, top_k: int = 1, normalize: bool = False,
                 precision: str = "f32") -> int:
    """Runs the job on the connected Ray cluster; returns the number of rows written."""
    if reader == "images":
        ds = ray.data.read_images(images, include_paths=True, mode="RGB", num_cpus=read_cpus,
                                  file_extensions=IMAGE_EXTENSIONS)
    elif reader == "binary":
        ds = ray.data.read_binary_files(images, include_paths=True, num_cpus=read_cpus,
                                        file_extensions=IMAGE_EXTENSIONS)
    else:
        raise ValueError(f"reader {reader!r}: expected 'images' or 'binary'")
    # cnx's threads match the CPUs Ray gives each actor (at least one).
    threads = threads or max(1, int(cpus_per_actor))
    ds = ds.map_batches(
        ConvNextV2Predictor,
        fn_constructor_kwargs={"model": model, "threads": threads, "top_k": top_k,
                               "normalize": normalize, "precision": precision},
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=cpus_per_actor,
    )
    ds.write_parquet(output)
    return ray.data.read_parquet(output).count()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory, preset or hub id")
    parser.add_argument("--images", required=True, help="folder of images (walked)")
    parser.add_argument("--output", required=True, help="parquet folder to write")
    parser.add_argument("--address", help="Ray cluster to join (default: start one here)")
    parser.add_argument("--reader", choices=["images", "binary"], default="images")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--read-cpus", type=float, default=1.0,
                        help="CPUs per read task (fractional with fractional actors: a read "
                             "task must fit beside the actors on a node)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="cnx threads per actor")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--normalize", action="store_true", help="L2-normalise embeddings")
    parser.add_argument("--precision", choices=["f32", "bf16", "int8"], default="f32")
    args = parser.parse_args(argv)
    ray.init(address=args.address)
    start = time.perf_counter()
    rows = embed_folder(args.model, args.images, args.output, reader=args.reader,
                        actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                        read_cpus=args.read_cpus, batch_size=args.batch_size, threads=args.threads, top_k=args.top_k,
                        normalize=args.normalize, precision=args.precision)
    wall = time.perf_counter() - start
    print(f"{rows} images in {wall:.2f} s ({rows / wall:.1f} images/s); wrote {args.output}")


if __name__ == "__main__":
    main()
