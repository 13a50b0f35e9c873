//! Shared test helpers for the passes: small configs with awkward sizes, structural views of a
//! graph, and the numerical check of a pipeline against the unfused graph.

use cnx_runtime::WeightStore;

use crate::backend::interp;
use crate::ir::{outputs, Graph};
use crate::passes::{run_to_fixed_point, Pass, Pipeline};
use crate::{build_graph, random, verify, ConvNextV2Config, LoadedModel};

/// Configs whose channel counts are not multiples of 8 or 16, with every head variant.
pub fn configs() -> Vec<ConvNextV2Config> {
    [
        r#"{"hidden_sizes": [5, 10, 15, 20], "depths": [1, 2, 1, 1], "num_labels": 7}"#,
        r#"{"num_channels": 1, "patch_size": 2, "num_stages": 3, "hidden_sizes": [6, 9, 13],
            "depths": [1, 1, 2], "num_labels": 3, "hidden_act": "relu", "layer_norm_eps": 1e-3}"#,
        r#"{"hidden_sizes": [7, 14, 21, 28], "depths": [2, 1, 1, 1], "num_labels": 0,
            "hidden_act": "gelu_new"}"#,
    ]
    .iter()
    .map(|json| ConvNextV2Config::from_json(json).unwrap())
    .collect()
}

/// The first config's graph at `hw`.
pub fn custom_graph(hw: (usize, usize)) -> Graph {
    build_graph(&configs()[0], hw).unwrap()
}

/// `graph` after `pass` has run to its fixed point; verified.
pub fn apply(pass: &dyn Pass, graph: &Graph) -> Graph {
    let mut g = graph.clone();
    let n = run_to_fixed_point(pass, &mut g).unwrap();
    assert!(n > 0, "{} changed nothing", pass.name());
    verify::verify(&g).unwrap();
    g
}

/// `"<suffix>: <kind>"` for each node under `prefix.`, in topological order.
pub fn block_summary(graph: &Graph, prefix: &str) -> Vec<String> {
    graph
        .topo_order()
        .unwrap()
        .into_iter()
        .filter_map(|id| {
            let n = graph.node(id);
            let suffix = n.name.strip_prefix(prefix)?.strip_prefix('.')?;
            Some(format!("{suffix}: {}", n.op.kind()))
        })
        .collect()
}

/// Runs the named passes over every test config at 97x75 (batch 3) and 64x64 (batch 2) with
/// random weights, and compares every output with the unfused graph's.
///
/// Tolerance: both runs are float32 with the same f64-accumulated reference kernels; the
/// rewrites change only where values are rounded (a folded weight is rounded once from its f64
/// product, a fused prologue skips a stored intermediate). Each rounding moves a value by at
/// most half an ulp, 6e-8 relative; through a few dozen layers of sums over up to 80 terms
/// this stays below 2e-6 of the output's magnitude, the bound we assert (measured: see the
/// printed figures, typically ~1e-7 to 5e-7).
pub fn check_pipeline(names: &[&str]) {
    let pipeline = Pipeline::from_names(names).unwrap();
    for (i, config) in configs().iter().enumerate() {
        for (hw, batch) in [((97, 75), 3), ((64, 64), 2)] {
            let unfused = build_graph(config, hw).unwrap();
            let mut fused = unfused.clone();
            pipeline.run(&mut fused).unwrap();
            verify::verify(&fused).unwrap();
            // Both on the reference kernels (no prepared weights), from the same checkpoint.
            let params = random::random_parameters(&unfused, 7 + i as u64);
            let load = |pipeline: &Pipeline| {
                let store = WeightStore::from_tensors(params.clone()).unwrap();
                LoadedModel::new_for("test", config.clone(), store, hw, pipeline, None).unwrap()
            };
            let (unfused_model, fused_model) = (load(&Pipeline::empty()), load(&pipeline));
            assert_eq!(fused_model.graph.node_count(), fused.node_count());
            let x = random::random_pixel_values(&unfused, batch, 11);
            let names = outputs::all(config.num_stages);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let want = interp::run(&unfused_model, &x, &refs).unwrap();
            let got = interp::run_threaded(&fused_model, &x, &refs, 2).unwrap();
            for name in &refs {
                let (a, b) = (want[*name].data(), got[*name].data());
                assert_eq!(want[*name].shape(), got[*name].shape(), "{name}");
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
                let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                println!(
                    "config {i} {hw:?} {name}: max |fused - unfused| = {:.2e} of {scale:.2e}",
                    err / scale
                );
                assert!(
                    err <= 2e-6 * scale,
                    "config {i} {hw:?} {name}: {err:e} > 2e-6 * {scale:e}"
                );
            }
        }
    }
}

/// [`check_precision_against_f32`] for int8.
pub fn check_int8_against_f32(bound: f32) {
    check_precision_against_f32(crate::ir::Precision::Int8, bound)
}

/// The default pipeline with and without the rewrite to `precision` on every test config,
/// both on the optimised kernels of this CPU, from the same random checkpoint: every output
/// within `bound` of its f32 magnitude, and not equal to it.
pub fn check_precision_against_f32(precision: crate::ir::Precision, bound: f32) {
    use crate::ir::Precision;
    for (i, config) in configs().iter().enumerate() {
        for (hw, batch) in [((97, 75), 3), ((64, 64), 2)] {
            let unfused = build_graph(config, hw).unwrap();
            let params = random::random_parameters(&unfused, 7 + i as u64);
            let load = |precision| {
                let store = WeightStore::from_tensors(params.clone()).unwrap();
                let pipeline = Pipeline::default_pipeline().with_precision(precision);
                LoadedModel::new("test", config.clone(), store, hw, &pipeline).unwrap()
            };
            let (f32_model, int8_model) = (load(Precision::F32), load(precision));
            let x = random::random_pixel_values(&unfused, batch, 11);
            let names = outputs::all(config.num_stages);
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let want = interp::run(&f32_model, &x, &refs).unwrap();
            let got = interp::run_threaded(&int8_model, &x, &refs, 2).unwrap();
            for name in &refs {
                let (a, b) = (want[*name].data(), got[*name].data());
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
                let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                println!(
                    "config {i} {hw:?} {name}: max |{} - f32| = {:.2e} of {scale:.2e}",
                    precision.name(),
                    err / scale
                );
                assert!(
                    err <= bound * scale,
                    "config {i} {hw:?} {name}: {err:e} > {bound} * {scale:e}"
                );
                // Outputs before the first low-precision product (the stem's) are f32 in both.
                if *name != "hidden_states_0" {
                    assert!(
                        err > 0.0,
                        "config {i} {hw:?} {name}: {precision:?} changed nothing"
                    );
                }
            }
        }
    }
}
