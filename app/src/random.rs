//! Random-weight models: the compiler's random parameters and inputs, and a safetensors
//! writer, so that `cnx random-model` writes a complete model directory (config.json,
//! model.safetensors, pixel_values.npy) from a config.

use std::io::Write as _;
use std::path::Path;

pub use cnx_compiler::random::{random_parameters, random_pixel_values};
use safetensors::tensor::TensorView;

use crate::Error;

/// Writes parameters as a safetensors file (f32, Hugging Face names).
pub fn write_safetensors(
    path: &Path,
    params: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), Error> {
    let bytes = safetensors_bytes(params).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    crate::io::write_atomically(path, |mut file| file.write_all(&bytes))
}

/// Parameters as the bytes of a safetensors file (f32, in the order given).
pub fn safetensors_bytes(
    params: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = params
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view = TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .expect("byte count matches the shape");
            (name.as_str(), view)
        })
        .collect();
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(metadata))
}
