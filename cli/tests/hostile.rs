//! Hostile input through the `cnx` binary: every file of the kept fuzz corpus and the
//! regressions (`tests/fuzz/`), the hand-written bad images, and the sizes of issue 17 must end
//! with exit 0 or with exit 2 and one `cnx: error:` line; never a panic (101), an abort or a
//! signal, and never a half-written output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cnx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", "/nonexistent/hf-cache")
        .env_remove("HF_HOME")
        .output()
        .expect("cnx runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit 0, or exit 2 with exactly one `cnx: error:` line and no output file. Returns whether
/// it failed.
fn assert_clean_exit(out: &Output, what: &str, output_file: Option<&Path>) -> bool {
    assert_exit(out, what, output_file, 1)
}

/// [`assert_clean_exit`] for a batch command: one error line per failed image, then the count.
fn assert_clean_batch_exit(out: &Output, what: &str) -> bool {
    assert_exit(out, what, None, 2)
}

fn assert_exit(out: &Output, what: &str, output_file: Option<&Path>, error_lines: usize) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    match out.status.code() {
        Some(0) => false,
        Some(2) => {
            let errors = stderr
                .lines()
                .filter(|l| l.starts_with("cnx: error:"))
                .count();
            assert_eq!(errors, error_lines, "{what}: {stderr}");
            if let Some(f) = output_file {
                assert!(
                    !f.exists(),
                    "{what}: {} written despite the error",
                    f.display()
                );
            }
            true
        }
        other => panic!("{what}: exit {other:?} (signal or crash): {stderr}"),
    }
}

/// Every file in the regressions of fuzz target `target` and its seeds, and an even sample
/// of the rest of its kept corpus (every input of which `tests/tests/fuzz_corpus.rs` replays
/// in-process): one process per input, so the sample keeps this test to seconds.
fn corpus(target: &str) -> Vec<PathBuf> {
    const SAMPLE: usize = 60;
    let dir = |kind: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            match std::fs::read_dir(repo().join("tests/fuzz").join(kind).join(target)) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_file())
                    .collect(),
                Err(_) => Vec::new(),
            };
        files.sort();
        files
    };
    let (seeds, found): (Vec<PathBuf>, Vec<PathBuf>) = dir("corpus").into_iter().partition(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
    });
    let step = found.len().div_ceil(SAMPLE).max(1);
    let mut files = dir("regressions");
    files.extend(seeds);
    files.extend(found.into_iter().step_by(step));
    assert!(!files.is_empty(), "no corpus for {target}");
    files
}

/// The fuzz targets' small model (its config and checkpoint are corpus seeds) in a directory.
fn small_model(dir: &Path) -> PathBuf {
    let model = dir.join("small");
    std::fs::create_dir_all(&model).unwrap();
    let seeds = repo().join("tests/fuzz/corpus");
    std::fs::copy(seeds.join("config/seed-small"), model.join("config.json")).unwrap();
    std::fs::copy(
        seeds.join("safetensors/seed-small-f32"),
        model.join("model.safetensors"),
    )
    .unwrap();
    model
}

#[test]
fn the_sizes_of_issue_17_are_refused_naming_key_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"hidden_sizes": [1048576, 2097152, 4194304, 8388608]}"#,
            "`hidden_sizes`: entry 0 is 1048576",
            "--limit width=",
        ),
        (
            r#"{"depths": [100000, 1, 1, 1]}"#,
            "`depths`: entry 0 is 100000",
            "--limit stage-depth=",
        ),
        (
            r#"{"image_size": 1000000}"#,
            "`image_size`: the value is 1000000",
            "--limit input-side=",
        ),
    ];
    for (i, (json, figure, flag)) in cases.iter().enumerate() {
        let config = tmp.path().join(format!("c{i}.json"));
        std::fs::write(&config, json).unwrap();
        let out_dir = tmp.path().join(format!("m{i}"));
        for args in [
            vec!["graph", s(&config)],
            vec!["bench", s(&config), "--runs", "1"],
            vec!["random-model", s(&config), "--output", s(&out_dir)],
        ] {
            let out = cnx(&args);
            assert!(assert_clean_exit(&out, json, Some(&out_dir)), "{json}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(figure) && stderr.contains(flag), "{stderr}");
        }
    }
    // Raising a limit lets a deep (but small) model through; the graph then has its 1009 nodes.
    let deep = tmp.path().join("deep.json");
    std::fs::write(
        &deep,
        r#"{"hidden_sizes": [8, 8, 8, 8], "depths": [600, 1, 1, 1], "image_size": 64}"#,
    )
    .unwrap();
    assert!(assert_clean_exit(&cnx(&["graph", s(&deep)]), "deep", None));
    let out = cnx(&["--limit", "stage-depth=1000", "graph", s(&deep)]);
    assert!(!assert_clean_exit(&out, "deep, raised", None));
    // Memory: tiny at batch 100000 needs far more than any machine here has.
    let out = cnx(&["bench", "tiny-1k-224", "--batch", "100000", "--runs", "1"]);
    assert!(assert_clean_exit(&out, "batch", None));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit memory-mb="));
    // A bad --limit is a usage error.
    let out = cnx(&["--limit", "widht=3", "graph", "tiny-1k-224"]);
    assert!(assert_clean_exit(&out, "bad --limit", None));
}

#[test]
fn corpus_configs_through_graph() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, file) in corpus("config").iter().enumerate() {
        let dir = tmp.path().join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(file, dir.join("config.json")).unwrap();
        assert_clean_exit(&cnx(&["graph", s(&dir)]), s(file), None);
    }
}

#[test]
fn corpus_checkpoints_and_inputs_through_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = small_model(tmp.path());
    let pixels = repo().join("tests/fuzz/corpus/npy/seed-pixels-f32");
    let out_path = tmp.path().join("out.npz");
    let run = |weights: &Path, input: &Path| {
        let _ = std::fs::remove_file(&out_path);
        cnx(&[
            "run",
            "--model",
            s(&model),
            "--weights",
            s(weights),
            "--input",
            s(input),
            "--output",
            s(&out_path),
            "--backend",
            "interp",
        ])
    };
    let good = model.join("model.safetensors");
    assert!(!assert_clean_exit(
        &run(&good, &pixels),
        "seed",
        Some(&out_path)
    ));
    for file in corpus("safetensors") {
        assert_clean_exit(&run(&file, &pixels), s(&file), Some(&out_path));
    }
    for file in corpus("npy") {
        assert_clean_exit(&run(&good, &file), s(&file), Some(&out_path));
    }
    // Sharded: the index and its two shards, as the fuzz target splits them.
    let separator = b"\n--shard--\n";
    for (i, file) in corpus("safetensors_sharded").iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let dir = tmp.path().join(format!("sharded{i}"));
        std::fs::create_dir(&dir).unwrap();
        let mut parts = Vec::new();
        let mut rest = &bytes[..];
        while let Some(at) = rest.windows(separator.len()).position(|w| w == separator) {
            parts.push(&rest[..at]);
            rest = &rest[at + separator.len()..];
        }
        parts.push(rest);
        let index = dir.join("model.safetensors.index.json");
        std::fs::write(&index, parts[0]).unwrap();
        for (j, shard) in parts.iter().skip(1).take(2).enumerate() {
            let name = format!("model-0000{}-of-00002.safetensors", j + 1);
            std::fs::write(dir.join(name), shard).unwrap();
        }
        assert_clean_exit(&run(&index, &pixels), s(file), Some(&out_path));
    }
    // Unbounded files: a character device is refused, not read forever.
    for args in [("weights", "/dev/zero"), ("input", "/dev/zero")] {
        let out = if args.0 == "weights" {
            run(Path::new(args.1), &pixels)
        } else {
            run(&good, Path::new(args.1))
        };
        assert!(assert_clean_exit(&out, args.1, Some(&out_path)), "{args:?}");
    }
}

#[test]
fn corpus_images_and_preprocessors_through_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let model = small_model(tmp.path());
    let mut images = corpus("image");
    let bad = repo().join("tests/fixtures/images");
    for name in [
        "empty.png",
        "not_an_image.jpg",
        "truncated.jpg",
        "truncated.png",
    ] {
        images.push(bad.join(name));
    }
    for file in &images {
        assert_clean_batch_exit(&cnx(&["classify", "--model", s(&model), s(file)]), s(file));
    }
    let image = repo().join("tests/fuzz/corpus/image/seed-rgb.png");
    for file in corpus("preprocessor") {
        std::fs::copy(&file, model.join("preprocessor_config.json")).unwrap();
        let out = cnx(&["classify", "--model", s(&model), s(&image)]);
        // A bad preprocessor config fails the command (one line), a bad resize the image (two).
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("could not be classified") {
            assert_clean_batch_exit(&out, s(&file));
        } else {
            assert_clean_exit(&out, s(&file), None);
        }
    }
}
