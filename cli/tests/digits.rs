//! The trained digits model on its held-out ImageFolder tree, through the `cnx` binary: `cnx
//! eval` (the JIT and the interpreter) and an ahead-of-time object driven from the C program
//! of `examples/c`. Every image gets transformers' top-1, the accuracy is transformers' exactly
//! and the logits are within the fixture tolerance of transformers' (`tests/src/digits.rs`);
//! every backend's logits equal the interpreter's bit for bit. (`cnx serve` on the same
//! digits: `tests/serve.rs`; the macro: `tests/tests/digits.rs`.)

#[path = "../../tests/src/digits.rs"]
mod digits;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use digits::Digits;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cnx(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("cnx runs");
    assert!(
        out.status.success(),
        "cnx {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `cnx eval --predictions` on `backend`: the printed scores and each image's logits, in
/// `digits.images` order.
fn eval(digits: &Digits, backend: &str, dir: &Path) -> (serde_json::Value, Vec<Vec<f32>>) {
    eval_at(digits, backend, "f32", dir)
}

/// [`eval`] at `precision`; in int8, the predicted labels are not checked against
/// transformers'.
fn eval_at(
    digits: &Digits,
    backend: &str,
    precision: &str,
    dir: &Path,
) -> (serde_json::Value, Vec<Vec<f32>>) {
    let predictions = dir.join(format!("{backend}-{precision}.jsonl"));
    let out = cnx(&[
        "eval",
        "--model",
        s(&digits.model),
        s(&digits.held_out),
        "--backend",
        backend,
        "--precision",
        precision,
        "--batch",
        "37",
        "--json",
        "--predictions",
        s(&predictions),
    ]);
    let scores: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut by_path: HashMap<PathBuf, serde_json::Value> = HashMap::new();
    for line in std::fs::read_to_string(&predictions).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        by_path.insert(PathBuf::from(v["path"].as_str().unwrap()), v);
    }
    assert_eq!(by_path.len(), digits.images.len(), "one line per image");
    let rows = digits
        .images
        .iter()
        .map(|image| {
            let line = &by_path[&image.path];
            assert_eq!(line["label"], image.label.to_string(), "{}", image.name);
            if precision == "f32" {
                assert_eq!(
                    line["predicted"],
                    image.predicted.to_string(),
                    "{backend}: {}",
                    image.name
                );
            }
            line["logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (scores, rows)
}

#[test]
fn eval_gives_transformers_accuracy_and_predictions() {
    let digits = Digits::load(&repo());
    let dir = tempfile::tempdir().unwrap();
    let (scores, jit) = eval(&digits, "jit", dir.path());
    assert_eq!(scores["images"], digits.images.len());
    assert_eq!(scores["failed"], 0);
    assert_eq!(scores["top1"].as_f64().unwrap(), digits.top1, "{scores}");
    digits.check_logits("cnx eval (jit)", &jit);
    let (scores_interp, interp) = eval(&digits, "interp", dir.path());
    assert_eq!(scores_interp, scores);
    assert_eq!(interp, jit, "the JIT's logits are the interpreter's");
}

/// The static runtime library (see tests/aot.rs: beside cnx, or in deps/ when built only as a
/// dependency; the newer if both).
fn static_library() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_cnx")).parent().unwrap();
    [
        dir.join("libconvnextv2.a"),
        dir.join("deps/libconvnextv2.a"),
    ]
    .into_iter()
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max()
    .expect("libconvnextv2.a is built with cnx")
    .1
}

/// `cnx compile --emit obj` of the digits model at `precision`, the C program of
/// `examples/c` linked against it, run on every held-out image: its logits, one row per image,
/// and the top-1 labels it printed.
fn c_program(digits: &Digits, precision: &str, d: &Path) -> (Vec<Vec<f32>>, Vec<String>) {
    let pixels = d.join("pixels.npy");
    // cnx preprocess walks the tree in path order, the order of `digits.images`.
    cnx(&[
        "preprocess",
        "--model",
        s(&digits.model),
        s(&digits.held_out),
        "--output",
        s(&pixels),
    ]);
    let object = d.join(format!("digits_{precision}.o"));
    cnx(&[
        "compile",
        s(&digits.model),
        "--emit",
        "obj",
        "--precision",
        precision,
        "--output",
        s(&object),
        "--symbol-prefix",
        &format!("digits_{precision}"),
    ]);
    let header = std::fs::read_to_string(d.join(format!("digits_{precision}.h"))).unwrap();
    let define = format!(
        "#define DIGITS_{}_PRECISION \"{precision}\"",
        precision.to_uppercase()
    );
    assert!(header.contains(&define), "{header}");
    let exe = d.join(format!("classify-{precision}"));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-DCNX_MODEL_HEADER=\"digits_{precision}.h\""))
        .arg(format!("-I{}", d.display()))
        .arg(repo().join("examples/c/classify.c"))
        .arg(&object)
        .arg(static_library())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let logits_file = d.join(format!("logits-{precision}.f32"));
    let out = Command::new(&exe)
        .arg(digits.model.join("model.safetensors"))
        .arg(&pixels)
        .args(["--threads", "2", "--top", "1", "--logits", s(&logits_file)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logits: Vec<f32> = std::fs::read(&logits_file)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let rows: Vec<Vec<f32>> = logits.chunks(10).map(<[f32]>::to_vec).collect();
    let printed = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("image "))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect();
    (rows, printed)
}

#[test]
fn c_program_gives_transformers_predictions() {
    let digits = Digits::load(&repo());
    let dir = tempfile::tempdir().unwrap();
    let (rows, printed) = c_program(&digits, "f32", dir.path());
    digits.check_logits("C program", &rows);
    // The C program's printed top-1 for each image is transformers' label.
    let expected: Vec<String> = digits
        .images
        .iter()
        .map(|i| i.predicted.to_string())
        .collect();
    assert_eq!(printed, expected);
    // And they are the interpreter's bit for bit (the JIT's equal the interpreter's above).
    let (_, interp) = eval(&digits, "interp", dir.path());
    assert_eq!(rows, interp, "the object's logits are the interpreter's");
}

/// In int8 too, the object quantises at load and runs the interpreter's program: its logits
/// are `cnx eval --precision int8`'s on the interpreter and on the JIT, bit for bit.
#[test]
fn int8_object_and_eval_agree_with_the_interpreter() {
    low_precision_object_and_eval_agree_with_the_interpreter("int8");
}

/// In bf16 likewise (the object rounds the weights at load, `P_PRECISION` "bf16").
#[test]
fn bf16_object_and_eval_agree_with_the_interpreter() {
    low_precision_object_and_eval_agree_with_the_interpreter("bf16");
}

fn low_precision_object_and_eval_agree_with_the_interpreter(precision: &str) {
    let digits = Digits::load(&repo());
    let dir = tempfile::tempdir().unwrap();
    let (rows, printed) = c_program(&digits, precision, dir.path());
    let (scores, interp) = eval_at(&digits, "interp", precision, dir.path());
    assert_eq!(
        rows, interp,
        "the {precision} object's logits are the interpreter's"
    );
    let (jit_scores, jit) = eval_at(&digits, "jit", precision, dir.path());
    assert_eq!(
        jit, interp,
        "{precision}: the JIT's logits are the interpreter's"
    );
    assert_eq!(jit_scores, scores);
    let top: Vec<String> = rows.iter().map(|r| digits::argmax(r).to_string()).collect();
    assert_eq!(printed, top);
}
