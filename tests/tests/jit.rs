//! The Cranelift JIT against the interpreter (same graph, same prepared weights) and against
//! transformers: every HF fixture, every output; random-weight models of every preset size at
//! small, odd input sizes and batch 3. The verifier runs on every generated function (debug
//! test build).
//!
//! Tolerances: the JIT runs every step on the runtime's kernels today, so its outputs equal the
//! interpreter's; the bound kept is the one for generated kernels, whose rounding may differ
//! from the runtime's by a few float32 ulps: through the rest of the network that stays within
//! 2e-5 of the output's magnitude against the interpreter, far below any real bug (a missed
//! bias or wrong eps moves outputs by 1e-2 and more). Against transformers, the same bound as every
//! backend: `cnx_tests::tolerance` (3x transformers' own float32 error, + 2 ulp).

use cnx_cli::io::read_npy;
use cnx_cli::{random, ModelSpec};
use cnx_compiler::backend::interp;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_jit::{JitModel, JitOptions};
use cnx_runtime::{Tensor, WeightStore};
use cnx_tests::{fixture_cases, max_abs_diff, tolerance, Fixture};

const VERIFY: JitOptions = JitOptions {
    verify: true,
    disassemble: false,
};

/// max |a - b| relative to max |b|.
fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let a: Vec<f64> = a.data().iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = b.data().iter().map(|&v| v as f64).collect();
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    max_abs_diff(&a, &b) / scale
}

#[test]
fn jit_reproduces_every_fixture() {
    let mut failures = Vec::new();
    for dir in fixture_cases() {
        let fx = Fixture::load(&dir);
        let spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
        let x = read_npy(&dir.join("pixel_values.npy")).unwrap();
        let shape = x.shape().to_vec();
        let names = outputs::all(spec.config.num_stages);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let model = spec.load(None, (shape[2], shape[3])).unwrap();
        let want = interp::run(&model, &x, &refs).unwrap();
        let jit = JitModel::compile(model, &refs, VERIFY).unwrap();
        let got = jit.run(&x, 2).unwrap();
        for name in &names {
            let gap = relative_gap(&got[name], &want[name]);
            let ours: Vec<f64> = got[name].data().iter().map(|&v| v as f64).collect();
            let err = max_abs_diff(&ours, &fx.expected[name].data);
            let tol = tolerance(fx.hf_gap(name), fx.scale(name));
            if gap > 2e-5 || err > tol {
                failures.push(format!(
                    "{} {name}: vs interp {gap:.2e}, vs hf {err:.2e} (tol {tol:.2e})",
                    fx.name()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every preset size, random weights, odd shapes: 97x75 batch 3 and 64x64 batch 1. The
/// random checkpoints stay in memory: huge's is 2.6 GB, more than a CI machine's temporary
/// directory may hold (a CI run failed writing it: "No space left on device").
#[test]
fn jit_matches_the_interpreter_on_every_preset_size() {
    for preset in [
        "atto-1k-224",
        "femto-1k-224",
        "pico-1k-224",
        "nano-1k-224",
        "tiny-1k-224",
        "base-1k-224",
        "large-1k-224",
        "huge-1k-224",
    ] {
        // One random checkpoint per preset (the parameters do not depend on the input size;
        // drawing huge's 660 M values twice took most of this test's time).
        let spec = ModelSpec::resolve(preset).unwrap();
        let graph = cnx_compiler::build_graph(&spec.config, (64, 64)).unwrap();
        let parameters = random::random_parameters(&graph, 11);
        for (hw, batch) in [((97, 75), 3), ((64, 64), 1)] {
            let spec = spec.clone();
            let store = WeightStore::from_tensors(parameters.clone()).unwrap();
            let model = spec
                .with_weights(store, hw, &Pipeline::default_pipeline())
                .unwrap();
            let x = random::random_pixel_values(&model.graph, batch, 3);
            let want = interp::run(&model, &x, &["logits", "pooler_output"]).unwrap();
            let jit = JitModel::compile(model, &["logits", "pooler_output"], VERIFY).unwrap();
            for threads in [1, 2] {
                let got = jit.run(&x, threads).unwrap();
                for name in ["logits", "pooler_output"] {
                    let gap = relative_gap(&got[name], &want[name]);
                    assert!(gap < 2e-5, "{preset} {hw:?} b{batch} {name}: {gap:e}");
                }
            }
        }
    }
}

#[test]
fn jit_runs_and_checks_its_input() {
    let spec = ModelSpec::resolve("atto-1k-224").unwrap();
    let graph = cnx_compiler::build_graph(&spec.config, (64, 64)).unwrap();
    let store = WeightStore::from_tensors(random::random_parameters(&graph, 1)).unwrap();
    let model = spec
        .with_weights(store, (64, 64), &Pipeline::default_pipeline())
        .unwrap();
    let x = random::random_pixel_values(&model.graph, 2, 9);
    let want = interp::run(&model, &x, &["logits"]).unwrap();
    let jit = JitModel::compile(model, &["logits"], VERIFY).unwrap();
    // A valid run (this test is the one CI runs under valgrind's memcheck).
    let got = jit.run(&x, 2).unwrap();
    assert!(relative_gap(&got["logits"], &want["logits"]) < 2e-5);
    let wrong = Tensor::zeros(&[1, 3, 64, 63]);
    assert!(jit.run(&wrong, 1).is_err());
    assert!(jit.run(&Tensor::zeros(&[0, 3, 64, 64]), 1).is_err());
    assert!(
        jit.clif().contains("function"),
        "the IR is kept for reading"
    );
    // Every step is one runtime call in the compiled schedule: no generated kernel measured as
    // fast as the runtime's (issue 13; BENCHMARKS.md).
    let steps = jit.program().steps.len();
    assert_eq!(jit.runtime_steps, steps);
    assert_eq!(
        jit.clif().matches("call fn0(").count(),
        steps,
        "one call per step"
    );
}

/// Channel counts that are not multiples of 4 or 8 (the kernels' vector blocks then take a
/// tail in every channel loop), an odd input size, batch 3.
#[test]
fn jit_handles_channels_not_a_multiple_of_four() {
    let config = r#"{"model_type": "convnextv2", "num_channels": 3, "patch_size": 4,
        "num_stages": 4, "hidden_sizes": [6, 10, 18, 27], "depths": [1, 1, 2, 1],
        "hidden_act": "gelu", "layer_norm_eps": 1e-12, "image_size": 64, "num_labels": 7}"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let spec = ModelSpec::resolve(dir.path().to_str().unwrap()).unwrap();
    let hw = (61, 45);
    let graph = cnx_compiler::build_graph(&spec.config, hw).unwrap();
    let store = WeightStore::from_tensors(random::random_parameters(&graph, 5)).unwrap();
    let model = spec
        .with_weights(store, hw, &Pipeline::default_pipeline())
        .unwrap();
    let x = random::random_pixel_values(&model.graph, 3, 4);
    let names = ["logits", "pooler_output", "last_hidden_state"];
    let want = interp::run(&model, &x, &names).unwrap();
    let jit = JitModel::compile(model, &names, VERIFY).unwrap();
    let got = jit.run(&x, 2).unwrap();
    for name in names {
        let gap = relative_gap(&got[name], &want[name]);
        assert!(gap < 2e-5, "{name}: {gap:e}");
    }
}
