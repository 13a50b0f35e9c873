//! The trained digits model (`models/convnextv2-digits`, written by `tools/train_digits.py`)
//! and transformers' results on its held-out ImageFolder tree (`held-out/<digit>/<n>.png`,
//! recorded in `held-out-transformers.json`): the accuracy harness every backend and
//! precision is checked against.
//!
//! Standard library and serde_json only: `cli/tests` includes this file too (by
//! path), so the tests that drive the `cnx` binary read the same truth the same way.
//!
//! Tolerance, as for every fixture (`cnx_tests::tolerance`): transformers' float32 logits sit
//! `gap` = max |f32 - f64| from a float64 copy of the model on the same pixel values (the
//! largest over all 360 images, recorded by the script); a correct float32 implementation
//! differs from them by about `2 gap`, so `3 gap` plus 2 float32 ulps of the logits' largest
//! magnitude is allowed. The preprocessing is not in the gap: cnx's equals transformers' bit for
//! bit on PNG (tests/fixtures/images), so both runs see the same pixel values.

#![allow(dead_code)] // each test that includes it uses a subset

use std::path::{Path, PathBuf};

/// One held-out image and what transformers made of it.
#[derive(Debug, Clone)]
pub struct HeldOutImage {
    /// `<digit>/<n>.png`, relative to the held-out tree.
    pub name: String,
    pub path: PathBuf,
    /// The true digit (its folder).
    pub label: usize,
    /// transformers' float32 top-1.
    pub predicted: usize,
    /// transformers' float32 logits.
    pub logits: Vec<f64>,
    /// The float64 copy's logits.
    pub logits_f64: Vec<f64>,
}

/// The digits model and transformers' results on its held-out set, in path order.
pub struct Digits {
    pub model: PathBuf,
    pub held_out: PathBuf,
    pub images: Vec<HeldOutImage>,
    /// transformers' float32 top-1 accuracy.
    pub top1: f64,
    /// transformers' max |f32 - f64| over every logit.
    pub gap: f64,
    /// max |f64 logit|.
    pub scale: f64,
}

impl Digits {
    /// Reads the model directory under `repo` (the repository root).
    pub fn load(repo: &Path) -> Digits {
        let model = repo.join("models/convnextv2-digits");
        let held_out = model.join("held-out");
        let text = std::fs::read_to_string(model.join("held-out-transformers.json"))
            .expect("held-out-transformers.json readable");
        let truth: serde_json::Value = serde_json::from_str(&text).expect("it is JSON");
        let floats = |v: &serde_json::Value| -> Vec<f64> {
            v.as_array()
                .expect("an array")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .collect()
        };
        let mut images: Vec<HeldOutImage> = truth["predictions"]
            .as_object()
            .expect("predictions by name")
            .iter()
            .map(|(name, p)| HeldOutImage {
                name: name.clone(),
                path: held_out.join(name),
                label: p["label"].as_u64().expect("label") as usize,
                predicted: p["predicted"].as_u64().expect("predicted") as usize,
                logits: floats(&p["logits"]),
                logits_f64: floats(&p["logits_f64"]),
            })
            .collect();
        images.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            images.len() as u64,
            truth["images"].as_u64().unwrap(),
            "one prediction per held-out image"
        );
        Digits {
            model,
            held_out,
            images,
            top1: truth["top1"].as_f64().expect("top1"),
            gap: truth["f32_vs_f64_max_abs"]["logits"].as_f64().expect("gap"),
            scale: truth["output_max_abs"]["logits"].as_f64().expect("scale"),
        }
    }

    /// The allowed max |ours - transformers'| of a float32 logit (see the module comment).
    pub fn tolerance(&self) -> f64 {
        3.0 * self.gap + 2.0 * f32::EPSILON as f64 * self.scale
    }

    /// Checks `logits` (one row of 10 per held-out image, in path order) against transformers':
    /// every image's top-1 equal, the accuracy equal exactly, every logit within
    /// [`Digits::tolerance`]. Returns the accuracy.
    pub fn check_logits(&self, who: &str, logits: &[Vec<f32>]) -> f64 {
        assert_eq!(logits.len(), self.images.len(), "{who}: one row per image");
        let tol = self.tolerance();
        let mut correct = 0;
        let mut worst = 0f64;
        for (image, row) in self.images.iter().zip(logits) {
            assert_eq!(row.len(), 10, "{who}: {}: ten logits", image.name);
            assert_eq!(
                argmax(row),
                image.predicted,
                "{who}: {}: top-1 differs from transformers'",
                image.name
            );
            correct += usize::from(argmax(row) == image.label);
            for (&ours, &theirs) in row.iter().zip(&image.logits) {
                worst = worst.max((ours as f64 - theirs).abs());
            }
        }
        assert!(
            worst <= tol,
            "{who}: logits {worst:.3e} from transformers' (tolerance {tol:.3e})"
        );
        let accuracy = correct as f64 / self.images.len() as f64;
        assert_eq!(
            accuracy, self.top1,
            "{who}: accuracy differs from transformers'"
        );
        accuracy
    }
}

/// The index of the first largest value (torch.argmax's choice).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
