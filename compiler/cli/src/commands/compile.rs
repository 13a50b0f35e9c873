//! `cnx compile`: the code a backend generates for a model, or the program they share.

use cnx_compiler::backend::rust::{emit_source, lower_spec, EmitSpec};
use cnx_compiler::ir::outputs;
use cnx_compiler::passes::Pipeline;
use cnx_jit::{JitModel, JitOptions};

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
    /// The generated type's name.
    #[arg(long, default_value = "ConvNextV2")]
    name: String,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let input_hw = self.input_size.hw(&spec)?;
        spec.check_run(1, input_hw)?;
        // A raw identifier (`r#Foo`) parses, but the emitter derives module names from it.
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
        };
        match self.emit {
            Emit::Program => print!("{}", lower_spec(&emit_spec)?.0),
            Emit::Rust => print!("{}", emit_source(&emit_spec)?),
            Emit::Clif | Emit::Asm => self.jit(spec, input_hw)?,
        }
        Ok(())
    }

    /// The JIT's IR or machine code, compiled over random weights.
    fn jit(&self, spec: ModelSpec, input_hw: (usize, usize)) -> Result<(), Error> {
        let pipeline = if self.no_fuse {
            Pipeline::empty()
        } else {
            Pipeline::default_pipeline()
        };
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
