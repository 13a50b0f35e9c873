//! What an ahead-of-time object carries for the runtime besides its code: the program the code
//! was compiled from, the checkpoint it is validated against, and the workspace layout the
//! code's immediates assume. `cnx compile --emit obj` writes it (JSON, in a read-only section);
//! the runtime library reads it back when a C program loads the model, and refuses an object
//! whose layout or version it does not share.

use crate::compiled::Workspace;
use crate::program::Program;

/// Bumped whenever the object's contract with the runtime changes (the descriptor, the step
/// call, this struct): an object is only run by a runtime of the same format.
pub const FORMAT: u32 = 2;

/// The model an object was compiled for.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// [`FORMAT`] of the cnx that wrote it.
    pub format: u32,
    /// The version of the cnx that wrote it.
    pub cnx_version: String,
    /// How the user named the model (preset, path or hub id).
    pub model: String,
    /// The checkpoint tensors a loaded checkpoint must hold exactly: Hugging Face names and
    /// shapes, as `cnx run` validates them.
    pub checkpoint: Vec<(String, Vec<usize>)>,
    /// The program the code runs: its steps, weight table, slots and outputs.
    pub program: Program,
    /// The workspace layout the code was compiled with (per image, f32 / f64 elements).
    pub value_offsets: Vec<usize>,
    pub sums_offsets: Vec<usize>,
}

/// An object the runtime cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the compiled model's object {0}")]
pub struct ArtifactError(pub String);

impl Artifact {
    /// The artifact of `program`, for the workspace it lays out.
    pub fn new(
        model: impl Into<String>,
        checkpoint: Vec<(String, Vec<usize>)>,
        program: Program,
    ) -> Artifact {
        let ws = program.workspace();
        Artifact {
            format: FORMAT,
            cnx_version: env!("CARGO_PKG_VERSION").into(),
            model: model.into(),
            checkpoint,
            value_offsets: ws.offsets().to_vec(),
            sums_offsets: ws.sums_offsets().to_vec(),
            program,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an artifact is plain data")
    }

    /// Reads an artifact back and checks that this runtime can run its code: same format and
    /// version, a valid program, the workspace this runtime lays out for it.
    pub fn from_json(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
        let artifact: Artifact = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError(format!("is corrupt ({e})")))?;
        let version = env!("CARGO_PKG_VERSION");
        if artifact.format != FORMAT || artifact.cnx_version != version {
            return Err(ArtifactError(format!(
                "was made by cnx {} (object format {}); this runtime is cnx {version} (format {FORMAT}): recompile it",
                artifact.cnx_version, artifact.format
            )));
        }
        artifact
            .program
            .validate()
            .map_err(|e| ArtifactError(format!("holds an invalid program: {e}")))?;
        let ws: Workspace = artifact.program.workspace();
        if ws.offsets() != artifact.value_offsets || ws.sums_offsets() != artifact.sums_offsets {
            return Err(ArtifactError(
                "lays out its workspace unlike this runtime: recompile it".into(),
            ));
        }
        Ok(artifact)
    }
}
