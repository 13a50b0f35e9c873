//! The `cnx` command's contract: flags, output names, exit codes, one-line errors, and no
//! half-written output on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cnx_cli::io::read_npz;

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(case)
}

/// Runs cnx offline, with an empty Hugging Face cache: tests never touch the network.
fn cnx(args: &[&str]) -> Output {
    cnx_with_cache(args, Path::new("/nonexistent/hf-cache"))
}

fn cnx_with_cache(args: &[&str], hub_cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", hub_cache)
        .env_remove("HF_HOME")
        .output()
        .expect("cnx runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit code 2, a single `cnx: error:` line on stderr containing `needle`, no output file.
fn assert_user_error(out: &Output, needle: &str, output_file: Option<&Path>) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "`{stderr}` lacks `{needle}`");
    assert!(!stderr.contains("panicked"), "{stderr}");
    if let Some(f) = output_file {
        assert!(!f.exists(), "{} was written despite the error", f.display());
        let dir = f.parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

#[test]
fn run_writes_the_contracted_outputs() {
    let case = fixture("custom-nonsquare");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out.npz");
    let input = case.join("pixel_values.npy");
    let args = [
        "run",
        "--model",
        s(&case),
        "--input",
        s(&input),
        "--output",
        s(&out_path),
    ];
    let out = cnx(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arrays = read_npz(&out_path).unwrap();
    let names: Vec<&str> = arrays.keys().map(String::as_str).collect();
    assert_eq!(names, ["last_hidden_state", "logits", "pooler_output"]);
    assert_eq!(arrays["logits"].shape, vec![2, 7]);
    assert_eq!(arrays["pooler_output"].shape, vec![2, 32]);
    assert_eq!(arrays["last_hidden_state"].shape, vec![2, 32, 3, 2]);
    assert!(arrays.values().all(|a| a.dtype == "<f4"));

    // --no-fuse and a chosen pass list give the same contract.
    for extra in [&["--no-fuse"][..], &["--passes", "to_nhwc,fuse_head"][..]] {
        let argv: Vec<&str> = args.iter().copied().chain(extra.iter().copied()).collect();
        let out = cnx(&argv);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read_npz(&out_path).unwrap()["logits"].shape, vec![2, 7]);
    }

    let with_hidden: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--hidden-states", "--threads", "2"])
        .collect();
    assert!(cnx(&with_hidden).status.success());
    let arrays = read_npz(&out_path).unwrap();
    for i in 0..=4 {
        assert!(
            arrays.contains_key(&format!("hidden_states_{i}")),
            "hidden_states_{i}"
        );
    }
    assert_eq!(arrays["hidden_states_0"].shape, vec![2, 8, 24, 18]);
    // The logits equal transformers' (the fixture test states the tolerance; 1e-5 is loose).
    let expected = read_npz(&case.join("expected.npz")).unwrap();
    let diff = arrays["logits"]
        .data
        .iter()
        .zip(&expected["logits"].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn weights_flag_overrides_the_directory() {
    // A config.json path plus --weights pointing at a sharded index.
    let case = fixture("sharded");
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("o.npz");
    let out = cnx(&[
        "run",
        "--model",
        s(&case.join("config.json")),
        "--weights",
        s(&case.join("model.safetensors.index.json")),
        "--input",
        s(&case.join("pixel_values.npy")),
        "--output",
        s(&out_path),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_is_one_line_exit_2_and_no_file() {
    let case = fixture("custom-square");
    let input = case.join("pixel_values.npy");
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out.npz");
    let o = s(&out_path);

    // Missing input file.
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--input",
        "/nonexistent/x.npy",
        "--output",
        o,
    ]);
    assert_user_error(&out, "/nonexistent/x.npy", Some(&out_path));

    // Wrong channel count: the mono fixture's 1-channel input into a 3-channel model.
    let mono = fixture("mono-patch2-3stages").join("pixel_values.npy");
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--input",
        s(&mono),
        "--output",
        o,
    ]);
    assert_user_error(&out, "pixel_values must have shape", Some(&out_path));

    // A truncated checkpoint.
    let bytes = std::fs::read(case.join("model.safetensors")).unwrap();
    let truncated = work.path().join("t.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--weights",
        s(&truncated),
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "truncated", Some(&out_path));

    // A checkpoint for another model.
    let atto = fixture("atto-224-b2").join("model.safetensors");
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--weights",
        s(&atto),
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "checkpoint does not match the model", Some(&out_path));

    // A bad config names the key.
    let bad = work.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"hidden_sizes": [8, 16], "depths": [1, 1, 1, 1]}"#,
    )
    .unwrap();
    let out = cnx(&[
        "run",
        "--model",
        s(&bad),
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "hidden_sizes", Some(&out_path));

    // A directory without config.json, an unknown preset, a preset without weights.
    let out = cnx(&[
        "run",
        "--model",
        s(work.path()),
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "config.json", Some(&out_path));
    let out = cnx(&[
        "run",
        "--model",
        "tiny-1k-22",
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "did you mean tiny-1k-224", Some(&out_path));
    let out = cnx(&[
        "run",
        "--model",
        "atto-1k-224",
        "--input",
        s(&input),
        "--output",
        o,
    ]);
    assert_user_error(&out, "--weights", Some(&out_path));

    // An output directory that does not exist.
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--input",
        s(&input),
        "--output",
        "/nonexistent/dir/o.npz",
    ]);
    assert_user_error(&out, "/nonexistent/dir/o.npz", None);

    // Bad flags are usage errors too.
    let out = cnx(&[
        "run",
        "--model",
        s(&case),
        "--input",
        s(&input),
        "--output",
        o,
        "--threads",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out_path.exists());
}

/// Pixel values holding NaN or infinity: refused (exit 2, their count and the first one's
/// index, no output) on both backends, unless `--allow-non-finite` asks for IEEE propagation.
#[test]
fn run_refuses_non_finite_pixel_values() {
    let case = fixture("custom-nonsquare");
    let tmp = tempfile::tempdir().unwrap();
    let mut x = cnx_cli::io::read_npy(&case.join("pixel_values.npy")).unwrap();
    let (h, w) = (x.shape()[2], x.shape()[3]);
    // Image 1, channel 2, row 5, column 7; and an infinity after it.
    let at = ((3 + 2) * h + 5) * w + 7;
    x.data_mut()[at] = f32::NAN;
    x.data_mut()[at + 1] = f32::NEG_INFINITY;
    let input = tmp.path().join("nan.npy");
    cnx_cli::io::write_npy(&input, &x).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out_path = out_dir.join("out.npz");
    for backend in ["interp", "jit"] {
        let args = [
            "run",
            "--model",
            s(&case),
            "--input",
            s(&input),
            "--output",
            s(&out_path),
        ];
        let out = cnx(&[&args[..], &["--backend", backend]].concat());
        assert_user_error(
            &out,
            "2 value(s) are NaN or infinite, the first at [1, 2, 5, 7]",
            Some(&out_path),
        );
        let out = cnx(&[&args[..], &["--backend", backend, "--allow-non-finite"]].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let logits = &read_npz(&out_path).unwrap()["logits"];
        assert!(
            logits.data[7..].iter().all(|v| v.is_nan()),
            "image 1's logits are NaN"
        );
        assert!(
            logits.data[..7].iter().all(|v| v.is_finite()),
            "image 0 is untouched"
        );
        std::fs::remove_file(&out_path).unwrap();
    }
}

#[test]
fn graph_lists_nodes_and_totals() {
    let out = cnx(&["graph", "facebook/convnextv2-tiny-1k-224", "--no-fuse"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("convnextv2.encoder.stages.2.layers.5.pwconv1"));
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("28635496 parameters") && last.contains("4455531264 MACs"),
        "{last}"
    );

    let out = cnx(&["graph", "atto-1k-224", "--input-size", "97x75", "--dot"]);
    assert!(out.status.success());
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("[N,40,24,18] NCHW"));

    // The optimised graph (the default): fewer nodes, the same MACs.
    let out = cnx(&["graph", "tiny-1k-224"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("Linear(384->96, scale-in, +residual)"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().contains("4455531264 MACs"));

    // The pipeline, and the traffic statistics.
    let out = cnx(&["graph", "tiny-1k-224", "--passes"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(" 1. to_nhwc"), "{text}");
    let out = cnx(&["graph", "tiny-1k-224", "--stats"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("activations written") && text.contains("nodes"),
        "{text}"
    );
    let out = cnx(&["graph", "tiny-1k-224", "--passes", "to_nhwc,nonsense"]);
    assert_user_error(&out, "unknown pass `nonsense`", None);

    let out = cnx(&["graph", "atto-1k-224", "--input-size", "7x"]);
    assert_user_error(&out, "--input-size", None);
}

#[test]
fn compile_prints_each_backends_code() {
    let case = fixture("custom-square");
    let text = |emit: &str| {
        let out = cnx(&["compile", s(&case), "--emit", emit]);
        assert!(
            out.status.success(),
            "{emit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let rust = text("rust");
    assert!(rust.contains("pub struct ConvNextV2"), "{rust}");
    // The JIT's IR: the schedule, one runtime call per step with its operands' arena offsets.
    // (No step kernel is generated: each measured slower than the runtime's, BENCHMARKS.md.)
    let clif = text("clif");
    for needle in ["; the schedule", "call fn0", "stack_addr", "imul"] {
        assert!(clif.contains(needle), "clif lacks `{needle}`");
    }
    // The machine code of the same function, under the same heading.
    let asm = text("asm");
    assert!(
        asm.contains("; the schedule") && asm.contains("ret"),
        "{asm}"
    );
    // The lowered program every backend shares: the weight table, then a line per step with
    // its bindings.
    let program = text("program");
    assert!(program.contains("w0 = "), "{program}");
    let pwconv1 = program
        .lines()
        .find(|l| l.contains("# convnextv2.encoder.stages.0.layers.0.pwconv1 "))
        .unwrap_or_else(|| panic!("no pwconv1 step in {program}"));
    assert!(
        pwconv1.contains("linear(") && pwconv1.contains("bias=w") && pwconv1.contains("sums->s"),
        "{pwconv1}"
    );
    // An input the model cannot take is the user's error, whatever is emitted.
    for emit in ["program", "rust", "clif"] {
        let out = cnx(&[
            "compile",
            "atto-1k-224",
            "--input-size",
            "8",
            "--emit",
            emit,
        ]);
        assert_user_error(&out, "cannot build the graph for a 8x8 input", None);
    }
    let out = cnx(&["compile", s(&case), "--emit", "wasm"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_reports_the_contracted_json_keys() {
    let case = fixture("custom-square");
    let out = cnx(&[
        "bench",
        s(&case),
        "--batch",
        "1,3",
        "--runs",
        "2",
        "--threads",
        "2",
        "--input-size",
        "64",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, batch) in lines.iter().zip([1, 3]) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for key in [
            "model",
            "batch",
            "threads",
            "median_ms",
            "min_ms",
            "images_per_s",
            "gflops",
            "first_inference_ms",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
        assert_eq!(v["batch"], batch);
        assert_eq!(v["threads"], 2);
        assert_eq!(v["precision"], "f32");
        assert!(v["min_ms"].as_f64().unwrap() <= v["median_ms"].as_f64().unwrap());
    }
    let out = cnx(&[
        "bench",
        s(&case),
        "--runs",
        "1",
        "--input-size",
        "64",
        "--precision",
        "int8",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "int8");
    let bf16 = ["--precision", "bf16", "--json"];
    let out = cnx(&[
        &["bench", s(&case), "--runs", "1", "--input-size", "64"][..],
        &bf16,
    ]
    .concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "bf16");
    // Random weights for a preset; bad batch sizes are usage errors.
    let out = cnx(&["bench", "atto-1k-224", "--input-size", "32", "--runs", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cnx(&["bench", "atto-1k-224", "--batch", "0"]);
    assert_user_error(&out, "--batch", None);
}

/// A hub id resolves from a Hugging Face cache laid out as `huggingface_hub` writes it
/// (refs/main naming the snapshot); offline and not cached, the error says so.
#[test]
fn hub_ids_resolve_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache
        .path()
        .join("models--facebook--convnextv2-atto-1k-224");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let atto = fixture("atto-224-b2");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(atto.join(f), snapshot.join(f)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("o.npz");
    let input = atto.join("pixel_values.npy");
    let args = [
        "run",
        "--model",
        "facebook/convnextv2-atto-1k-224",
        "--input",
        s(&input),
        "--output",
        s(&out_path),
    ];
    let out = cnx_with_cache(&args, cache.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The short preset name finds the cached checkpoint too.
    let mut short = args;
    short[2] = "atto-1k-224";
    assert!(cnx_with_cache(&short, cache.path()).status.success());
    // HF_HOME/hub is the cache when HF_HUB_CACHE is not set.
    let home = tempfile::tempdir().unwrap();
    std::fs::rename(cache.path(), home.path().join("hub")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not cached and offline: a clear error naming the cache, exit 2.
    let out = cnx(&args);
    assert_user_error(
        &out,
        "not in the Hugging Face cache (/nonexistent/hf-cache)",
        None,
    );
    let out = cnx(&[
        "run",
        "--model",
        "someone/unknown-model",
        "--input",
        s(&input),
        "--output",
        s(&out_path),
    ]);
    assert_user_error(&out, "HF_HUB_OFFLINE", None);
}

fn images() -> PathBuf {
    fixture("images")
}

fn expected_top(name: &str) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(images().join("expected/classify.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[name]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn classify_a_directory_of_mixed_files() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("more")).unwrap();
    for (src, dst) in [
        ("chelsea.png", "a_chelsea.png"),
        ("truncated.jpg", "b_truncated.jpg"),
        ("coffee.bmp", "c_coffee.bmp"),
        ("not_an_image.jpg", "d_text.jpg"),
        ("astronaut.webp", "more/e_astronaut.webp"),
    ] {
        std::fs::copy(images().join(src), photos.join(dst)).unwrap();
    }
    std::fs::write(photos.join("notes.txt"), "skipped: not an image extension").unwrap();
    let model = fixture("atto-224-b2");
    let out = cnx(&[
        "classify",
        "--model",
        s(&model),
        s(&photos),
        "--json",
        "--batch",
        "2",
    ]);
    // Two files failed: exit 2, but every image was reported, in order.
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<String> = lines
        .iter()
        .map(|v| {
            let p = v["path"].as_str().unwrap();
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "a_chelsea.png",
            "b_truncated.jpg",
            "c_coffee.bmp",
            "d_text.jpg",
            "e_astronaut.webp"
        ]
    );
    for (v, expected) in [
        (&lines[0], "chelsea.png"),
        (&lines[2], "coffee.bmp"),
        (&lines[4], "astronaut.webp"),
    ] {
        let top = v["top"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        for (p, (index, prob)) in top.iter().zip(expected_top(expected)) {
            assert_eq!(p["index"].as_u64().unwrap(), index, "{expected}");
            assert!((p["probability"].as_f64().unwrap() - prob).abs() < 1e-6);
            assert!(p["label"].as_str().unwrap().len() > 1);
        }
        assert!(v.get("error").is_none());
    }
    for v in [&lines[1], &lines[3]] {
        assert!(v["error"].as_str().unwrap().len() > 3, "{v}");
        assert!(v.get("top").is_none());
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 image(s) could not be classified"));

    // Text output, --top 2; a single good image exits 0.
    let out = cnx(&[
        "classify",
        "--model",
        s(&model),
        s(&images().join("chelsea.png")),
        "--top",
        "2",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("punching bag"), "{text}");
    // Nothing to classify, and a model without a classifier, are usage errors.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_user_error(
        &cnx(&["classify", "--model", s(&model), s(&empty)]),
        "no images",
        None,
    );
    let headless = fixture("no-classifier");
    let out = cnx(&[
        "classify",
        "--model",
        s(&headless),
        s(&images().join("chelsea.png")),
    ]);
    assert_user_error(&out, "no classifier", None);
}

#[test]
fn preprocess_writes_what_run_takes() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("pv.npy");
    let model = fixture("atto-224-b2");
    let out = cnx(&[
        "preprocess",
        "--model",
        s(&model),
        s(&images().join("chelsea.png")),
        "--output",
        s(&npy),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = std::fs::read(&npy).unwrap();
    let theirs =
        cnx_cli::io::read_npy(&images().join("expected/chelsea_png_224_pixel_values.npy")).unwrap();
    assert_eq!(cnx_cli::io::read_npy(&npy).unwrap(), theirs);
    assert!(ours.len() > 600_000);
    let npz = dir.path().join("out.npz");
    let out = cnx(&[
        "run",
        "--model",
        s(&model),
        "--input",
        s(&npy),
        "--output",
        s(&npz),
    ]);
    assert!(out.status.success());
    let bad = cnx(&[
        "preprocess",
        "--model",
        s(&model),
        s(&images().join("empty.png")),
        "--output",
        s(&npy),
    ]);
    assert_user_error(&bad, "empty.png", None);
}

/// Several images (a directory walked in path order, then a file): one row each, equal to
/// the image preprocessed alone; one bad image and nothing is written.
#[test]
fn preprocess_stacks_several_images() {
    let dir = tempfile::tempdir().unwrap();
    let npy = dir.path().join("pv.npy");
    let digits = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/convnextv2-digits");
    let sevens = digits.join("held-out/7");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&sevens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let extra = digits.join("held-out/0/0078.png");
    let args = |inputs: &[&Path], out: &Path| {
        let mut a = vec!["preprocess", "--model", s(&digits)];
        a.extend(inputs.iter().map(|p| s(p)));
        a.extend(["--output", s(out)]);
        cnx(&a)
    };
    let out = args(&[&sevens, &extra], &npy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = cnx_cli::io::read_npy(&npy).unwrap();
    assert_eq!(all.shape(), [files.len() + 1, 3, 32, 32]);
    let one = dir.path().join("one.npy");
    for (i, file) in files.iter().chain([&extra]).enumerate() {
        assert!(args(&[file], &one).status.success());
        let row = cnx_cli::io::read_npy(&one).unwrap();
        assert_eq!(
            row.data(),
            &all.data()[i * 3072..(i + 1) * 3072],
            "{}",
            file.display()
        );
    }
    let out_dir = tempfile::tempdir().unwrap();
    let refused = out_dir.path().join("pv.npy");
    let bad = args(&[&sevens, &images().join("truncated.png")], &refused);
    assert_user_error(&bad, "truncated.png", Some(&refused));
}

#[test]
fn eval_reports_accuracy_and_cross_entropy() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imagefolder");
    // chelsea's top-1 is class 747; coffee's is 747 too, with 102 second.
    for (class, src) in [("747", "chelsea.png"), ("echidna", "coffee.png")] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        std::fs::copy(images().join(src), root.join(class).join(src)).unwrap();
    }
    let model = fixture("atto-224-b2");
    let out = cnx(&["eval", "--model", s(&model), s(&root), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"], 2);
    assert_eq!(v["top1"].as_f64().unwrap(), 0.5);
    assert_eq!(v["top5"].as_f64().unwrap(), 1.0);
    let p_chelsea = expected_top("chelsea.png")[0].1;
    let p_coffee = expected_top("coffee.png")[1].1;
    let ce = -(p_chelsea.ln() + p_coffee.ln()) / 2.0;
    assert!(
        (v["cross_entropy"].as_f64().unwrap() - ce).abs() < 1e-5,
        "{v}"
    );
    // --predictions: one line per image in path order; a broken image is a line with its
    // error, reported, and the run exits 2 with the file complete.
    std::fs::copy(
        images().join("truncated.png"),
        root.join("747").join("truncated.png"),
    )
    .unwrap();
    let lines = dir.path().join("predictions.jsonl");
    let out = cnx(&[
        "eval",
        "--model",
        s(&model),
        s(&root),
        "--predictions",
        s(&lines),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("747/chelsea.png"));
    assert_eq!(lines[0]["predicted"], lines[0]["label"]);
    assert_eq!(lines[0]["logits"].as_array().unwrap().len(), 1000);
    assert!((lines[0]["probability"].as_f64().unwrap() - p_chelsea).abs() < 1e-5);
    assert!(lines[1]["error"].is_string(), "{}", lines[1]);
    assert_eq!(lines[2]["label"], "echidna, spiny anteater, anteater");
    assert_ne!(lines[2]["predicted"], lines[2]["label"]);
    std::fs::remove_file(root.join("747").join("truncated.png")).unwrap();
    std::fs::create_dir_all(root.join("not-a-class")).unwrap();
    let out = cnx(&["eval", "--model", s(&model), s(&root)]);
    assert_user_error(&out, "not-a-class", None);
}

/// `cnx embed`: each row is bit-equal to `cnx run`'s pooler_output for the same image (the run
/// is tested against transformers), whatever the batch and the shard; --normalize gives unit
/// rows; --jsonl the same numbers; a broken image is reported and skipped, the rest written.
#[test]
fn embed_writes_pooler_output_rows_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("atto-224-b2");
    let names = ["rocket_exif6.jpg", "chelsea.png", "camera_grey.png"];
    let files: Vec<PathBuf> = names.iter().map(|n| images().join(n)).collect();
    let file_args: Vec<&str> = files.iter().map(|f| s(f)).collect();
    let embed = |extra: &[&str], output: &Path| {
        let mut args = vec!["embed", "--model", s(&model), "--backend", "interp"];
        args.extend_from_slice(&file_args);
        args.extend_from_slice(&["--output", s(output)]);
        args.extend_from_slice(extra);
        cnx(&args)
    };
    let all = dir.path().join("emb.npy");
    let out = embed(&["--batch", "2"], &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let emb = cnx_cli::io::read_npy(&all).unwrap();
    assert_eq!(emb.shape(), &[3, 320]);
    let paths = std::fs::read_to_string(dir.path().join("emb.paths.txt")).unwrap();
    assert_eq!(paths.lines().collect::<Vec<_>>(), file_args);
    // Each row against `preprocess` + `run` of that image alone (batch 1).
    for (i, file) in files.iter().enumerate() {
        let pv = dir.path().join(format!("pv{i}.npy"));
        let npz = dir.path().join(format!("out{i}.npz"));
        let args = [
            "preprocess",
            "--model",
            s(&model),
            s(file),
            "--output",
            s(&pv),
        ];
        assert!(cnx(&args).status.success());
        let args = [
            "run",
            "--model",
            s(&model),
            "--input",
            s(&pv),
            "--output",
            s(&npz),
            "--backend",
            "interp",
        ];
        assert!(cnx(&args).status.success());
        let pooled = &read_npz(&npz).unwrap()["pooler_output"];
        let row: Vec<f64> = emb.data()[i * 320..(i + 1) * 320]
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert_eq!(row, pooled.data, "{}", names[i]);
    }
    // Shards 0/2 and 1/2 of the sorted paths concatenate to the sorted whole.
    let mut sorted: Vec<(String, usize)> = file_args
        .iter()
        .enumerate()
        .map(|(i, p)| (p.to_string(), i))
        .collect();
    sorted.sort();
    let mut joined = Vec::new();
    for shard in ["0/2", "1/2"] {
        let part = dir.path().join(format!("shard{}.npy", &shard[..1]));
        assert!(embed(&["--shard", shard], &part).status.success());
        joined.extend_from_slice(cnx_cli::io::read_npy(&part).unwrap().data());
    }
    let want: Vec<f32> = sorted
        .iter()
        .flat_map(|(_, i)| emb.data()[i * 320..(i + 1) * 320].to_vec())
        .collect();
    assert_eq!(joined, want);
    // --normalize: unit rows, parallel to the raw ones; --jsonl: the same numbers.
    let unit = dir.path().join("unit.jsonl");
    assert!(embed(&["--normalize", "--jsonl"], &unit).status.success());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&unit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["path"], file_args[i]);
        let v: Vec<f64> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{norm}");
        let raw = &emb.data()[i * 320..(i + 1) * 320];
        let raw_norm = raw.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
        for (a, &b) in v.iter().zip(raw) {
            assert!((a - b as f64 / raw_norm).abs() < 1e-6);
        }
    }
    // A broken image among good ones: reported, exit 2, the good ones written in order.
    let mixed = dir.path().join("mixed.npy");
    let mut args = vec!["embed", "--model", s(&model), "--backend", "interp"];
    let broken = images().join("truncated.jpg");
    args.extend_from_slice(&[file_args[0], s(&broken), file_args[1]]);
    args.extend_from_slice(&["--output", s(&mixed)]);
    let out = cnx(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated.jpg"));
    let got = cnx_cli::io::read_npy(&mixed).unwrap();
    assert_eq!(got.data(), &emb.data()[..640]);
}

/// `cnx run --backbone`: the npz holds feature_maps_0..k (as transformers returns them; the
/// values are checked against transformers in tests/tests/backbones.rs) and last_hidden_state;
/// a backbone without the flag, or the flag on a classifier, is one clear error.
#[test]
fn run_backbone_writes_feature_maps() {
    let dir = tempfile::tempdir().unwrap();
    let case = fixture("backbones/stages-1-3-nonsquare");
    let input = case.join("pixel_values.npy");
    let out_path = dir.path().join("maps.npz");
    let args = |extra: &[&'static str]| {
        let mut a = vec!["run", "--model", s(&case), "--input", s(&input), "--output"];
        a.push(s(&out_path));
        a.extend_from_slice(extra);
        a.iter().map(|v| v.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| cnx(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(&["--backbone"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let npz = read_npz(&out_path).unwrap();
    let names: Vec<&str> = npz.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["feature_maps_0", "feature_maps_1", "last_hidden_state"]
    );
    assert_eq!(npz["feature_maps_0"].shape, [2, 8, 18, 10]);
    assert_eq!(npz["feature_maps_1"].shape, [2, 24, 4, 2]);
    std::fs::remove_file(&out_path).unwrap();
    assert_user_error(&run(args(&[])), "pass --backbone", Some(&out_path));
    let classifier = fixture("custom-square");
    let out = cnx(&[
        "run",
        "--model",
        s(&classifier),
        "--input",
        s(&classifier.join("pixel_values.npy")),
        "--output",
        s(&out_path),
        "--backbone",
    ]);
    assert_user_error(&out, "not a ConvNextV2Backbone", Some(&out_path));
}
