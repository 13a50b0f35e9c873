//! Decoding images for classification: JPEG, PNG, WebP, BMP and GIF (first frame) through the
//! `image` crate, EXIF orientation applied, converted to 8-bit RGB as PIL's `convert("RGB")`
//! does (grey replicated, alpha dropped).

use std::io::Read;
use std::path::Path;

use cnx_compiler::Limits;
use cnx_runtime::preprocess::RgbImage;
use image::ImageDecoder;

/// Why an image cannot be used, in words for the user (the caller adds the path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened or read.
    #[error("{0}")]
    Read(String),
    #[error("not a recognised image format")]
    UnknownFormat,
    #[error("truncated JPEG: the image data ends before its end-of-image marker")]
    TruncatedJpeg,
    /// The decoder refused the data.
    #[error("{0}")]
    Decode(String),
    #[error("image is {width}x{height}")]
    Empty { width: usize, height: usize },
    /// Over the pixel limit (checked from the header, before decoding).
    #[error("{0}")]
    TooLarge(String),
}

/// File extensions `cnx classify` picks up when walking a directory.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// Whether `path` has an image extension.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes `path` into upright 8-bit RGB; the error names the problem. An image over
/// `limits.image_pixels` is refused from its header, before its pixels are allocated.
pub fn decode(path: &Path, limits: &Limits) -> Result<RgbImage, ImageError> {
    let read = |e: std::io::Error| ImageError::Read(e.to_string());
    // No encoding within the pixel limit takes more than 16 bytes a pixel (16-bit RGBA
    // uncompressed is 8): a larger file (or an endless one) is refused after that many bytes.
    let most = limits
        .image_pixels
        .saturating_mul(16)
        .saturating_add(1 << 20)
        .min(limits.memory_limit().map_or(u64::MAX, |m| m / 4));
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(most.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > most {
        return Err(ImageError::TooLarge(format!(
            "the file is over {most} bytes, more than any image within the limit of {} pixels takes (raise it with --limit image-pixels=N)",
            limits.image_pixels
        )));
    }
    decode_bytes(&bytes, limits)
}

/// [`decode`] for an image held in memory.
pub fn decode_bytes(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ImageError> {
    let read = |e: std::io::Error| ImageError::Read(e.to_string());
    let decode = |e: image::ImageError| ImageError::Decode(e.to_string());
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(read)?;
    match reader.format() {
        None => return Err(ImageError::UnknownFormat),
        Some(image::ImageFormat::Jpeg) => check_jpeg_complete(bytes)?,
        Some(_) => {}
    }
    // The decoders' own allocation cap, in line with the pixel limit (16-bit RGBA at most),
    // never below the crate's default 512 MiB.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.image_pixels.saturating_mul(8).max(512 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(decode)?;
    let (w, h) = decoder.dimensions();
    limits
        .check_image(u64::from(w), u64::from(h))
        .map_err(|e| ImageError::TooLarge(e.to_string()))?;
    // A broken EXIF block is not worth failing the image for: PIL ignores it too.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(decode)?;
    img.apply_orientation(orientation);
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(ImageError::Empty {
            width: w,
            height: h,
        });
    }
    RgbImage::new(w, h, rgb.into_raw()).map_err(|e| ImageError::Decode(e.to_string()))
}

/// The `image` crate's JPEG decoder fills a truncated scan with grey instead of failing; PIL
/// refuses such files ("image file is truncated"), and so do we: the last start-of-scan marker
/// (`FF DA`) must be followed by an end-of-image marker (`FF D9`). (Scan data escapes `FF`, so
/// neither marker appears inside it; an EXIF thumbnail's markers come before the main image.)
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), ImageError> {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        _ => Err(ImageError::TruncatedJpeg),
    }
}
