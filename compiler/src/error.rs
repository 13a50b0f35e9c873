//! The compiler's errors. Library code returns them; the `cnx` binary prints them, with an exit
//! code that follows from the variant ([`Error::is_user_error`]).

use crate::builder::BuildError;
use crate::config::ConfigError;
use crate::ir::GraphError;
use crate::lower::LowerError;
use crate::verify::VerifyError;

/// Errors of the compiler crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` that is not a valid `ConvNextV2Config` (named by `path`).
    #[error("{path}: {source}")]
    Config {
        path: String,
        #[source]
        source: ConfigError,
    },
    /// The input size does not fit the model.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The checkpoint: unreadable, invalid, or not the model's.
    #[error(transparent)]
    Weights(#[from] cnx_runtime::Error),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    #[error("this is a bug in cnx: {0}")]
    Verify(#[from] VerifyError),
    #[error("this is a bug in cnx: {0}")]
    Lower(LowerError),
    #[error("this is a bug in cnx: {0}")]
    Graph(#[from] GraphError),
    /// The emitter failed: the input size does not fit the model (a user error), or a bug.
    #[error("{0}")]
    Emit(#[from] crate::backend::rust::EmitError),
}

impl From<LowerError> for Error {
    /// An output the graph does not have is the caller's mistake; any other lowering failure
    /// is a bug.
    fn from(e: LowerError) -> Self {
        match e {
            LowerError::UnknownOutput(name) => Error::Run(RunError::UnknownOutput(name)),
            e => Error::Lower(e),
        }
    }
}

impl Error {
    /// Whether the error is the user's input (exit code 2) rather than a bug in cnx (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Config { .. } | Error::Build(_) => true,
            Error::Weights(e) => e.is_user_error(),
            Error::Pass(e) => matches!(e, crate::passes::PassError::UnknownPass { .. }),
            Error::Run(e) => e.is_user_error(),
            Error::Emit(e) => e.is_user_error(),
            Error::Verify(_) | Error::Lower(_) | Error::Graph(_) => false,
        }
    }
}

/// Why a forward pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `pixel_values` of the wrong shape, or an empty batch.
    #[error(transparent)]
    Input(#[from] cnx_runtime::Error),
    #[error("output `{0}` does not exist in this graph")]
    UnknownOutput(String),
    #[error("this is a bug in cnx: {0}")]
    Lower(LowerError),
    #[error("this is a bug in cnx: the program has {program} weight slots, the model {loaded}")]
    WeightTable { program: usize, loaded: usize },
    #[error("this is a bug in cnx: output `{name}` does not fill its shape")]
    OutputSize { name: String },
    #[error(transparent)]
    Program(#[from] cnx_runtime::program::ProgramError),
    /// A step failed inside generated code's call into the runtime (a panic caught there).
    #[error("this is a bug in cnx: step `{step}` failed: {reason}")]
    Step { step: String, reason: String },
}

impl From<LowerError> for RunError {
    fn from(e: LowerError) -> Self {
        match e {
            LowerError::UnknownOutput(name) => RunError::UnknownOutput(name),
            e => RunError::Lower(e),
        }
    }
}

impl RunError {
    /// Bad input (exit code 2) rather than a bug (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            RunError::Input(e) => e.is_user_error(),
            RunError::UnknownOutput(_) => true,
            _ => false,
        }
    }
}
