//! The trained digits model on its held-out set through every in-process backend: cnx's own
//! preprocessing of the PNG files, then the interpreter, the Cranelift JIT and the
//! `convnextv2!` macro's code (pointed at the model's `config.json`). The three give the same
//! logits bit for bit (one lowered program, one set of kernels), and those logits give every
//! image transformers' top-1, transformers' accuracy exactly, and transformers' logits within
//! the fixture tolerance (`cnx_tests::digits`). `cnx eval`, the ahead-of-time object driven
//! from C and `cnx serve` are checked on the same set in `cli/tests/digits.rs`.

use std::path::Path;

use cnx_cli::{classify, ModelSpec};
use cnx_compiler::backend::interp;
use cnx_compiler::ir::{outputs, Precision};
use cnx_compiler::passes::Pipeline;
use cnx_compiler::LoadedModel;
use cnx_jit::{JitModel, JitOptions};
use cnx_runtime::kernels::Isa;
use cnx_runtime::{Tensor, WeightStore};
use cnx_tests::digits::{argmax, Digits};

convnextv2::convnextv2!(
    config = "../models/convnextv2-digits/config.json",
    name = DigitsClassifier
);
convnextv2::convnextv2!(
    config = "../models/convnextv2-digits",
    name = DigitsInt8,
    precision = "int8"
);
convnextv2::convnextv2!(
    config = "../models/convnextv2-digits",
    name = DigitsBf16,
    precision = "bf16"
);

/// Every held-out image preprocessed by cnx, as one batch.
fn held_out_batch(digits: &Digits) -> Tensor {
    let spec = ModelSpec::resolve(digits.model.to_str().unwrap()).unwrap();
    let cfg = classify::preprocess_config(&spec).unwrap();
    let mut data = Vec::new();
    for image in &digits.images {
        let x = classify::pixel_values(&image.path, &cfg).unwrap();
        assert_eq!(x.shape(), [1, 3, 32, 32], "{}", image.name);
        data.extend_from_slice(x.data());
    }
    Tensor::from_vec(&[digits.images.len(), 3, 32, 32], data).unwrap()
}

fn rows(logits: &[f32]) -> Vec<Vec<f32>> {
    logits.chunks(10).map(<[f32]>::to_vec).collect()
}

#[test]
fn every_backend_gives_transformers_predictions_on_the_held_out_digits() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let digits = Digits::load(&repo);
    let x = held_out_batch(&digits);
    let spec = ModelSpec::resolve(digits.model.to_str().unwrap()).unwrap();
    let model = spec.load(None, (32, 32)).unwrap();

    let interpreted = interp::run(&model, &x, &[outputs::LOGITS]).unwrap()[outputs::LOGITS]
        .data()
        .to_vec();
    let accuracy = digits.check_logits("interpreter", &rows(&interpreted));
    assert!(accuracy >= 0.97, "the trained model's accuracy {accuracy}");

    let generated = DigitsClassifier::load(digits.model.join("model.safetensors")).unwrap();
    assert_eq!(DigitsClassifier::LABELS[7], "7");
    let forward = |x: &[f32], batch: usize| generated.forward(x, batch).unwrap();
    assert_backends_match("f32", model, &x, &interpreted, forward);
    let top = generated.classify(&x.data()[..3 * 32 * 32], 1, 1).unwrap();
    assert_eq!(top[0][0].label, digits.images[0].predicted.to_string());
}

/// The JIT (1, 2 and 3 threads) and the `convnextv2!` macro's code (`forward`: the whole batch,
/// and a batch of 3, odd, at an offset) give the interpreter's logits bit for bit.
fn assert_backends_match(
    what: &str,
    model: LoadedModel,
    x: &Tensor,
    interpreted: &[f32],
    forward: impl Fn(&[f32], usize) -> Vec<f32>,
) {
    let options = JitOptions {
        verify: true,
        disassemble: false,
    };
    let jit = JitModel::compile(model, &[outputs::LOGITS], options).unwrap();
    for threads in [1, 2, 3] {
        let got = jit.run(x, threads).unwrap()[outputs::LOGITS]
            .data()
            .to_vec();
        assert_eq!(
            got, interpreted,
            "{what} JIT, {threads} threads: not the interpreter's"
        );
    }
    let got = forward(x.data(), x.shape()[0]);
    assert_eq!(
        got, interpreted,
        "{what} convnextv2! macro: not the interpreter's"
    );
    let per_image = 3 * 32 * 32;
    let got = forward(&x.data()[5 * per_image..8 * per_image], 3);
    assert_eq!(
        got,
        interpreted[50..80],
        "{what} convnextv2! macro, batch 3"
    );
}

/// The int8 accuracy floor: transformers' f32 top-1 less half a point.
const INT8_TOP1_FLOOR_BELOW_F32: f64 = 0.005;
/// The share of images whose int8 top-1 must be their f32 top-1.
const INT8_AGREEMENT_FLOOR: f64 = 0.99;

#[test]
fn int8_keeps_the_accuracy_on_every_instruction_set_and_backends_agree() {
    let generated = |path: &Path| {
        let model = DigitsInt8::load(path).unwrap();
        move |x: &[f32], batch: usize| model.forward(x, batch).unwrap()
    };
    keeps_the_accuracy_and_backends_agree(Precision::Int8, generated);
}

/// The same floors for bf16, on every instruction set's bf16 kernel (AMX, AVX512_BF16, the
/// FMA kernels, portable): bf16's rounding is finer than int8's, so the floors hold with room.
#[test]
fn bf16_keeps_the_accuracy_on_every_instruction_set_and_backends_agree() {
    let generated = |path: &Path| {
        let model = DigitsBf16::load(path).unwrap();
        move |x: &[f32], batch: usize| model.forward(x, batch).unwrap()
    };
    keeps_the_accuracy_and_backends_agree(Precision::Bf16, generated);
}

/// At `precision`, on every instruction set: top-1 at least transformers' f32 top-1 less
/// half a point, at least 99% of images with their f32 top-1, logits changed; then every
/// backend (the interpreter, the JIT, the macro's code from `generated`) gives the same bits.
fn keeps_the_accuracy_and_backends_agree<F>(precision: Precision, generated: impl Fn(&Path) -> F)
where
    F: Fn(&[f32], usize) -> Vec<f32>,
{
    let name = precision.name();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let digits = Digits::load(&repo);
    let x = held_out_batch(&digits);
    let spec = ModelSpec::resolve(digits.model.to_str().unwrap()).unwrap();
    let pipeline = Pipeline::default_pipeline().with_precision(precision);
    let load = |isa: Isa| {
        let store = WeightStore::open(&digits.model.join("model.safetensors")).unwrap();
        LoadedModel::new_for(
            "digits",
            spec.config.clone(),
            store,
            (32, 32),
            &pipeline,
            Some(isa),
        )
        .unwrap()
    };
    for isa in Isa::available() {
        let model = load(isa);
        let logits = interp::run(&model, &x, &[outputs::LOGITS]).unwrap()[outputs::LOGITS]
            .data()
            .to_vec();
        let rows = rows(&logits);
        let correct = digits
            .images
            .iter()
            .zip(&rows)
            .filter(|(image, row)| argmax(row) == image.label)
            .count();
        let same = digits
            .images
            .iter()
            .zip(&rows)
            .filter(|(image, row)| argmax(row) == image.predicted)
            .count();
        let n = digits.images.len() as f64;
        let (top1, agreement) = (correct as f64 / n, same as f64 / n);
        println!(
            "{name} on {}: top-1 {top1:.4} ({correct}/{}), same top-1 as f32 {agreement:.4}",
            isa.name(),
            digits.images.len()
        );
        assert!(
            top1 >= digits.top1 - INT8_TOP1_FLOOR_BELOW_F32,
            "{isa:?}: {name} top-1 {top1} against f32 {}",
            digits.top1
        );
        assert!(agreement >= INT8_AGREEMENT_FLOOR, "{isa:?}: {agreement}");
        // The logits are not the f32 ones (the products did run in low precision) but near them.
        let worst = digits
            .images
            .iter()
            .zip(&rows)
            .flat_map(|(image, row)| {
                row.iter()
                    .zip(&image.logits)
                    .map(|(&a, &b)| (a as f64 - b).abs())
            })
            .fold(0f64, f64::max);
        println!(
            "{name} on {}: max |logit - f32 logit| {worst:.4} of {:.2}",
            isa.name(),
            digits.scale
        );
        assert!(
            worst > digits.tolerance(),
            "{isa:?}: {name} did not change the logits"
        );
    }

    // Every backend on the detected kernels: the interpreter's bits.
    let model = load(Isa::detect());
    let interpreted = interp::run(&model, &x, &[outputs::LOGITS]).unwrap()[outputs::LOGITS]
        .data()
        .to_vec();
    let forward = generated(&digits.model.join("model.safetensors"));
    assert_backends_match(name, model, &x, &interpreted, forward);
}
