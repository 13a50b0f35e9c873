"""The models equal the `cnx` command bit for bit, and transformers within the fixtures'
float32 tolerance."""

import json

import numpy as np
import pytest

import cnx
from conftest import DIGITS, FIXTURES, IMAGES, fixture_tolerance, run_cnx


@pytest.mark.parametrize("backend", ["jit", "interp"])
@pytest.mark.parametrize("case", ["atto-224-b2", "custom-nonsquare"])
def test_outputs_equal_cnx_run_bit_for_bit(tmp_path, case, backend):
    # custom-nonsquare's pixel values are 97x75 though its config says 224: the model
    # compiles that size on first use, as `cnx run` builds the graph for its input.
    pixel_values = np.load(FIXTURES / case / "pixel_values.npy")
    out = tmp_path / "out.npz"
    run_cnx("run", "--model", str(FIXTURES / case), "--input", str(FIXTURES / case / "pixel_values.npy"),
            "--output", str(out), "--backend", backend, "--threads", "2")
    want = np.load(out)
    classifier = cnx.ConvNextV2ForImageClassification.from_pretrained(FIXTURES / case, backend=backend,
                                                                      threads=2)
    logits = classifier(pixel_values).logits
    assert logits.dtype == np.float32 and logits.shape == want["logits"].shape
    assert np.array_equal(logits, want["logits"])
    base = cnx.ConvNextV2Model.from_pretrained(FIXTURES / case, backend=backend, threads=2)
    got = base(pixel_values=pixel_values)
    assert np.array_equal(got.pooler_output, want["pooler_output"])
    assert np.array_equal(got.last_hidden_state, want["last_hidden_state"])


def test_int8_equals_cnx_run_int8(tmp_path):
    case = FIXTURES / "atto-224-b2"
    out = tmp_path / "out.npz"
    run_cnx("run", "--model", str(case), "--input", str(case / "pixel_values.npy"), "--output", str(out),
            "--precision", "int8")
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case, precision="int8")
    assert model.precision == "int8"
    logits = model(np.load(case / "pixel_values.npy")).logits
    assert np.array_equal(logits, np.load(out)["logits"])


@pytest.mark.parametrize("backend", ["jit", "interp"])
def test_bf16_equals_cnx_run_bf16(tmp_path, backend):
    case = FIXTURES / "atto-224-b2"
    out = tmp_path / "out.npz"
    run_cnx("run", "--model", str(case), "--input", str(case / "pixel_values.npy"), "--output", str(out),
            "--precision", "bf16", "--backend", backend)
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case, precision="bf16", backend=backend)
    assert model.precision == "bf16"
    assert cnx.ConvNextV2ForImageClassification.from_pretrained(case, precision="bfloat16").precision == "bf16"
    logits = model(np.load(case / "pixel_values.npy")).logits
    assert np.array_equal(logits, np.load(out)["logits"])


@pytest.mark.parametrize("case", ["atto-224-b2", "custom-nonsquare", "custom-square"])
def test_outputs_match_transformers(case):
    pixel_values = np.load(FIXTURES / case / "pixel_values.npy")
    expected = np.load(FIXTURES / case / "expected.npz")
    logits = cnx.ConvNextV2ForImageClassification.from_pretrained(FIXTURES / case)(pixel_values).logits
    pooled = cnx.ConvNextV2Model.from_pretrained(FIXTURES / case)(pixel_values).pooler_output
    for name, ours in (("logits", logits), ("pooler_output", pooled)):
        want = expected[name]
        tol = fixture_tolerance(case, name, want)
        err = float(np.abs(ours - want).max())
        assert err <= tol, f"{case} {name}: {err:.3e} > {tol:.3e}"


def test_bare_checkpoint_is_a_base_model():
    case = FIXTURES / "bare-model"
    pixel_values = np.load(case / "pixel_values.npy")
    want = np.load(case / "expected.npz")["pooler_output"]
    pooled = cnx.ConvNextV2Model.from_pretrained(case)(pixel_values).pooler_output
    assert float(np.abs(pooled - want).max()) <= fixture_tolerance("bare-model", "pooler_output", want)
    with pytest.raises(cnx.CnxError, match="no classifier"):
        cnx.ConvNextV2ForImageClassification.from_pretrained(case)


def test_outputs_read_as_transformers_outputs():
    case = FIXTURES / "custom-square"
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case)
    pixel_values = np.load(case / "pixel_values.npy")
    out = model(pixel_values)
    assert isinstance(out, cnx.ImageClassifierOutputWithNoAttention)
    assert list(out.keys()) == ["logits"]
    assert out["logits"] is out.logits and out[0] is out.logits
    assert np.array_equal(model(pixel_values, return_dict=False)[0], out.logits)
    with pytest.raises(AttributeError):
        out.pooler_output
    base = cnx.ConvNextV2Model.from_pretrained(case)(pixel_values)
    assert list(base.keys()) == ["last_hidden_state", "pooler_output"]
    assert base.pooler_output.shape == (3, base.last_hidden_state.shape[1])
    # Any object with the array interface; a non-contiguous view is copied, not misread.
    assert np.array_equal(model(np.asfortranarray(pixel_values)).logits, out.logits)

    class ArrayInterface:
        __array_interface__ = pixel_values.__array_interface__

    assert np.array_equal(model(ArrayInterface()).logits, out.logits)


def test_config_reads_as_transformers_config():
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(DIGITS)
    config = model.config
    assert config.num_labels == 10 and config.image_size == 32
    assert config.id2label == {i: str(i) for i in range(10)}
    assert config.label2id["7"] == 7
    assert config.hidden_sizes == [16, 32, 64, 128] and config.depths == [1, 2, 3, 1]
    assert cnx.ConvNextV2Config.from_pretrained(DIGITS).to_dict() == config.to_dict()


def test_threads_do_not_change_results():
    case = FIXTURES / "atto-224-b2"
    pixel_values = np.load(case / "pixel_values.npy")
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case, threads=1)
    one = model(pixel_values).logits
    model.threads = 2
    assert model.threads == 2
    assert np.array_equal(model(pixel_values).logits, one)


def test_processor_output_runs_as_keyword_arguments():
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(FIXTURES / "atto-224-b2")
    processor = cnx.ConvNextImageProcessor.from_pretrained(FIXTURES / "atto-224-b2")
    images = [IMAGES / "chelsea.png", IMAGES / "astronaut.png"]
    inputs = processor(images, return_tensors="np")
    logits = model(**inputs).logits
    for i, name in enumerate(["chelsea_png", "astronaut_png"]):
        want = np.load(IMAGES / "expected" / f"{name}_224_logits.npy")
        # Same pixels as transformers (bit for bit, test_processor.py): logits within the atto
        # fixture's float32 tolerance.
        assert float(np.abs(logits[i] - want[0]).max()) <= fixture_tolerance("atto-224-b2", "logits", want)


def test_classify_equals_cnx_classify():
    case = FIXTURES / "atto-224-b2"
    names = ["chelsea.png", "chelsea.jpg", "rocket_exif6.jpg", "camera_grey.png", "coffee_rgba.png"]
    paths = [str(IMAGES / n) for n in names]
    lines = run_cnx("classify", "--json", "--top", "3", "--model", str(case), *paths).stdout.splitlines()
    want = {json.loads(line)["path"]: json.loads(line)["top"] for line in lines}
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case)
    got = model.classify(paths, top_k=3, batch_size=2)
    assert len(got) == len(paths)
    for path, top in zip(paths, got):
        assert [set(t) for t in top] == [{"label", "score"}] * 3
        # Probabilities of the same logits by the same function: equal exactly.
        assert [(t["label"], t["score"]) for t in top] == \
            [(w["label"], w["probability"]) for w in want[path]]
    single = model.classify(paths[0], top_k=3)
    assert single == got[0]


def test_digits_classified_as_transformers_classifies_them():
    truth = json.loads((DIGITS / "held-out-transformers.json").read_text())
    predictions = truth["predictions"]
    names = sorted(predictions)
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(DIGITS)
    processor = cnx.ConvNextImageProcessor.from_pretrained(DIGITS)
    logits = model(**processor([DIGITS / "held-out" / n for n in names])).logits
    want = np.array([predictions[n]["logits"] for n in names], np.float32)
    tol = 3.0 * truth["f32_vs_f64_max_abs"]["logits"] \
        + 2.0 * float(np.finfo(np.float32).eps) * truth["output_max_abs"]["logits"]
    assert float(np.abs(logits - want).max()) <= tol
    assert [int(i) for i in logits.argmax(1)] == [predictions[n]["predicted"] for n in names]
    accuracy = float(np.mean(logits.argmax(1) == np.array([predictions[n]["label"] for n in names])))
    assert accuracy == truth["top1"]


def test_embed_equals_cnx_embed(tmp_path):
    case = FIXTURES / "atto-224-b2"
    paths = [str(IMAGES / n) for n in ["chelsea.png", "coffee.png", "rocket_exif6.jpg"]]
    out = tmp_path / "emb.npy"
    run_cnx("embed", "--model", str(case), "--normalize", "--output", str(out), *paths)
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(case)
    got = model.embed(paths, normalize=True, batch_size=2)
    assert got.shape == (3, model.config.hidden_size)
    assert np.array_equal(got, np.load(out))
    raw = model.embed(paths)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert not np.array_equal(raw, got)
