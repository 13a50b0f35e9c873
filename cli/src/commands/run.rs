//! `cnx run`: a model on Hugging Face `pixel_values`, its outputs written as `.npz`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cnx_compiler::ir::outputs;
use cnx_compiler::loss::Labels;
use cnx_compiler::LoadedModel;
use cnx_runtime::program::NonFinite;

use super::{ModelFlags, PassFlags, Threads};
use crate::engine::{Backend, Engine};
use crate::{io, Error, ModelSpec};

/// Run a model on HF `pixel_values` (.npy) and write its outputs (.npz).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelFlags,
    /// float32 .npy of shape (batch, num_channels, H, W), exactly HF's pixel_values.
    #[arg(long)]
    input: PathBuf,
    /// .npz to write: logits, pooler_output, last_hidden_state (+ hidden_states_*).
    #[arg(long)]
    output: PathBuf,
    /// Also write hidden_states_0 .. hidden_states_<num_stages> (NCHW, HF order).
    #[arg(long)]
    hidden_states: bool,
    /// Run a ConvNextV2Backbone checkpoint (config `out_features` / `out_indices`, weights with
    /// `hidden_states_norms.*`): write feature_maps_0..k (NCHW, each through its LayerNorm, in
    /// stage order) and last_hidden_state instead of logits.
    #[arg(long)]
    backbone: bool,
    #[command(flatten)]
    threads: Threads,
    /// Execution backend (default: the JIT; the interpreter gives the same results to
    /// ~1e-6 and needs no code generation).
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    #[command(flatten)]
    passes: PassFlags,
    /// Labels (.npy: int64 class indices, or float targets) to compute transformers' loss
    /// for, written as `loss` (float32 scalar): cross-entropy, BCE with logits or mean squared
    /// error as the config's `problem_type` says (when unset: decided from the labels, as
    /// transformers does).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Run pixel values holding NaN or infinity anyway (refused by default: every output they
    /// reach would be NaN or infinite).
    #[arg(long)]
    allow_non_finite: bool,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let start = Instant::now();
        let pipeline = self.passes.pipeline()?;
        let spec = ModelSpec::resolve(&self.model.model)?;
        let pixel_values = io::read_npy(&self.input)?;
        let labels = self.labels.as_deref().map(io::read_npy_array).transpose()?;
        let shape = pixel_values.shape().to_vec();
        let channels = spec.config.num_channels;
        if shape.len() != 4 || shape[1] != channels || shape[0] == 0 {
            return Err(Error::Npy {
                path: self.input.clone(),
                reason: format!(
                    "pixel_values must have shape (batch >= 1, {channels}, height, width), found {shape:?}"
                ),
            });
        }
        // shape has 4 entries (checked just above).
        spec.check_run(shape[0], (shape[2], shape[3]))?;
        let loaded = spec.load_with(
            self.model.weights.as_deref(),
            (shape[2], shape[3]),
            &pipeline,
        )?;
        let name = loaded.name.clone();
        let wanted = self.wanted_outputs(&loaded)?;
        if self.labels.is_some() && self.backbone {
            return Err(Error::Usage(
                "--labels: a backbone has no logits, so no loss".into(),
            ));
        }
        let wanted_refs: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let loaded_at = start.elapsed();
        let policy = if self.allow_non_finite {
            NonFinite::Propagate
        } else {
            NonFinite::Refuse
        };
        let engine = Engine::new(loaded, self.backend, &wanted_refs)?.with_non_finite(policy);
        let compile = match &engine {
            Engine::Jit(j) => format!(
                " (JIT compile {:.0} ms)",
                j.compile_time.as_secs_f64() * 1e3
            ),
            Engine::Interp(..) => String::new(),
        };
        let values = engine.run(&pixel_values, self.threads.get())?;
        let ran_at = start.elapsed();
        let mut arrays: Vec<(&str, &cnx_runtime::Tensor)> =
            wanted.iter().map(|n| (n.as_str(), &values[n])).collect();
        let loss = match (&labels, self.labels.as_deref()) {
            (Some(labels), Some(path)) => Some(loss(&engine, &values, labels, path, &name)?),
            _ => None,
        };
        if let Some(loss) = &loss {
            arrays.push(("loss", loss));
        }
        io::write_npz(&self.output, &arrays)?;
        eprintln!(
            "cnx: {name} on {:?}: {} {:?}; load {:.0} ms, forward {:.0} ms{compile}; wrote {}",
            shape,
            wanted[0],
            values[&wanted[0]].shape(),
            loaded_at.as_secs_f64() * 1e3,
            (ran_at - loaded_at).as_secs_f64() * 1e3,
            self.output.display()
        );
        Ok(())
    }

    /// The outputs to write, in order: logits, pooler_output and last_hidden_state, or a
    /// backbone's feature maps and last_hidden_state; then (on request) the hidden states.
    /// `--backbone` must match the checkpoint.
    fn wanted_outputs(&self, loaded: &LoadedModel) -> Result<Vec<String>, Error> {
        let (name, stages) = (&loaded.name, loaded.config.num_stages);
        Ok(match (self.backbone, loaded.is_backbone()) {
            // logits, pooler_output, last_hidden_state, then (on request) the hidden states.
            (false, false) => {
                let mut all = outputs::all(stages);
                if !self.hidden_states {
                    all.truncate(3);
                }
                all
            }
            // feature_maps_0..k, last_hidden_state, then (on request) the hidden states.
            (true, true) => {
                let maps = loaded
                    .graph
                    .outputs()
                    .iter()
                    .filter(|(n, _)| n.starts_with("feature_maps_"))
                    .count();
                let mut all: Vec<String> = (0..maps).map(outputs::feature_map).collect();
                all.push(outputs::LAST_HIDDEN_STATE.into());
                if self.hidden_states {
                    all.extend((0..=stages).map(outputs::hidden_state));
                }
                all
            }
            (false, true) => {
                return Err(Error::Usage(format!(
                    "{name}: the checkpoint is a ConvNextV2Backbone (it has hidden_states_norms): pass --backbone for its feature maps"
                )))
            }
            (true, false) => {
                return Err(Error::Usage(format!(
                    "--backbone: {name}'s checkpoint has no hidden_states_norms.* tensors: not a ConvNextV2Backbone"
                )))
            }
        })
    }
}

/// transformers' loss of the run's logits for `labels` (read from `path`), printed and
/// returned as a float32 scalar.
fn loss(
    engine: &Engine,
    values: &HashMap<String, cnx_runtime::Tensor>,
    labels: &io::Array,
    path: &Path,
    name: &str,
) -> Result<cnx_runtime::Tensor, Error> {
    let logits = &values[outputs::LOGITS];
    let num_labels = engine.model().config.num_labels();
    if logits.shape()[1] != num_labels {
        return Err(Error::Usage(format!(
            "--labels: {name} has no classifier (its logits are the pooled features): no loss"
        )));
    }
    let labels = Labels {
        shape: labels.shape.clone(),
        values: labels.data.clone(),
        integer: !labels.dtype.contains('f'),
    };
    let problem = engine.model().config.problem_type;
    let (loss, problem) = cnx_compiler::loss::loss(problem, logits.data(), num_labels, &labels)
        .map_err(|e| Error::Npy {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    eprintln!("cnx: loss ({}) {loss}", problem.hf_name());
    Ok(cnx_runtime::Tensor::from_vec(&[], vec![loss as f32])?)
}
