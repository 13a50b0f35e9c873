//! `ConvNextV2Backbone`: feature maps of the stages in `out_features`, each through its
//! `hidden_states_norms` LayerNorm, against transformers (fixtures written by
//! `tools/make_backbone_fixtures.py`: every parameter random, the norms included; two
//! `out_features` choices, one at a non-square size). Every backend (interpreter fused and
//! unfused, JIT) within the fixtures' tolerance (`cnx_tests::tolerance`: 3x transformers' own
//! float32-vs-float64 gap, at least 2 ulps of the output's scale).

use std::path::PathBuf;

use cnx_cli::io::{read_npy, read_npz};
use cnx_cli::ModelSpec;
use cnx_compiler::backend::interp;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_jit::{JitModel, JitOptions};
use cnx_tests::{fixtures_dir, max_abs_diff, tolerance};

fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("backbones"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    cases
}

#[test]
fn feature_maps_match_transformers_on_every_backend() {
    let cases = cases();
    assert_eq!(cases.len(), 2);
    for dir in cases {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let expected = read_npz(&dir.join("expected.npz")).unwrap();
        let x = read_npy(&dir.join("pixel_values.npy")).unwrap();
        let hw = (x.shape()[2], x.shape()[3]);
        let maps = expected
            .keys()
            .filter(|k| k.starts_with("feature_maps_") && !k.ends_with("_f64"))
            .count();
        assert_eq!(maps, 2, "{case}");
        let mut wanted: Vec<String> = (0..maps).map(outputs::feature_map).collect();
        wanted.push(outputs::LAST_HIDDEN_STATE.into());
        let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let check = |backend: &str, got: &std::collections::HashMap<String, Vec<f32>>| {
            for name in &wanted {
                let theirs = &expected[name.as_str()];
                let truth = &expected[format!("{name}_f64").as_str()];
                let ours: Vec<f64> = got[name].iter().map(|&v| v as f64).collect();
                let gap = max_abs_diff(&theirs.data, &truth.data);
                let scale = truth.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let err = max_abs_diff(&ours, &theirs.data);
                let tol = tolerance(gap, scale);
                assert!(err <= tol, "{case} {backend} {name}: {err:e} > {tol:e}");
            }
        };
        for (label, pipeline) in [
            ("fused", Pipeline::default_pipeline()),
            ("unfused", Pipeline::empty()),
        ] {
            let model = ModelSpec::resolve(dir.to_str().unwrap())
                .unwrap()
                .load_with(None, hw, &pipeline)
                .unwrap();
            assert!(model.is_backbone(), "{case}");
            let out = interp::run(&model, &x, &wanted_refs).unwrap();
            let got = out
                .iter()
                .map(|(k, v)| (k.clone(), v.data().to_vec()))
                .collect();
            check(&format!("interp {label}"), &got);
        }
        let model = ModelSpec::resolve(dir.to_str().unwrap())
            .unwrap()
            .load(None, hw)
            .unwrap();
        let jit = JitModel::compile(model, &wanted_refs, JitOptions::default()).unwrap();
        let out = jit.run(&x, 2).unwrap();
        let got = out
            .iter()
            .map(|(k, v)| (k.clone(), v.data().to_vec()))
            .collect();
        check("jit", &got);
    }
}

/// A backbone has no logits, and a classifier checkpoint has no feature maps: each is said.
#[test]
fn backbone_and_classifier_checkpoints_are_told_apart() {
    let dir = fixtures_dir().join("backbones/stem-stage2");
    let model = ModelSpec::resolve(dir.to_str().unwrap())
        .unwrap()
        .load(None, (64, 64))
        .unwrap();
    assert!(model.program(&[outputs::LOGITS]).is_err());
    let classifier = fixtures_dir().join("custom-square");
    let model = ModelSpec::resolve(classifier.to_str().unwrap())
        .unwrap()
        .load(None, (64, 64))
        .unwrap();
    assert!(!model.is_backbone());
}
