//! `cnx compile`: the code a backend generates for a model, or the program they share; with
//! `--emit obj`, an ahead-of-time object and its C header.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cnx_compiler::backend::rust::{emit_source, EmitError, EmitSpec};
use cnx_compiler::frontend;
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_jit::aot::{compile_object, ObjectSpec};
use cnx_jit::header::{c_header, default_prefix, is_c_identifier, HeaderSpec};
use cnx_jit::{JitModel, JitOptions};
use cnx_runtime::artifact::Artifact;
use cnx_runtime::program::Program;
use cnx_runtime::{WeightSource, WeightStore};

use super::InputSize;
use crate::{random, Error, ModelSpec};

/// What `cnx compile` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The lowered program every backend runs: the weight table, then one line per step.
    Program,
    /// The Rust the `convnextv2!` macro expands to.
    Rust,
    /// The Cranelift IR the JIT generates (the schedule: one runtime call per step).
    Clif,
    /// The x86-64 (or host) machine code the JIT generates from that IR, as Cranelift lists it.
    Asm,
    /// A relocatable object (the JIT's schedule, ahead of time) and its C header, for a
    /// program linked with the runtime library `libconvnextv2` (needs --output).
    Obj,
}

/// Print the code a backend generates for a model: `--emit rust`, what the `convnextv2!`
/// macro expands to; `--emit program`, the lowered program all backends share.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Preset, config.json, or model directory.
    model: String,
    /// What to print.
    #[arg(long, value_enum, default_value = "rust")]
    emit: Emit,
    #[command(flatten)]
    input_size: InputSize,
    /// The unfused graph, exactly as Hugging Face defines it.
    #[arg(long)]
    no_fuse: bool,
    #[command(flatten)]
    precision: super::PrecisionFlag,
    /// The generated type's name.
    #[arg(long, default_value = "ConvNextV2")]
    name: String,
    /// The object file to write (`--emit obj`).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// The C header to write (`--emit obj`; default: the object's path with `.h`).
    #[arg(long)]
    header: Option<PathBuf>,
    /// The prefix of the object's C symbols and header macros (default: the model's name with
    /// every character a C identifier cannot hold as `_`, e.g. `tiny_1k_224`).
    #[arg(long)]
    symbol_prefix: Option<String>,
    /// Put the checkpoint into the object (a read-only section): the object is the whole model,
    /// loaded with `P_load_embedded`.
    #[arg(long)]
    embed_weights: bool,
    /// The checkpoint to embed (default: the model's own).
    #[arg(long, requires = "embed_weights")]
    weights: Option<PathBuf>,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let input_hw = self.input_size.hw(&spec)?;
        spec.check_run(1, input_hw)?;
        // A raw identifier (`r#Foo`) parses, but the emitter derives module names from it.
        if self.emit != Emit::Obj && (self.output.is_some() || self.embed_weights) {
            return Err(Error::Usage(
                "--output and --embed-weights are for --emit obj (the other forms print)".into(),
            ));
        }
        if syn::parse_str::<syn::Ident>(&self.name).is_err() || self.name.starts_with("r#") {
            return Err(Error::Usage(format!(
                "--name `{}` is not a Rust type name",
                self.name
            )));
        }
        let emit_spec = EmitSpec {
            name: self.name.clone(),
            model: spec.name.clone(),
            config: spec.config.clone(),
            input_hw,
            fuse: !self.no_fuse,
            embedded_weights: None,
            config_path: None,
            backbone: false,
            precision: self.precision.get(),
        };
        match self.emit {
            Emit::Program => print!("{}", compile_program(&emit_spec)?.0),
            Emit::Rust => print!("{}", emit_source(&emit_spec)?),
            Emit::Clif | Emit::Asm => self.jit(spec, input_hw)?,
            Emit::Obj => self.object(&spec, &emit_spec)?,
        }
        Ok(())
    }

    /// `--emit obj`: the object and its header, each written whole or not at all.
    fn object(&self, spec: &ModelSpec, emit_spec: &EmitSpec) -> Result<(), Error> {
        let output = self
            .output
            .as_deref()
            .ok_or_else(|| Error::Usage("--emit obj needs --output FILE.o".into()))?;
        let prefix = match &self.symbol_prefix {
            Some(p) if is_c_identifier(p) => p.clone(),
            Some(p) => {
                return Err(Error::Usage(format!(
                    "--symbol-prefix `{p}` is not a C identifier (letters, digits and _, not starting with a digit, at most 64, not a keyword)"
                )))
            }
            None => default_prefix(&spec.name),
        };
        let header_path = self
            .header
            .clone()
            .unwrap_or_else(|| output.with_extension("h"));
        if header_path == output {
            return Err(Error::Usage(
                "--header and --output name the same file".into(),
            ));
        }
        let (program, checkpoint) = compile_program(emit_spec)?;
        let weights = if self.embed_weights {
            let path = match &self.weights {
                Some(p) => p.clone(),
                None => spec.checkpoint()?,
            };
            Some(checkpoint_bytes(&path, &checkpoint)?)
        } else {
            None
        };
        let chw = program.chw();
        let size = |name: &str| program.output(name).map_or(0, |o| o.value.len);
        let (num_labels, hidden_size) = (size(outputs::LOGITS), size(outputs::POOLER_OUTPUT));
        let artifact = Artifact::new(spec.name.clone(), checkpoint, program);
        let object = compile_object(&ObjectSpec {
            artifact: &artifact,
            prefix: &prefix,
            labels: &spec.config.id2label,
            weights: weights.as_deref(),
            verify: true,
        })
        .map_err(cnx_jit::JitError::from)?;
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let object_name = output.file_name().map_or_else(
            || output.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let header = c_header(&HeaderSpec {
            prefix: &prefix,
            model: &spec.name,
            command: &command,
            input_chw: chw,
            num_labels,
            hidden_size,
            workspace_bytes_per_image: artifact.program.workspace_bytes_per_image(),
            embedded_weights: weights.is_some(),
            precision: self.precision.get().name(),
            object: &object_name,
        });
        crate::io::write_atomically(output, |mut f| f.write_all(&object.bytes))?;
        if let Err(e) =
            crate::io::write_atomically(&header_path, |mut f| f.write_all(header.as_bytes()))
        {
            // Both files or neither.
            let _ = std::fs::remove_file(output);
            return Err(e);
        }
        eprintln!(
            "cnx: wrote {} ({} steps, {:.1} MiB{}, generated in {:.0} ms) and {}; symbols {prefix}_*",
            output.display(),
            object.steps,
            object.bytes.len() as f64 / (1 << 20) as f64,
            if weights.is_some() { ", weights inside" } else { "" },
            object.compile_time.as_secs_f64() * 1e3,
            header_path.display(),
        );
        Ok(())
    }

    /// The JIT's IR or machine code, compiled over random weights.
    fn jit(&self, spec: ModelSpec, input_hw: (usize, usize)) -> Result<(), Error> {
        let pipeline = if self.no_fuse {
            Pipeline::empty()
        } else {
            Pipeline::default_pipeline()
        }
        .with_precision(self.precision.get());
        let graph = cnx_compiler::build_graph(&spec.config, input_hw)?;
        let store = cnx_runtime::WeightStore::from_tensors(random::random_parameters(&graph, 0))?;
        let loaded = spec.with_weights(store, input_hw, &pipeline)?;
        let options = JitOptions {
            verify: true,
            disassemble: self.emit == Emit::Asm,
        };
        let jit = JitModel::compile(loaded, &[outputs::LOGITS], options)?;
        print!(
            "{}",
            if self.emit == Emit::Asm {
                jit.asm()
            } else {
                jit.clif()
            }
        );
        eprintln!(
            "cnx: {} steps, each a runtime call, compiled in {:.0} ms",
            jit.runtime_steps,
            jit.compile_time.as_secs_f64() * 1e3
        );
        Ok(())
    }
}

/// The checkpoint at `path`, validated against the model's `checkpoint` list (every mismatch
/// in one error), as the bytes of a safetensors file of exactly those tensors in f32 under
/// their Hugging Face names: what `--embed-weights` puts in the object.
fn checkpoint_bytes(path: &Path, checkpoint: &[(String, Vec<usize>)]) -> Result<Vec<u8>, Error> {
    let store = WeightStore::open(path)?;
    store.validate(checkpoint.iter().map(|(n, s)| (n.as_str(), s.as_slice())))?;
    // Every tensor is present: `validate` checked the list.
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = checkpoint
        .iter()
        .filter_map(|(name, shape)| {
            let data = store.tensor(name)?.to_vec();
            Some((name.clone(), shape.clone(), data))
        })
        .collect();
    random::safetensors_bytes(&tensors).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// The program and checkpoint of `spec` from the one front end (what the macro emits and the
/// object holds).
fn compile_program(spec: &EmitSpec) -> Result<(Program, frontend::Checkpoint), Error> {
    Ok(frontend::compile::<EmitError>(
        &spec.config,
        &spec.target(),
    )?)
}
