//! The image-parallel schedule changes no bit. A batch's phases run either op-parallel (every
//! op split over the threads) or, for the phases the compiler marks and a batch of at least as
//! many images as threads, image by image on the threads' one-image lanes (the remainder
//! op-parallel). Whatever ran where, every image's outputs must be the bits it gets alone at
//! batch 1 on one thread: here for batch 3 and 8 at 1, 2 and 3 threads (op-parallel;
//! image-parallel with a remainder of 1, 2 or none), on the interpreter, the JIT and the
//! `convnextv2!` macro's code, in f32, bf16 and int8, at the odd input size 97x75 (stage 0 at
//! 24x18 runs image-parallel, the later stages op-parallel).

use cnx_cli::{random, ModelSpec};
use cnx_compiler::backend::interp;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_compiler::LoadedModel;
use cnx_jit::{JitModel, JitOptions};
use cnx_runtime::ops::Precision;
use cnx_runtime::{Tensor, WeightStore};

convnextv2::convnextv2!(
    config = "atto-1k-224",
    name = Atto9775,
    image_size = (97, 75)
);

const HW: (usize, usize) = (97, 75);
const NAMES: [&str; 2] = [outputs::LOGITS, outputs::POOLER_OUTPUT];

fn model(precision: Precision, store: WeightStore) -> LoadedModel {
    let spec = ModelSpec::resolve("atto-1k-224").unwrap();
    let pipeline = Pipeline::default_pipeline().with_precision(precision);
    spec.with_weights(store, HW, &pipeline).unwrap()
}

fn store() -> WeightStore {
    let spec = ModelSpec::resolve("atto-1k-224").unwrap();
    let graph = cnx_compiler::build_graph(&spec.config, HW).unwrap();
    WeightStore::from_tensors(random::random_parameters(&graph, 21)).unwrap()
}

/// Image `i` of `x` as a batch of one.
fn image(x: &Tensor, i: usize) -> Tensor {
    let per = x.data().len() / x.shape()[0];
    let mut shape = x.shape().to_vec();
    shape[0] = 1;
    Tensor::from_vec(&shape, x.data()[i * per..(i + 1) * per].to_vec()).unwrap()
}

/// Each output of `x`'s images run one at a time, on one thread, by the interpreter: the bits
/// every schedule must give.
fn alone(model: &LoadedModel, x: &Tensor) -> Vec<Vec<f32>> {
    let mut want = vec![Vec::new(); NAMES.len()];
    for i in 0..x.shape()[0] {
        let out = interp::run(model, &image(x, i), &NAMES).unwrap();
        for (w, name) in want.iter_mut().zip(NAMES) {
            w.extend_from_slice(out[name].data());
        }
    }
    want
}

#[test]
fn every_backend_gives_each_image_its_batch_one_bits_whatever_the_schedule() {
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let model = model(precision, store());
        let program = cnx_compiler::lower::lower_outputs(&model.graph, &NAMES).unwrap();
        program.validate().unwrap();
        // The test means something only if the schedule has both kinds of phase.
        assert!(program.phases.iter().any(|p| p.images), "{program}");
        assert!(program.phases.iter().any(|p| !p.images), "{program}");
        for batch in [3, 8] {
            let x = random::random_pixel_values(&model.graph, batch, 7 + batch as u64);
            let want = alone(&model, &x);
            for threads in [1, 2, 3] {
                let got = interp::run_threaded(&model, &x, &NAMES, threads).unwrap();
                for (w, name) in want.iter().zip(NAMES) {
                    assert!(
                        got[name].data() == &w[..],
                        "interpreter {precision:?} batch {batch}, {threads} threads: {name}"
                    );
                }
            }
        }
        let jit = JitModel::compile(
            model,
            &NAMES,
            JitOptions {
                verify: true,
                disassemble: false,
            },
        )
        .unwrap();
        for batch in [3, 8] {
            let x = random::random_pixel_values(&jit.model().graph, batch, 7 + batch as u64);
            let want = alone(jit.model(), &x);
            for threads in [1, 2, 3] {
                let got = jit.run(&x, threads).unwrap();
                for (w, name) in want.iter().zip(NAMES) {
                    assert!(
                        got[name].data() == &w[..],
                        "JIT {precision:?} batch {batch}, {threads} threads: {name}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_macro_code_gives_each_image_its_batch_one_bits_whatever_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let spec = ModelSpec::resolve("atto-1k-224").unwrap();
    let graph = cnx_compiler::build_graph(&spec.config, HW).unwrap();
    random::write_safetensors(&path, &random::random_parameters(&graph, 21)).unwrap();
    let model = model(Precision::F32, WeightStore::open(&path).unwrap());
    for batch in [3, 8] {
        let x = random::random_pixel_values(&model.graph, batch, 7 + batch as u64);
        let want = alone(&model, &x);
        for threads in [1, 2, 3] {
            let generated = Atto9775::load(&path).unwrap().with_threads(threads);
            let logits = generated.forward(x.data(), batch).unwrap();
            assert!(
                logits == want[0],
                "convnextv2! batch {batch}, {threads} threads: logits"
            );
            let pooled = generated.embed(x.data(), batch).unwrap();
            assert!(
                pooled == want[1],
                "convnextv2! batch {batch}, {threads} threads: pooler_output"
            );
        }
    }
}
