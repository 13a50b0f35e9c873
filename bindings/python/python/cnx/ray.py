"""Ray Data batch inference with cnx: a callable class for ``Dataset.map_batches``.

::

    import ray
    from cnx.ray import ConvNextV2Predictor

    ds = ray.data.read_images("photos/", include_paths=True, mode="RGB")
    ds = ds.map_batches(ConvNextV2Predictor, fn_constructor_kwargs={"model": "facebook/convnextv2-tiny-1k-224"},
                        batch_size=16, concurrency=2, num_cpus=1)
    ds.write_parquet("out/")          # path, label, score, embedding

Ray runs the class on a pool of actors; each loads the model once (``from_pretrained`` in the
actor) and classifies and embeds whole batches in one forward pass. Input batches hold either
an ``image`` column of uint8 RGB arrays (``ray.data.read_images``: decoded by PIL, no EXIF
rotation) or a ``bytes`` column of encoded files (``ray.data.read_binary_files``: decoded by
cnx, EXIF rotation applied, exactly as ``cnx classify`` / ``cnx embed`` decode them). Every
other column (``path``) is passed through.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from . import CnxError, ConvNextV2ForImageClassification, _l2_normalize, _top_k

__all__ = ["ConvNextV2Predictor"]


class ConvNextV2Predictor:
    """Classifies and embeds a batch of images: for ``map_batches`` on an actor pool.

    Output columns (a pyarrow table, so the parquet schema is plain): the input's other
    columns (e.g. ``path``), ``label`` (top-1, string), ``score`` (its softmax probability,
    float64), ``top_labels`` / ``top_scores`` (lists, when ``top_k > 1``), ``embedding``
    (``pooler_output``, float32, fixed-size list; L2-normalised with ``normalize``) and
    ``error`` (null, or why the image could not be used: its row then has a null label and
    embedding; with ``on_error="raise"`` the batch fails instead).

    ``model`` is a model name or directory (loaded with ``from_pretrained`` in the actor,
    with ``weights``, ``backend``, ``precision``, ``threads``) or a loaded cnx model (pickled
    by source, so it is loaded again in the actor). ``threads`` defaults to 1: Ray runs one
    actor per fraction of a CPU asked for, and cnx's threads should match what it was given.
    """

    def __init__(self, model: Any, *, top_k: int = 1, embed: bool = True,
                 normalize: bool = False, threads: int = 1, backend: str = "jit",
                 precision: str = "f32", weights: Optional[str] = None,
                 on_error: str = "record") -> None:
        if on_error not in ("record", "raise"):
            raise ValueError(f"on_error={on_error!r}: expected 'record' or 'raise'")
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        if isinstance(model, ConvNextV2ForImageClassification):
            self.model = model
            self.model.threads = threads
        else:
            self.model = ConvNextV2ForImageClassification.from_pretrained(
                model, weights=weights, backend=backend, threads=threads, precision=precision)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.top_k = min(top_k, len(self.labels))
        self.embed = embed
        self.normalize = normalize
        self.on_error = on_error

    def __call__(self, batch: Dict[str, Any]) -> Any:
        import pyarrow as pa

        if "image" in batch:
            column = "image"
            images = [np.asarray(image) for image in batch["image"]]
        elif "bytes" in batch:
            column = "bytes"
            images = [bytes(b) for b in batch["bytes"]]
        else:
            raise ValueError(f"the batch has no `image` (read_images) or `bytes` "
                             f"(read_binary_files) column: {sorted(batch)}")
        n = len(images)
        pixel_values, errors = self._preprocess(images)
        ok = [i for i in range(n) if errors[i] is None]
        hidden = self.model.config.hidden_size or 0
        logits = np.zeros((n, len(self.labels)), np.float32)
        pooled = np.zeros((n, hidden), np.float32)
        if ok:
            out = self.model._run(pixel_values)
            logits[ok] = out["logits"]
            pooled[ok] = _l2_normalize(out["pooler_output"]) if self.normalize \
                else out["pooler_output"]
        ranked = _top_k(logits, self.labels, self.top_k)
        columns: Dict[str, Any] = {
            name: pa.array(list(values) if isinstance(values, np.ndarray) and values.dtype == object
                           else values)
            for name, values in batch.items() if name != column
        }
        valid = [e is None for e in errors]
        columns["label"] = pa.array([r[0][1] if v else None for r, v in zip(ranked, valid)],
                                    pa.string())
        columns["score"] = pa.array([r[0][2] if v else None for r, v in zip(ranked, valid)],
                                    pa.float64())
        if self.top_k > 1:
            columns["top_labels"] = pa.array(
                [[label for _, label, _ in r] if v else None for r, v in zip(ranked, valid)],
                pa.list_(pa.string()))
            columns["top_scores"] = pa.array(
                [[score for _, _, score in r] if v else None for r, v in zip(ranked, valid)],
                pa.list_(pa.float64()))
        if self.embed:
            flat = pa.array(pooled.reshape(-1), pa.float32())
            mask = pa.array([not v for v in valid])
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, hidden, mask=mask)
        columns["error"] = pa.array(errors, pa.string())
        return pa.table(columns)

    def _preprocess(self, images: List[Any]) -> Any:
        """``pixel_values`` of the usable images and, per image, None or its error."""
        processor = self.model.processor
        threads = self.model.threads
        try:
            return processor(images, threads=threads)["pixel_values"], [None] * len(images)
        except (CnxError, ValueError):
            if self.on_error == "raise":
                raise
        # One image failed: find which, one by one, and keep the others.
        rows, errors = [], []
        for image in images:
            try:
                rows.append(processor([image], threads=1)["pixel_values"])
                errors.append(None)
            except (CnxError, ValueError) as e:
                errors.append(str(e))
        pixel_values = np.concatenate(rows) if rows else None
        return pixel_values, errors
