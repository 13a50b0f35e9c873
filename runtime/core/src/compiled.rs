//! What every backend links besides the ops: the weight table, loaded and prepared once
//! ([`Weights`]), and the workspace its activations live in ([`Workspace`]).
//!
//! The compiler's lowering builds the tables (which checkpoint tensors the model needs, every
//! parameter slot with its recipe and preparation, which value lives in which workspace slot);
//! the `convnextv2!` macro emits the same tables as constants. [`Weights::load`] is the one load
//! path of every backend: validate, derive, retain, prepare.

use std::sync::Mutex;

use crate::kernels::reference::Affine;
use crate::kernels::Isa;
use crate::kernels::PreparedWeights;
use crate::ops::{self, ConvParams, LinearParams};
use crate::program::{arena_layout, Program, Step, StepBuffers, SumsAccess, SumsBuffer, Value};

pub use crate::program::{Prepare, WeightSlot};
use crate::weights::derive::evaluate;
use crate::{pool, Error, Result, WeightSource, WeightStore};

/// A model's parameters: the validated checkpoint, the derived parameters and the prepared
/// weights, by slot of its weight table.
pub struct Weights {
    checkpoint: WeightStore,
    /// Each slot's Hugging Face name (the checkpoint tensor it reads, for plain slots).
    names: Vec<String>,
    derived: Vec<Option<Vec<f32>>>,
    prepared: Vec<Option<PreparedWeights>>,
}

impl Weights {
    /// Checks `store` against the `(Hugging Face name, shape)` pairs the model needs (every
    /// problem in one error, as the `cnx` command reports it), then derives and prepares every
    /// slot of `slots` once, over all cores, for the kernels of this CPU ([`Isa::detect`]).
    pub fn load<'a>(
        store: WeightStore,
        checkpoint: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        slots: &[WeightSlot],
    ) -> Result<Weights> {
        Self::load_for(store, checkpoint, slots, Some(Isa::detect()))
    }

    /// [`Weights::load`] with the weights prepared for `isa`'s kernels, or (`None`) for none:
    /// every op then runs its plain reference kernel.
    pub fn load_for<'a>(
        mut store: WeightStore,
        checkpoint: impl IntoIterator<Item = (&'a str, &'a [usize])>,
        slots: &[WeightSlot],
        isa: Option<Isa>,
    ) -> Result<Weights> {
        store.validate(checkpoint)?;
        let derived = pool::install(pool::available(), || {
            pool::parallel_map(slots.len(), &|i| match slots[i].param.derivation {
                Some(_) => evaluate(&slots[i].param, &store).map(Some),
                None => Ok(None),
            })
        })
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()?;
        for s in slots.iter().filter(|s| s.param.derivation.is_none()) {
            // Every checkpoint slot must be in the validated checkpoint; a table that says
            // otherwise is refused here rather than trusted.
            if store.get(&s.param.name).is_none() {
                return Err(Error::WeightTable(s.param.name.to_string()));
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
            names: slots.iter().map(|s| s.param.name.to_string()).collect(),
            derived,
            prepared: Vec::new(),
        };
        let prepared = match isa {
            Some(isa) => pool::install(pool::available(), || {
                pool::parallel_map(slots.len(), &|i| match slots[i].prepare {
                    Prepare::Plain => None,
                    Prepare::Linear(l) => Some(ops::prepare_linear(&l, weights.get(i), isa)),
                    Prepare::Conv(c) => ops::prepare_conv(&c, weights.get(i), isa),
                })
            }),
            None => vec![None; slots.len()],
        };
        weights.prepared = prepared;
        Ok(weights)
    }

    /// Drops the prepared weights: every op then runs its plain reference kernel.
    pub fn drop_prepared(&mut self) {
        self.prepared.iter_mut().for_each(|p| *p = None);
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Slot `slot`'s values.
    pub fn get(&self, slot: usize) -> &[f32] {
        match &self.derived[slot] {
            Some(v) => v,
            None => self
                .checkpoint
                .tensor(&self.names[slot])
                .expect("checkpoint slots are checked present in `load`"),
        }
    }

    /// Slot `slot`'s weight as prepared for its optimised kernel, if it was.
    pub fn prepared(&self, slot: usize) -> Option<&PreparedWeights> {
        self.prepared[slot].as_ref()
    }

    /// The validated checkpoint (only the tensors the slots read directly).
    pub fn checkpoint(&self) -> &WeightStore {
        &self.checkpoint
    }

    /// A parameter by Hugging Face (or derived) name.
    pub fn by_name(&self, name: &str) -> Option<&[f32]> {
        let slot = self.names.iter().position(|n| n == name)?;
        Some(self.get(slot))
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
        }
    }
}

/// Side results: per-sample sums of squares a linear layer accumulates for a GRN, by slot.
#[derive(Debug)]
pub struct Sums<'a> {
    data: &'a mut [f64],
    /// Each slot's start, in f64 per image.
    offsets: &'a [usize],
    batch: usize,
}

impl Sums<'_> {
    /// Slot `slot`, `len` values, to write.
    pub fn write(&mut self, slot: usize, len: usize) -> &mut [f64] {
        &mut self.data[self.offsets[slot] * self.batch..][..len]
    }

    /// Slot `slot`'s first `len` values, as last written.
    pub fn read(&self, slot: usize, len: usize) -> &[f64] {
        &self.data[self.offsets[slot] * self.batch..][..len]
    }
}

/// A forward pass's activations: one arena holding every slot of the memory plan (slot `s`
/// at `offset[s] * batch`, `size[s] * batch` long), and one for the sums of squares. The
/// arenas keep their capacity between calls, so a forward pass at a batch size already seen
/// allocates nothing. The interpreter, the macro's code and the JIT's code all run on it (the
/// JIT's generated code computes the same offsets as immediates).
#[derive(Debug, Default)]
pub struct Workspace {
    /// Each value slot's start and size, in f32 per image.
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    /// f32 per image of all slots.
    per_image: usize,
    sums_offsets: Vec<usize>,
    sums_per_image: usize,
    /// Each slot's current value length (as last written), for reading it back.
    lens: Vec<usize>,
    batch: usize,
    values: Vec<f32>,
    sums: Vec<f64>,
    /// One-image workspaces of the same layout, one per thread of an image-parallel phase
    /// (made on first use, kept: a warm pass allocates nothing).
    lanes: Vec<Mutex<Workspace>>,
    /// The workspace of an image-parallel phase's remainder (batch % threads images, run
    /// op-parallel).
    rest: Option<Box<Workspace>>,
    /// The thread counts whose pool has run an image-parallel pass on these lanes (each pool
    /// has threads of its own, each with its own scratch).
    images_warm: Vec<usize>,
}

impl Program {
    /// A workspace for this program's slots.
    pub fn workspace(&self) -> Workspace {
        Workspace::new(&self.slot_sizes, &self.sums_sizes)
    }
}

impl Workspace {
    /// A workspace for value slots of `slot_sizes` and sums slots of `sums_sizes` (per image);
    /// empty until [`Workspace::for_batch`].
    pub fn new(slot_sizes: &[usize], sums_sizes: &[usize]) -> Workspace {
        let (offsets, per_image) = arena_layout(slot_sizes);
        let (sums_offsets, sums_per_image) = arena_layout(sums_sizes);
        Workspace {
            offsets,
            sizes: slot_sizes.to_vec(),
            per_image,
            sums_offsets,
            sums_per_image,
            lens: vec![0; slot_sizes.len()],
            batch: 0,
            values: Vec::new(),
            sums: Vec::new(),
            lanes: Vec::new(),
            rest: None,
            images_warm: Vec::new(),
        }
    }

    /// An empty workspace of this one's layout.
    fn sibling(&self) -> Workspace {
        Workspace {
            offsets: self.offsets.clone(),
            sizes: self.sizes.clone(),
            per_image: self.per_image,
            sums_offsets: self.sums_offsets.clone(),
            sums_per_image: self.sums_per_image,
            lens: vec![0; self.lens.len()],
            ..Workspace::default()
        }
    }

    /// Runs one image-parallel phase (`live_in` and `live_out` as in [`crate::program::Phase`])
    /// on `threads` threads of the current pool: images `0..batch - batch % threads` each on
    /// one thread, through `run(lane, 1)` on a one-image lane; the rest through `run(rest,
    /// rest_batch)` op-parallel. Live values are copied into the lanes and back. `run` returns
    /// `false` when a step failed; then so does this (the other images may still have run).
    ///
    /// The live values must fit their slots and no two may share one (`Program::validate`
    /// checks it; checked here again, as the copies' safety rests on it).
    pub fn run_images(
        &mut self,
        live_in: &[Value],
        live_out: &[Value],
        threads: usize,
        run: &(dyn Fn(&mut Workspace, usize) -> bool + Sync),
    ) -> bool {
        let batch = self.batch;
        self.assert_live_values_apart(live_in, live_out);
        let fresh = self.ready_lanes(threads);
        let whole = batch - batch % threads;
        let failed = std::sync::atomic::AtomicBool::new(false);
        {
            let arena = ArenaPtr(self.values.as_mut_ptr());
            let (offsets, lanes) = (&self.offsets, &self.lanes);
            // Value `v` of image `i`: `v.len` f32 at `offsets[v.slot] * batch + i * v.len`.
            let at = |v: &Value, i: usize| offsets[v.slot] * batch + i * v.len;
            let dispatch = if fresh {
                pool::parallel_for_own
            } else {
                pool::parallel_for
            };
            dispatch(whole, &|i| {
                // At most `threads` tasks run at once and each holds one lane: one is free.
                let mut lane = lanes
                    .iter()
                    .find_map(|l| l.try_lock().ok())
                    .expect("a lane per thread");
                let arena = &arena;
                for v in live_in {
                    // SAFETY: image `i`'s region of a live-in value lies in the arena (the
                    // value fits its slot, sized for `batch` images); during the phase no
                    // task writes a live-in slot (live-out slots are other slots), so shared
                    // reads are sound.
                    let x = unsafe { std::slice::from_raw_parts(arena.0.add(at(v, i)), v.len) };
                    lane.set(v.slot, x);
                }
                if !run(&mut lane, 1) {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                for v in live_out {
                    // SAFETY: image `i`'s region of a live-out value lies in the arena and is
                    // written by this task only (tasks have distinct images; no other live
                    // value shares the slot), and read by no task during the phase.
                    let y = unsafe { std::slice::from_raw_parts_mut(arena.0.add(at(v, i)), v.len) };
                    y.copy_from_slice(lane.written(*v));
                }
            });
        }
        if failed.into_inner() {
            return false;
        }
        if whole < batch && !self.run_rest(whole, live_in, live_out, run) {
            return false;
        }
        for v in live_out {
            self.lens[v.slot] = batch * v.len;
        }
        true
    }

    /// Panics unless every live value fits its slot and no two share one: the copies into
    /// the lanes and back rest on it.
    fn assert_live_values_apart(&self, live_in: &[Value], live_out: &[Value]) {
        // Pairwise, not sorted: a warm pass allocates nothing. A handful of values per phase.
        let live = || live_in.iter().chain(live_out);
        assert!(
            live().all(|v| self.sizes.get(v.slot).is_some_and(|&size| v.len <= size)),
            "a live value does not fit its slot"
        );
        assert!(
            live()
                .enumerate()
                .all(|(i, a)| live().skip(i + 1).all(|b| a.slot != b.slot)),
            "two live values share a slot"
        );
    }

    /// A one-image lane for each of `threads` threads; whether this is the first
    /// image-parallel pass at this thread count.
    fn ready_lanes(&mut self, threads: usize) -> bool {
        // The first image-parallel pass at a thread count (a pool of its own threads) runs
        // every thread's own images, none taken from another: then each thread has run a
        // one-image task and sized its scratch for them, and the later passes (stealing
        // images from a busy thread) allocate nothing.
        let fresh = !self.images_warm.contains(&threads);
        if fresh {
            self.images_warm.push(threads);
        }
        while self.lanes.len() < threads {
            let lane = self.sibling();
            self.lanes.push(Mutex::new(lane));
        }
        for lane in &mut self.lanes {
            lane.get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .for_batch(1);
        }
        fresh
    }

    /// Runs images `whole..batch` (those left over by the image-parallel part of
    /// [`Workspace::run_images`]) op-parallel, as one batch in the `rest` workspace, copying
    /// the live values in and back; `false` when a step failed.
    fn run_rest(
        &mut self,
        whole: usize,
        live_in: &[Value],
        live_out: &[Value],
        run: &(dyn Fn(&mut Workspace, usize) -> bool + Sync),
    ) -> bool {
        let batch = self.batch;
        let n = batch - whole;
        let mut rest = self.rest.take().unwrap_or_else(|| Box::new(self.sibling()));
        rest.for_batch(n);
        for v in live_in {
            let start = self.offsets[v.slot] * batch + whole * v.len;
            rest.set(v.slot, &self.values[start..start + n * v.len]);
        }
        let ok = run(&mut rest, n);
        if ok {
            for v in live_out {
                let start = self.offsets[v.slot] * batch + whole * v.len;
                self.values[start..start + n * v.len].copy_from_slice(rest.written(*v));
            }
        }
        self.rest = Some(rest);
        ok
    }

    /// Sizes the arenas for `batch` images (no allocation at a batch size already seen).
    pub fn for_batch(&mut self, batch: usize) {
        if batch != self.batch {
            // Nothing written at another batch size is a value at this one.
            self.lens.iter_mut().for_each(|l| *l = 0);
        }
        self.batch = batch;
        self.values.resize(self.per_image * batch, 0.0);
        self.sums.resize(self.sums_per_image * batch, 0.0);
    }

    /// Value `v` of the current batch, as its writer left it: generated code writes the
    /// arenas without recording lengths, so this reads by the value's own length.
    fn written(&self, v: Value) -> &[f32] {
        let start = self.offsets[v.slot] * self.batch;
        &self.values[start..start + self.batch * v.len]
    }

    /// The batch it is sized for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Slot `slot`'s region for the current batch.
    fn region(&self, slot: usize) -> std::ops::Range<usize> {
        let start = self.offsets[slot] * self.batch;
        start..start + self.sizes[slot] * self.batch
    }

    /// Copies `values` into slot `slot`.
    pub fn set(&mut self, slot: usize, values: &[f32]) {
        let r = self.region(slot);
        self.values[r.start..][..values.len()].copy_from_slice(values);
        self.lens[slot] = values.len();
    }

    /// Slot `slot`'s value, as last written.
    pub fn get(&self, slot: usize) -> &[f32] {
        let r = self.region(slot);
        &self.values[r.start..][..self.lens[slot]]
    }

    /// The value arena and the sums arena, for generated code that addresses slots by offset.
    pub fn arenas_mut(&mut self) -> (&mut [f32], &mut [f64]) {
        (&mut self.values, &mut self.sums)
    }

    /// Each value slot's start in the arena, in f32 per image.
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// Each sums slot's start in the sums arena, in f64 per image.
    pub fn sums_offsets(&self) -> &[usize] {
        &self.sums_offsets
    }

    /// Records that slot `slot` now holds `len` values (written by generated code).
    pub fn set_len(&mut self, slot: usize, len: usize) {
        self.lens[slot] = len;
    }

    /// Runs one op: `f` gets the values of slots `inputs`, slot `output` sized to `len`, and
    /// the sums. The output slot must not be one of the inputs (the memory plan never
    /// assigns a value the slot of a live operand): checked.
    pub fn run<const N: usize, R>(
        &mut self,
        inputs: [usize; N],
        output: usize,
        len: usize,
        f: impl FnOnce([&[f32]; N], &mut [f32], &mut Sums<'_>) -> R,
    ) -> R {
        let out = self.region(output);
        assert!(
            len <= out.len(),
            "slot {output} holds {} values, not {len}",
            out.len()
        );
        let ranges = inputs.map(|i| self.region(i).start..self.region(i).start + self.lens[i]);
        let mut sums = Sums {
            data: &mut self.sums,
            offsets: &self.sums_offsets,
            batch: self.batch,
        };
        // The output region is split off the arena; every operand lies wholly before or after
        // it (slots are disjoint regions and an output is never its own operand).
        let (before, rest) = self.values.split_at_mut(out.start);
        let (y, after) = rest.split_at_mut(out.len());
        let operands = ranges.map(|r| {
            if r.end <= out.start {
                &before[r]
            } else {
                assert!(
                    r.start >= out.end,
                    "slot {output} is one of its own operands"
                );
                &after[r.start - out.end..r.end - out.end]
            }
        });
        let r = f(operands, &mut y[..len], &mut sums);
        self.lens[output] = len;
        r
    }

    /// Runs a program step on its operands, output and sums in this workspace.
    pub fn run_step<R>(
        &mut self,
        step: &Step,
        batch: usize,
        f: impl FnOnce(StepBuffers<'_>) -> R,
    ) -> R {
        debug_assert_eq!(batch, self.batch, "the workspace is sized for its batch");
        let operands = step.operands();
        let mut slots = [usize::MAX; 3];
        for (s, v) in slots.iter_mut().zip(operands.iter()) {
            *s = v.slot;
        }
        let len = batch * step.out.len;
        let access = step.sums();
        // Up to three operands: the same split for every count.
        let call = |[a, b, c]: [&[f32]; 3], y: &mut [f32], sums: &mut Sums<'_>| {
            let sums = match access {
                SumsAccess::None => SumsBuffer::None,
                SumsAccess::Read { slot, len } => SumsBuffer::Read(sums.read(slot, batch * len)),
                SumsAccess::Write { slot, len } => SumsBuffer::Write(sums.write(slot, batch * len)),
            };
            f(StepBuffers {
                operands: [a, b, c],
                out: y,
                sums,
            })
        };
        match operands.len() {
            1 => self.run([slots[0]], step.out.slot, len, |[a], y, s| {
                call([a, &[], &[]], y, s)
            }),
            2 => self.run([slots[0], slots[1]], step.out.slot, len, |[a, b], y, s| {
                call([a, b, &[]], y, s)
            }),
            _ => self.run(
                [slots[0], slots[1], slots[2]],
                step.out.slot,
                len,
                |[a, b, c], y, s| call([a, b, c], y, s),
            ),
        }
    }
}

/// The value arena's base, shared by the tasks of an image-parallel phase (each touches its
/// own images' regions).
struct ArenaPtr(*mut f32);
// SAFETY: see `Workspace::run_images`: tasks read live-in regions no one writes and write
// disjoint live-out regions.
unsafe impl Sync for ArenaPtr {}

/// A workspace shared by the calls of one model: reused when free, a fresh one when another
/// thread holds it (calls never wait for each other).
#[derive(Debug)]
pub struct SharedWorkspace {
    slot_sizes: Vec<usize>,
    sums_sizes: Vec<usize>,
    cached: Mutex<Option<Workspace>>,
}

impl SharedWorkspace {
    pub fn new(slot_sizes: &[usize], sums_sizes: &[usize]) -> SharedWorkspace {
        SharedWorkspace {
            slot_sizes: slot_sizes.to_vec(),
            sums_sizes: sums_sizes.to_vec(),
            cached: Mutex::new(None),
        }
    }

    /// Runs `f` with a workspace sized for `batch`, returning it to the cache afterwards.
    pub fn with<R>(&self, batch: usize, f: impl FnOnce(&mut Workspace) -> R) -> R {
        let taken = match self.cached.try_lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        let mut ws = taken.unwrap_or_else(|| Workspace::new(&self.slot_sizes, &self.sums_sizes));
        ws.for_batch(batch);
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

/// Checks a forward call's input: `batch` images of `chw` values each (the macro's code;
/// [`crate::program::check_pixel_values`] is the one check every backend runs).
pub fn check_input(pixel_values: &[f32], batch: usize, chw: [usize; 3]) -> Result<()> {
    let shape = [batch, chw[0], chw[1], chw[2]];
    crate::program::check_pixel_values(&shape, pixel_values.len(), chw).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_keeps_its_buffers() {
        let mut ws = Workspace::new(&[2, 2, 2], &[]);
        ws.for_batch(1);
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
