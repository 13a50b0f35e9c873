//! The `convnextv2!` macro, expanded for real: presets (atto, tiny), a custom config.json,
//! fused and unfused, weights loaded from a file, from bytes and compiled in. Each generated
//! model must give the interpreter's logits bit for bit (the same ops, kernels, prepared
//! weights and derivations run in the same order; only the schedule is generated) and
//! transformers' logits within the fixture tolerance (`cnx_tests::tolerance`).

use std::path::Path;

use cnx_cli::io::read_npy;
use cnx_cli::{random, ModelSpec};
use cnx_compiler::backend::interp;
use cnx_compiler::passes::Pipeline;
use cnx_runtime::{Tensor, WeightStore};
use cnx_tests::{fixtures_dir, max_abs_diff, tolerance, Fixture};

convnextv2::convnextv2!(config = "atto-1k-224", name = Atto);
convnextv2::convnextv2!(
    config = "facebook/convnextv2-atto-1k-224",
    name = AttoUnfused,
    fuse = false
);
convnextv2::convnextv2!(config = "tiny-1k-224", name = Tiny96, image_size = 96);
convnextv2::convnextv2!(
    config = "fixtures/custom-square/config.json",
    name = Custom,
    weights = "fixtures/custom-square/model.safetensors"
);
convnextv2::convnextv2!(
    config = "fixtures/custom-square",
    name = CustomUnfused,
    fuse = false
);
convnextv2::convnextv2!(
    config = "fixtures/custom-nonsquare",
    name = NonSquare,
    image_size = (97, 75)
);
convnextv2::convnextv2!(
    config = "fixtures/backbones/stages-1-3-nonsquare",
    name = NonSquareBackbone,
    image_size = (72, 40),
    backbone = true
);

/// The interpreter's logits for the model in `dir` (or `spec`) on `pixel_values`.
fn interpreter_logits(
    spec: ModelSpec,
    weights: &Path,
    pixel_values: &Tensor,
    fuse: bool,
) -> Vec<f32> {
    let shape = pixel_values.shape();
    let pipeline = if fuse {
        Pipeline::default_pipeline()
    } else {
        Pipeline::empty()
    };
    let model = spec
        .load_with(Some(weights), (shape[2], shape[3]), &pipeline)
        .unwrap();
    let out = interp::run(&model, pixel_values, &["logits"]).unwrap();
    out["logits"].data().to_vec()
}

/// Checks generated logits against the interpreter (exactly) and the fixture (tolerance).
fn check_fixture(case: &str, fuse: bool, logits: impl Fn(&Tensor) -> Vec<f32>) {
    let dir = fixtures_dir().join(case);
    let fx = Fixture::load(&dir);
    let pixel_values = read_npy(&dir.join("pixel_values.npy")).unwrap();
    let ours = logits(&pixel_values);
    let spec = ModelSpec::resolve(dir.to_str().unwrap()).unwrap();
    let theirs = interpreter_logits(spec, &dir.join("model.safetensors"), &pixel_values, fuse);
    assert_eq!(
        ours, theirs,
        "{case} (fuse = {fuse}): generated code and interpreter differ"
    );
    let ours: Vec<f64> = ours.iter().map(|&v| v as f64).collect();
    let err = max_abs_diff(&ours, &fx.expected["logits"].data);
    let tol = tolerance(fx.hf_gap("logits"), fx.scale("logits"));
    assert!(
        err <= tol,
        "{case} (fuse = {fuse}): |ours - hf| {err:e} > {tol:e}"
    );
}

#[test]
fn atto_preset_matches_the_interpreter_and_transformers() {
    let weights = fixtures_dir().join("atto-224-b2/model.safetensors");
    let fused = Atto::load(&weights).unwrap();
    check_fixture("atto-224-b2", true, |x| {
        fused.forward(x.data(), x.shape()[0]).unwrap()
    });
    let unfused = AttoUnfused::load(&weights).unwrap().with_threads(3);
    check_fixture("atto-224-b2", false, |x| {
        unfused.forward(x.data(), x.shape()[0]).unwrap()
    });
    const { assert!(Atto::FUSED && !AttoUnfused::FUSED) };
    assert_eq!((Atto::INPUT_HEIGHT, Atto::NUM_LABELS), (224, 1000));
    assert_eq!(Atto::LABELS[0], "tench, Tinca tinca");
}

/// `embed`: transformers' pooler_output, bit-equal to the interpreter's and within the
/// fixture's tolerance of transformers'; each image's row as it is alone (batch-independent).
#[test]
fn embed_gives_pooler_output() {
    let dir = fixtures_dir().join("atto-224-b2");
    let fx = Fixture::load(&dir);
    let weights = dir.join("model.safetensors");
    let atto = Atto::load(&weights).unwrap();
    let x = read_npy(&dir.join("pixel_values.npy")).unwrap();
    let batch = x.shape()[0];
    let ours = atto.embed(x.data(), batch).unwrap();
    assert_eq!(ours.len(), batch * Atto::HIDDEN_SIZE);
    let model = ModelSpec::resolve(dir.to_str().unwrap())
        .unwrap()
        .load_with(Some(&weights), (224, 224), &Pipeline::default_pipeline())
        .unwrap();
    let theirs = interp::run(&model, &x, &["pooler_output"]).unwrap();
    assert_eq!(ours, theirs["pooler_output"].data());
    let wide: Vec<f64> = ours.iter().map(|&v| v as f64).collect();
    let err = max_abs_diff(&wide, &fx.expected["pooler_output"].data);
    let tol = tolerance(fx.hf_gap("pooler_output"), fx.scale("pooler_output"));
    assert!(err <= tol, "|ours - hf| {err:e} > {tol:e}");
    let per_image = x.data().len() / batch;
    let second = atto.embed(&x.data()[per_image..], 1).unwrap();
    assert_eq!(second, ours[Atto::HIDDEN_SIZE..]);
    assert!(atto.embed(x.data(), batch + 1).is_err());
}

/// A `ConvNextV2Backbone` through the macro (`backbone = true`): its feature maps bit-equal
/// to the interpreter's and within the fixture's tolerance of transformers'.
#[test]
fn backbone_feature_maps_match_the_interpreter_and_transformers() {
    let dir = fixtures_dir().join("backbones/stages-1-3-nonsquare");
    let model = NonSquareBackbone::load(&dir).unwrap().with_threads(2);
    let x = read_npy(&dir.join("pixel_values.npy")).unwrap();
    let batch = x.shape()[0];
    let maps = model.feature_maps(x.data(), batch).unwrap();
    assert_eq!(NonSquareBackbone::FEATURE_MAPS, [[8, 18, 10], [24, 4, 2]]);
    let loaded = ModelSpec::resolve(dir.to_str().unwrap())
        .unwrap()
        .load(None, (72, 40))
        .unwrap();
    let names = ["feature_maps_0", "feature_maps_1"];
    let theirs = interp::run(&loaded, &x, &names).unwrap();
    let expected = cnx_cli::io::read_npz(&dir.join("expected.npz")).unwrap();
    for (k, name) in names.iter().enumerate() {
        assert_eq!(maps[k], theirs[*name].data(), "{name}");
        let [c, h, w] = NonSquareBackbone::FEATURE_MAPS[k];
        assert_eq!(maps[k].len(), batch * c * h * w);
        let ours: Vec<f64> = maps[k].iter().map(|&v| v as f64).collect();
        let hf = &expected[*name].data;
        let truth = &expected[format!("{name}_f64").as_str()].data;
        let scale = truth.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let tol = tolerance(max_abs_diff(hf, truth), scale);
        let err = max_abs_diff(&ours, hf);
        assert!(err <= tol, "{name}: {err:e} > {tol:e}");
    }
}

#[test]
fn custom_config_matches_from_file_bytes_and_embedded() {
    let weights = fixtures_dir().join("custom-square/model.safetensors");
    let from_file = Custom::load(&weights).unwrap();
    check_fixture("custom-square", true, |x| {
        from_file.forward(x.data(), x.shape()[0]).unwrap()
    });
    let bytes = std::fs::read(&weights).unwrap();
    let from_bytes = Custom::from_bytes(&bytes).unwrap();
    check_fixture("custom-square", true, |x| {
        from_bytes.forward(x.data(), x.shape()[0]).unwrap()
    });
    let embedded = Custom::embedded().unwrap();
    check_fixture("custom-square", true, |x| {
        embedded.forward(x.data(), x.shape()[0]).unwrap()
    });
    let unfused = CustomUnfused::load(&weights).unwrap();
    check_fixture("custom-square", false, |x| {
        unfused.forward(x.data(), x.shape()[0]).unwrap()
    });
    assert_eq!(Custom::HIDDEN_SIZES, [8, 16, 24, 32]);
    assert_eq!(Custom::DEPTHS, [1, 2, 1, 1]);
}

/// tiny (every stage depth, 3 blocks sharing one function per stage...) with random weights,
/// batch 3 at 96x96, on 1 and 2 threads: bit-equal to the interpreter.
#[test]
fn tiny_with_random_weights_matches_the_interpreter() {
    let spec = ModelSpec::resolve("tiny-1k-224").unwrap();
    let graph = cnx_compiler::build_graph(&spec.config, (96, 96)).unwrap();
    let params = random::random_parameters(&graph, 7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    random::write_safetensors(&path, &params).unwrap();
    let pixel_values = random::random_pixel_values(&graph, 3, 7);
    let theirs = interpreter_logits(spec, &path, &pixel_values, true);
    for threads in [1, 2] {
        let tiny = Tiny96::load(&path).unwrap().with_threads(threads);
        let ours = tiny.forward(pixel_values.data(), 3).unwrap();
        assert_eq!(ours, theirs, "{threads} threads");
        // A second call reuses the workspace and gives the same bits.
        assert_eq!(tiny.forward(pixel_values.data(), 3).unwrap(), theirs);
    }
    // classify: top-k of the logits, best first, probabilities summing below 1.
    let tiny = Tiny96::load(&path).unwrap();
    let top = tiny.classify(pixel_values.data(), 3, 5).unwrap();
    assert_eq!(top.len(), 3);
    for (row, preds) in theirs.chunks(1000).zip(&top) {
        let best = (0..1000)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(preds[0].index, best);
        assert_eq!(preds[0].label, Tiny96::LABELS[best]);
        assert!(preds
            .windows(2)
            .all(|p| p[0].probability >= p[1].probability));
        assert!(preds.iter().map(|p| p.probability).sum::<f32>() <= 1.0 + 1e-6);
    }
}

/// A non-square input size, `image_size = (97, 75)`: bit-equal to the interpreter, within
/// transformers' tolerance on the fixture made at that size.
#[test]
fn non_square_image_size_matches_the_interpreter_and_transformers() {
    let weights = fixtures_dir().join("custom-nonsquare/model.safetensors");
    let model = NonSquare::load(&weights).unwrap();
    assert_eq!((NonSquare::INPUT_HEIGHT, NonSquare::INPUT_WIDTH), (97, 75));
    check_fixture("custom-nonsquare", true, |x| {
        model.forward(x.data(), x.shape()[0]).unwrap()
    });
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let weights = fixtures_dir().join("custom-square/model.safetensors");
    let model = Custom::load(&weights).unwrap();
    let err = model.forward(&[0.0; 10], 1).unwrap_err();
    assert!(err.to_string().contains("pixel_values"), "{err}");
    assert!(model.forward(&[], 0).is_err());
    // A checkpoint of another model: every mismatch named, as the cnx command reports it.
    let atto = fixtures_dir().join("atto-224-b2/model.safetensors");
    let err = Custom::load(&atto)
        .err()
        .expect("atto weights do not fit the custom model");
    let message = err.to_string();
    assert!(
        message.contains("checkpoint does not match the model"),
        "{message}"
    );
    assert!(
        message.contains("convnextv2.embeddings.patch_embeddings.weight"),
        "{message}"
    );
    // A truncated file.
    let bytes = std::fs::read(&weights).unwrap();
    let err = Custom::from_bytes(&bytes[..bytes.len() / 2]).err().unwrap();
    assert!(
        err.to_string().contains("not a valid safetensors file"),
        "{err}"
    );
    assert!(Custom::load(Path::new("/no/such/model.safetensors")).is_err());
    // NaN or infinite pixel values: refused with their count and the first one's index,
    // unless the caller asks for IEEE propagation.
    let (c, h, w) = (
        Custom::INPUT_CHANNELS,
        Custom::INPUT_HEIGHT,
        Custom::INPUT_WIDTH,
    );
    let mut x = vec![0.25f32; c * h * w];
    x[h * w + 2 * w + 3] = f32::NAN;
    let err = model.forward(&x, 1).unwrap_err().to_string();
    assert!(
        err.contains("1 value(s) are NaN or infinite, the first at [0, 1, 2, 3]"),
        "{err}"
    );
    let propagated = Custom::load(&weights)
        .unwrap()
        .with_non_finite(convnextv2::program::NonFinite::Propagate)
        .forward(&x, 1)
        .unwrap();
    assert!(propagated.iter().all(|v| v.is_nan()));
    let _ = WeightStore::from_bytes(&bytes).unwrap();
}
