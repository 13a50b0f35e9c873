"""The GIL is released during forward passes (two Python threads run concurrently), and
models and processors pickle by source (multiprocessing and Ray ship them)."""

import multiprocessing
import pickle
import threading
import time

import numpy as np

import cnx
from conftest import DIGITS, FIXTURES, IMAGES

CASE = FIXTURES / "atto-224-b2"


def test_python_runs_during_a_forward_pass():
    # One thread, one core: a batch of 8 at 224x224 takes a while. Were the GIL held, the main
    # thread could not run one bytecode until the call returned.
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, threads=1, backend="interp")
    x = np.zeros((8, 3, 224, 224), np.float32)
    model(x[:1])  # warm: the workspace exists
    done = threading.Event()
    spent = []

    def forward():
        start = time.perf_counter()
        model(x)
        spent.append(time.perf_counter() - start)
        done.set()

    worker = threading.Thread(target=forward)
    worker.start()
    spins = 0
    while not done.is_set():
        spins += 1
    worker.join(timeout=120)
    assert spent and spent[0] > 0.02, spent
    assert spins > 1000, f"the main thread ran {spins} loop iterations during a {spent[0]:.3f} s pass"


def test_two_threads_run_forward_passes_concurrently():
    # Two models (calls on one model share its workspace, so they queue), one thread each: on
    # two cores, both threads' passes together take about as long as one thread's, where a held
    # GIL would make them take twice as long. The bound (0.8) leaves room for a loaded machine.
    models = [cnx.ConvNextV2ForImageClassification.from_pretrained(CASE, threads=1) for _ in range(2)]
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = models[0](x).logits
    rounds = 6

    def work(model, results):
        for _ in range(rounds):
            results.append(model(x).logits)

    serial_start = time.perf_counter()
    for model in models:
        work(model, [])
    serial = time.perf_counter() - serial_start
    results = [[], []]
    threads = [threading.Thread(target=work, args=(m, r)) for m, r in zip(models, results)]
    concurrent_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    concurrent = time.perf_counter() - concurrent_start
    assert all(len(r) == rounds and all(np.array_equal(v, want) for v in r) for r in results)
    assert concurrent < 0.8 * serial, f"two threads {concurrent:.3f} s, one after the other {serial:.3f} s"


def test_models_pickle_by_source():
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(DIGITS, threads=1, backend="interp")
    clone = pickle.loads(pickle.dumps(model))
    assert type(clone) is cnx.ConvNextV2ForImageClassification
    assert (clone.threads, clone.backend, clone.precision) == (1, "interp", "f32")
    x = cnx.ConvNextImageProcessor.from_pretrained(DIGITS)(sorted((DIGITS / "held-out" / "3").iterdir())[:4])
    assert np.array_equal(clone(**x).logits, model(**x).logits)
    base = pickle.loads(pickle.dumps(cnx.ConvNextV2Model.from_pretrained(DIGITS)))
    assert type(base) is cnx.ConvNextV2Model
    processor = pickle.loads(pickle.dumps(cnx.ConvNextImageProcessor.from_pretrained(DIGITS, crop_pct=1.0)))
    assert processor.crop_pct == 1.0
    out = pickle.loads(pickle.dumps(model(**x)))
    assert isinstance(out, cnx.ImageClassifierOutputWithNoAttention) and out.logits.shape == (4, 10)


def classify_in_child(model, path):
    return model.classify(path, top_k=2)


def test_models_run_in_other_processes():
    model = cnx.ConvNextV2ForImageClassification.from_pretrained(DIGITS, threads=1)
    paths = [str(p) for p in sorted((DIGITS / "held-out" / "7").iterdir())[:3]]
    # spawn: a fresh interpreter that only gets the pickled model.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        got = pool.starmap(classify_in_child, [(model, p) for p in paths], chunksize=1)
    assert got == [model.classify(p, top_k=2) for p in paths]
