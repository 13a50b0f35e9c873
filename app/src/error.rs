//! The `cnx` application's errors. Library code returns them; `main` prints them, with the
//! exit code [`Error::exit_code`] gives: 2 for bad usage or input, 1 for a bug in cnx.

use std::path::PathBuf;

use cnx_compiler::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Config {
        path: String,
        #[source]
        source: ConfigError,
    },
    #[error("unknown model `{name}`: not a file, a directory or a preset{}", did_you_mean(.suggestions))]
    UnknownModel {
        name: String,
        suggestions: Vec<&'static str>,
    },
    #[error("{model} has no weights: it is a preset without a checkpoint; pass --weights <model.safetensors>")]
    NoWeights { model: String },
    /// A `.npy` / `.npz` file that cannot be read, or holds the wrong shape.
    #[error("{}: {reason}", path.display())]
    Npy { path: PathBuf, reason: String },
    /// An image that cannot be decoded.
    #[error("{}: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error(transparent)]
    Weights(#[from] cnx_runtime::Error),
    #[error(transparent)]
    Compiler(#[from] cnx_compiler::Error),
    #[error(transparent)]
    Run(#[from] cnx_compiler::RunError),
    #[error(transparent)]
    Jit(#[from] cnx_jit::JitError),
    /// A size over one of the limits (`--limit` raises them).
    #[error(transparent)]
    Limit(#[from] cnx_compiler::LimitError),
    /// A flag's value or a combination of arguments that cannot work.
    #[error("{0}")]
    Usage(String),
    /// Some inputs of a batch job failed (each already reported on its own line).
    #[error("{count} image(s) could not be {what}")]
    Failed { count: usize, what: &'static str },
}

fn did_you_mean(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

impl From<cnx_compiler::passes::PassError> for Error {
    fn from(e: cnx_compiler::passes::PassError) -> Self {
        Error::Compiler(e.into())
    }
}

impl From<cnx_compiler::builder::BuildError> for Error {
    fn from(e: cnx_compiler::builder::BuildError) -> Self {
        Error::Compiler(e.into())
    }
}

impl From<cnx_compiler::verify::VerifyError> for Error {
    fn from(e: cnx_compiler::verify::VerifyError) -> Self {
        Error::Compiler(e.into())
    }
}

impl From<cnx_compiler::backend::rust::EmitError> for Error {
    fn from(e: cnx_compiler::backend::rust::EmitError) -> Self {
        Error::Compiler(e.into())
    }
}

impl From<cnx_compiler::lower::LowerError> for Error {
    fn from(e: cnx_compiler::lower::LowerError) -> Self {
        Error::Compiler(e.into())
    }
}

impl Error {
    /// Whether the error is the user's input (exit code 2) rather than a bug in cnx (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Compiler(e) => e.is_user_error(),
            Error::Weights(e) => e.is_user_error(),
            Error::Run(e) => e.is_user_error(),
            Error::Jit(e) => e.is_user_error(),
            _ => true,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        if self.is_user_error() {
            2
        } else {
            1
        }
    }
}
