//! The one front end: a config to an optimised graph, and that graph to the program a model's
//! outputs need. Every path into the compiler goes through it: a model loaded to run
//! ([`crate::LoadedModel`]: the interpreter, the JIT, `cnx serve`, the Python package), the
//! `convnextv2!` macro ([`crate::backend::rust`]) and the ahead-of-time object (`cnx compile
//! --emit obj`).
//!
//! config --build--> graph (Hugging Face's modules) --verify--> checkpoint tensors noted
//! (names and shapes as Hugging Face gives them) --passes--> optimised graph --verify-->
//! --lower--> program.

use crate::builder::{build_graph_with, BuildError, BuildOptions};
use crate::config::ConvNextV2Config;
use crate::ir::{outputs, Graph, Precision};
use crate::lower::{lower_outputs, LowerError};
use crate::passes::{PassError, Pipeline};
use crate::verify::{self, VerifyError};
use cnx_runtime::program::Program;

/// The checkpoint tensors a model is validated against: Hugging Face names and shapes.
pub type Checkpoint = Vec<(String, Vec<usize>)>;

/// A model's graph for one input size, optimised, with what it was built from.
pub struct Optimised {
    pub graph: Graph,
    /// The checkpoint tensors of the graph as built (before any pass): what a checkpoint is
    /// validated against, so messages name Hugging Face's tensors.
    pub checkpoint: Checkpoint,
    /// Rewrites made by each pass.
    pub pass_report: Vec<(&'static str, usize)>,
}

/// What a compiled model is: its input size, its head, fused or not, its precision.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub input_hw: (usize, usize),
    pub options: BuildOptions,
    /// The default pipeline's fusions (`false`: the graph as Hugging Face runs it).
    pub fuse: bool,
    pub precision: Precision,
}

impl Target {
    /// The passes this target runs.
    pub fn pipeline(&self) -> Pipeline {
        let pipeline = if self.fuse {
            Pipeline::default_pipeline()
        } else {
            Pipeline::empty()
        };
        pipeline.with_precision(self.precision)
    }
}

/// Builds `config`'s graph for `input_hw` with `options`, verifies it, notes its checkpoint
/// tensors, runs `pipeline` on it and verifies the result. Generic over the caller's error
/// type (the compiler's [`crate::Error`], the emitter's), which names each failure its way.
pub fn optimise<E>(
    config: &ConvNextV2Config,
    input_hw: (usize, usize),
    options: BuildOptions,
    pipeline: &Pipeline,
) -> Result<Optimised, E>
where
    E: From<BuildError> + From<VerifyError> + From<PassError>,
{
    let mut graph = build_graph_with(config, input_hw, options)?;
    verify::verify(&graph)?;
    let checkpoint = graph
        .checkpoint_params()
        .into_iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let pass_report = pipeline.run(&mut graph)?;
    verify::verify(&graph)?;
    Ok(Optimised {
        graph,
        checkpoint,
        pass_report,
    })
}

impl Optimised {
    /// The outputs a compiled model gives: a classifier's logits and pooled features, a
    /// backbone's feature maps (`feature_maps_0`, ...).
    pub fn model_outputs(&self) -> Vec<String> {
        let backbone = self.graph.output(&outputs::feature_map(0)).is_some();
        if backbone {
            (0..)
                .map(outputs::feature_map)
                .take_while(|name| self.graph.output(name).is_some())
                .collect()
        } else {
            vec![outputs::LOGITS.into(), outputs::POOLER_OUTPUT.into()]
        }
    }

    /// The program computing the outputs `names`.
    pub fn lower(&self, names: &[&str]) -> Result<Program, LowerError> {
        lower_outputs(&self.graph, names)
    }

    /// The program computing [`Optimised::model_outputs`].
    pub fn lower_model_outputs(&self) -> Result<Program, LowerError> {
        let names = self.model_outputs();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.lower(&names)
    }
}

/// A compiled model's program and its checkpoint tensors: what the macro emits and an
/// ahead-of-time object holds.
pub fn compile<E>(config: &ConvNextV2Config, target: &Target) -> Result<(Program, Checkpoint), E>
where
    E: From<BuildError> + From<VerifyError> + From<PassError> + From<LowerError>,
{
    let optimised: Optimised =
        optimise::<E>(config, target.input_hw, target.options, &target.pipeline())?;
    let program = optimised.lower_model_outputs()?;
    Ok((program, optimised.checkpoint))
}
