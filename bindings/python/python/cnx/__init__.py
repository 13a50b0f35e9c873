"""cnx: ConvNeXt V2 image classifiers (Hugging Face checkpoints), compiled and run on the CPU.

Called as transformers' models are::

    import cnx

    model = cnx.ConvNextV2ForImageClassification.from_pretrained("facebook/convnextv2-tiny-1k-224")
    processor = cnx.ConvNextImageProcessor.from_pretrained("facebook/convnextv2-tiny-1k-224")
    logits = model(**processor(["cat.jpg"], return_tensors="np")).logits
    model.classify("cat.jpg", top_k=3)   # [{"label": ..., "score": ...}, ...]

Every computation is the ``cnx`` command's (the same Rust code): logits equal ``cnx run``'s
bit for bit, preprocessing equals ``cnx preprocess`` (and transformers' PIL image processor) bit
for bit. Forward passes and preprocessing release the GIL. Models pickle by their source (name,
checkpoint, options) and reload where they are unpickled, so multiprocessing and Ray ship them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._cnx import CnxError, Engine as _Engine, Preprocessor as _Preprocessor
from ._cnx import __version__, available_threads
from ._cnx import l2_normalize as _l2_normalize
from ._cnx import resolve as _resolve
from ._cnx import top_k as _top_k

__all__ = [
    "BaseModelOutputWithPoolingAndNoAttention",
    "BatchFeature",
    "CnxError",
    "ConvNextImageProcessor",
    "ConvNextV2Config",
    "ConvNextV2ForImageClassification",
    "ConvNextV2Model",
    "ImageClassifierOutputWithNoAttention",
    "ModelOutput",
    "__version__",
    "available_threads",
]

PathLike = Union[str, "os.PathLike[str]"]
# A path, encoded image bytes, a PIL image or a uint8 array (H, W, 3) / (H, W).
ImageLike = Any


class ModelOutput(dict):
    """Outputs by name, readable as attributes (``out.logits``), keys (``out["logits"]``) or
    positions (``out[0]``), as transformers' ``ModelOutput``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no output `{name}`") from None

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self.to_tuple()[key]
        return super().__getitem__(key)

    def to_tuple(self) -> Tuple[Any, ...]:
        return tuple(self.values())

    def __reduce__(self) -> Any:
        return (type(self), (dict(self),))


class ImageClassifierOutputWithNoAttention(ModelOutput):
    """``ConvNextV2ForImageClassification``'s output: ``logits`` ``(batch, num_labels)``."""


class BaseModelOutputWithPoolingAndNoAttention(ModelOutput):
    """``ConvNextV2Model``'s output: ``last_hidden_state`` ``(batch, C, h, w)`` and
    ``pooler_output`` ``(batch, C)``."""


class BatchFeature(ModelOutput):
    """The processor's output: ``pixel_values`` float32 ``(batch, 3, H, W)``; ``model(**it)``
    runs it."""


class ConvNextV2Config:
    """A model's ``config.json``, its keys as attributes; ``id2label`` keyed by int,
    ``num_labels`` and ``image_size`` as cnx reads them (defaults applied)."""

    def __init__(self, config_json: str, *, id2label: Sequence[str], image_size: int,
                 num_channels: int, hidden_size: Optional[int]) -> None:
        values = json.loads(config_json)
        self.__dict__.update(values)
        self.id2label: Dict[int, str] = {i: label for i, label in enumerate(id2label)}
        self.label2id: Dict[str, int] = {label: i for i, label in self.id2label.items()}
        self.image_size: int = image_size
        self.num_channels: int = num_channels
        self.hidden_size: Optional[int] = hidden_size
        self._json = config_json

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: PathLike) -> "ConvNextV2Config":
        """The config of a model directory, ``config.json``, preset or hub id."""
        info = _resolve(os.fspath(pretrained_model_name_or_path))
        return cls(info["config_json"], id2label=info["id2label"], image_size=info["image_size"],
                   num_channels=info["num_channels"], hidden_size=info["hidden_size"])

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["num_labels"] = self.num_labels
        return d

    def __repr__(self) -> str:
        return f"ConvNextV2Config {json.dumps(self.to_dict(), indent=2, sort_keys=True)}"


def _is_single_image(images: Any) -> bool:
    if isinstance(images, (str, bytes, os.PathLike)):
        return True
    if _is_pil(images):
        return True
    if hasattr(images, "__array_interface__") or hasattr(images, "__array__"):
        return np.ndim(images) in (2, 3)
    return False


def _is_pil(image: Any) -> bool:
    # PIL is optional: recognised by what the processor uses of it.
    return hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size")


def _image_list(images: Any) -> List[Any]:
    """The images of one image or a sequence of them, each as the native preprocessor takes
    it: paths and bytes as they are, PIL images converted to RGB arrays (PIL's
    ``convert("RGB")``, as the cnx decoder does), arrays as arrays."""
    if _is_single_image(images):
        images = [images]
    elif hasattr(images, "__array_interface__") or hasattr(images, "__array__"):
        array = np.asarray(images)
        if array.ndim != 4:
            raise ValueError(
                f"an image array must be (H, W, 3), (H, W) or a batch (N, H, W, 3), "
                f"got shape {array.shape}")
        images = list(array)
    elif isinstance(images, dict):
        raise ValueError("expected an image or a sequence of images, got a dict")
    items = []
    for image in images:
        if _is_pil(image):
            items.append(np.asarray(image.convert("RGB")))
        elif isinstance(image, os.PathLike):
            items.append(os.fspath(image))
        elif isinstance(image, (bytearray, memoryview)):
            items.append(bytes(image))
        elif (hasattr(image, "__array_interface__") or hasattr(image, "__array__")) \
                and not isinstance(image, (str, bytes)):
            items.append(np.ascontiguousarray(np.asarray(image)))
        else:
            items.append(image)
    return items


class ConvNextImageProcessor:
    """transformers' ``ConvNextImageProcessor`` (its PIL path, which the published checkpoints
    were evaluated with), computed by cnx's Rust preprocessing: resize the short edge to
    ``size / crop_pct`` with Pillow's bicubic filter and centre-crop (``size < 384``) or
    resize to ``size`` x ``size``, rescale and normalise; bit-exact with transformers'.

    Images: paths (decoded as ``cnx classify`` decodes them: EXIF rotation applied, first GIF
    frame, grey replicated, alpha dropped), encoded bytes, PIL images (``convert("RGB")``), or
    uint8 arrays ``(H, W, 3)`` / ``(H, W)``.
    """

    model_input_names = ["pixel_values"]
    _KEYS = ("size", "crop_pct", "resample", "do_resize", "do_rescale", "rescale_factor",
             "do_normalize", "image_mean", "image_std")

    def __init__(self, preprocessor_json: Optional[str] = None, image_size: int = 224,
                 **overrides: Any) -> None:
        settings = json.loads(preprocessor_json) if preprocessor_json else {}
        for key, value in overrides.items():
            if key not in self._KEYS:
                raise TypeError(f"ConvNextImageProcessor got an unexpected setting `{key}` "
                                f"(settings: {', '.join(self._KEYS)})")
            if key == "size" and isinstance(value, int):
                value = {"shortest_edge": value}
            settings[key] = value
        self._json = json.dumps(settings) if settings else None
        self._image_size = image_size
        self._native = _Preprocessor(self._json, image_size)
        for key, value in self._native.to_dict().items():
            setattr(self, key, value)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: PathLike,
                        **overrides: Any) -> "ConvNextImageProcessor":
        """The preprocessing of a model directory (its ``preprocessor_config.json``), preset
        or hub id; keyword arguments override its settings, as in transformers."""
        info = _resolve(os.fspath(pretrained_model_name_or_path))
        return cls(info["preprocessor_json"], info["image_size"], **overrides)

    def __call__(self, images: Any, return_tensors: Optional[str] = "np",
                 threads: Optional[int] = None) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, threads=threads)

    def preprocess(self, images: Any, return_tensors: Optional[str] = "np",
                   threads: Optional[int] = None) -> BatchFeature:
        """``{"pixel_values": float32 (n, 3, H, W)}`` for one image or a sequence of them,
        preprocessed on ``threads`` threads (default: one per core, at most one per image)."""
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: cnx returns numpy arrays "
                             f"(return_tensors='np')")
        items = _image_list(images)
        if threads is None:
            threads = max(1, min(available_threads(), len(items)))
        return BatchFeature(pixel_values=self._native.preprocess(items, threads))

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._native.to_dict())

    def __reduce__(self) -> Any:
        return (_restore_processor, (self._json, self._image_size))

    def __repr__(self) -> str:
        return f"ConvNextImageProcessor {json.dumps(self.to_dict(), indent=2)}"


def _restore_processor(preprocessor_json: Optional[str], image_size: int) -> ConvNextImageProcessor:
    return ConvNextImageProcessor(preprocessor_json, image_size)


def _as_pixel_values(pixel_values: Any) -> np.ndarray:
    if pixel_values is None:
        raise ValueError("pixel_values is required: float32 (batch, 3, height, width)")
    # Anything with the array interface (numpy, a CPU torch tensor, ...); no copy if it is
    # already a C-contiguous float32 numpy array.
    array = np.asarray(pixel_values)
    if array.dtype != np.float32:
        raise ValueError(f"pixel_values must be float32, got {array.dtype}")
    return np.ascontiguousarray(array)


def _batches(items: List[Any], size: int) -> Iterator[List[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _PreTrainedModel:
    _task = "classification"
    _output = ImageClassifierOutputWithNoAttention
    _outputs: Tuple[str, ...] = ("logits",)

    def __init__(self, engine: Any, source: Dict[str, Any]) -> None:
        self._engine = engine
        self._source = source
        self._processor: Optional[ConvNextImageProcessor] = None
        self.config = ConvNextV2Config(
            engine.config_json, id2label=engine.id2label, image_size=engine.image_size,
            num_channels=engine.num_channels, hidden_size=engine.hidden_size)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: PathLike, *,
                        weights: Optional[PathLike] = None, backend: str = "jit",
                        threads: Optional[int] = None, precision: str = "f32") -> Any:
        """Loads a model: a directory holding ``config.json`` and ``model.safetensors`` (as
        ``save_pretrained`` writes and a hub snapshot holds), a ``config.json``, a preset
        (``tiny-1k-224``) or a hub id (``facebook/convnextv2-tiny-1k-224``: from the Hugging
        Face cache, else downloaded), with its own checkpoint or ``weights``.

        ``backend``: ``"jit"`` (Cranelift, the default) or ``"interp"``; ``threads``: threads
        of a forward pass (default: one per core; results do not depend on it);
        ``precision``: ``"f32"``, ``"bf16"`` or ``"int8"`` (the 1x1 and downsampling convs in
        bf16 or int8; bf16 runs on AMX tiles or AVX512_BF16 where the CPU has them).
        """
        source = {
            "model": os.fspath(pretrained_model_name_or_path),
            "weights": None if weights is None else os.fspath(weights),
            "backend": backend,
            "threads": threads,
            "precision": precision,
        }
        return cls._load(source)

    @classmethod
    def _load(cls, source: Dict[str, Any]) -> Any:
        engine = _Engine(source["model"], weights=source["weights"], backend=source["backend"],
                         threads=source["threads"], precision=source["precision"], task=cls._task)
        model = cls(engine, source)
        model._check()
        return model

    def _check(self) -> None:
        pass

    def __call__(self, pixel_values: Any = None, **kwargs: Any) -> ModelOutput:
        return self.forward(pixel_values, **kwargs)

    def forward(self, pixel_values: Any = None, return_dict: bool = True,
                **kwargs: Any) -> Any:
        """The model on ``pixel_values`` (float32 ``(batch, 3, H, W)``, any object with the
        array interface): the output transformers' model returns, its tensors numpy arrays.
        Any input size runs (each new size compiles once)."""
        for key, value in kwargs.items():
            # transformers' flags that change nothing here are accepted when off.
            if key in ("output_hidden_states", "labels") and value not in (None, False):
                raise ValueError(f"{key}: not supported by cnx's Python models "
                                 f"(`cnx run --hidden-states` / `--labels` compute them)")
            if key not in ("output_hidden_states", "labels"):
                raise TypeError(f"forward() got an unexpected keyword argument `{key}`")
        values = self._run(pixel_values)
        out = self._output({name: values[name] for name in self._outputs})
        return out if return_dict else out.to_tuple()

    def _run(self, pixel_values: Any) -> Dict[str, np.ndarray]:
        """Every output the model computes (its own and ``pooler_output``) by name."""
        return self._engine.forward(_as_pixel_values(pixel_values))

    @property
    def processor(self) -> ConvNextImageProcessor:
        """The model's own preprocessing (its ``preprocessor_config.json``)."""
        if self._processor is None:
            self._processor = ConvNextImageProcessor(self._engine.preprocessor_json,
                                                     self._engine.image_size)
        return self._processor

    def embed(self, images: Any, *, normalize: bool = False, batch_size: int = 16) -> np.ndarray:
        """transformers' ``pooler_output`` (the final LayerNorm of the global average pool)
        of images (preprocessed by the model's processor), float32 ``(n, hidden_size)``, as
        ``cnx embed`` writes it (``normalize``: each row L2-normalised, as ``--normalize``)."""
        items = _image_list(images)
        rows = [self._run(self.processor(chunk)["pixel_values"])["pooler_output"]
                for chunk in _batches(items, max(1, batch_size))]
        pooled = np.concatenate(rows) if rows else np.zeros((0, self.config.hidden_size),
                                                            np.float32)
        return _l2_normalize(pooled) if normalize else pooled

    @property
    def threads(self) -> int:
        """Threads of a forward pass. Results do not depend on it."""
        return self._engine.threads

    @threads.setter
    def threads(self, value: int) -> None:
        self._engine.threads = value
        self._source = dict(self._source, threads=value)

    @property
    def name_or_path(self) -> str:
        return self._source["model"]

    @property
    def backend(self) -> str:
        return self._engine.backend

    @property
    def precision(self) -> str:
        return self._engine.precision

    @property
    def device(self) -> str:
        return "cpu"

    def eval(self) -> Any:
        """Returns the model (always in inference mode), for code written for torch."""
        return self

    def __reduce__(self) -> Any:
        # Pickled by source: unpickling loads the model again (in another process, on another
        # machine), with the same checkpoint and options.
        return (_restore_model, (type(self), dict(self._source)))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._source['model']!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, threads={self.threads})")


def _restore_model(cls: Any, source: Dict[str, Any]) -> Any:
    return cls._load(source)


class ConvNextV2ForImageClassification(_PreTrainedModel):
    """transformers' ``ConvNextV2ForImageClassification``: ``model(pixel_values).logits``."""

    _task = "classification"
    _output = ImageClassifierOutputWithNoAttention
    _outputs = ("logits",)

    def _check(self) -> None:
        if not self._engine.has_classifier:
            raise CnxError(
                f"{self._engine.name}: the checkpoint has no classifier (a bare "
                f"ConvNextV2Model, or num_labels 0): load it with cnx.ConvNextV2Model")

    def classify(self, images: Any, top_k: int = 5, *, batch_size: int = 16) -> Any:
        """The ``top_k`` most probable labels of each image, ``[{"label", "score"}, ...]``
        (softmax probabilities, most probable first), as transformers' image-classification
        pipeline returns them: one list for one image, a list of lists for several."""
        single = _is_single_image(images)
        if top_k < 1:
            raise ValueError("top_k must be at least 1")
        items = _image_list(images)
        labels = [self.config.id2label[i] for i in range(self.config.num_labels)]
        k = min(top_k, len(labels))
        results = []
        for chunk in _batches(items, max(1, batch_size)):
            logits = self._run(self.processor(chunk)["pixel_values"])["logits"]
            for row in _top_k(logits, labels, k):
                results.append([{"label": label, "score": score} for _, label, score in row])
        return results[0] if single else results


class ConvNextV2Model(_PreTrainedModel):
    """transformers' ``ConvNextV2Model``: ``last_hidden_state`` and ``pooler_output``."""

    _task = "base"
    _output = BaseModelOutputWithPoolingAndNoAttention
    _outputs = ("last_hidden_state", "pooler_output")
