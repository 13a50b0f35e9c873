//! `cnx compare`: the max differences between the arrays two `.npz` files share.

use std::path::PathBuf;

use crate::{io, Error};

/// Compare the arrays two .npz files share: max absolute and relative difference.
#[derive(Debug, clap::Args)]
pub struct Args {
    a: PathBuf,
    b: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<(), Error> {
        let (xa, xb) = (io::read_npz(&self.a)?, io::read_npz(&self.b)?);
        let mut shared = 0;
        println!(
            "{:<24} {:>14} {:>14} {:>12}",
            "array", "max |a-b|", "max |b|", "relative"
        );
        for (name, va) in &xa {
            let Some(vb) = xb.get(name) else { continue };
            shared += 1;
            if va.shape != vb.shape {
                println!("{name:<24} shapes differ: {:?} vs {:?}", va.shape, vb.shape);
                continue;
            }
            let diff = va
                .data
                .iter()
                .zip(&vb.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            let scale = vb.data.iter().map(|v| v.abs()).fold(0.0, f64::max);
            println!(
                "{name:<24} {diff:>14.3e} {scale:>14.3e} {:>12.3e}",
                diff / scale.max(f64::MIN_POSITIVE)
            );
        }
        if shared == 0 {
            return Err(Error::Usage(format!(
                "{} and {} share no array names",
                self.a.display(),
                self.b.display()
            )));
        }
        Ok(())
    }
}
