//! Broken and mismatched checkpoints: each is one typed error naming the problem, never a panic,
//! never a huge allocation, never a silent fallback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cnx_cli::ModelSpec;
use cnx_compiler::passes::Pipeline;
use cnx_compiler::{Error, LoadedModel};
use convnextv2::{Error as RtError, WeightStore};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;

fn case_dir() -> PathBuf {
    cnx_tests::fixtures_dir().join("custom-square")
}

fn good_bytes() -> Vec<u8> {
    std::fs::read(case_dir().join("model.safetensors")).unwrap()
}

/// Splits a safetensors file into its header JSON and data bytes.
fn split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// Joins a header JSON and data bytes into a safetensors file.
fn join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Loads the custom-square model with `weights`, 64x64 input.
fn load(weights: &Path) -> Result<LoadedModel, Error> {
    let spec = ModelSpec::resolve(case_dir().to_str().unwrap()).unwrap();
    let store = WeightStore::open(weights)?;
    let pipeline = Pipeline::default_pipeline();
    LoadedModel::new(spec.name, spec.config, store, (64, 64), &pipeline)
}

/// Rewrites the checkpoint's tensors through `edit` (name -> (dtype, shape, bytes)).
fn reserialize(edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) -> Vec<u8> {
    let bytes = good_bytes();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                (v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            )
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn mismatch(err: Error) -> convnextv2::WeightMismatch {
    match err {
        Error::Weights(RtError::WeightMismatch(m)) => m,
        other => panic!("expected a weight mismatch, got {other}"),
    }
}

#[test]
fn good_checkpoint_loads_zero_copy() {
    let store = WeightStore::open(&case_dir().join("model.safetensors")).unwrap();
    let t = store
        .get("convnextv2.encoder.stages.0.layers.0.pwconv1.weight")
        .unwrap();
    assert_eq!(t.shape, vec![32, 8]);
    assert!(t.is_zero_copy(), "aligned f32 should be read in place");
    load(&case_dir().join("model.safetensors")).unwrap();
}

#[test]
fn structurally_broken_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_bytes();
    let (header, data) = split(&good);

    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "too short"),
        ("short", good[..5].to_vec(), "too short"),
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        (
            "padded",
            [good.clone(), vec![0; 16]].concat(),
            "does not end where the file ends",
        ),
    ];
    // A header length that claims more than the file holds (but under safetensors' 100 MB cap).
    let mut claims_more = good.clone();
    claims_more[..8].copy_from_slice(&(50_000_000u64).to_le_bytes());
    cases.push(("header-past-end", claims_more, "exceeds the file"));
    // An absurd header length: refused before any allocation.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("header-huge", huge, "header"));
    // Offsets that lie: two tensors claiming the same bytes.
    let mut lying = header.clone();
    let first = lying
        .as_object()
        .unwrap()
        .keys()
        .find(|k| *k != "__metadata__")
        .unwrap()
        .clone();
    let second_offsets = lying
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| **k != first && *k != "__metadata__")
        .map(|(_, v)| v["data_offsets"].clone())
        .next()
        .unwrap();
    lying[&first]["data_offsets"] = second_offsets;
    cases.push(("offsets-lie", join(&lying, &data), "offset"));
    // A shape whose byte count disagrees with the offsets.
    let mut reshaped = header.clone();
    reshaped["convnextv2.encoder.stages.0.layers.0.pwconv1.weight"]["shape"] =
        serde_json::json!([33, 8]);
    cases.push(("bytes-vs-shape", join(&reshaped, &data), "byte count"));
    // Not JSON at all.
    let mut garbage = good.clone();
    garbage[8] = b'!';
    cases.push(("bad-json", garbage, "JSON"));

    for (name, bytes, needle) in cases {
        let path = write(dir.path(), &format!("{name}.safetensors"), &bytes);
        let err = WeightStore::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"));
        assert!(
            matches!(err, RtError::InvalidSafetensors { .. }),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.contains(needle), "{name}: `{msg}` lacks `{needle}`");
        assert!(
            msg.contains(&format!("{name}.safetensors")),
            "{name}: no path in `{msg}`"
        );
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut header, data) = split(&good_bytes());
    header["classifier.bias"]["dtype"] = "I32".into();
    let path = write(dir.path(), "i32.safetensors", &join(&header, &data));
    let err = WeightStore::open(&path).err().unwrap();
    assert!(
        matches!(err, RtError::UnsupportedDtype { ref name, .. } if name == "classifier.bias"),
        "{err}"
    );
}

#[test]
fn missing_unexpected_and_misshaped_are_reported_together() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = reserialize(|t| {
        t.remove("convnextv2.encoder.stages.1.layers.1.dwconv.bias");
        t.insert(
            "convnextv2.encoder.stages.9.extra.weight".into(),
            (Dtype::F32, vec![1], vec![0; 4]),
        );
        // An HF checkpoint storing a pwconv as a 1x1 conv is mis-shaped (only timm's may).
        let w = t
            .remove("convnextv2.encoder.stages.0.layers.0.pwconv1.weight")
            .unwrap();
        t.insert(
            "convnextv2.encoder.stages.0.layers.0.pwconv1.weight".into(),
            (w.0, vec![32, 8, 1, 1], w.2),
        );
    });
    let path = write(dir.path(), "m.safetensors", &bytes);
    let m = mismatch(load(&path).err().unwrap());
    assert_eq!(
        m.missing,
        vec!["convnextv2.encoder.stages.1.layers.1.dwconv.bias"]
    );
    assert_eq!(
        m.unexpected,
        vec!["convnextv2.encoder.stages.9.extra.weight"]
    );
    assert_eq!(m.mis_shaped.len(), 1);
    assert_eq!(m.mis_shaped[0].expected, vec![32, 8]);
    assert_eq!(m.mis_shaped[0].found, vec![32, 8, 1, 1]);
    let msg = Error::Weights(RtError::WeightMismatch(m)).to_string();
    for needle in ["1 missing", "1 unexpected", "1 mis-shaped"] {
        assert!(msg.contains(needle), "`{msg}` lacks `{needle}`");
    }
}

#[test]
fn a_checkpoint_without_grn_is_rejected_not_run_as_convnext_v1() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = reserialize(|t| t.retain(|name, _| !name.contains(".grn.")));
    let path = write(dir.path(), "v1.safetensors", &bytes);
    let m = mismatch(load(&path).err().unwrap());
    assert_eq!(
        m.missing.len(),
        2 * 5,
        "weight and bias of 5 blocks: {:?}",
        m.missing
    );
    assert!(m.missing.iter().all(|n| n.contains(".grn.")));
}

#[test]
fn a_checkpoint_for_another_config_lists_every_difference() {
    // atto's weights against the custom-square config: nothing fits.
    let atto = cnx_tests::fixtures_dir().join("atto-224-b2/model.safetensors");
    let m = mismatch(load(&atto).err().unwrap());
    assert!(!m.mis_shaped.is_empty() && !m.unexpected.is_empty());
}

#[test]
fn sharded_index_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = good_bytes();
    write(dir.path(), "a.safetensors", &good);
    write(dir.path(), "b.safetensors", &good);
    let index = |map: Value| serde_json::json!({"metadata": {}, "weight_map": map}).to_string();
    let cases = [
        (
            "missing-shard",
            index(serde_json::json!({"classifier.bias": "nope.safetensors"})),
            "nope.safetensors",
        ),
        (
            "not-in-shard",
            index(serde_json::json!({"convnextv2.ghost.weight": "a.safetensors"})),
            "not stored there",
        ),
        (
            "duplicate",
            index(
                serde_json::json!({"classifier.bias": "a.safetensors", "classifier.weight": "b.safetensors"}),
            ),
            "more than once",
        ),
        (
            "escape",
            index(serde_json::json!({"classifier.bias": "../a.safetensors"})),
            "plain file name",
        ),
        ("no-map", "{}".to_string(), "weight_map"),
        ("not-json", "{".to_string(), "not JSON"),
    ];
    for (name, text, needle) in cases {
        let path = write(dir.path(), &format!("{name}.index.json"), text.as_bytes());
        let err = WeightStore::open(&path)
            .err()
            .unwrap_or_else(|| panic!("{name} loaded"));
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
}

#[test]
fn timm_checkpoints_map_to_hf_names() {
    let store = WeightStore::open(&cnx_tests::fixtures_dir().join("timm-conv-mlp")).unwrap();
    assert_eq!(store.scheme(), convnextv2::NamingScheme::Timm);
    let grn = store
        .get("convnextv2.encoder.stages.0.layers.0.grn.weight")
        .unwrap();
    assert_eq!(grn.source_name, "stages.0.blocks.0.mlp.grn.weight");
    assert_eq!(grn.shape.len(), 4);
    let fc1 = store
        .get("convnextv2.encoder.stages.0.layers.0.pwconv1.weight")
        .unwrap();
    assert_eq!(
        fc1.shape.len(),
        2,
        "1x1 conv MLP weights are Linear weights"
    );
}
