//! Materialising derived parameters: each recipe computed once, in f64, rounded once to f32.

use std::collections::HashMap;

use convnextv2::WeightSource;

use crate::ir::{DeriveRule, Graph, Param};

/// The checkpoint plus the parameters the passes derived from it.
pub struct ModelWeights<'a> {
    pub checkpoint: &'a dyn WeightSource,
    pub derived: HashMap<String, Vec<f32>>,
}

impl WeightSource for ModelWeights<'_> {
    fn tensor(&self, name: &str) -> Option<&[f32]> {
        match self.derived.get(name) {
            Some(v) => Some(v),
            None => self.checkpoint.tensor(name),
        }
    }
}

/// A derived parameter whose inputs are not in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot derive `{derived}`: `{missing}` is not loaded")]
pub struct DeriveError {
    pub derived: String,
    pub missing: String,
}

/// Computes every derived parameter of `graph` from `checkpoint`.
pub fn materialize<'a>(
    graph: &Graph,
    checkpoint: &'a dyn WeightSource,
) -> Result<ModelWeights<'a>, DeriveError> {
    let mut derived = HashMap::new();
    for p in graph.params() {
        if p.derivation.is_some() && !derived.contains_key(&p.name) {
            let values = eval(p, checkpoint)?;
            derived.insert(
                p.name.clone(),
                values.into_iter().map(|v| v as f32).collect(),
            );
        }
    }
    Ok(ModelWeights {
        checkpoint,
        derived,
    })
}

/// A parameter's value in f64 (checkpoint values widened exactly).
fn eval(p: &Param, checkpoint: &dyn WeightSource) -> Result<Vec<f64>, DeriveError> {
    let Some(d) = &p.derivation else {
        return checkpoint
            .tensor(&p.name)
            .map(|t| t.iter().map(|&v| v as f64).collect())
            .ok_or_else(|| DeriveError {
                derived: p.name.clone(),
                missing: p.name.clone(),
            });
    };
    let inputs: Vec<Vec<f64>> = d
        .inputs
        .iter()
        .map(|q| eval(q, checkpoint))
        .collect::<Result<_, _>>()?;
    Ok(match d.rule {
        DeriveRule::ScaleInputChannels => {
            let (w, gamma) = (&inputs[0], &inputs[1]);
            let shape = &d.inputs[0].shape;
            let per_in: usize = shape[2..].iter().product();
            w.iter()
                .enumerate()
                .map(|(idx, &v)| v * gamma[(idx / per_in) % shape[1]])
                .collect()
        }
        DeriveRule::AddWeightTimesInput => {
            let (b, w, beta) = (&inputs[0], &inputs[1], &inputs[2]);
            let shape = &d.inputs[1].shape;
            let per_out: usize = shape[1..].iter().product();
            let per_in: usize = shape[2..].iter().product();
            b.iter()
                .enumerate()
                .map(|(o, &bo)| {
                    bo + w[o * per_out..(o + 1) * per_out]
                        .iter()
                        .enumerate()
                        .map(|(j, &wv)| wv * beta[j / per_in])
                        .sum::<f64>()
                })
                .collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_compute_their_algebra() {
        // W [2 out, 3 in, 2 spatial], gamma [3], b [2], beta [3].
        let w: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut store: HashMap<String, Vec<f32>> = HashMap::new();
        store.insert("w".into(), w.clone());
        store.insert("g".into(), vec![1.0, 2.0, 3.0]);
        store.insert("b".into(), vec![0.5, -0.5]);
        store.insert("beta".into(), vec![1.0, 0.0, -1.0]);
        let wp = Param::checkpoint("weight", "w", vec![2, 3, 2, 1]);
        let scaled = Param::derived(
            "weight",
            "w'",
            vec![2, 3, 2, 1],
            DeriveRule::ScaleInputChannels,
            vec![wp.clone(), Param::checkpoint("weight", "g", vec![3])],
        );
        let v = eval(&scaled, &store).unwrap();
        assert_eq!(
            v,
            vec![0., 1., 4., 6., 12., 15., 6., 7., 16., 18., 30., 33.]
        );
        let bias = Param::derived(
            "bias",
            "b'",
            vec![2],
            DeriveRule::AddWeightTimesInput,
            vec![
                Param::checkpoint("bias", "b", vec![2]),
                wp,
                Param::checkpoint("bias", "beta", vec![3]),
            ],
        );
        // b'[0] = 0.5 + (0 + 1) * 1 + (4 + 5) * -1 = -7.5; b'[1] = -0.5 + (6+7) - (10+11) = -8.5
        assert_eq!(eval(&bias, &store).unwrap(), vec![-7.5, -8.5]);
        // Recipes nest: scaling an already derived weight.
        let twice = Param::derived(
            "weight",
            "w''",
            vec![2, 3, 2, 1],
            DeriveRule::ScaleInputChannels,
            vec![scaled, Param::checkpoint("weight", "g", vec![3])],
        );
        assert_eq!(eval(&twice, &store).unwrap()[2], 2.0 * 2.0 * 2.0);
    }
}
