//! What each fuzz target does with its input, shared by the libFuzzer targets
//! (`tests/fuzz/fuzz_targets/*.rs`, run with `tools/fuzz.sh`) and the corpus replay that a
//! plain `cargo test` runs on stable (`tests/tests/fuzz_corpus.rs`).
//!
//! Every function takes arbitrary bytes and must return: an error is a fine answer, a panic, an
//! abort, a hang or an allocation the limits should have stopped is a finding. Where an input is
//! accepted, the functions also check what must then hold (the footprint computed from a config
//! equals its graph's, the graph verifies before and after the passes, a loaded checkpoint
//! runs), so the fuzzer looks for wrong answers as well as crashes.
//!
//! Limits are tighter than the defaults so that one execution stays in milliseconds; the
//! limit checks themselves are the same code.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use cnx_compiler::passes::Pipeline;
use cnx_compiler::{build_graph, verify, ConvNextV2Config, Footprint, Limits, LoadedModel};
use cnx_runtime::preprocess::{PreprocessConfig, RgbImage};
use cnx_runtime::{Tensor, WeightStore};

/// What a fuzz target runs on its input.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: `tests/fuzz/fuzz_targets/<name>.rs` and the corpus folders
/// `tests/fuzz/corpus/<name>/` and `tests/fuzz/regressions/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("safetensors_sharded", safetensors_sharded),
    ("config", config),
    ("npy", npy),
    ("image", image),
    ("preprocessor", preprocessor),
    ("macro_args", macro_args),
    ("serve_request", serve_request),
];

/// The limits every target runs under: small enough that an accepted input is cheap.
pub fn limits() -> Limits {
    Limits {
        stages: 6,
        stage_depth: 8,
        width: 128,
        channels: 16,
        patch_size: 64,
        labels: 4096,
        input_side: 256,
        parameters: 2_000_000,
        graph_nodes: 400,
        image_pixels: 1 << 20,
        memory_bytes: Some(256 << 20),
    }
}

/// The model checkpoints are loaded into: 2 stages, 3 labels, 32x32 input (5,155 parameters).
pub const SMALL_CONFIG: &str = r#"{"model_type": "convnextv2", "num_stages": 2,
    "hidden_sizes": [8, 16], "depths": [1, 1], "image_size": 32, "num_labels": 3}"#;

fn small_config() -> &'static ConvNextV2Config {
    static CONFIG: OnceLock<ConvNextV2Config> = OnceLock::new();
    CONFIG.get_or_init(|| ConvNextV2Config::from_json(SMALL_CONFIG).expect("a valid config"))
}

/// A checkpoint as `cnx run` reads it: validated against the small model, derived, prepared
/// and run on one image. Whatever passes validation must run.
fn load_and_run(store: WeightStore) {
    let config = small_config().clone();
    let hw = (config.image_size, config.image_size);
    let Ok(model) = LoadedModel::new("fuzz", config, store, hw, &Pipeline::default_pipeline())
    else {
        return;
    };
    // A bare `ConvNextV2Model` checkpoint has no classifier: its logits are the pooled features.
    let bare = model.checkpoint().scheme() == cnx_runtime::NamingScheme::HuggingFaceBare;
    let x = Tensor::from_vec(&[1, 3, hw.0, hw.1], vec![0.5; 3 * hw.0 * hw.1]).expect("shape");
    let out = cnx_compiler::backend::interp::run(&model, &x, &["logits"])
        .expect("a validated checkpoint runs");
    assert_eq!(out["logits"].shape(), &[1, if bare { 16 } else { 3 }]);
}

/// A `model.safetensors` file.
pub fn safetensors(data: &[u8]) {
    if let Ok(store) = WeightStore::from_bytes(data) {
        load_and_run(store);
    }
}

/// Where a sharded input splits: `index.json`, then each shard.
pub const SHARD_SEPARATOR: &[u8] = b"\n--shard--\n";

/// A sharded checkpoint: the index's JSON, then the shards (named
/// `model-0000{i}-of-00002.safetensors`, i = 1, 2), separated by [`SHARD_SEPARATOR`].
pub fn safetensors_sharded(data: &[u8]) {
    let mut parts = split(data, SHARD_SEPARATOR).into_iter();
    let Some(index) = parts.next().and_then(|p| std::str::from_utf8(p).ok()) else {
        return;
    };
    let shards: BTreeMap<String, Vec<u8>> = parts
        .take(2)
        .enumerate()
        .map(|(i, p)| {
            (
                format!("model-0000{}-of-00002.safetensors", i + 1),
                p.to_vec(),
            )
        })
        .collect();
    if let Ok(store) = WeightStore::from_sharded_bytes(index, &shards) {
        load_and_run(store);
    }
}

fn split<'a>(data: &'a [u8], separator: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
        parts.push(&rest[..at]);
        rest = &rest[at + separator.len()..];
    }
    parts.push(rest);
    parts
}

/// A `config.json`: parsed within the limits; an accepted one has exactly the footprint its
/// graph has, and its graph verifies, optimises, verifies again and lowers.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = limits();
    let Ok(config) = ConvNextV2Config::from_json_with(text, &limits) else {
        return;
    };
    let hw = (config.image_size, config.image_size);
    if limits.check_run(&config, 1, hw).is_err() {
        return;
    }
    // An input the patch and downsamples do not fit is a build error, not a panic.
    let Ok(graph) = build_graph(&config, hw) else {
        return;
    };
    let footprint = Footprint::of(&config);
    assert_eq!(footprint.parameters, graph.num_params() as u64);
    assert_eq!(footprint.graph_nodes, graph.node_count() as u64);
    verify::verify(&graph).expect("the built graph verifies");
    let mut optimised = graph.clone();
    Pipeline::default_pipeline()
        .run(&mut optimised)
        .expect("the passes apply");
    verify::verify(&optimised).expect("the optimised graph verifies");
    let program = cnx_compiler::lower::lower_outputs(&optimised, &["logits"]).expect("lowers");
    program.validate().expect("the lowered program is valid");
}

/// A `.npy` file, read as `cnx run` reads `--input`, then checked as pixel values.
pub fn npy(data: &[u8]) {
    let Ok(tensor) = cnx_cli::io::npy_tensor(data, Path::new("fuzz.npy")) else {
        return;
    };
    let shape = tensor.shape().to_vec();
    if let Ok(batch) =
        cnx_runtime::program::check_pixel_values(&shape, tensor.data().len(), [3, 32, 32])
    {
        assert!(batch >= 1 && batch * 3 * 32 * 32 == tensor.data().len());
    }
}

/// An image file, decoded and preprocessed as `cnx classify` does (224, crop 0.875).
pub fn image(data: &[u8]) {
    let limits = limits();
    let Ok(img) = cnx_cli::images::decode_bytes(data, &limits) else {
        return;
    };
    assert!(img.width * img.height <= limits.image_pixels as usize);
    let cfg = PreprocessConfig::for_size(224);
    if let Ok(x) = cnx_cli::classify::preprocess_image(&img, &cfg, &limits) {
        assert_eq!(x.shape(), &[1, 3, 224, 224]);
    }
}

/// A `preprocessor_config.json`, applied to a small image of every aspect the input's length
/// picks.
pub fn preprocessor(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = PreprocessConfig::from_json(text, 224) else {
        return;
    };
    let limits = limits();
    let (w, h) = (1 + data.len() % 61, 1 + data.len() % 37);
    let img = RgbImage::new(w, h, vec![128; w * h * 3]).expect("consistent size");
    if let Ok(x) = cnx_cli::classify::preprocess_image(&img, &cfg, &limits) {
        assert_eq!(x.shape()[..2], [1, 3]);
    }
}

/// The `convnextv2!` macro's arguments (what follows `convnextv2!(`), parsed and resolved as
/// the macro does before it emits (paths resolve against an empty directory).
pub fn macro_args(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lexing is proc-macro2's (the compiler's, in a real macro call); an unlexable input never
    // reaches the macro.
    let Ok(tokens) = text.parse::<proc_macro2::TokenStream>() else {
        return;
    };
    let dir = std::env::temp_dir().join("cnx-fuzz-macro-empty");
    if let Ok(spec) = cnx_compiler::backend::rust::parse_args(tokens, &dir) {
        let (h, w) = spec.input_hw;
        assert!(h >= spec.config.patch_size && w >= spec.config.patch_size);
    }
}

/// The content types `serve_request` picks from its first byte.
pub const SERVE_CONTENT_TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json"),
    Some("multipart/form-data; boundary=XX"),
    Some("image/png"),
];

/// A `cnx serve` request body (`POST /v1/classify` or `/v1/embed`): the first byte picks the
/// content type ([`SERVE_CONTENT_TYPES`]), the rest is the body. An accepted request holds
/// between 1 and 16 images and a positive `top_k`.
pub fn serve_request(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let content_type = SERVE_CONTENT_TYPES[pick as usize % SERVE_CONTENT_TYPES.len()];
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    let parsed = RUNTIME.with(|rt| {
        rt.block_on(cnx_cli::serve::request::parse(
            content_type,
            body.to_vec(),
            16,
        ))
    });
    if let Ok(request) = parsed {
        assert!((1..=16).contains(&request.images.len()));
        assert_ne!(request.top_k, Some(0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_part() {
        assert_eq!(split(b"a--b", b"--"), vec![&b"a"[..], b"b"]);
        assert_eq!(split(b"ab", b"--"), vec![&b"ab"[..]]);
        assert_eq!(split(b"--", b"--"), vec![&b""[..], b""]);
    }
}
