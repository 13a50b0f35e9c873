//! `cnx serve`: the model as an HTTP service with dynamic batching (see `crate::serve`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::classify::load_for_images;
use super::{ModelFlags, PassFlags, Threads};
use crate::engine::Backend;
use crate::serve::batcher::BatchPolicy;
use crate::serve::{serve, ServeOptions};
use crate::{Error, ModelSpec};

/// Serve a model over HTTP: POST /v1/classify and /v1/embed (image bytes, JSON with base64, or
/// multipart), GET /health and /metrics, and the Open Inference Protocol (KServe V2) under /v2;
/// requests from all clients are batched together.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelFlags,
    /// Address to listen on (loopback by default; 0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free one; the chosen port is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch: u32,
    /// Longest wait after a batch's first image for more to join it, in milliseconds.
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u64,
    /// Most images waiting; past it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    queue: u32,
    #[command(flatten)]
    threads: Threads,
    /// Largest request body, MiB (413 past it).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_body_mb: u32,
    /// Execution backend.
    #[arg(long, value_enum, default_value_t = Backend::Jit)]
    backend: Backend,
    #[command(flatten)]
    passes: PassFlags,
    /// The model's name on the V2 routes (/v2/models/NAME); default: the last component of
    /// --model (facebook/convnextv2-tiny-1k-224 -> convnextv2-tiny-1k-224).
    #[arg(long)]
    model_name: Option<String>,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let pipeline = self.passes.pipeline()?;
        let spec = ModelSpec::resolve(&self.model.model)?;
        let max_batch = self.max_batch as usize;
        let (loaded, cfg) = load_for_images(spec, &self.model, &pipeline, max_batch)?;
        if loaded.is_backbone() {
            return Err(Error::Usage(format!(
                "{}: a ConvNextV2Backbone has no logits or pooled features to serve",
                loaded.name
            )));
        }
        let options = ServeOptions {
            addr: SocketAddr::new(self.host, self.port),
            policy: BatchPolicy {
                max_batch,
                max_delay: Duration::from_millis(self.max_delay_ms),
                queue: self.queue as usize,
                threads: self.threads.get(),
            },
            max_body_bytes: self.max_body_mb as usize * (1 << 20),
            model_name: self.model_name,
        };
        serve(loaded, self.backend, cfg, options)
    }
}
