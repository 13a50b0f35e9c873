//! `cnx preprocess`: the pixel_values a model sees for an image.

use std::path::PathBuf;

use crate::{classify, io, Error, ModelSpec};

/// Write the pixel_values a model sees for an image (float32 NCHW .npy, as `cnx run` takes).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    image: PathBuf,
    #[arg(long)]
    output: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let cfg = classify::preprocess_config(&spec)?;
        let x = classify::pixel_values(&self.image, &cfg)?;
        io::write_npy(&self.output, &x)?;
        eprintln!("cnx: wrote {} {:?}", self.output.display(), x.shape());
        Ok(())
    }
}
