//! `cnx random-model`: a model directory with every parameter random.

use std::path::PathBuf;

use super::InputSize;
use crate::{io, random, Error, ModelSpec};

/// Write a random-weight model directory (config.json, model.safetensors, pixel_values.npy).
/// Every parameter is random, GRN and LayerNorm included.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Preset, config.json, or model directory.
    model: String,
    /// Directory to write (created if missing).
    #[arg(long)]
    output: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Batch size of pixel_values.npy.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    #[command(flatten)]
    input_size: InputSize,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let spec = ModelSpec::resolve(&self.model)?;
        let hw = self.input_size.hw(&spec)?;
        spec.check_run(self.batch as usize, hw)?;
        let graph = cnx_compiler::build_graph(&spec.config, hw)?;
        let dir = &self.output;
        let io_err = |path: PathBuf| move |source| Error::Io { path, source };
        std::fs::create_dir_all(dir).map_err(io_err(dir.to_path_buf()))?;
        let params = random::random_parameters(&graph, self.seed);
        random::write_safetensors(&dir.join("model.safetensors"), &params)?;
        let batch = self.batch as usize;
        io::write_npy(
            &dir.join("pixel_values.npy"),
            &random::random_pixel_values(&graph, batch, self.seed),
        )?;
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, &spec.config_json).map_err(io_err(config_path.clone()))?;
        if let Some(pre) = &spec.preprocessor_json {
            let p = dir.join("preprocessor_config.json");
            std::fs::write(&p, pre).map_err(io_err(p.clone()))?;
        }
        eprintln!(
            "cnx: wrote {} ({} random parameters, pixel_values {batch}x{}x{}x{})",
            dir.display(),
            graph.num_params(),
            spec.config.num_channels,
            hw.0,
            hw.1
        );
        Ok(())
    }
}
