//! Decoding images for classification: JPEG, PNG, WebP, BMP and GIF (first frame) through the
//! `image` crate, EXIF orientation applied, converted to 8-bit RGB as PIL's `convert("RGB")`
//! does (grey replicated, alpha dropped).

use std::path::Path;

use cnx_runtime::preprocess::RgbImage;
use image::ImageDecoder;

/// File extensions `cnx classify` picks up when walking a directory.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// Whether `path` has an image extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes `path` into upright 8-bit RGB; the error names the problem.
pub fn decode(path: &Path) -> Result<RgbImage, String> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        None => return Err("not a recognised image format".into()),
        Some(image::ImageFormat::Jpeg) => check_jpeg_complete(path)?,
        Some(_) => {}
    }
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    // A broken EXIF block is not worth failing the image for: PIL ignores it too.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(format!("image is {w}x{h}"));
    }
    RgbImage::new(w, h, rgb.into_raw()).map_err(|e| e.to_string())
}

/// The `image` crate's JPEG decoder fills a truncated scan with grey instead of failing; PIL
/// refuses such files ("image file is truncated"), and so do we: the last start-of-scan marker
/// (`FF DA`) must be followed by an end-of-image marker (`FF D9`). (Scan data escapes `FF`, so
/// neither marker appears inside it; an EXIF thumbnail's markers come before the main image.)
fn check_jpeg_complete(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        _ => Err("truncated JPEG: the image data ends before its end-of-image marker".into()),
    }
}
