//! A user's crate in one file: one dependency (`convnextv2`), one macro line.
//!
//! ```sh
//! cargo run --release -p convnextv2 --example classify -- \
//!     tests/fixtures/atto-224-b2/model.safetensors tests/fixtures/images/chelsea.png
//! ```
//!
//! The macro compiles `atto-1k-224` (any preset, or a config.json, works the same way) into
//! the `Atto` type at build time; at run time the checkpoint is checked against it, packed
//! once, and each photo is decoded, preprocessed as transformers' image processor does, and
//! classified.

use std::process::ExitCode;

use convnextv2::preprocess::{self, PreprocessConfig, RgbImage};

convnextv2::convnextv2!(config = "atto-1k-224", name = Atto);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, photos @ ..] = args.as_slice() else {
        eprintln!("usage: classify <model.safetensors> <photo>...");
        return ExitCode::from(2);
    };
    match run(weights, photos) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(weights: &str, photos: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let model = Atto::load(weights)?;
    let cfg = PreprocessConfig::for_size(Atto::INPUT_HEIGHT);
    for photo in photos {
        let rgb = image::open(photo)
            .map_err(|e| format!("{photo}: {e}"))?
            .to_rgb8();
        let (w, h) = rgb.dimensions();
        let img = RgbImage::new(w as usize, h as usize, rgb.into_raw())?;
        let (_, _, pixel_values) = preprocess::preprocess(&img, &cfg);
        println!("{photo}");
        for p in &model.classify(&pixel_values, 1, 5)?[0] {
            println!("  {:>6.2}%  {}", 100.0 * p.probability, p.label);
        }
    }
    Ok(())
}
