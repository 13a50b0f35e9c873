//! Ahead-of-time objects as a user uses them: `cnx compile ... --emit obj`, the system C
//! compiler building `examples/c/classify.c` against the object and the static runtime library
//! (`libconvnextv2.a`, beside the `cnx` binary), the program run on a fixture's pixel values.
//!
//! Tolerances: the object's schedule calls the runtime's kernels with the weights prepared for
//! this CPU, exactly as the interpreter does in this process, so its logits and pooled features
//! are compared with the interpreter's bit for bit. Against transformers (`expected.npz`), the
//! bound every backend meets (`cnx_tests::tolerance`): 3x transformers' own float32-vs-float64
//! gap for that output, plus 2 float32 ulps of its magnitude.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnx_cli::io::{read_npy, read_npz};
use cnx_cli::ModelSpec;
use cnx_compiler::backend::interp;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(case)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static runtime library built with `cnx`: beside it when the `convnextv2` package was
/// built itself (`cargo build -p convnextv2`), else (built only as a dependency, as by `cargo
/// test --workspace` on a clean checkout) in `deps/`; the newer if both.
fn static_library() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_cnx")).parent().unwrap();
    let found = [
        dir.join("libconvnextv2.a"),
        dir.join("deps/libconvnextv2.a"),
    ]
    .into_iter()
    .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
    .max();
    found
        .unwrap_or_else(|| panic!("no libconvnextv2.a in {} or its deps/", dir.display()))
        .1
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `cnx compile MODEL --emit obj` into `dir`, then `cc` of `source` against it and the static
/// runtime library; returns the program.
fn build(dir: &Path, model: &Path, compile_args: &[&str], prefix: &str, source: &Path) -> PathBuf {
    let object = dir.join(format!("{prefix}.o"));
    let mut args = vec!["compile", s(model), "--emit", "obj", "--output", s(&object)];
    args.extend_from_slice(compile_args);
    run(Command::new(env!("CARGO_BIN_EXE_cnx")).args(&args));
    assert!(dir.join(format!("{prefix}.h")).is_file());
    let exe = dir.join(format!(
        "{prefix}-{}",
        source.file_stem().unwrap().to_str().unwrap()
    ));
    let lib = static_library();
    run(Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-DCNX_MODEL_HEADER=\"{prefix}.h\""))
        .arg(format!("-I{}", dir.display()))
        .arg(source)
        .arg(&object)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    exe
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// The interpreter's logits and pooled features for a fixture.
fn interpreter(case: &Path, hw: (usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let spec = ModelSpec::resolve(s(case)).unwrap();
    let model = spec.load(None, hw).unwrap();
    let x = read_npy(&case.join("pixel_values.npy")).unwrap();
    let out = interp::run(&model, &x, &["logits", "pooler_output"]).unwrap();
    (
        out["logits"].data().to_vec(),
        out["pooler_output"].data().to_vec(),
    )
}

/// max |ours - transformers'| within `cnx_tests::tolerance` for `output`.
fn assert_near_transformers(case: &Path, output: &str, ours: &[f32]) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case.join("meta.json")).unwrap()).unwrap();
    let gap = meta["f32_vs_f64_max_abs"][output].as_f64().unwrap();
    let scale = meta["output_max_abs"][output].as_f64().unwrap();
    let tol = 3.0 * gap + 2.0 * f32::EPSILON as f64 * scale;
    let expected = &read_npz(&case.join("expected.npz")).unwrap()[output];
    assert_eq!(expected.data.len(), ours.len());
    let err = ours
        .iter()
        .zip(&expected.data)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= tol,
        "{output}: {err:.3e} from transformers (tolerance {tol:.3e})"
    );
}

#[test]
fn c_program_matches_the_interpreter_and_transformers() {
    let classify = repo().join("examples/c/classify.c");
    for (case, hw, size) in [
        ("custom-nonsquare", (97, 75), "97x75"),
        ("atto-224-b2", (224, 224), "224"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fx = fixture(case);
        // The default symbol prefix: the model's name as a C identifier.
        let prefix = case.replace('-', "_");
        let exe = build(dir.path(), &fx, &["--image-size", size], &prefix, &classify);
        let (logits, pooled) = (dir.path().join("logits.f32"), dir.path().join("pooled.f32"));
        let out = run(Command::new(&exe)
            .arg(fx.join("model.safetensors"))
            .arg(fx.join("pixel_values.npy"))
            .args([
                "--threads",
                "2",
                "--top",
                "3",
                "--logits",
                s(&logits),
                "--pooled",
                s(&pooled),
            ]));
        let (want_logits, want_pooled) = interpreter(&fx, hw);
        let got_logits = read_f32(&logits);
        assert_eq!(
            got_logits, want_logits,
            "{case}: logits equal the interpreter's"
        );
        assert_eq!(
            read_f32(&pooled),
            want_pooled,
            "{case}: pooled equal the interpreter's"
        );
        assert_near_transformers(&fx, "logits", &got_logits);
        assert_near_transformers(&fx, "pooler_output", &read_f32(&pooled));
        // The printed top label is the config's label of the largest logit.
        let spec = ModelSpec::resolve(s(&fx)).unwrap();
        let labels = spec.config.num_labels();
        let first = &got_logits[..labels];
        let best = (0..labels)
            .max_by(|&a, &b| first[a].total_cmp(&first[b]))
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout.lines().nth(1).unwrap();
        assert!(
            line.ends_with(&format!("  {}", spec.config.id2label[best])),
            "{case}: {stdout}"
        );
    }
}

#[test]
fn unfused_object_runs_the_graph_as_transformers_defines_it() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("custom-nonsquare");
    let classify = repo().join("examples/c/classify.c");
    let args = [
        "--image-size",
        "97x75",
        "--no-fuse",
        "--symbol-prefix",
        "unfused",
    ];
    let exe = build(dir.path(), &fx, &args, "unfused", &classify);
    let logits = dir.path().join("logits.f32");
    run(Command::new(&exe)
        .arg(fx.join("model.safetensors"))
        .arg(fx.join("pixel_values.npy"))
        .args(["--logits", s(&logits)]));
    // More steps than the fused object's, the same answer within the fixture tolerance.
    let listing = |extra: &[&str]| {
        let mut a = vec![
            "compile",
            s(&fx),
            "--emit",
            "program",
            "--image-size",
            "97x75",
        ];
        a.extend_from_slice(extra);
        let out = run(Command::new(env!("CARGO_BIN_EXE_cnx")).args(&a));
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert!(listing(&["--no-fuse"]) > listing(&[]));
    assert_near_transformers(&fx, "logits", &read_f32(&logits));
}

#[test]
fn embedded_weights_make_the_object_the_whole_model() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("custom-nonsquare");
    let classify = repo().join("examples/c/classify.c");
    let exe = build(
        dir.path(),
        &fx,
        &[
            "--image-size",
            "97x75",
            "--embed-weights",
            "--symbol-prefix",
            "whole",
        ],
        "whole",
        &classify,
    );
    let header = std::fs::read_to_string(dir.path().join("whole.h")).unwrap();
    assert!(header.contains("#define WHOLE_WEIGHTS_EMBEDDED 1"));
    assert!(header.contains("int whole_load_embedded(whole_model **out);"));
    let logits = dir.path().join("logits.f32");
    // Run from another directory with the fixture out of reach: the weights are inside.
    run(Command::new(&exe)
        .current_dir(dir.path())
        .arg("--embedded")
        .arg(fx.join("pixel_values.npy"))
        .args(["--logits", s(&logits)]));
    assert_eq!(read_f32(&logits), interpreter(&fx, (97, 75)).0);
}

#[test]
fn bad_use_of_the_c_api_is_an_error_code() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("custom-nonsquare");
    let checks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/abi_checks.c");
    let exe = build(
        dir.path(),
        &fx,
        &["--image-size", "97x75"],
        "checked",
        &checks,
    );
    let wrong = fixture("atto-224-b2").join("model.safetensors");
    let out = Command::new(&exe)
        .arg(fx.join("model.safetensors"))
        .arg(&wrong)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
    // Every mismatch of the wrong checkpoint is in the one message, as `cnx run` reports it.
    let wrong_line = stdout
        .lines()
        .find(|l| l.contains("another model's weights"))
        .unwrap();
    assert!(wrong_line.contains("mis-shaped"), "{wrong_line}");
}

#[test]
fn python_loads_the_object_through_ctypes() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 not found: the ctypes example is not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("custom-nonsquare");
    let object = dir.path().join("py.o");
    run(Command::new(env!("CARGO_BIN_EXE_cnx")).args([
        "compile",
        s(&fx),
        "--emit",
        "obj",
        "--image-size",
        "97x75",
        "--symbol-prefix",
        "py",
        "--output",
        s(&object),
    ]));
    let lib = dir.path().join("libpy.so");
    run(Command::new("cc")
        .arg("-shared")
        .arg("-o")
        .arg(&lib)
        .arg(&object)
        .arg(static_library())
        .args(["-lpthread", "-ldl", "-lm"]));
    let logits = dir.path().join("logits.f32");
    let out = run(Command::new("python3")
        .arg(repo().join("examples/python/classify.py"))
        .arg(&lib)
        .arg("py")
        .arg(fx.join("model.safetensors"))
        .arg(fx.join("pixel_values.npy"))
        .args(["--logits", s(&logits)]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("image 1:"));
    assert_eq!(read_f32(&logits), interpreter(&fx, (97, 75)).0);
}

#[test]
fn compile_obj_refuses_bad_requests_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let object = dir.path().join("x.o");
    // A model directory with a config and no checkpoint.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("custom-square").join("config.json"),
        bare.path().join("config.json"),
    )
    .unwrap();
    let cnx = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cnx"))
            .args(args)
            .output()
            .unwrap()
    };
    for (args, needle) in [
        (vec!["compile", "atto-1k-224", "--emit", "obj"], "--output"),
        (
            vec![
                "compile",
                "atto-1k-224",
                "--emit",
                "obj",
                "--output",
                s(&object),
                "--symbol-prefix",
                "1x",
            ],
            "not a C identifier",
        ),
        (
            vec![
                "compile",
                s(bare.path()),
                "--emit",
                "obj",
                "--output",
                s(&object),
                "--embed-weights",
            ],
            "has no weights",
        ),
        (
            vec![
                "compile",
                "atto-1k-224",
                "--emit",
                "rust",
                "--output",
                s(&object),
            ],
            "--emit obj",
        ),
    ] {
        let out = cnx(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "{args:?} wrote a file"
        );
    }
    // A checkpoint that is not the model's is refused before anything is written.
    let out = cnx(&[
        "compile",
        s(&fixture("custom-square")),
        "--emit",
        "obj",
        "--output",
        s(&object),
        "--embed-weights",
        "--weights",
        s(&fixture("atto-224-b2").join("model.safetensors")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn header_error_codes_are_the_librarys() {
    use convnextv2::capi::Code;
    let library = [
        ("CNX_OK", Code::Ok),
        ("CNX_ERROR_ARGUMENT", Code::Argument),
        ("CNX_ERROR_IO", Code::Io),
        ("CNX_ERROR_WEIGHTS", Code::Weights),
        ("CNX_ERROR_INPUT", Code::Input),
        ("CNX_ERROR_HANDLE", Code::Handle),
        ("CNX_ERROR_OBJECT", Code::Object),
        ("CNX_ERROR_INTERNAL", Code::Internal),
    ];
    let header: Vec<(&str, i32)> = cnx_jit::header::ERROR_CODES
        .iter()
        .map(|&(name, value, _)| (name, value))
        .collect();
    let library: Vec<(&str, i32)> = library.iter().map(|&(n, c)| (n, c as i32)).collect();
    assert_eq!(header, library);
}
