//! Typed errors of the runtime. Library code returns these; only the `cnx` binary prints.

use std::fmt;
use std::path::PathBuf;

/// A tensor whose shape disagrees with what the model expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Everything wrong between a checkpoint and the graph it should feed, reported at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightMismatch {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub mis_shaped: Vec<ShapeMismatch>,
}

impl WeightMismatch {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mis_shaped.is_empty()
    }
}

impl fmt::Display for WeightMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line: the binary prints errors on a single line; long lists are elided.
        fn list(f: &mut fmt::Formatter<'_>, what: &str, items: &[String]) -> fmt::Result {
            const SHOWN: usize = 6;
            write!(f, "{} {what} (", items.len())?;
            for (i, item) in items.iter().take(SHOWN).enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{item}")?;
            }
            if items.len() > SHOWN {
                write!(f, ", ... {} more", items.len() - SHOWN)?;
            }
            write!(f, ")")
        }
        let mut parts = 0;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            parts += 1;
            if parts > 1 {
                write!(f, "; ")
            } else {
                Ok(())
            }
        };
        if !self.missing.is_empty() {
            sep(f)?;
            list(f, "missing", &self.missing)?;
        }
        if !self.unexpected.is_empty() {
            sep(f)?;
            list(f, "unexpected", &self.unexpected)?;
        }
        if !self.mis_shaped.is_empty() {
            sep(f)?;
            let items: Vec<String> = self
                .mis_shaped
                .iter()
                .map(|m| format!("{} expected {:?} found {:?}", m.name, m.expected, m.found))
                .collect();
            list(f, "mis-shaped", &items)?;
        }
        Ok(())
    }
}

/// Errors of the runtime crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, header too long, offsets that lie...).
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    InvalidSafetensors { path: PathBuf, reason: String },
    /// A sharded checkpoint's index is unreadable or inconsistent with its shards.
    #[error("{}: invalid sharded checkpoint index: {reason}", path.display())]
    InvalidIndex { path: PathBuf, reason: String },
    #[error("{}: tensor `{name}` has dtype {dtype}, which cnx cannot load (supported: F32, F16, BF16, F64)", path.display())]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// The same tensor appears twice (in two shards, or under two names that map to one).
    #[error("tensor `{name}` appears more than once in the checkpoint ({first} and {second})")]
    DuplicateTensor {
        name: String,
        first: String,
        second: String,
    },
    /// The checkpoint does not fit the model's graph.
    #[error("checkpoint does not match the model: {0}")]
    WeightMismatch(WeightMismatch),
    /// `preprocessor_config.json` is malformed or asks for something unsupported.
    #[error("preprocessor config: {reason}")]
    InvalidPreprocessor { reason: String },
    /// A derived parameter could not be computed (after validation passed: a bug).
    #[error("this is a bug in cnx: {0}")]
    Derive(#[from] crate::weights::derive::DeriveError),
    /// A weight table names a checkpoint tensor the validated checkpoint does not hold (the
    /// table and its checkpoint list disagree: a bug in whatever emitted them).
    #[error("this is a bug in cnx: weight table slot `{0}` is not among the checkpoint tensors it was validated against")]
    WeightTable(String),
    /// `pixel_values` holding NaN or infinity, refused (the default [`crate::program::NonFinite`]
    /// policy): every output they reach would be NaN or infinite, with no word.
    #[error("pixel_values: {count} value(s) are NaN or infinite, the first at [{}] (batch, channel, row, column); refused rather than propagated to the outputs", .first.map(|i| i.to_string()).join(", "))]
    NonFiniteInput { count: usize, first: [usize; 4] },
    /// An input tensor has the wrong shape or size.
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    InputShape {
        what: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

impl Error {
    /// Whether the caller's input is at fault (exit code 2 in the `cnx` command) rather than
    /// cnx (1).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Derive(_) | Error::WeightTable(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
