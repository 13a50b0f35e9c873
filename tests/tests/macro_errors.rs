//! Mistakes in a `convnextv2!` call are compile errors pointing at the offending token, with
//! a message that says what is wrong (snapshots in `tests/ui/*.stderr`; regenerate with
//! `UI_OVERWRITE=1 cargo test -p cnx-tests --test macro_errors` and review the diff).
//!
//! Each case is compiled by rustc (`--emit=metadata`: the macro expands, nothing is generated)
//! against the `convnextv2` library and macro this test build already compiled, in the
//! `deps` folder beside this test's binary. (trybuild did this in a cargo project of its own,
//! which compiled the proc-macro and every dependency once more: two of the test run's
//! minutes; BENCHMARKS.md, "Test times".) rustc's own rendering is compared, as trybuild
//! compared it: the message, the file, line and column, the source line and the caret under
//! the offending token; the closing "aborting due to" line is left out.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The newest file in `dir` named `{prefix}{suffix}` or `{prefix}-*{suffix}` (a build folder
/// may hold older ones; a library that is also a C library has no hash in its name).
fn newest(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            let rest = name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix));
            rest.is_some_and(|r| r.is_empty() || r.starts_with('-'))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no {prefix}{suffix} in {}", dir.display()))
}

/// rustc's diagnostics for `case` (a path relative to `tests/`), as the snapshots hold them.
fn diagnostics(case: &Path, deps: &Path, rlib: &Path, out: &Path) -> (bool, String) {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--emit=metadata",
        ])
        .args(["--error-format", "human", "--color", "never"])
        .arg("--out-dir")
        .arg(out)
        .arg("--extern")
        .arg(format!("convnextv2={}", rlib.display()))
        .arg("-L")
        .arg(format!("dependency={}", deps.display()))
        .arg(case)
        .output()
        .expect("rustc runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let kept = match stderr.find("\nerror: aborting due to") {
        Some(end) => &stderr[..end],
        None => &stderr[..],
    };
    (output.status.success(), kept.trim_end().to_string() + "\n")
}

#[test]
fn macro_mistakes_are_compile_errors() {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let rlib = newest(deps, "libconvnextv2", ".rlib");
    let out = tempfile::tempdir().unwrap();
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&ui)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "the cases in {}", ui.display());
    let overwrite = std::env::var_os("UI_OVERWRITE").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let relative = case.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        let (compiled, got) = diagnostics(relative, deps, &rlib, out.path());
        let snapshot = case.with_extension("stderr");
        if overwrite {
            std::fs::write(&snapshot, &got).unwrap();
        }
        let want = std::fs::read_to_string(&snapshot).unwrap_or_default();
        if compiled {
            failures.push(format!("{}: compiled, but must not", relative.display()));
        } else if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                relative.display()
            ));
        }
        println!(
            "{}: {}",
            relative.display(),
            got.lines().next().unwrap_or("")
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
