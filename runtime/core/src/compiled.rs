//! What code compiled ahead of time (by the `convnextv2!` macro) links besides the ops: its
//! weight table, loaded and prepared once, and its workspace, kept between calls.
//!
//! The macro emits the tables (which checkpoint tensors the model needs, every parameter slot
//! with its recipe and preparation, which value lives in which workspace slot) as constants;
//! the code that interprets them lives here, shared with the compiler's own loader.

use std::sync::Mutex;

use crate::kernels::gemm::Isa;
use crate::kernels::reference::Affine;
use crate::kernels::PreparedWeights;
use crate::ops::{self, Conv2d, ConvParams, Linear, LinearParams};
use crate::weights::derive::{evaluate, ParamSpec};
use crate::{pool, Error, Result, WeightSource, WeightStore};

/// How a parameter slot is prepared at load for its kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Prepare {
    /// Used as stored.
    Plain,
    /// Packed into GEMM panels (a linear layer's weight).
    Linear(Linear),
    /// Rearranged for the conv's optimised kernel, when it has one.
    Conv(Conv2d),
}

/// One entry of a compiled model's parameter table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightSlot {
    pub param: ParamSpec,
    pub prepare: Prepare,
}

/// A compiled model's parameters: the validated checkpoint, the derived parameters and the
/// prepared weights, by slot.
pub struct Weights {
    checkpoint: WeightStore,
    slots: &'static [WeightSlot],
    derived: Vec<Option<Vec<f32>>>,
    prepared: Vec<Option<PreparedWeights>>,
}

impl Weights {
    /// Checks `store` against the `(Hugging Face name, shape)` pairs the model needs (every
    /// problem in one error, as the `cnx` command reports it), then derives and prepares every
    /// slot once, over all cores.
    pub fn load(
        mut store: WeightStore,
        checkpoint: &[(&str, &[usize])],
        slots: &'static [WeightSlot],
    ) -> Result<Weights> {
        store.validate(checkpoint.iter().copied())?;
        let derived = pool::install(pool::available(), || {
            pool::parallel_map(slots.len(), &|i| match slots[i].param.derivation {
                Some(_) => evaluate(&slots[i].param, &store).map(Some),
                None => Ok(None),
            })
        })
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
        for s in slots.iter().filter(|s| s.param.derivation.is_none()) {
            // The emitter lists every checkpoint slot in `checkpoint`; a table that does not
            // is refused here rather than trusted.
            if store.get(s.param.name).is_none() {
                return Err(Error::Derive(crate::weights::derive::DeriveError {
                    derived: s.param.name.to_string(),
                    missing: s.param.name.to_string(),
                }));
            }
        }
        // Tensors that only fed derivations are not needed to run.
        store.retain(|name| {
            slots
                .iter()
                .any(|s| s.param.derivation.is_none() && s.param.name == name)
        });
        let mut weights = Weights {
            checkpoint: store,
            slots,
            derived,
            prepared: Vec::new(),
        };
        let isa = Isa::detect();
        let prepared = pool::install(pool::available(), || {
            pool::parallel_map(slots.len(), &|i| match slots[i].prepare {
                Prepare::Plain => None,
                Prepare::Linear(l) => Some(ops::prepare_linear(&l, weights.get(i), isa)),
                Prepare::Conv(c) => ops::prepare_conv(&c, weights.get(i), isa),
            })
        });
        weights.prepared = prepared;
        Ok(weights)
    }

    /// Slot `slot`'s values.
    pub fn get(&self, slot: usize) -> &[f32] {
        match &self.derived[slot] {
            Some(v) => v,
            None => self
                .checkpoint
                .tensor(self.slots[slot].param.name)
                .expect("checkpoint slots are checked present in `load`"),
        }
    }

    /// A LayerNorm's gamma and beta.
    pub fn affine(&self, gamma: usize, beta: usize) -> Affine<'_> {
        Affine {
            gamma: self.get(gamma),
            beta: self.get(beta),
        }
    }

    /// A convolution's parameters (`norm`: the output LayerNorm's gamma and beta slots).
    pub fn conv(&self, weight: usize, bias: usize, norm: Option<(usize, usize)>) -> ConvParams<'_> {
        ConvParams {
            weight: self.get(weight),
            bias: self.get(bias),
            norm: norm.map(|(g, b)| self.affine(g, b)),
            prepared: self.prepared[weight].as_ref(),
        }
    }

    /// A linear layer's parameters.
    pub fn linear(&self, weight: usize, bias: usize) -> LinearParams<'_> {
        LinearParams {
            weight: self.get(weight),
            bias: self.get(bias),
            packed: match &self.prepared[weight] {
                Some(PreparedWeights::Gemm(w)) => Some(w),
                _ => None,
            },
            activation_kernel: None,
        }
    }
}

/// Where one instance of a compiled block reads and writes: its values' workspace slots
/// (operands from outside the block first), its parameters' weight slots and its sums slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots<const V: usize, const P: usize, const S: usize> {
    pub values: [usize; V],
    pub params: [usize; P],
    pub sums: [usize; S],
}

/// Side results: per-sample sums of squares a linear layer accumulates for a GRN, by slot.
#[derive(Debug, Default)]
pub struct Sums(Vec<Vec<f64>>);

impl Sums {
    /// Slot `slot`, sized `len`, to write.
    pub fn write(&mut self, slot: usize, len: usize) -> &mut [f64] {
        if self.0.len() <= slot {
            self.0.resize_with(slot + 1, Vec::new);
        }
        self.0[slot].resize(len, 0.0);
        &mut self.0[slot]
    }

    /// Slot `slot`, as last written.
    pub fn read(&self, slot: usize) -> &[f64] {
        self.0.get(slot).map_or(&[], Vec::as_slice)
    }
}

/// A compiled forward pass's activations: one buffer per slot of the memory plan, sized for
/// the batch. Buffers keep their capacity between calls, so a forward pass at a batch size
/// already seen allocates no activation memory.
#[derive(Debug, Default)]
pub struct Workspace {
    values: Vec<Vec<f32>>,
    sums: Sums,
}

impl Workspace {
    /// A workspace of `slots` value slots (empty until first used).
    pub fn new(slots: usize) -> Workspace {
        Workspace {
            values: vec![Vec::new(); slots],
            sums: Sums::default(),
        }
    }

    /// Copies `values` into slot `slot`.
    pub fn set(&mut self, slot: usize, values: &[f32]) {
        let buf = &mut self.values[slot];
        buf.clear();
        buf.extend_from_slice(values);
    }

    /// Slot `slot`'s values.
    pub fn get(&self, slot: usize) -> &[f32] {
        &self.values[slot]
    }

    /// Runs one op: `f` gets the values of slots `inputs`, slot `output` sized to `len`, and
    /// the sums. The output slot must not be one of the inputs (the memory plan never
    /// assigns a value the slot of a live operand).
    pub fn run<const N: usize, R>(
        &mut self,
        inputs: [usize; N],
        output: usize,
        len: usize,
        f: impl FnOnce([&[f32]; N], &mut [f32], &mut Sums) -> R,
    ) -> R {
        debug_assert!(
            !inputs.contains(&output),
            "output slot {output} is an operand"
        );
        // The output buffer is moved out while the operands are borrowed (no copy, no unsafe).
        let mut out = std::mem::take(&mut self.values[output]);
        out.resize(len, 0.0);
        let values = &self.values;
        let r = f(
            inputs.map(|i| values[i].as_slice()),
            &mut out,
            &mut self.sums,
        );
        self.values[output] = out;
        r
    }
}

/// A workspace shared by the calls of one model: reused when free, a fresh one when another
/// thread holds it (calls never wait for each other).
#[derive(Debug, Default)]
pub struct SharedWorkspace {
    slots: usize,
    cached: Mutex<Option<Workspace>>,
}

impl SharedWorkspace {
    pub fn new(slots: usize) -> SharedWorkspace {
        SharedWorkspace {
            slots,
            cached: Mutex::new(None),
        }
    }

    /// Runs `f` with a workspace, returning it to the cache afterwards.
    pub fn with<R>(&self, f: impl FnOnce(&mut Workspace) -> R) -> R {
        let taken = match self.cached.try_lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        let mut ws = taken.unwrap_or_else(|| Workspace::new(self.slots));
        let r = f(&mut ws);
        if let Ok(mut guard) = self.cached.try_lock() {
            *guard = Some(ws);
        }
        r
    }
}

/// One of a classifier's top predictions.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub label: &'static str,
    pub probability: f32,
}

/// The `k` most probable classes of one row of logits: `(index, probability)` (softmax in
/// f64), best first; ties go to the lower index, as `torch.topk` on CPU gives them.
pub fn ranked(row: &[f32], k: usize) -> Vec<(usize, f64)> {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let total: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(k)
        .map(|i| (i, (row[i] as f64 - max).exp() / total))
        .collect()
}

/// The `k` most probable labels of each row of `logits`, best first (see [`ranked`]).
pub fn top_k(logits: &[f32], labels: &'static [&'static str], k: usize) -> Vec<Vec<Prediction>> {
    logits
        .chunks(labels.len().max(1))
        .map(|row| {
            ranked(row, k)
                .into_iter()
                .map(|(index, p)| Prediction {
                    index,
                    label: labels.get(index).copied().unwrap_or(""),
                    probability: p as f32,
                })
                .collect()
        })
        .collect()
}

/// Checks a forward call's input: `batch` images of `chw` values each.
pub fn check_input(pixel_values: &[f32], batch: usize, chw: [usize; 3]) -> Result<()> {
    let per_image: usize = chw.iter().product();
    if batch == 0 || pixel_values.len() != batch * per_image {
        return Err(Error::InputShape {
            what: "pixel_values".into(),
            expected: vec![batch, chw[0], chw[1], chw[2]],
            found: vec![pixel_values.len()],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_keeps_its_buffers() {
        let mut ws = Workspace::new(3);
        ws.set(0, &[1.0, 2.0]);
        ws.run([0], 1, 2, |[x], y, _| {
            y[0] = x[0] + 1.0;
            y[1] = x[1] + 1.0;
        });
        assert_eq!(ws.get(1), &[2.0, 3.0]);
        let ptr = ws.get(1).as_ptr();
        ws.run([0], 1, 2, |_, y, _| y[0] = 7.0);
        assert_eq!(ws.get(1).as_ptr(), ptr, "a second call reuses the buffer");
        assert_eq!(ws.get(1), &[7.0, 3.0]);
    }

    #[test]
    fn top_k_orders_by_probability() {
        static LABELS: [&str; 3] = ["a", "b", "c"];
        let p = top_k(&[0.0, 2.0, 1.0, 5.0, 5.0, 0.0], &LABELS, 2);
        assert_eq!(p[0][0].label, "b");
        assert_eq!(p[0][1].label, "c");
        assert!((p[0].iter().map(|x| x.probability).sum::<f32>() - 0.9).abs() < 0.1);
        // A tie goes to the lower index.
        assert_eq!((p[1][0].index, p[1][1].index), (0, 1));
    }

    #[test]
    fn a_wrong_input_size_is_an_error() {
        assert!(check_input(&[0.0; 11], 1, [3, 2, 2]).is_err());
        assert!(check_input(&[], 0, [3, 2, 2]).is_err());
        assert!(check_input(&[0.0; 24], 2, [3, 2, 2]).is_ok());
    }
}
