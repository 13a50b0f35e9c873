//! The Cranelift JIT backend: the optimised graph compiled at run time into one native
//! function per (model, input size).
//!
//! The schedule is static: a [`MemoryPlan`] gives every value a slot, every slot a fixed
//! offset (per image) in one arena, and the generated entry
//! `extern "C" fn(ctx, input, output, arena, batch)` runs the ops in order with every shape,
//! bound and offset an immediate. The memory-bound ops are generated code ([`clif`]: the
//! depthwise conv with its LayerNorm, GRN's scale, the head's pool and LayerNorm, elementwise
//! adds, layout permutes); the linear layers, patch convs and the classifier product call the
//! runtime's ops (the same functions, kernels and prepared weights as the interpreter) through
//! three registered symbols: `cnx_jit_node` (one op of the graph), `cnx_jit_rows` (a generated
//! kernel's rows split over the pool) and `cnx_jit_classifier`. Exact GELU is generated too,
//! and handed to those runtime ops as their epilogue's activation ([`ActivationKernel`]).

mod clif;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cnx_runtime::kernels::{Activation, ActivationKernel, PreparedWeights};
use cnx_runtime::{pool, Tensor, WeightSource};

use super::interp::{self, batch_shape, RunError};
use crate::ir::{GrnSource, Layout, NodeId, Op, Permute};
use crate::memory_plan::MemoryPlan;
use crate::LoadedModel;
use clif::{Depthwise, Loc, Step};

/// A model compiled by the JIT, ready to run any batch size.
pub struct JitModel {
    /// Owns the graph and the weights the generated code points into (never mutated after
    /// compiling; boxed so their addresses are stable).
    model: Box<LoadedModel>,
    context: Box<NodeContext>,
    code: clif::Compiled,
    /// The values the caller asked for, and where each lives.
    outputs: Vec<(String, NodeId, Loc)>,
    /// Arena size per image, in f32 elements.
    arena_per_image: usize,
    arena: Mutex<Vec<f64>>,
    /// Steps generated in Cranelift, and steps calling the runtime.
    pub generated_steps: usize,
    pub runtime_steps: usize,
    /// Time to lower and compile.
    pub compile_time: Duration,
}

/// What the runtime shims need: the graph, the weights, and the nodes by step index.
struct NodeContext {
    model: *const LoadedModel,
    nodes: Vec<NodeId>,
    /// The generated exact GELU, for the runtime ops whose activation it is.
    gelu: Option<ActivationKernel>,
    /// The first error a shim met (reported after the entry returns).
    error: Mutex<Option<String>>,
    /// Nanoseconds spent in runtime ops and in generated row kernels, since the last
    /// [`JitModel::take_time_split`].
    runtime_ns: AtomicU64,
    kernels_ns: AtomicU64,
}

/// Options for [`JitModel::compile`].
#[derive(Debug, Clone, Copy)]
pub struct JitOptions {
    /// Run Cranelift's verifier on the generated functions (always on in tests).
    pub verify: bool,
    /// Keep the machine code of every function as text (`cnx compile --emit asm`).
    pub disassemble: bool,
}

impl Default for JitOptions {
    fn default() -> Self {
        JitOptions {
            verify: cfg!(debug_assertions),
            disassemble: false,
        }
    }
}

impl JitModel {
    /// Compiles `model`'s graph for the outputs `wanted` (e.g. `["logits"]`).
    pub fn compile(
        model: LoadedModel,
        wanted: &[&str],
        options: JitOptions,
    ) -> Result<JitModel, RunError> {
        let start = Instant::now();
        let model = Box::new(model);
        let graph = &model.graph;
        let mut wanted_ids = Vec::new();
        for name in wanted {
            wanted_ids.push(
                graph
                    .output(name)
                    .ok_or_else(|| RunError::UnknownOutput(name.to_string()))?,
            );
        }
        let plan = MemoryPlan::new(graph, &wanted_ids).map_err(RunError::Graph)?;

        // Arena: the value slots, then the sums slots (f64, so at even f32 offsets).
        let mut slot_offset = Vec::new();
        let mut total = 0usize;
        for &size in &plan.slot_sizes {
            slot_offset.push(total);
            total += size.next_multiple_of(16);
        }
        let mut sums_size = vec![0usize; plan.sums_slots];
        for (&producer, &s) in &plan.sums_slot {
            if let Op::Linear(l) = graph.node(producer).op {
                sums_size[s] = sums_size[s].max(l.out_features);
            }
        }
        let mut sums_offset = Vec::new();
        for size in sums_size {
            sums_offset.push(total);
            total += (2 * size).next_multiple_of(16);
        }
        let first_out = wanted_ids.first().copied();
        let loc = |id: NodeId| -> Loc {
            if id == graph.input() {
                Loc::Input
            } else if Some(id) == first_out {
                Loc::Output
            } else {
                Loc::Arena(slot_offset[plan.slot[&id]])
            }
        };
        let sums_loc = |producer: NodeId| -> Result<Loc, RunError> {
            plan.sums_slot
                .get(&producer)
                .map(|&s| Loc::Arena(sums_offset[s]))
                .ok_or_else(|| {
                    RunError::Graph(format!(
                        "`{}` accumulates no sums",
                        graph.node(producer).name
                    ))
                })
        };
        let tensor = |id: NodeId, role: &str| {
            let node = graph.node(id);
            let p = node
                .param(role)
                .ok_or_else(|| RunError::Graph(format!("`{}` has no {role}", node.name)))?;
            model
                .tensor(&p.name)
                .ok_or_else(|| RunError::MissingWeight(p.name.clone()))
        };
        let weight = |id: NodeId, role: &str| tensor(id, role).map(|t| t.as_ptr());

        let mut steps = Vec::new();
        let mut nodes = Vec::new();
        let (mut generated, mut called) = (0, 0);
        for &id in &plan.order {
            let node = graph.node(id);
            let inputs = graph.inputs(id);
            let out = loc(id);
            let step = match node.op {
                Op::Input => continue,
                Op::Conv2d(c)
                    if c.is_depthwise()
                        && c.stride == [1, 1]
                        && c.input_norm.is_none()
                        && c.layout == crate::ir::Layout::Nhwc =>
                {
                    let taps = match node.param("weight").and_then(|p| model.prepared(&p.name)) {
                        Some(PreparedWeights::Depthwise(w)) => w.taps().as_ptr(),
                        _ => {
                            return Err(RunError::Graph(format!(
                                "`{}`: weights not prepared",
                                node.name
                            )))
                        }
                    };
                    let norm = match c.output_norm {
                        Some(n) if n.affine => Some((
                            n.eps,
                            Some((weight(id, "norm_weight")?, weight(id, "norm_bias")?)),
                        )),
                        Some(n) => Some((n.eps, None)),
                        None => None,
                    };
                    Step::Depthwise {
                        conv: Depthwise {
                            channels: c.out_channels,
                            height: node.ty.height,
                            width: node.ty.width,
                            kernel: c.kernel,
                            padding: c.padding,
                            taps,
                            bias: weight(id, "bias")?,
                            norm,
                        },
                        x: loc(inputs[0]),
                        out,
                    }
                }
                Op::PoolNormLinear {
                    channels,
                    classes,
                    eps,
                } if matches!(
                    graph.node(inputs[0]).ty.layout,
                    Layout::Nhwc | Layout::Features
                ) =>
                {
                    let (w, bias) = (tensor(id, "weight")?, tensor(id, "bias")?);
                    if (w.len(), bias.len()) != (channels * classes, classes) {
                        return Err(RunError::Graph(format!(
                            "`{}`: classifier weights of {} and {} values",
                            node.name,
                            w.len(),
                            bias.len()
                        )));
                    }
                    // The pooled, normalised features: an arena region of their own.
                    let features = Loc::Arena(total);
                    total += channels.next_multiple_of(16);
                    Step::Head {
                        channels,
                        classes,
                        pixels: graph.node(inputs[0]).ty.pixels(),
                        eps,
                        weight: w.as_ptr(),
                        bias: bias.as_ptr(),
                        x: loc(inputs[0]),
                        features,
                        out,
                    }
                }
                Op::GrnScale {
                    channels,
                    source: GrnSource::ProducerSums,
                } => Step::GrnScale {
                    channels,
                    gamma: weight(id, "weight")?,
                    sums: sums_loc(inputs[0])?,
                    out,
                },
                Op::Add => Step::Add {
                    len: node.ty.numel(),
                    a: loc(inputs[0]),
                    b: loc(inputs[1]),
                    out,
                },
                Op::Permute(p) => {
                    let t = node.ty;
                    let (a, b) = match p {
                        Permute::NchwToNhwc => (t.channels, t.pixels()),
                        Permute::NhwcToNchw => (t.pixels(), t.channels),
                    };
                    Step::Transpose {
                        a,
                        b,
                        x: loc(inputs[0]),
                        out,
                    }
                }
                _ => {
                    let producer_sums = match node.op {
                        Op::GrnScale {
                            source: GrnSource::ProducerSums,
                            ..
                        } => Some(sums_loc(inputs[0])?),
                        _ => None,
                    };
                    let sums_out = match node.op {
                        Op::Linear(l) if l.sum_squares => Some(sums_loc(id)?),
                        _ => None,
                    };
                    called += 1;
                    nodes.push(id);
                    steps.push(Step::Call {
                        node: nodes.len() - 1,
                        operands: inputs.iter().map(|&i| loc(i)).collect(),
                        out,
                        producer_sums,
                        sums_out,
                    });
                    continue;
                }
            };
            generated += 1;
            steps.push(step);
        }
        let gelu = nodes
            .iter()
            .any(|&id| generated_activation(&graph.node(id).op).is_some());
        let program = clif::Program {
            steps,
            node_shim: cnx_jit_node as *const u8,
            rows_shim: cnx_jit_rows as *const u8,
            classifier_shim: cnx_jit_classifier as *const u8,
            verify: options.verify,
            disassemble: options.disassemble,
            gelu,
        };
        let code = clif::compile(&program).map_err(RunError::Graph)?;
        let context = Box::new(NodeContext {
            model: &*model,
            nodes,
            // SAFETY: the generated GELU is `extern "C" fn(*mut f32, usize)`, touches only
            // the `len` floats at its pointer (its loops stop at `len`), keeps no state (any
            // thread may call it), and its code lives in `code`'s module, which the
            // `JitModel` owns alongside this context.
            gelu: code.gelu.map(|f| unsafe {
                ActivationKernel::generated(std::mem::transmute::<
                    *const u8,
                    unsafe extern "C" fn(*mut f32, usize),
                >(f))
            }),
            error: Mutex::new(None),
            runtime_ns: AtomicU64::new(0),
            kernels_ns: AtomicU64::new(0),
        });
        let outputs = wanted
            .iter()
            .zip(&wanted_ids)
            .map(|(name, &id)| (name.to_string(), id, loc(id)))
            .collect();
        Ok(JitModel {
            outputs,
            arena_per_image: total,
            arena: Mutex::new(Vec::new()),
            generated_steps: generated,
            runtime_steps: called,
            compile_time: start.elapsed(),
            context,
            code,
            model,
        })
    }

    /// The compiled model's graph and weights.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Time spent, since the last call, in the runtime's ops (matrix products, patch convs,
    /// head) and in the generated row kernels (depthwise conv + LayerNorm); the rest of a run
    /// is the generated inline steps (GRN scale, adds, permutes) and the schedule itself.
    pub fn take_time_split(&self) -> (Duration, Duration) {
        let take = |a: &AtomicU64| Duration::from_nanos(a.swap(0, Ordering::Relaxed));
        (
            take(&self.context.runtime_ns),
            take(&self.context.kernels_ns),
        )
    }

    /// The generated Cranelift IR.
    pub fn clif(&self) -> &str {
        &self.code.clif
    }

    /// The generated machine code, as Cranelift's listing (empty unless compiled with
    /// [`JitOptions::disassemble`]).
    pub fn asm(&self) -> &str {
        &self.code.asm
    }

    /// Runs the compiled code on `pixel_values` (NCHW) with `threads` threads; returns the
    /// outputs compiled for, by name.
    pub fn run(
        &self,
        pixel_values: &Tensor,
        threads: usize,
    ) -> Result<HashMap<String, Tensor>, RunError> {
        let graph = &self.model.graph;
        let batch = interp::check_input(graph, pixel_values)?;
        let (first_name, first_id, _) = &self.outputs[0];
        let mut first = Tensor::zeros(&batch_shape(batch, &graph.node(*first_id).ty));
        let mut arena = self.arena.lock().unwrap_or_else(|e| e.into_inner());
        // f64 storage: 8-byte aligned for the sums; sized for this batch.
        arena.resize((self.arena_per_image * batch).div_ceil(2), 0.0);
        let arena_ptr = arena.as_mut_ptr() as usize;
        let entry = self.code.entry as usize;
        let ctx = &*self.context as *const NodeContext as usize;
        let (input, output) = (
            pixel_values.data().as_ptr() as usize,
            first.data_mut().as_mut_ptr() as usize,
        );
        pool::install(threads, || {
            // SAFETY: `entry` is the compiled schedule for this graph; the input holds
            // `batch` images of the graph's input type (checked above), `output` the first
            // wanted value for `batch`, the arena `arena_per_image * batch` f32 (sized above):
            // the offsets and bounds the code was compiled with stay inside them.
            let f: extern "C" fn(usize, usize, usize, usize, usize) =
                unsafe { std::mem::transmute(entry) };
            f(ctx, input, output, arena_ptr, batch)
        });
        if let Some(e) = self
            .context
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(RunError::Graph(e));
        }
        let mut out = HashMap::new();
        // SAFETY: reinterpreting the f64 arena as f32 (size and alignment divide evenly).
        let arena_f32: &[f32] =
            unsafe { std::slice::from_raw_parts(arena.as_ptr().cast::<f32>(), arena.len() * 2) };
        for (name, id, loc) in &self.outputs[1..] {
            // Two names for one value (e.g. the last stage's hidden state).
            let Loc::Arena(off) = *loc else {
                out.insert(name.clone(), first.clone());
                continue;
            };
            let shape = batch_shape(batch, &graph.node(*id).ty);
            let len: usize = shape.iter().product();
            let data = arena_f32[off * batch..off * batch + len].to_vec();
            out.insert(
                name.clone(),
                Tensor::from_vec(&shape, data).map_err(|e| RunError::Graph(e.to_string()))?,
            );
        }
        out.insert(first_name.clone(), first);
        Ok(out)
    }
}

/// One op of the graph, run by the runtime (`interp::execute`) on buffers the generated code
/// passes: `operands` points to `n` operand pointers.
extern "C" fn cnx_jit_node(
    ctx: *const NodeContext,
    node: u64,
    operands: *const *const f32,
    n: u64,
    out: *mut f32,
    producer_sums: *const f64,
    sums_out: *mut f64,
    batch: u64,
) -> i32 {
    // SAFETY: `ctx` is the `NodeContext` of the model whose code calls this, alive for the
    // call (owned by the `JitModel` running it).
    let ctx = unsafe { &*ctx };
    // SAFETY: the model outlives its compiled code (both owned by the `JitModel`).
    let model = unsafe { &*ctx.model };
    let graph = &model.graph;
    let id = ctx.nodes[node as usize];
    let batch = batch as usize;
    let node_ref = graph.node(id);
    let start = Instant::now();
    let _timer = AddElapsed(&ctx.runtime_ns, start);
    let inputs = graph.inputs(id);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the generated code passes, for this node, pointers to buffers planned for
        // `batch` images of each operand's and the output's type (the memory plan's slots,
        // or the entry's input and output, whose sizes `JitModel::run` checked), and, where
        // the op has them, sums buffers of `batch x channels` f64.
        // At most three operands (a linear layer's input, scale and residual): no allocation.
        let mut slices: [&[f32]; 3] = [&[]; 3];
        for (k, slot) in slices.iter_mut().enumerate().take(n as usize) {
            let len = batch * graph.node(inputs[k]).ty.numel();
            *slot = unsafe { std::slice::from_raw_parts(*operands.add(k), len) };
        }
        let operands = &slices[..n as usize];
        let y = unsafe { std::slice::from_raw_parts_mut(out, batch * node_ref.ty.numel()) };
        let producer_sums = match node_ref.op {
            Op::GrnScale { channels, .. } if !producer_sums.is_null() => unsafe {
                std::slice::from_raw_parts(producer_sums, batch * channels)
            },
            _ => &[][..],
        };
        let sums = match node_ref.op {
            Op::Linear(l) if !sums_out.is_null() => {
                Some(unsafe { std::slice::from_raw_parts_mut(sums_out, batch * l.out_features) })
            }
            _ => None,
        };
        let activation = generated_activation(&node_ref.op).and(ctx.gelu);
        interp::execute(
            graph,
            id,
            model,
            batch,
            operands,
            producer_sums,
            y,
            sums,
            activation,
        )
    }));
    let problem = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("`{}` panicked", node_ref.name),
    };
    let mut error = ctx.error.lock().unwrap_or_else(|e| e.into_inner());
    error.get_or_insert(problem);
    1
}

/// The head's classifier, run by the runtime on the features the generated code pooled and
/// normalised: `features` `[batch, channels]` to `out` `[batch, classes]`.
#[allow(clippy::too_many_arguments)]
extern "C" fn cnx_jit_classifier(
    ctx: *const NodeContext,
    weight: *const f32,
    bias: *const f32,
    features: *const f32,
    out: *mut f32,
    batch: u64,
    channels: u64,
    classes: u64,
) {
    // SAFETY: as in `cnx_jit_node`: the context of the running model.
    let ctx = unsafe { &*ctx };
    let _timer = AddElapsed(&ctx.runtime_ns, Instant::now());
    let (batch, channels, classes) = (batch as usize, channels as usize, classes as usize);
    // SAFETY: `weight` and `bias` are the model's classifier tensors, whose lengths
    // `JitModel::compile` checked against `channels` and `classes`; `features` is the arena
    // region planned for `batch x channels` values and `out` the logits buffer for `batch`
    // images, disjoint from it.
    let (weight, bias, features, out) = unsafe {
        (
            std::slice::from_raw_parts(weight, channels * classes),
            std::slice::from_raw_parts(bias, classes),
            std::slice::from_raw_parts(features, batch * channels),
            std::slice::from_raw_parts_mut(out, batch * classes),
        )
    };
    let run =
        || cnx_runtime::ops::classifier(channels, classes, batch, weight, bias, features, out);
    // A panic must not unwind into generated code: recorded as the run's error instead.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
        let mut error = ctx.error.lock().unwrap_or_else(|e| e.into_inner());
        error.get_or_insert_with(|| "the classifier panicked".to_string());
    }
}

/// The activation of a runtime op that the generated code provides: exact GELU, in a linear
/// layer's epilogue or on its own (other activations run the runtime's kernels).
fn generated_activation(op: &Op) -> Option<Activation> {
    match op {
        Op::Linear(l) if l.activation == Some(Activation::Gelu) => Some(Activation::Gelu),
        Op::Activation(Activation::Gelu) => Some(Activation::Gelu),
        _ => None,
    }
}

/// Runs a generated row kernel `fn(x, out, row0, row1)` over `rows` rows, split into one
/// contiguous range per pool thread.
extern "C" fn cnx_jit_rows(
    ctx: *const NodeContext,
    kernel: *const u8,
    x: *const f32,
    out: *mut f32,
    rows: u64,
) {
    // SAFETY: as in `cnx_jit_node`: the context of the running model.
    let ctx = unsafe { &*ctx };
    let _timer = AddElapsed(&ctx.kernels_ns, Instant::now());
    let rows = rows as usize;
    let threads = pool::threads();
    let per_task = rows.div_ceil(threads).max(1);
    let (kernel, x, out) = (kernel as usize, x as usize, out as usize);
    pool::parallel_for(rows.div_ceil(per_task), &|t| {
        let r0 = t * per_task;
        let r1 = (r0 + per_task).min(rows);
        // SAFETY: `kernel` is a generated depthwise kernel with this signature; tasks get
        // disjoint row ranges of `out`, which the kernel writes only within.
        let f: extern "C" fn(usize, usize, u64, u64) = unsafe { std::mem::transmute(kernel) };
        f(x, out, r0 as u64, r1 as u64);
    });
}

/// Adds the time since `.1` to the counter `.0` when dropped.
struct AddElapsed<'a>(&'a AtomicU64, Instant);

impl Drop for AddElapsed<'_> {
    fn drop(&mut self) {
        self.0
            .fetch_add(self.1.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
