//! The lowered program: what every backend runs.
//!
//! The compiler lowers an optimised graph once (`cnx_compiler::lower`) into a [`Program`]: a
//! flat list of [`Step`]s in evaluation order. Each step holds its op's constants (shapes, eps,
//! activation, which prologue and epilogue), its parameters bound under typed roles (`weight`,
//! `bias`, `gamma` ... as indices into the program's weight table: no look-up by name after
//! lowering), and the workspace slots of its operands, its output and its sums. A program is
//! data: the interpreter and the JIT hold a lowered one, the `convnextv2!` macro emits its
//! steps as statics. [`crate::executor`] runs them all (`execute` is the one place that
//! turns a step into a call of [`crate::ops`]).

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::kernels::Activation;
use crate::ops::{self, Conv2d, LayerNorm, Linear, Permute, ValueType};
use crate::weights::derive::ParamSpec;

/// How a parameter slot is prepared at load for its kernel.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Prepare {
    /// Used as stored.
    Plain,
    /// Packed into GEMM panels (a linear layer's weight).
    Linear(Linear),
    /// Rearranged for the conv's optimised kernel, when it has one.
    Conv(Conv2d),
}

/// One entry of a model's weight table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeightSlot {
    pub param: ParamSpec,
    pub prepare: Prepare,
}

/// A value in the workspace: its slot, and its size in f32 elements per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Value {
    pub slot: usize,
    pub len: usize,
}

/// A LayerNorm's gamma and beta, as weight-table indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AffineParams {
    pub gamma: usize,
    pub beta: usize,
}

/// What a step computes, with its operands and parameters bound. Parameters are indices into
/// the program's weight table; operands are workspace values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum StepOp {
    /// `nn.Conv2d` with its fused input and output LayerNorms.
    Conv2d {
        conv: Conv2d,
        input: ValueType,
        x: Value,
        weight: usize,
        bias: usize,
        /// The output LayerNorm's gamma and beta, when it has them.
        norm: Option<AffineParams>,
    },
    LayerNorm {
        norm: LayerNorm,
        x: Value,
        affine: Option<AffineParams>,
    },
    /// `nn.Linear` with its fused prologue (norm, per-sample scale) and epilogue (activation,
    /// residual, GRN sums of squares written to the sums slot `sums`).
    Linear {
        linear: Linear,
        x: Value,
        scale: Option<Value>,
        residual: Option<Value>,
        weight: usize,
        bias: usize,
        sums: Option<usize>,
    },
    Activation {
        activation: Activation,
        x: Value,
    },
    /// The unfused `ConvNextV2GRN`.
    Grn {
        channels: usize,
        x: Value,
        gamma: usize,
        beta: usize,
    },
    /// GRN's per-sample channel scale, from its operand's values or (with `sums`) from the
    /// sums of squares its producer accumulated in that sums slot.
    GrnScale {
        channels: usize,
        input: ValueType,
        x: Value,
        gamma: usize,
        sums: Option<usize>,
    },
    Add {
        a: Value,
        b: Value,
    },
    GlobalAvgPool {
        input: ValueType,
        x: Value,
    },
    /// The fused head: pool, LayerNorm without affine, classifier.
    PoolNormLinear {
        channels: usize,
        classes: usize,
        eps: f64,
        input: ValueType,
        x: Value,
        weight: usize,
        bias: usize,
    },
    Permute {
        permute: Permute,
        x: Value,
    },
}

/// One step of a program.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// The Hugging Face module it runs (`convnextv2.encoder.stages.0.layers.1.pwconv1`);
    /// borrowed in a static program (the `convnextv2!` macro's), owned in a lowered one.
    pub name: Cow<'static, str>,
    pub op: StepOp,
    /// Where its value goes, and the value's type.
    pub out: Value,
    pub out_ty: ValueType,
}

impl Step {
    /// The values it reads, in operand order (at most three: a linear layer's input, scale
    /// and residual).
    pub fn operands(&self) -> Operands {
        let mut o = Operands::default();
        match &self.op {
            StepOp::Conv2d { x, .. }
            | StepOp::LayerNorm { x, .. }
            | StepOp::Activation { x, .. }
            | StepOp::Grn { x, .. }
            | StepOp::GrnScale { x, .. }
            | StepOp::GlobalAvgPool { x, .. }
            | StepOp::PoolNormLinear { x, .. }
            | StepOp::Permute { x, .. } => o.push(*x),
            StepOp::Linear {
                x, scale, residual, ..
            } => {
                o.push(*x);
                scale.iter().chain(residual).for_each(|v| o.push(*v));
            }
            StepOp::Add { a, b } => {
                o.push(*a);
                o.push(*b);
            }
        }
        o
    }

    /// Multiply-adds for one image: the products of convolutions, linear layers and the
    /// classifier (what GFLOP/s figures count, two FLOPs each); 0 for every other op.
    pub fn macs_per_image(&self) -> u64 {
        let out = &self.out_ty;
        match &self.op {
            StepOp::Conv2d { conv: c, .. } => {
                (out.numel() * (c.in_channels / c.groups) * c.kernel[0] * c.kernel[1]) as u64
            }
            StepOp::Linear { linear: l, .. } => {
                (out.pixels() * l.in_features * l.out_features) as u64
            }
            StepOp::PoolNormLinear {
                channels, classes, ..
            } => (channels * classes) as u64,
            _ => 0,
        }
    }

    /// Bytes of activations it reads and writes for one image (operands and output, f32;
    /// weights apart): what a memory-bound op's GB/s counts.
    pub fn activation_bytes_per_image(&self) -> usize {
        4 * (self.operands().iter().map(|v| v.len).sum::<usize>() + self.out.len)
    }

    /// The sums slot it reads (a GRN scale from its producer's sums) or writes (a linear layer
    /// accumulating them), with the sums' length per image.
    pub fn sums(&self) -> SumsAccess {
        match self.op {
            StepOp::Linear {
                sums: Some(slot),
                linear,
                ..
            } => SumsAccess::Write {
                slot,
                len: linear.out_features,
            },
            StepOp::GrnScale {
                sums: Some(slot),
                channels,
                ..
            } => SumsAccess::Read {
                slot,
                len: channels,
            },
            _ => SumsAccess::None,
        }
    }

    /// The weight-table indices it reads (read off [`Step::params_mut`]'s one list of them;
    /// called once per step to validate a program).
    pub fn params(&self) -> Vec<usize> {
        let mut step = self.clone();
        let params = step.params_mut().into_iter().map(|p| *p).collect();
        params
    }

    /// Its weight-table indices, to renumber: the one place that lists a step's parameters.
    fn params_mut(&mut self) -> Vec<&mut usize> {
        fn affine(a: &mut Option<AffineParams>) -> impl Iterator<Item = &mut usize> {
            a.as_mut()
                .map(|a| [&mut a.gamma, &mut a.beta])
                .into_iter()
                .flatten()
        }
        match &mut self.op {
            StepOp::Conv2d {
                weight, bias, norm, ..
            } => [weight, bias].into_iter().chain(affine(norm)).collect(),
            StepOp::LayerNorm { affine: a, .. } => affine(a).collect(),
            StepOp::Linear { weight, bias, .. } | StepOp::PoolNormLinear { weight, bias, .. } => {
                vec![weight, bias]
            }
            StepOp::Grn { gamma, beta, .. } => vec![gamma, beta],
            StepOp::GrnScale { gamma, .. } => vec![gamma],
            StepOp::Activation { .. }
            | StepOp::Add { .. }
            | StepOp::GlobalAvgPool { .. }
            | StepOp::Permute { .. } => Vec::new(),
        }
    }

    /// Short name of its op, for listings and profiles.
    pub fn kind(&self) -> &'static str {
        match &self.op {
            StepOp::Conv2d { conv, .. } if conv.is_depthwise() => "DepthwiseConv2d",
            StepOp::Conv2d { .. } => "Conv2d",
            StepOp::LayerNorm { .. } => "LayerNorm",
            StepOp::Linear { .. } => "Linear",
            StepOp::Activation { .. } => "Activation",
            StepOp::Grn { .. } => "GRN",
            StepOp::GrnScale { .. } => "GrnScale",
            StepOp::Add { .. } => "Add",
            StepOp::GlobalAvgPool { .. } => "GlobalAvgPool",
            StepOp::PoolNormLinear { .. } => "PoolNormLinear",
            StepOp::Permute { .. } => "Permute",
        }
    }
}

/// A step's operands (at most three), without allocating.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Operands {
    values: [Option<Value>; 3],
    len: usize,
}

impl Operands {
    fn push(&mut self, v: Value) {
        self.values[self.len] = Some(v);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        self.values[..self.len].iter().flatten().copied()
    }
}

/// How a step uses the sums slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumsAccess {
    None,
    /// Reads `len` f64 per image from `slot`.
    Read {
        slot: usize,
        len: usize,
    },
    /// Writes `len` f64 per image to `slot`.
    Write {
        slot: usize,
        len: usize,
    },
}

/// Slot starts (per image) for slots of `sizes`, each rounded up to 16 elements (64 bytes of
/// f32) so that every slot starts cache-line aligned relative to the arena; and the total.
pub fn arena_layout(sizes: &[usize]) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(sizes.len());
    let mut total = 0;
    for &size in sizes {
        offsets.push(total);
        total += size.next_multiple_of(16);
    }
    (offsets, total)
}

/// A named value the program leaves in the workspace (`logits`, `pooler_output` ...).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProgramOutput {
    pub name: String,
    pub value: Value,
    pub ty: ValueType,
}

/// A run of consecutive steps and how the threads share it.
///
/// Every step can run op-parallel: the whole batch through one op at a time, each op split
/// over the threads, a barrier after it. A phase marked `images` can also run image-parallel:
/// when the batch has at least as many images as there are threads, each image goes through
/// all the phase's steps on one thread, on that thread's own one-image workspace (a lane),
/// with the one-thread kernels and no barrier until the phase ends (the remainder of the batch
/// over the thread count runs op-parallel). A phase reads only its `live_in` values from the
/// workspace and leaves only its `live_out` values there: those are copied into and out of
/// the lanes. The compiler decides which phases may run image-parallel, from the shapes;
/// [`crate::phases::run`] decides at run time, from the batch and thread count.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Phase {
    /// The program's steps it runs.
    pub steps: Range<usize>,
    /// It may run image-parallel.
    pub images: bool,
    /// The values it reads that were written before it (in the lanes: copied in).
    pub live_in: Cow<'static, [Value]>,
    /// The values it writes that are read after it or are outputs (in the lanes: copied out).
    pub live_out: Cow<'static, [Value]>,
}

/// A lowered model, for one input size and any batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Program {
    /// `pixel_values`' type per image (NCHW) and the slot it is copied into.
    pub input: ValueType,
    pub input_value: Value,
    /// f32 elements per image of each value slot (its largest value).
    pub slot_sizes: Vec<usize>,
    /// f64 elements per image of each sums slot.
    pub sums_sizes: Vec<usize>,
    /// Every parameter the steps read, by index: checkpoint tensors and derived ones, each
    /// with its kernel preparation.
    pub weights: Vec<WeightSlot>,
    pub steps: Vec<Step>,
    /// The steps cut into phases, in order: each step in exactly one.
    pub phases: Vec<Phase>,
    pub outputs: Vec<ProgramOutput>,
}

/// A program whose steps do not fit its own slots: a bug in whatever built it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this is a bug in cnx: step `{step}` of the program: {reason}")]
pub struct ProgramError {
    pub step: String,
    pub reason: String,
}

impl Phase {
    /// The program's steps cut at `cuts` (sorted step indices where a phase starts; 0 and the
    /// end implied), each phase marked by `images(range)`, with its live values: what it reads
    /// from before it (the input included) and what it leaves for after it (the outputs
    /// included).
    pub fn cut(
        program: &Program,
        cuts: &[usize],
        images: impl Fn(Range<usize>) -> bool,
    ) -> Vec<Phase> {
        let n = program.steps.len();
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(cuts.iter().copied().filter(|&c| c > 0 && c < n))
            .chain(std::iter::once(n))
            .collect();
        let mut phases: Vec<Phase> = bounds
            .windows(2)
            .filter(|w| w[0] < w[1])
            .map(|w| Phase {
                steps: w[0]..w[1],
                images: images(w[0]..w[1]),
                live_in: Cow::Owned(Vec::new()),
                live_out: Cow::Owned(Vec::new()),
            })
            .collect();
        // The step that last wrote each slot (`None`: the input, before every step).
        let mut writer: Vec<Option<Option<usize>>> = vec![None; program.slot_sizes.len()];
        if let Some(w) = writer.get_mut(program.input_value.slot) {
            *w = Some(None);
        }
        let phase_of = |step: usize| phases.iter().position(|p| p.steps.contains(&step));
        let mut live_in: Vec<Vec<Value>> = vec![Vec::new(); phases.len()];
        let mut live_out: Vec<Vec<Value>> = vec![Vec::new(); phases.len()];
        let note = |list: &mut Vec<Value>, v: Value| {
            if !list.contains(&v) {
                list.push(v);
            }
        };
        for (i, step) in program.steps.iter().enumerate() {
            let k = phase_of(i).expect("the phases cover every step");
            for v in step.operands().iter() {
                let from = writer.get(v.slot).copied().flatten();
                match from {
                    // Written in an earlier phase (or the input): read from the workspace
                    // here, left there by its writer's phase.
                    Some(None) => note(&mut live_in[k], v),
                    Some(Some(w)) if !phases[k].steps.contains(&w) => {
                        note(&mut live_in[k], v);
                        let kw = phase_of(w).expect("covered");
                        note(&mut live_out[kw], program.steps[w].out);
                    }
                    _ => {}
                }
            }
            if let Some(w) = writer.get_mut(step.out.slot) {
                *w = Some(Some(i));
            }
        }
        for o in &program.outputs {
            if let Some(Some(Some(w))) = writer.get(o.value.slot) {
                let kw = phase_of(*w).expect("covered");
                note(&mut live_out[kw], program.steps[*w].out);
            }
        }
        for (p, (i, o)) in phases.iter_mut().zip(live_in.into_iter().zip(live_out)) {
            p.live_in = Cow::Owned(i);
            p.live_out = Cow::Owned(o);
        }
        phases
    }
}

impl Program {
    /// Checks what generated code relies on without checking it again: every value a step
    /// reads or writes fits its slot, no step writes the slot of one of its operands, every
    /// sums access fits its sums slot, every parameter is in the weight table.
    pub fn validate(&self) -> Result<(), ProgramError> {
        let fail = |step: &str, reason: String| {
            Err(ProgramError {
                step: step.to_string(),
                reason,
            })
        };
        let fits = |v: Value| {
            self.slot_sizes
                .get(v.slot)
                .is_some_and(|&size| v.len <= size)
        };
        for v in std::iter::once(self.input_value).chain(self.outputs.iter().map(|o| o.value)) {
            if !fits(v) {
                return fail("(input or output)", format!("{v} of {} values", v.len));
            }
        }
        for step in &self.steps {
            for v in step.operands().iter().chain([step.out]) {
                if !fits(v) {
                    return fail(&step.name, format!("{v} does not hold {} values", v.len));
                }
            }
            if step.operands().iter().any(|v| v.slot == step.out.slot) {
                return fail(
                    &step.name,
                    format!("writes {}, one of its operands", step.out),
                );
            }
            if let SumsAccess::Read { slot, len } | SumsAccess::Write { slot, len } = step.sums() {
                if self.sums_sizes.get(slot).is_none_or(|&size| len > size) {
                    return fail(&step.name, format!("sums slot s{slot} does not hold {len}"));
                }
            }
            if let Some(p) = step.params().into_iter().find(|&p| p >= self.weights.len()) {
                return fail(
                    &step.name,
                    format!("parameter w{p} is not in the weight table"),
                );
            }
        }
        self.validate_phases()
    }

    /// What the image-parallel run relies on: the phases cover the steps in order; a phase's
    /// live values fit their slots, and in a phase that may run image-parallel no two of them
    /// share a slot (the lanes copy each image's live-in values from the workspace and their
    /// live-out values back while other images' copies run) and no step reads sums written
    /// before the phase (a lane has sums of its own).
    fn validate_phases(&self) -> Result<(), ProgramError> {
        let fail = |phase: usize, reason: String| {
            Err(ProgramError {
                step: format!("(phase {phase})"),
                reason,
            })
        };
        let mut next = 0;
        for (k, phase) in self.phases.iter().enumerate() {
            if phase.steps.start != next || phase.steps.end <= phase.steps.start {
                return fail(
                    k,
                    format!("steps {:?} do not follow step {next}", phase.steps),
                );
            }
            next = phase.steps.end;
            if next > self.steps.len() {
                return fail(k, format!("steps {:?} past the program's end", phase.steps));
            }
            let live = phase.live_in.iter().chain(phase.live_out.iter());
            for v in live.clone() {
                if self.slot_sizes.get(v.slot).is_none_or(|&size| v.len > size) {
                    return fail(k, format!("{v} does not hold {} values", v.len));
                }
            }
            if !phase.images {
                continue;
            }
            let mut slots: Vec<usize> = live.map(|v| v.slot).collect();
            slots.sort_unstable();
            if let Some(w) = slots.windows(2).find(|w| w[0] == w[1]) {
                return fail(k, format!("two live values share slot v{}", w[0]));
            }
            let mut written = Vec::new();
            for step in &self.steps[phase.steps.clone()] {
                match step.sums() {
                    SumsAccess::Write { slot, .. } => written.push(slot),
                    SumsAccess::Read { slot, .. } if !written.contains(&slot) => {
                        return fail(k, format!("reads sums slot s{slot} written before it"));
                    }
                    _ => {}
                }
            }
        }
        if next != self.steps.len() {
            return fail(self.phases.len(), format!("the phases end at step {next}"));
        }
        let cuts: Vec<usize> = self.phases.iter().map(|p| p.steps.start).collect();
        let recut = Phase::cut(self, &cuts, |r| {
            self.phases.iter().any(|p| p.steps == r && p.images)
        });
        if let Some(k) = (0..recut.len()).find(|&k| recut[k] != self.phases[k]) {
            return fail(
                k,
                "its live values are not the ones its steps read and leave".into(),
            );
        }
        Ok(())
    }

    /// The program with a weight table of only the parameters its steps read, in the order
    /// they first read them (a lowered program's table covers the whole graph; code that
    /// embeds the table, the `convnextv2!` macro's, loads only what its outputs need).
    pub fn with_read_weights(mut self) -> Program {
        let mut table = Vec::new();
        let mut index = vec![None; self.weights.len()];
        for step in &mut self.steps {
            for p in step.params_mut() {
                *p = *index[*p].get_or_insert_with(|| {
                    table.push(self.weights[*p].clone());
                    table.len() - 1
                });
            }
        }
        self.weights = table;
        self
    }

    /// Bytes of workspace one image takes (value slots and sums, as laid out).
    pub fn workspace_bytes_per_image(&self) -> usize {
        let values = arena_layout(&self.slot_sizes).1;
        let sums = arena_layout(&self.sums_sizes).1;
        values * 4 + sums * 8
    }

    /// An output by name.
    pub fn output(&self, name: &str) -> Option<&ProgramOutput> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// `pixel_values`' channels, height and width per image.
    pub fn chw(&self) -> [usize; 3] {
        [self.input.channels, self.input.height, self.input.width]
    }

    /// Checks `shape` (`[batch, C, H, W]`) against the program's input; returns the batch.
    pub fn check_input(&self, shape: &[usize]) -> crate::Result<usize> {
        check_pixel_values(shape, shape.iter().product(), self.chw())
    }
}

/// Checks a forward call's `pixel_values`: a `[batch >= 1, C, H, W]` shape matching the model's
/// `chw` and holding `len` values. Every backend (the interpreter, the JIT, the macro's code)
/// checks its input with this before running anything; returns the batch.
pub fn check_pixel_values(shape: &[usize], len: usize, chw: [usize; 3]) -> crate::Result<usize> {
    let batch = shape.first().copied().unwrap_or(0);
    let fits = shape.len() == 4 && shape[1..] == chw && batch > 0;
    // Checked: a shape whose product wraps (2^54 + 1 images of 3x224x224) must not match.
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    if !fits || numel != Some(len) {
        return Err(crate::Error::InputShape {
            what: "pixel_values".into(),
            expected: vec![
                if shape.len() == 4 { batch.max(1) } else { 1 },
                chw[0],
                chw[1],
                chw[2],
            ],
            found: if fits { vec![len] } else { shape.to_vec() },
        });
    }
    Ok(batch)
}

/// What a forward pass does with `pixel_values` holding NaN or infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Refuse them with [`crate::Error::NonFiniteInput`] (their count and the first one's
    /// index), before running anything: the default.
    #[default]
    Refuse,
    /// Run anyway, IEEE arithmetic propagating them: every output they reach is NaN or
    /// infinite. For callers who check their outputs themselves.
    Propagate,
}

/// Checks that `pixel_values` (`[batch, C, H, W]` with `chw` per image) holds only finite
/// values, under `policy`. One pass (vectorised) when they are all finite; a second one
/// counts the others.
pub fn check_finite(pixel_values: &[f32], chw: [usize; 3], policy: NonFinite) -> crate::Result<()> {
    if policy == NonFinite::Propagate || pixel_values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    let count = pixel_values.iter().filter(|v| !v.is_finite()).count();
    let at = pixel_values
        .iter()
        .position(|v| !v.is_finite())
        .unwrap_or(0);
    // Each side at least 1, so no division by zero; `at` < len, so every index is in range.
    let [c, h, w] = chw.map(|d| d.max(1));
    let first = [at / (c * h * w), at / (h * w) % c, at / w % h, at % w];
    Err(crate::Error::NonFiniteInput { count, first })
}

/// The buffers one step runs on: its operands (in [`Step::operands`] order), its output and
/// its sums, each sized for the batch.
pub struct StepBuffers<'a> {
    pub operands: [&'a [f32]; 3],
    pub out: &'a mut [f32],
    pub sums: SumsBuffer<'a>,
}

/// The sums buffer a step reads or writes, if any (`batch x len` f64).
pub enum SumsBuffer<'a> {
    None,
    Read(&'a [f64]),
    Write(&'a mut [f64]),
}

impl fmt::Display for Phase {
    /// `# phase: steps 0..52, image-parallel when batch >= threads > 1 (in v0; out v3)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |values: &[Value]| {
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let how = if self.images {
            "image-parallel when batch >= threads > 1 (each image on one thread, one-thread \
             kernels, its own lane; batch % threads images op-parallel), else op-parallel"
        } else {
            "op-parallel (every op split over the threads)"
        };
        write!(
            f,
            "# phase: steps {}..{}, {how}; in {}; out {}",
            self.steps.start,
            self.steps.end,
            list(&self.live_in),
            list(&self.live_out)
        )
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.slot)
    }
}

impl fmt::Display for Step {
    /// One line: output slot, op and constants, operands, parameters, sums.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = |i: usize| format!("w{i}");
        let affine = |a: &Option<AffineParams>| {
            a.map_or(String::new(), |a| {
                format!(" gamma={} beta={}", w(a.gamma), w(a.beta))
            })
        };
        write!(f, "{} = ", self.out)?;
        match &self.op {
            StepOp::Conv2d {
                conv,
                x,
                weight,
                bias,
                norm,
                ..
            } => {
                let (k, s, p) = (conv.kernel, conv.stride, conv.padding);
                write!(
                    f,
                    "conv2d({x}; {}->{} k={}x{} s={} p={} g={}{}{}{}) weight={} bias={}{}",
                    conv.in_channels,
                    conv.out_channels,
                    k[0],
                    k[1],
                    s[0],
                    p[0],
                    conv.groups,
                    if conv.layout == ops::Layout::Nhwc {
                        " nhwc"
                    } else {
                        ""
                    },
                    conv.input_norm
                        .map_or(String::new(), |e| format!(" norm-in eps={e:e}")),
                    conv.output_norm
                        .map_or(String::new(), |n| format!(" norm-out eps={:e}", n.eps))
                        + &precision_suffix(conv.precision),
                    w(*weight),
                    w(*bias),
                    affine(norm)
                )?
            }
            StepOp::LayerNorm { norm, x, affine: a } => write!(
                f,
                "layer_norm({x}; {} {:?} eps={:e}){}",
                norm.channels,
                norm.axis,
                norm.eps,
                affine(a)
            )?,
            StepOp::Linear { .. } => self.fmt_linear(f)?,
            StepOp::Activation { activation, x } => write!(f, "{activation}({x})")?,
            StepOp::Grn {
                channels,
                x,
                gamma,
                beta,
            } => write!(
                f,
                "grn({x}; {channels}) gamma={} beta={}",
                w(*gamma),
                w(*beta)
            )?,
            StepOp::GrnScale {
                channels,
                x,
                gamma,
                sums,
                ..
            } => match sums {
                Some(s) => write!(f, "grn_scale(s{s}; {channels}) gamma={}", w(*gamma))?,
                None => write!(f, "grn_scale({x}; {channels}) gamma={}", w(*gamma))?,
            },
            StepOp::Add { a, b } => write!(f, "add({a}, {b})")?,
            StepOp::GlobalAvgPool { x, .. } => write!(f, "global_avg_pool({x})")?,
            StepOp::PoolNormLinear {
                channels,
                classes,
                eps,
                x,
                weight,
                bias,
                ..
            } => write!(
                f,
                "pool_norm_linear({x}; {channels}->{classes} eps={eps:e}) weight={} bias={}",
                w(*weight),
                w(*bias)
            )?,
            StepOp::Permute { permute, x } => write!(f, "permute({x}; {permute:?})")?,
        }
        write!(f, "  # {} {}", self.name, self.out_ty)
    }
}

/// ` int8` after a step's attributes when it does not run in f32 (the default, unmarked).
fn precision_suffix(p: ops::Precision) -> String {
    match p {
        ops::Precision::F32 => String::new(),
        other => format!(" {}", other.name()),
    }
}

impl Step {
    /// A linear step's listing (its operands, prologue, epilogue and sums).
    fn fmt_linear(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StepOp::Linear {
            linear: l,
            x,
            scale,
            residual,
            weight,
            bias,
            sums,
        } = &self.op
        else {
            return Ok(());
        };
        write!(f, "linear({x}")?;
        if let Some(s) = scale {
            write!(f, ", scale={s}")?;
        }
        if let Some(r) = residual {
            write!(f, ", residual={r}")?;
        }
        write!(f, "; {}->{}", l.in_features, l.out_features)?;
        if let Some(eps) = l.input_norm {
            write!(f, " norm-in eps={eps:e}")?;
        }
        if let Some(a) = l.activation {
            write!(f, " {a}")?;
        }
        write!(f, "{}", precision_suffix(l.precision))?;
        write!(f, ") weight=w{weight} bias=w{bias}")?;
        if let Some(s) = sums {
            write!(f, " sums->s{s}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Program {
    /// The program as `cnx compile --emit program` prints it: the weight table, then one line
    /// per step, then the outputs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# input {} -> {}; {} value slots ({} f32 per image), {} sums slots",
            self.input,
            self.input_value,
            self.slot_sizes.len(),
            self.slot_sizes.iter().sum::<usize>(),
            self.sums_sizes.len()
        )?;
        for (i, slot) in self.weights.iter().enumerate() {
            let derived = if slot.param.derivation.is_some() {
                " (derived)"
            } else {
                ""
            };
            writeln!(
                f,
                "w{i} = {} {:?}{derived}",
                slot.param.name, slot.param.shape
            )?;
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(p) = self.phases.iter().find(|p| p.steps.start == i) {
                writeln!(f, "{p}")?;
            }
            writeln!(f, "{step}")?;
        }
        for o in &self.outputs {
            writeln!(f, "output {} = {} {}", o.name, o.value, o.ty)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_values_must_fit_the_input() {
        assert_eq!(
            check_pixel_values(&[2, 3, 4, 5], 120, [3, 4, 5]).unwrap(),
            2
        );
        assert!(check_pixel_values(&[0, 3, 4, 5], 0, [3, 4, 5]).is_err());
        assert!(check_pixel_values(&[1, 3, 4, 6], 72, [3, 4, 5]).is_err());
        assert!(check_pixel_values(&[1, 3, 4, 5], 59, [3, 4, 5]).is_err());
        assert!(check_pixel_values(&[3, 4, 5], 60, [3, 4, 5]).is_err());
        // 3 * 224 * 224 = 2^10 * 147: (2^54 + 1) images wrap around to exactly one image.
        let chw = [3, 224, 224];
        let wrapping = [(1usize << 54) + 1, 3, 224, 224];
        assert!(check_pixel_values(&wrapping, 3 * 224 * 224, chw).is_err());
        let data = vec![0f32; 3 * 224 * 224];
        assert!(crate::Tensor::from_vec(&wrapping, data).is_err());
    }

    /// NaN and both infinities are refused with their count and the first one's index (batch,
    /// channel, row, column); the opt-out lets them through.
    #[test]
    fn non_finite_pixel_values_are_refused_unless_propagation_is_asked_for() {
        let chw = [3, 4, 5];
        let mut x = vec![0.5f32; 2 * 60];
        assert!(check_finite(&x, chw, NonFinite::Refuse).is_ok());
        // Image 1, channel 2, row 3, column 4: the last value; and two more before it.
        x[119] = f32::NAN;
        x[60 + 20 + 5 + 1] = f32::INFINITY;
        x[61] = f32::NEG_INFINITY;
        match check_finite(&x, chw, NonFinite::Refuse) {
            Err(crate::Error::NonFiniteInput { count, first }) => {
                assert_eq!(count, 3);
                assert_eq!(first, [1, 0, 0, 1]);
            }
            other => panic!("{other:?}"),
        }
        let message = check_finite(&x, chw, NonFinite::Refuse)
            .unwrap_err()
            .to_string();
        assert!(message.contains("3 value(s) are NaN or infinite, the first at [1, 0, 0, 1]"));
        assert!(check_finite(&x, chw, NonFinite::Propagate).is_ok());
    }
}
