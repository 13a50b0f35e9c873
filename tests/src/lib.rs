//! Helpers for the workspace integration tests in `tests/tests/`: locating the committed
//! Hugging Face fixtures (`tests/fixtures/<case>/`) and comparing outputs with a stated
//! tolerance.
//!
//! A fixture holds `config.json`, a checkpoint, `pixel_values.npy`, `expected.npz` (float32
//! outputs of transformers' `ConvNextV2ForImageClassification`, and float64 versions of some as
//! `<name>_f64`) and `meta.json` (how it was made, and transformers' own float32-vs-float64 gap
//! for every output). `tools/make_fixtures.py` writes them.

pub mod digits;
pub mod fuzzing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cnx_cli::io::{read_npz, Array};

/// `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every fixture case directory, sorted.
pub fn fixture_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.join("meta.json").is_file())
        .collect();
    cases.sort();
    cases
}

/// A fixture: its directory, `meta.json` and expected arrays.
pub struct Fixture {
    pub dir: PathBuf,
    pub meta: serde_json::Value,
    pub expected: BTreeMap<String, Array>,
}

impl Fixture {
    pub fn load(dir: &Path) -> Fixture {
        let meta = serde_json::from_str(
            &std::fs::read_to_string(dir.join("meta.json")).expect("meta.json readable"),
        )
        .expect("meta.json is JSON");
        let expected = read_npz(&dir.join("expected.npz")).expect("expected.npz readable");
        Fixture {
            dir: dir.to_path_buf(),
            meta,
            expected,
        }
    }

    pub fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// transformers' own float32-vs-float64 gap for `output`: max |f32 - f64|.
    pub fn hf_gap(&self, output: &str) -> f64 {
        self.meta["f32_vs_f64_max_abs"][output]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: meta.json has no gap for {output}", self.name()))
    }

    /// max |f64| of `output`.
    pub fn scale(&self, output: &str) -> f64 {
        self.meta["output_max_abs"][output]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: meta.json has no scale for {output}", self.name()))
    }
}

/// max |a - b|.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The tolerance for comparing a float32 implementation with transformers' float32 output.
///
/// transformers' float32 result sits `gap` = max |hf32 - hf64| from the float64 truth (recorded
/// per output when the fixture was made). Any correct float32 implementation sits a similar
/// distance from it, in its own direction (other summation orders), so by the triangle
/// inequality the two float32 results differ by about `2 * gap`; we allow `3 * gap`. A floor
/// of 2 float32 ulps of the output's magnitude (2 * 2^-23 * scale) covers outputs that
/// transformers happens to compute almost exactly. A real bug (wrong eps, wrong axis, a missed
/// bias) moves outputs by orders of magnitude more: `small-activations` and `layer-norm-eps`
/// record how far a wrong eps moves the logits.
pub fn tolerance(gap: f64, scale: f64) -> f64 {
    3.0 * gap + 2.0 * f32::EPSILON as f64 * scale
}
