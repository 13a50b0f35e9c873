"""Bad input is one clear Python exception with the CLI's message, never a crash."""

import shutil

import numpy as np
import pytest

import cnx
from conftest import FIXTURES, IMAGES

CASE = FIXTURES / "custom-square"


@pytest.fixture(scope="module")
def model():
    return cnx.ConvNextV2ForImageClassification.from_pretrained(CASE)


def test_wrong_dtype_is_a_value_error(model):
    for dtype in (np.float64, np.float16, np.int32, np.uint8):
        with pytest.raises(ValueError, match=f"must be float32, got {np.dtype(dtype)}"):
            model(np.zeros((1, 3, 64, 64), dtype))


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 4, 64, 64), (0, 3, 64, 64), (1, 3, 64, 0),
                                   (1, 1, 3, 64, 64)])
def test_wrong_shape_is_a_value_error(model, shape):
    with pytest.raises(ValueError, match=r"shape \(batch >= 1, 3, height, width\)"):
        model(np.zeros(shape, np.float32))


def test_missing_pixel_values_is_a_value_error(model):
    with pytest.raises(ValueError, match="pixel_values is required"):
        model()


def test_nan_and_infinity_are_refused_naming_the_first(model):
    x = np.zeros((2, 3, 64, 64), np.float32)
    x[1, 2, 5, 7] = np.nan
    x[1, 2, 6, 0] = np.inf
    with pytest.raises(cnx.CnxError, match=r"2 value\(s\) are NaN or infinite, the first at \[1, 2, 5, 7\]"):
        model(x)
    # The model goes on.
    assert model(np.zeros((1, 3, 64, 64), np.float32)).logits.shape == (1, 7)


def test_missing_model_and_checkpoint(tmp_path):
    with pytest.raises(cnx.CnxError, match="no such file or directory"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(cnx.CnxError, match="unknown model `tiny-1k`.*did you mean"):
        cnx.ConvNextV2ForImageClassification.from_pretrained("tiny-1k")
    with pytest.raises(cnx.CnxError, match="config.json"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(tmp_path)
    with pytest.raises(cnx.CnxError, match="missing.safetensors"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, weights=tmp_path / "missing.safetensors")


def test_unreachable_hub_model_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(cnx.CnxError):
        cnx.ConvNextV2ForImageClassification.from_pretrained("someone/not-cached-convnextv2")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shapes"])
def test_corrupt_checkpoint_is_an_error(tmp_path, damage):
    shutil.copytree(CASE, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    else:
        shutil.copy(FIXTURES / "atto-224-b2" / "model.safetensors", weights)
    with pytest.raises(cnx.CnxError, match="model.safetensors|shape|missing"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(tmp_path / "m")


def test_corrupt_config_is_an_error(tmp_path):
    shutil.copytree(CASE, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"hidden_sizes": [8, 16], "depths": [1]}')
    with pytest.raises(cnx.CnxError, match="config.json"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(tmp_path / "m")


def test_corrupt_image_is_an_error_naming_it(model):
    with pytest.raises(cnx.CnxError, match=r"truncated\.jpg"):
        model.classify([IMAGES / "chelsea.png", IMAGES / "truncated.jpg"])


def test_bad_options():
    with pytest.raises(ValueError, match="backend `gpu`"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, backend="gpu")
    with pytest.raises(ValueError, match="precision `fp8`"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, precision="fp8")
    with pytest.raises(ValueError, match="threads must be 1 to"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, threads=0)
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(CASE)
    with pytest.raises(ValueError, match="threads must be 1 to"):
        model.threads = 100000
    with pytest.raises(ValueError, match="top_k"):
        model.classify(IMAGES / "chelsea.png", top_k=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(np.zeros((1, 3, 64, 64), np.float32), head_mask=None)
    with pytest.raises(ValueError, match="output_hidden_states"):
        model(np.zeros((1, 3, 64, 64), np.float32), output_hidden_states=True)


def test_cnx_error_is_an_exception():
    assert issubclass(cnx.CnxError, Exception)
    assert cnx.CnxError.__module__ == "cnx"
