//! Materialising derived parameters: each recipe computed once, in f64, rounded once to f32.

use std::collections::HashMap;

use convnextv2::WeightSource;

use crate::ir::{DeriveRule, Graph, Param};

/// The checkpoint plus the parameters the passes derived from it.
pub struct ModelWeights<'a> {
    pub checkpoint: &'a (dyn WeightSource + Sync),
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
    checkpoint: &'a (dyn WeightSource + Sync),
) -> Result<ModelWeights<'a>, DeriveError> {
    let mut seen = std::collections::HashSet::new();
    let todo: Vec<&Param> = graph
        .params()
        .into_iter()
        .filter(|p| p.derivation.is_some() && seen.insert(p.name.as_str()))
        .collect();
    // Independent recipes: spread over the cores (loading is on the critical path of a first
    // inference; most of the cost is touching the mapped checkpoint).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = todo.len().div_ceil(threads).max(1);
    type Batch = Result<Vec<(String, Vec<f32>)>, DeriveError>;
    let results: Vec<Batch> = std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| Ok((p.name.clone(), eval_f32(p, checkpoint)?)))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("derivation threads do not panic"))
            .collect()
    });
    let mut derived = HashMap::new();
    for r in results {
        derived.extend(r?);
    }
    Ok(ModelWeights {
        checkpoint,
        derived,
    })
}

/// A derived parameter rounded to f32. Recipes whose inputs all come straight from the
/// checkpoint (all that the passes write today) take a direct loop: still f64 arithmetic on
/// exact widenings, one rounding per value, but no f64 intermediate buffer.
fn eval_f32(p: &Param, checkpoint: &dyn WeightSource) -> Result<Vec<f32>, DeriveError> {
    let d = p.derivation.as_ref().expect("called on derived parameters");
    let leaf = |q: &Param| {
        q.derivation
            .is_none()
            .then(|| checkpoint.tensor(&q.name))
            .flatten()
    };
    let slices: Option<Vec<&[f32]>> = d.inputs.iter().map(leaf).collect();
    match (&d.rule, slices.as_deref()) {
        (DeriveRule::ScaleInputChannels, Some([w, gamma])) => {
            let per_in: usize = d.inputs[0].shape[2..].iter().product();
            let mut out = Vec::with_capacity(w.len());
            for row in w.chunks_exact(per_in * gamma.len()) {
                for (taps, &g) in row.chunks_exact(per_in).zip(gamma.iter()) {
                    out.extend(taps.iter().map(|&v| (v as f64 * g as f64) as f32));
                }
            }
            Ok(out)
        }
        (DeriveRule::AddWeightTimesInput, Some([b, w, beta])) => {
            let per_in: usize = d.inputs[1].shape[2..].iter().product();
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
        _ => Ok(eval(p, checkpoint)?.to_f32()),
    }
}

/// A parameter's values: checkpoint data read in place, or a derived result in f64.
enum Values<'a> {
    Checkpoint(&'a [f32]),
    Derived(Vec<f64>),
}

impl Values<'_> {
    fn get(&self, i: usize) -> f64 {
        match self {
            Values::Checkpoint(v) => v[i] as f64,
            Values::Derived(v) => v[i],
        }
    }

    fn to_f32(&self) -> Vec<f32> {
        match self {
            Values::Checkpoint(v) => v.to_vec(),
            // The one rounding of a derived value.
            Values::Derived(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// A parameter's value (derived ones computed in f64 from exact widenings of the inputs).
fn eval<'a>(p: &Param, checkpoint: &'a dyn WeightSource) -> Result<Values<'a>, DeriveError> {
    let Some(d) = &p.derivation else {
        return checkpoint
            .tensor(&p.name)
            .map(Values::Checkpoint)
            .ok_or_else(|| DeriveError {
                derived: p.name.clone(),
                missing: p.name.clone(),
            });
    };
    let inputs: Vec<Values<'a>> = d
        .inputs
        .iter()
        .map(|q| eval(q, checkpoint))
        .collect::<Result<_, _>>()?;
    let numel = p.numel();
    Ok(Values::Derived(match d.rule {
        DeriveRule::ScaleInputChannels => {
            let (w, gamma) = (&inputs[0], &inputs[1]);
            let shape = &d.inputs[0].shape;
            let per_in: usize = shape[2..].iter().product();
            (0..numel)
                .map(|idx| w.get(idx) * gamma.get((idx / per_in) % shape[1]))
                .collect()
        }
        DeriveRule::AddWeightTimesInput => {
            let (b, w, beta) = (&inputs[0], &inputs[1], &inputs[2]);
            let shape = &d.inputs[1].shape;
            let per_out: usize = shape[1..].iter().product();
            let per_in: usize = shape[2..].iter().product();
            (0..numel)
                .map(|o| {
                    b.get(o)
                        + (0..per_out)
                            .map(|j| w.get(o * per_out + j) * beta.get(j / per_in))
                            .sum::<f64>()
                })
                .collect()
        }
    }))
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
        let v = eval(&scaled, &store).unwrap().to_f32();
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
        assert_eq!(eval(&bias, &store).unwrap().to_f32(), vec![-7.5, -8.5]);
        // The direct loops give the same values as the general evaluation.
        assert_eq!(eval_f32(&scaled, &store).unwrap(), v);
        assert_eq!(eval_f32(&bias, &store).unwrap(), vec![-7.5, -8.5]);
        // Recipes nest: scaling an already derived weight.
        let twice = Param::derived(
            "weight",
            "w''",
            vec![2, 3, 2, 1],
            DeriveRule::ScaleInputChannels,
            vec![scaled, Param::checkpoint("weight", "g", vec![3])],
        );
        assert_eq!(eval(&twice, &store).unwrap().get(2), 2.0 * 2.0 * 2.0);
    }
}
