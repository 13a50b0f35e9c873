//! Every committed Hugging Face fixture reproduced by the reference interpreter, through the
//! same loading path as `cnx run` (config.json + the checkpoint beside it).

use cnx_cli::io::read_npy;
use cnx_cli::ModelSpec;
use cnx_compiler::backend::interp;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_tests::{fixture_cases, max_abs_diff, tolerance, Fixture};

#[test]
fn every_fixture_matches_transformers_unfused() {
    check_every_fixture("unfused", &Pipeline::empty(), Kernels::Reference);
}

#[test]
fn every_fixture_matches_transformers_fused() {
    check_every_fixture("fused", &Pipeline::default_pipeline(), Kernels::Reference);
}

/// The default path: fused graph, linear layers on the packed GEMM.
#[test]
fn every_fixture_matches_transformers_fused_gemm() {
    check_every_fixture(
        "fused+gemm",
        &Pipeline::default_pipeline(),
        Kernels::Optimised,
    );
}

#[derive(Clone, Copy, PartialEq)]
enum Kernels {
    /// The plain reference kernels (f64 reductions): held to "no farther from the float64
    /// truth than transformers' float32".
    Reference,
    /// The packed GEMM (one f32 FMA chain along K per output): held to 3x transformers' own
    /// float32 error from the truth, the same bound as against transformers' float32.
    Optimised,
}

fn check_every_fixture(label: &str, pipeline: &Pipeline, kernels: Kernels) {
    let cases = fixture_cases();
    assert!(
        cases.len() >= 10,
        "expected the committed fixtures, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for dir in cases {
        let fx = Fixture::load(&dir);
        let spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
        let pixel_values = read_npy(&dir.join("pixel_values.npy")).unwrap();
        let shape = pixel_values.shape().to_vec();
        let model = spec
            .load_with(None, (shape[2], shape[3]), pipeline)
            .unwrap_or_else(|e| panic!("{}: {e}", fx.name()));
        let model = match kernels {
            Kernels::Reference => model.use_reference_kernels(),
            Kernels::Optimised => model,
        };
        let num_stages = model.config.num_stages;
        let names = outputs::all(num_stages);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = interp::run(&model, &pixel_values, &refs).unwrap();
        for name in &names {
            let expected = &fx.expected[name];
            let ours: Vec<f64> = got[name].data().iter().map(|&v| v as f64).collect();
            assert_eq!(
                got[name].shape(),
                expected.shape.as_slice(),
                "{}: {name}",
                fx.name()
            );
            let (gap, scale) = (fx.hf_gap(name), fx.scale(name));
            let tol = tolerance(gap, scale);
            let err = max_abs_diff(&ours, &expected.data);
            // Where the float64 result is stored, we must be at least as close to the truth as
            // transformers' own float32 result is (plus the 2-ulp floor).
            let err64 = fx
                .expected
                .get(&format!("{name}_f64"))
                .map(|truth| max_abs_diff(&ours, &truth.data));
            println!(
                "{label} {:<22} {name:<20} |ours-hf32| {err:.2e}  |ours-hf64| {}  hf gap {gap:.2e}  tol {tol:.2e}",
                fx.name(),
                err64.map_or("-".to_string(), |e| format!("{e:.2e}")),
            );
            let tol64 = match kernels {
                Kernels::Reference => gap + 2.0 * f32::EPSILON as f64 * scale,
                Kernels::Optimised => tol,
            };
            if err > tol || err64.is_some_and(|e| e > tol64) {
                failures.push(format!(
                    "{} {name}: err {err:.3e} / {err64:?} > tol {tol:.3e}",
                    fx.name()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "outputs off:\n{}", failures.join("\n"));
}

/// A wrong LayerNorm eps must fail the comparison above by a wide margin, or the
/// `small-activations` and `layer-norm-eps` cases would prove nothing.
#[test]
fn eps_sensitive_fixtures_detect_a_wrong_eps() {
    for case in ["small-activations", "layer-norm-eps"] {
        let dir = cnx_tests::fixtures_dir().join(case);
        let fx = Fixture::load(&dir);
        let mut spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
        spec.config.layer_norm_eps = 1e-12;
        let pixel_values = read_npy(&dir.join("pixel_values.npy")).unwrap();
        let shape = pixel_values.shape().to_vec();
        let model = spec.load(None, (shape[2], shape[3])).unwrap();
        let got = interp::run(&model, &pixel_values, &["logits"]).unwrap();
        let ours: Vec<f64> = got["logits"].data().iter().map(|&v| v as f64).collect();
        let err = max_abs_diff(&ours, &fx.expected["logits"].data);
        let tol = tolerance(fx.hf_gap("logits"), fx.scale("logits"));
        assert!(
            err > 1000.0 * tol,
            "{case}: eps 1e-12 only moved logits by {err:e}"
        );
    }
}

/// Splitting the work over threads must not change a single bit of any output.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let dir = cnx_tests::fixtures_dir().join("custom-nonsquare");
    let spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
    let pixel_values = read_npy(&dir.join("pixel_values.npy")).unwrap();
    let shape = pixel_values.shape().to_vec();
    let model = spec.load(None, (shape[2], shape[3])).unwrap();
    let names = ["logits", "hidden_states_1", "hidden_states_3"];
    let one = interp::run_threaded(&model, &pixel_values, &names, 1).unwrap();
    for threads in [2, 3, 7] {
        let many = interp::run_threaded(&model, &pixel_values, &names, threads).unwrap();
        assert_eq!(one, many, "{threads} threads");
    }
}

/// Checkpoint tensors that only fed derived weights are dropped after loading (dead-weight
/// elimination); everything the optimised graph reads is there.
#[test]
fn loading_keeps_only_live_weights() {
    let dir = cnx_tests::fixtures_dir().join("custom-square");
    let spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
    let model = spec.load(None, (64, 64)).unwrap();
    use convnextv2::WeightSource;
    let folded = "convnextv2.encoder.stages.0.layers.0.pwconv1.weight";
    assert!(
        model.checkpoint().get(folded).is_none(),
        "{folded} was folded and should be dropped"
    );
    for p in model.graph.params() {
        assert!(
            model.tensor(&p.name).is_some(),
            "{} is not available",
            p.name
        );
    }
    // The pooler's own LayerNorm parameters stay (pooler_output needs them).
    assert!(model
        .checkpoint()
        .get("convnextv2.layernorm.weight")
        .is_some());
}
