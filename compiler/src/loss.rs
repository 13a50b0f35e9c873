//! The loss `ConvNextV2ForImageClassification(pixel_values, labels=labels)` returns, from its
//! logits, as transformers' `ForSequenceClassificationLoss` computes it:
//!
//! - `problem_type` from the config; when unset: one label -> `regression`; more, with integer
//!   labels -> `single_label_classification`; else `multi_label_classification`;
//! - regression: mean squared error (with one label, logits and labels squeezed to `[batch]`);
//! - single label: cross-entropy over `logits.view(-1, num_labels)` and `labels.view(-1)`,
//!   mean over the labels that are not `-100` (ignored, as PyTorch's `ignore_index`);
//! - multi label: binary cross-entropy with logits, mean over every element.
//!
//! Computed in f64 from the f32 logits (transformers computes in the logits' dtype).

/// What the labels mean (`config.json`'s `problem_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    Regression,
    SingleLabelClassification,
    MultiLabelClassification,
}

impl ProblemType {
    /// transformers' names, as `problem_type` spells them.
    pub const NAMES: [(&'static str, ProblemType); 3] = [
        ("regression", ProblemType::Regression),
        (
            "single_label_classification",
            ProblemType::SingleLabelClassification,
        ),
        (
            "multi_label_classification",
            ProblemType::MultiLabelClassification,
        ),
    ];

    pub fn from_hf_name(name: &str) -> Option<ProblemType> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
    }

    pub fn hf_name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(n, _)| *n)
            .expect("every variant is named")
    }
}

/// Labels as read from a file: their shape, values, and whether the dtype is an integer one.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
    pub integer: bool,
}

/// Labels that do not fit the logits or the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("labels: {0}")]
pub struct LossError(pub String);

/// PyTorch's `ignore_index` default, which transformers keeps.
pub const IGNORE_INDEX: f64 = -100.0;

/// The loss of `logits` (`batch x num_labels`, row-major) against `labels`, and the problem
/// type it was computed for.
pub fn loss(
    problem_type: Option<ProblemType>,
    logits: &[f32],
    num_labels: usize,
    labels: &Labels,
) -> Result<(f64, ProblemType), LossError> {
    let err = |m: String| LossError(m);
    if num_labels == 0 || !logits.len().is_multiple_of(num_labels) {
        return Err(err(format!(
            "the model has {num_labels} labels: no loss to compute"
        )));
    }
    let batch = logits.len() / num_labels;
    let problem = problem_type.unwrap_or(if num_labels == 1 {
        ProblemType::Regression
    } else if labels.integer {
        ProblemType::SingleLabelClassification
    } else {
        ProblemType::MultiLabelClassification
    });
    let x = |i: usize| logits[i] as f64;
    let loss = match problem {
        ProblemType::Regression => {
            // `squeeze()` with one label: both sides become `[batch]`; else shapes must agree.
            let same = if num_labels == 1 {
                labels.values.len() == batch
                    && labels.shape.iter().filter(|&&d| d != 1).count() <= 1
            } else {
                labels.shape == [batch, num_labels]
            };
            if !same {
                return Err(err(format!(
                    "regression takes labels of the logits' shape [{batch}, {num_labels}], found {:?}",
                    labels.shape
                )));
            }
            let sum: f64 = labels
                .values
                .iter()
                .enumerate()
                .map(|(i, &y)| (x(i) - y).powi(2))
                .sum();
            sum / logits.len() as f64
        }
        ProblemType::SingleLabelClassification => {
            if !labels.integer || labels.values.len() != batch {
                return Err(err(format!(
                    "single-label classification takes {batch} integer class indices, found {:?} {}",
                    labels.shape,
                    if labels.integer { "integers" } else { "floats" }
                )));
            }
            let (mut sum, mut counted) = (0.0, 0usize);
            for (row, &target) in labels.values.iter().enumerate() {
                if target == IGNORE_INDEX {
                    continue;
                }
                if !(0.0..num_labels as f64).contains(&target) {
                    return Err(err(format!(
                        "class index {target} of image {row} is not below {num_labels} (nor -100, ignored)"
                    )));
                }
                let z = &logits[row * num_labels..(row + 1) * num_labels];
                let max = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let lse = max + z.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
                sum += lse - z[target as usize] as f64;
                counted += 1;
            }
            // Every label ignored: the mean of nothing, NaN, as PyTorch gives.
            sum / counted as f64
        }
        ProblemType::MultiLabelClassification => {
            if labels.shape != [batch, num_labels] {
                return Err(err(format!(
                    "multi-label classification takes labels of shape [{batch}, {num_labels}], found {:?}",
                    labels.shape
                )));
            }
            // max(x, 0) - x y + log(1 + exp(-|x|)): PyTorch's stable form.
            let sum: f64 = labels
                .values
                .iter()
                .enumerate()
                .map(|(i, &y)| {
                    let v = x(i);
                    v.max(0.0) - v * y + (-v.abs()).exp().ln_1p()
                })
                .sum();
            sum / logits.len() as f64
        }
    };
    Ok((loss, problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(shape: &[usize], values: &[f64], integer: bool) -> Labels {
        Labels {
            shape: shape.to_vec(),
            values: values.to_vec(),
            integer,
        }
    }

    #[test]
    fn problem_types_follow_transformers() {
        let logits = [0.5f32, -1.0, 2.0, 0.0];
        // Two labels, integer labels: cross-entropy; by hand for row 0, class 1.
        let (l, p) = loss(None, &logits, 2, &labels(&[2], &[1.0, -100.0], true)).unwrap();
        assert_eq!(p, ProblemType::SingleLabelClassification);
        let lse = (0.5f64.exp() + (-1.0f64).exp()).ln();
        assert!((l - (lse + 1.0)).abs() < 1e-12);
        // Float labels: multi-label BCE.
        let (l, p) = loss(None, &[0.0], 1, &labels(&[1], &[0.25], false)).unwrap();
        assert_eq!(p, ProblemType::Regression);
        assert_eq!(l, 0.0625);
        let (l, p) = loss(None, &[0.0, 0.0], 2, &labels(&[1, 2], &[1.0, 0.0], false)).unwrap();
        assert_eq!(p, ProblemType::MultiLabelClassification);
        assert!((l - 2f64.ln()).abs() < 1e-12);
        // Every label ignored: NaN.
        let all_ignored = labels(&[2], &[-100.0, -100.0], true);
        assert!(loss(None, &logits, 2, &all_ignored).unwrap().0.is_nan());
    }

    #[test]
    fn labels_that_do_not_fit_are_errors() {
        let logits = [0.5f32, -1.0, 2.0, 0.0];
        assert!(loss(None, &logits, 2, &labels(&[2], &[2.0, 0.0], true)).is_err());
        assert!(loss(None, &logits, 2, &labels(&[3], &[1.0, 0.0, 1.0], true)).is_err());
        let multi = Some(ProblemType::MultiLabelClassification);
        assert!(loss(multi, &logits, 2, &labels(&[4], &[0.0; 4], false)).is_err());
        let regression = Some(ProblemType::Regression);
        assert!(loss(regression, &logits, 2, &labels(&[2, 3], &[0.0; 6], false)).is_err());
        assert!(loss(None, &[], 0, &labels(&[0], &[], true)).is_err());
    }
}
