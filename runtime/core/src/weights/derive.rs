//! Derived parameters: tensors a compiler pass computes from checkpoint tensors (a LayerNorm's
//! gamma folded into the next layer's weight, ...), each computed once at load, in f64 from
//! exact widenings of its inputs, rounded once to f32.
//!
//! A recipe is a tree: a checkpoint tensor, or a [`DeriveRule`] applied to other recipes. The
//! compiler's IR parameters and the static tables the `convnextv2!` macro emits
//! ([`ParamSpec`]) are both [`Recipe`]s, so both are evaluated by the same code.

use std::borrow::Cow;

use super::WeightSource;

/// How a pass computes a parameter from others, once, at load time (in f64, rounded once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeriveRule {
    /// Inputs `(w, gamma)`: `w'[o, i, ...] = w[o, i, ...] * gamma[i]`.
    ScaleInputChannels,
    /// Inputs `(b, w, beta)`: `b'[o] = b[o] + sum_{i, ...} w[o, i, ...] * beta[i]`.
    AddWeightTimesInput,
}

/// A parameter: a checkpoint tensor (no derivation) or a rule over other parameters.
pub trait Recipe: Sized {
    /// The Hugging Face name, or for a derived parameter a name saying how it was derived.
    fn name(&self) -> &str;
    /// The shape, as Hugging Face gives it.
    fn shape(&self) -> &[usize];
    /// The rule and its inputs, for a derived parameter.
    fn derivation(&self) -> Option<(DeriveRule, &[Self])>;
}

/// A parameter as a weight-table entry: borrowed from a static table (what the `convnextv2!`
/// macro emits) or owned (what the compiler's lowering builds), one type for both.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParamSpec {
    pub name: Cow<'static, str>,
    pub shape: Cow<'static, [usize]>,
    pub derivation: Option<Derivation>,
}

/// How a derived parameter is computed: a rule over its inputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Derivation {
    pub rule: DeriveRule,
    pub inputs: Cow<'static, [ParamSpec]>,
}

impl ParamSpec {
    /// An owned copy of any recipe.
    pub fn of<R: Recipe>(p: &R) -> ParamSpec {
        ParamSpec {
            name: Cow::Owned(p.name().to_string()),
            shape: Cow::Owned(p.shape().to_vec()),
            derivation: p.derivation().map(|(rule, inputs)| Derivation {
                rule,
                inputs: inputs.iter().map(ParamSpec::of).collect(),
            }),
        }
    }
}

impl Recipe for ParamSpec {
    fn name(&self) -> &str {
        &self.name
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn derivation(&self) -> Option<(DeriveRule, &[Self])> {
        self.derivation.as_ref().map(|d| (d.rule, &d.inputs[..]))
    }
}

/// A derived parameter whose inputs are not in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot derive `{derived}`: `{missing}` is not loaded")]
pub struct DeriveError {
    pub derived: String,
    pub missing: String,
}

/// A parameter's value rounded to f32: a checkpoint tensor copied, a derived one computed.
/// Recipes whose inputs all come straight from the checkpoint (all the passes write today)
/// take a direct loop: still f64 arithmetic on exact widenings, one rounding per value, but no
/// f64 intermediate buffer.
pub fn evaluate<R: Recipe>(p: &R, checkpoint: &dyn WeightSource) -> Result<Vec<f32>, DeriveError> {
    let Some((rule, inputs)) = p.derivation() else {
        return Ok(leaf(p, p, checkpoint)?.to_vec());
    };
    let slices: Option<Vec<&[f32]>> = inputs
        .iter()
        .map(|q| {
            q.derivation()
                .is_none()
                .then(|| checkpoint.tensor(q.name()))
                .flatten()
        })
        .collect();
    // Indexing below is proven by the load order: `Weights::load_for` validates the checkpoint
    // against the graph first, so every input's data length equals the product of its recipe
    // shape; recipe shapes come from the compiler's graph (convolution weights of rank 4,
    // every dimension >= 1 because config sizes are positive), so `per_in >= 1` and every index
    // formed is below its input's length.
    match (rule, slices.as_deref()) {
        (DeriveRule::ScaleInputChannels, Some([w, gamma])) => {
            let per_in: usize = inputs[0].shape()[2..].iter().product();
            let mut out = Vec::with_capacity(w.len());
            for row in w.chunks_exact(per_in * gamma.len()) {
                for (taps, &g) in row.chunks_exact(per_in).zip(gamma.iter()) {
                    out.extend(taps.iter().map(|&v| (v as f64 * g as f64) as f32));
                }
            }
            Ok(out)
        }
        (DeriveRule::AddWeightTimesInput, Some([b, w, beta])) => {
            let per_in: usize = inputs[1].shape()[2..].iter().product();
            Ok(w.chunks_exact(per_in * beta.len())
                .zip(b.iter())
                .map(|(row, &bo)| {
                    let mut acc = bo as f64;
                    for (taps, &be) in row.chunks_exact(per_in).zip(beta.iter()) {
                        for &v in taps {
                            acc += v as f64 * be as f64;
                        }
                    }
                    acc as f32
                })
                .collect())
        }
        // Nested recipes: the general evaluation, rounded once at the end.
        _ => Ok(evaluate_exact(p, checkpoint)?
            .iter()
            .map(|&x| x as f32)
            .collect()),
    }
}

/// A checkpoint tensor, or an error naming the derived parameter that needed it.
fn leaf<'a, R: Recipe>(
    q: &R,
    derived: &R,
    checkpoint: &'a dyn WeightSource,
) -> Result<&'a [f32], DeriveError> {
    checkpoint.tensor(q.name()).ok_or_else(|| DeriveError {
        derived: derived.name().to_string(),
        missing: q.name().to_string(),
    })
}

/// A parameter's value in f64, before the one rounding (recipes may nest).
pub fn evaluate_exact<R: Recipe>(
    p: &R,
    checkpoint: &dyn WeightSource,
) -> Result<Vec<f64>, DeriveError> {
    let Some((rule, inputs)) = p.derivation() else {
        return Ok(leaf(p, p, checkpoint)?.iter().map(|&v| v as f64).collect());
    };
    let values: Vec<Vec<f64>> = inputs
        .iter()
        .map(|q| match q.derivation() {
            None => leaf(q, p, checkpoint).map(|v| v.iter().map(|&x| x as f64).collect()),
            Some(_) => evaluate_exact(q, checkpoint),
        })
        .collect::<Result<_, _>>()?;
    let numel: usize = p.shape().iter().product();
    Ok(match rule {
        DeriveRule::ScaleInputChannels => {
            let (w, gamma) = (&values[0], &values[1]);
            let shape = inputs[0].shape();
            let per_in: usize = shape[2..].iter().product();
            (0..numel)
                .map(|idx| w[idx] * gamma[(idx / per_in) % shape[1]])
                .collect()
        }
        DeriveRule::AddWeightTimesInput => {
            let (b, w, beta) = (&values[0], &values[1], &values[2]);
            let shape = inputs[1].shape();
            let per_out: usize = shape[1..].iter().product();
            let per_in: usize = shape[2..].iter().product();
            (0..numel)
                .map(|o| {
                    b[o] + (0..per_out)
                        .map(|j| w[o * per_out + j] * beta[j / per_in])
                        .sum::<f64>()
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // Static tables are written as literals (as the macro emits them): a `const fn` could not
    // build the nested borrowed slices.
    const W: ParamSpec = ParamSpec {
        name: Cow::Borrowed("w"),
        shape: Cow::Borrowed(&[2, 3, 2, 1]),
        derivation: None,
    };
    const G: ParamSpec = ParamSpec {
        name: Cow::Borrowed("g"),
        shape: Cow::Borrowed(&[3]),
        derivation: None,
    };
    const SCALED: ParamSpec = ParamSpec {
        name: Cow::Borrowed("w'"),
        shape: Cow::Borrowed(&[2, 3, 2, 1]),
        derivation: Some(Derivation {
            rule: DeriveRule::ScaleInputChannels,
            inputs: Cow::Borrowed(&[W, G]),
        }),
    };

    fn store() -> HashMap<String, Vec<f32>> {
        let mut store = HashMap::new();
        store.insert("w".into(), (0..12).map(|v| v as f32).collect());
        store.insert("g".into(), vec![1.0, 2.0, 3.0]);
        store.insert("b".into(), vec![0.5, -0.5]);
        store.insert("beta".into(), vec![1.0, 0.0, -1.0]);
        store
    }

    #[test]
    fn rules_compute_their_algebra() {
        let store = store();
        let v = evaluate(&SCALED, &store).unwrap();
        assert_eq!(
            v,
            vec![0., 1., 4., 6., 12., 15., 6., 7., 16., 18., 30., 33.]
        );
        const BIAS: ParamSpec = ParamSpec {
            name: Cow::Borrowed("b'"),
            shape: Cow::Borrowed(&[2]),
            derivation: Some(Derivation {
                rule: DeriveRule::AddWeightTimesInput,
                inputs: Cow::Borrowed(&[
                    ParamSpec {
                        name: Cow::Borrowed("b"),
                        shape: Cow::Borrowed(&[2]),
                        derivation: None,
                    },
                    W,
                    ParamSpec {
                        name: Cow::Borrowed("beta"),
                        shape: Cow::Borrowed(&[3]),
                        derivation: None,
                    },
                ]),
            }),
        };
        let bias = BIAS;
        // b'[0] = 0.5 + (0 + 1) * 1 + (4 + 5) * -1 = -7.5; b'[1] = -0.5 + (6+7) - (10+11) = -8.5
        assert_eq!(evaluate(&bias, &store).unwrap(), vec![-7.5, -8.5]);
        // The direct loops agree with the general evaluation.
        let exact: Vec<f32> = evaluate_exact(&SCALED, &store)
            .unwrap()
            .iter()
            .map(|&x| x as f32)
            .collect();
        assert_eq!(exact, v);
        // Recipes nest: scaling an already derived weight.
        const TWICE: ParamSpec = ParamSpec {
            name: Cow::Borrowed("w''"),
            shape: Cow::Borrowed(&[2, 3, 2, 1]),
            derivation: Some(Derivation {
                rule: DeriveRule::ScaleInputChannels,
                inputs: Cow::Borrowed(&[SCALED, G]),
            }),
        };
        let twice = TWICE;
        assert_eq!(evaluate(&twice, &store).unwrap()[2], 2.0 * 2.0 * 2.0);
    }

    #[test]
    fn a_missing_input_is_named() {
        let err = evaluate(&SCALED, &HashMap::new()).unwrap_err();
        assert_eq!(err.derived, "w'");
        assert_eq!(err.missing, "w");
    }
}
