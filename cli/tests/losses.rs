//! `cnx run --labels`: transformers' loss for every problem type (fixtures written by
//! `tools/make_loss_fixtures.py`: random weights, labels, transformers' logits and loss).
//!
//! Two checks per case:
//! 1. The loss function alone, on transformers' own float32 logits: equal to transformers'
//!    float32 loss within 1e-6 relative (transformers sums at most a few dozen float32 terms,
//!    ~1e-7 relative rounding; we sum in f64).
//! 2. End to end (`cnx run`): our logits differ from transformers' by some `d = max |dx|`; the
//!    loss then moves by at most its Lipschitz bound in `d` (stated per problem type below),
//!    plus the same 1e-6 relative rounding.

use std::path::{Path, PathBuf};
use std::process::Command;

use cnx_cli::io::{read_npy_array, read_npz};
use cnx_compiler::loss::{loss, Labels, ProblemType};
use cnx_compiler::ConvNextV2Config;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/losses");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    cases
}

fn labels(dir: &Path) -> Labels {
    let a = read_npy_array(&dir.join("labels.npy")).unwrap();
    Labels {
        shape: a.shape,
        values: a.data,
        integer: !a.dtype.contains('f'),
    }
}

#[test]
fn every_problem_type_matches_transformers() {
    let mut seen = Vec::new();
    for dir in cases() {
        let case = dir.file_name().unwrap().to_string_lossy().to_string();
        let config = ConvNextV2Config::from_file(&dir.join("config.json")).unwrap();
        let expected = read_npz(&dir.join("expected.npz")).unwrap();
        let hf_loss = expected["loss"].data[0];
        let hf_logits: Vec<f32> = expected["logits"].data.iter().map(|&v| v as f32).collect();
        let labels = labels(&dir);
        let n = config.num_labels();
        let (ours, problem) = loss(config.problem_type, &hf_logits, n, &labels).unwrap();
        assert!(
            (ours - hf_loss).abs() <= 1e-6 * hf_loss.abs(),
            "{case}: {ours} vs transformers' {hf_loss}"
        );
        seen.push(problem);

        // End to end through the binary.
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.npz");
        let status = Command::new(env!("CARGO_BIN_EXE_cnx"))
            .args(["run", "--model"])
            .arg(&dir)
            .arg("--input")
            .arg(dir.join("pixel_values.npy"))
            .arg("--labels")
            .arg(dir.join("labels.npy"))
            .arg("--output")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let got = read_npz(&out).unwrap();
        let our_logits = &got["logits"].data;
        let d = our_logits
            .iter()
            .zip(&expected["logits"].data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let bound = match problem {
            // Mean cross-entropy: each row's gradient has L1 norm <= 2, averaged over rows.
            ProblemType::SingleLabelClassification => 2.0 * d,
            // Mean BCE with logits: |dL/dx_i| <= 1/N for each of N elements.
            ProblemType::MultiLabelClassification => d,
            // Mean squared error: |(x+e-y)^2 - (x-y)^2| <= 2 |x-y| e + e^2.
            ProblemType::Regression => {
                let gap = our_logits
                    .iter()
                    .zip(&labels.values)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                2.0 * gap * d + d * d
            }
        };
        let our_loss = got["loss"].data[0];
        assert!(
            (our_loss - hf_loss).abs() <= bound + 1e-6 * hf_loss.abs(),
            "{case}: {our_loss} vs {hf_loss} (logits differ by {d:e}, bound {bound:e})"
        );
        assert_eq!(got["loss"].shape, Vec::<usize>::new());
    }
    for p in [
        ProblemType::Regression,
        ProblemType::SingleLabelClassification,
        ProblemType::MultiLabelClassification,
    ] {
        assert!(seen.contains(&p), "no fixture for {p:?}");
    }
}
