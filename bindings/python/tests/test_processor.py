"""The processor equals transformers' ConvNextImageProcessor (PIL path) bit for bit, on the
committed preprocessing fixtures (tools/make_image_fixtures.py)."""

import json

import numpy as np
import pytest
from PIL import Image

import cnx
from conftest import FIXTURES, IMAGES, run_cnx

EXPECTED = IMAGES / "expected"
PREPROCESS = json.loads((EXPECTED / "preprocess.json").read_text())


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.png"])
def test_pixel_values_equal_transformers_from_every_kind_of_input(name):
    want = np.load(EXPECTED / f"{name.replace('.', '_')}_224_pixel_values.npy")
    processor = cnx.ConvNextImageProcessor.from_pretrained(FIXTURES / "atto-224-b2")
    path = IMAGES / name
    pil = Image.open(path)
    inputs = {
        "path": str(path),
        "pathlib": path,
        "bytes": path.read_bytes(),
        "PIL": pil,
        "uint8 array": np.asarray(pil.convert("RGB")),
    }
    for kind, image in inputs.items():
        got = processor(image, return_tensors="np")["pixel_values"]
        assert got.dtype == np.float32 and got.shape == want.shape, kind
        assert np.array_equal(got, want), kind
    batch = processor(list(inputs.values())).pixel_values
    assert batch.shape == (len(inputs), 3, 224, 224)
    assert all(np.array_equal(row, want[0]) for row in batch)


def lossless(name):
    return not name.endswith(".jpg")


@pytest.mark.parametrize("size", [224, 384])
def test_resize_and_crop_equal_pillows(size):
    # With rescaling and normalisation off, pixel_values are the resized uint8 pixels; every
    # lossless input equals Pillow's bit for bit (JPEG inputs go through another decoder than
    # PIL's: tests/tests/images.rs bounds that difference; here they are left out).
    processor = cnx.ConvNextImageProcessor(image_size=size, do_rescale=False, do_normalize=False)
    checked = 0
    for name, info in PREPROCESS.items():
        if not info["decodable"] or not lossless(name):
            continue
        want = np.asarray(Image.open(IMAGES / info[str(size)]["resized_png"]).convert("RGB"))
        got = processor(IMAGES / name).pixel_values[0]
        assert np.array_equal(got, want.transpose(2, 0, 1).astype(np.float32)), f"{name} @ {size}"
        checked += 1
    assert checked >= 10


def test_settings_from_the_model_and_overrides():
    processor = cnx.ConvNextImageProcessor.from_pretrained("facebook/convnextv2-tiny-22k-384")
    assert processor.size == {"shortest_edge": 384}
    assert processor.crop_pct == 0.875 and processor.resample == 3
    assert processor.image_mean == [0.485, 0.456, 0.406]
    assert cnx.ConvNextImageProcessor.from_pretrained("tiny-1k-224", size=288).size == {"shortest_edge": 288}
    with pytest.raises(TypeError, match="unexpected setting"):
        cnx.ConvNextImageProcessor(do_magic=True)
    with pytest.raises(ValueError, match="return_tensors"):
        cnx.ConvNextImageProcessor()(IMAGES / "chelsea.png", return_tensors="pt")


def test_equals_cnx_preprocess(tmp_path):
    out = tmp_path / "pv.npy"
    names = ["rocket_exif6.jpg", "chelsea.gif", "coffee_rgba.png", "camera_grey.png", "tiny_1x1.png"]
    run_cnx("preprocess", "--model", "tiny-1k-224", "--output", str(out), *[str(IMAGES / n) for n in names])
    processor = cnx.ConvNextImageProcessor.from_pretrained("tiny-1k-224")
    got = processor([IMAGES / n for n in names], threads=2).pixel_values
    assert np.array_equal(got, np.load(out))


@pytest.mark.parametrize("name", ["empty.png", "truncated.jpg", "not_an_image.jpg", "truncated.png",
                                  "does_not_exist.png"])
def test_bad_images_are_errors_naming_them(name):
    processor = cnx.ConvNextImageProcessor()
    with pytest.raises(cnx.CnxError, match=name.replace(".", r"\.")):
        processor([IMAGES / "chelsea.png", IMAGES / name])
    with pytest.raises(cnx.CnxError, match="image 1"):
        processor([b"\x89PNG\r\n\x1a\n", IMAGES / "chelsea.png"][::-1])


def test_bad_arrays_are_value_errors():
    processor = cnx.ConvNextImageProcessor()
    with pytest.raises(ValueError, match="uint8"):
        processor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        processor(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ValueError, match="expected a path"):
        processor([3.5])
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(processor(grey).pixel_values, processor(np.stack([grey] * 3, -1)).pixel_values)
