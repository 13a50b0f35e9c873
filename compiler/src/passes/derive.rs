//! Materialising a graph's derived parameters: each recipe computed once by the runtime's
//! [`evaluate`] (in f64, rounded once to f32), spread over the cores.

use std::collections::HashMap;

use cnx_runtime::WeightSource;

use crate::ir::{Graph, Param};

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

pub use cnx_runtime::weights::derive::DeriveError;
use cnx_runtime::weights::derive::{evaluate, DeriveRule, Recipe};

/// IR parameters are recipes: evaluated by the runtime's code, as the macro's tables are.
impl Recipe for Param {
    fn name(&self) -> &str {
        &self.name
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn derivation(&self) -> Option<(DeriveRule, &[Param])> {
        self.derivation
            .as_ref()
            .map(|d| (d.rule, d.inputs.as_slice()))
    }
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
                        .map(|p| Ok((p.name.clone(), evaluate(*p, checkpoint)?)))
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
