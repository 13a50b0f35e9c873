//! `cnx preprocess`: the pixel_values a model sees for an image.

use std::path::PathBuf;

use crate::{classify, io, Error, ModelSpec};

/// Write the pixel_values a model sees for images (float32 NCHW .npy, as `cnx run` takes):
/// one row per image, in the order given (directories walked, sorted by path).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Image files and directories (walked recursively, as `cnx classify` does).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[arg(long)]
    output: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let cfg = classify::preprocess_config(&spec)?;
        let mut rows = Vec::new();
        for input in classify::collect_inputs(&self.images) {
            let path = input.map_err(|(path, reason)| Error::Image { path, reason })?;
            rows.push(classify::pixel_values(&path, &cfg)?);
        }
        let Some(first) = rows.first() else {
            return Err(Error::Usage("no images found".into()));
        };
        // do_resize: false keeps each image's own size: rows must agree to stack.
        let shape = first.shape().to_vec();
        if let Some(odd) = rows.iter().position(|r| r.shape() != shape) {
            return Err(Error::Usage(format!(
                "images preprocess to different sizes ({:?} and {:?}, image {}): they cannot share one array",
                &shape[1..],
                &rows[odd].shape()[1..],
                odd + 1
            )));
        }
        let data: Vec<f32> = rows.iter().flat_map(|r| r.data().iter().copied()).collect();
        let x = cnx_runtime::Tensor::from_vec(&[rows.len(), shape[1], shape[2], shape[3]], data)?;
        io::write_npy(&self.output, &x)?;
        eprintln!("cnx: wrote {} {:?}", self.output.display(), x.shape());
        Ok(())
    }
}
