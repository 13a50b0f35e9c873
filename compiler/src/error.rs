//! The compiler's error type. Library code returns it; the `cnx` binary prints it.

use std::path::PathBuf;

use crate::backend::interp::RunError;
use crate::builder::BuildError;
use crate::config::ConfigError;
use crate::verify::VerifyError;

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
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Weights(#[from] cnx_runtime::Error),
    #[error("{path}: {reason}")]
    Npy { path: String, reason: String },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Pass(#[from] crate::passes::PassError),
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// An image that cannot be decoded.
    #[error("{path}: {reason}")]
    Image { path: String, reason: String },
    #[error(transparent)]
    Derive(#[from] crate::passes::derive::DeriveError),
}

fn did_you_mean(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

impl Error {
    /// Whether the error is the user's input (exit code 2) rather than a bug in cnx (1).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Verify(_) | Error::Derive(_) => false,
            Error::Pass(e) => matches!(e, crate::passes::PassError::UnknownPass { .. }),
            Error::Run(e) => matches!(e, RunError::InputShape { .. } | RunError::EmptyBatch),
            _ => true,
        }
    }
}
