//! Image preprocessing equal to transformers' `ConvNextImageProcessor` (the PIL path).
//!
//! For a target size `S` (the `shortest_edge` of `preprocessor_config.json`):
//! - `S < 384`: resize so the shortest edge is `int(S / crop_pct)` and the long edge
//!   `int(short * long / short)` (truncated), bicubic with antialiasing exactly as Pillow does it
//!   on 8-bit images ([`resize_bicubic_like_pillow`]), then centre-crop `S x S` at
//!   `top = (h - S) / 2`, `left = (w - S) / 2`;
//! - `S >= 384`: resize straight to `S x S`, no crop;
//! - then `x / 255` and `(x - mean) / std` per channel, in float32 as numpy does, HWC to CHW.
//!
//! Decoding is the caller's business: this module takes 8-bit RGB pixels.

use crate::error::{Error, Result};

/// The largest resize target side a `preprocessor_config.json` may ask for (4x the largest
/// input cnx accepts by default).
pub const MAX_SIDE: usize = 65536;

/// The settings of a `preprocessor_config.json` that matter for ConvNeXt.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessConfig {
    /// `size.shortest_edge` (or `size.height`/`width` when square).
    pub size: usize,
    pub crop_pct: f64,
    /// PIL resample filter code (3 = bicubic, the only one ConvNeXt checkpoints use).
    pub resample: u32,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub rescale_factor: f64,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
}

impl PreprocessConfig {
    /// The published checkpoints' settings for size `size`.
    pub fn for_size(size: usize) -> PreprocessConfig {
        PreprocessConfig {
            size,
            crop_pct: 0.875,
            resample: 3,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
        }
    }

    /// Reads `preprocessor_config.json` text; missing keys take the defaults of a checkpoint
    /// of `default_size`.
    pub fn from_json(text: &str, default_size: usize) -> Result<PreprocessConfig> {
        let bad = |reason: String| Error::InvalidPreprocessor { reason };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut c = PreprocessConfig::for_size(default_size);
        if let Some(size) = v.get("size").filter(|s| !s.is_null()) {
            let edge = size
                .get("shortest_edge")
                .or_else(|| size.get("height"))
                .or(Some(size))
                .and_then(|s| s.as_u64())
                .filter(|&s| s > 0)
                .ok_or_else(|| bad(format!("`size` {size} has no positive shortest_edge")))?;
            c.size = edge as usize;
        }
        let float = |key: &str, default: f64| -> Result<f64> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| bad(format!("`{key}` is {x}, not a number"))),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(true),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| bad(format!("`{key}` is {x}, not a boolean"))),
            }
        };
        let triple = |key: &str, default: [f64; 3]| -> Result<[f64; 3]> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => {
                    let values: Vec<f64> = x
                        .as_array()
                        .map(|a| a.iter().filter_map(|e| e.as_f64()).collect())
                        .unwrap_or_default();
                    <[f64; 3]>::try_from(values)
                        .map_err(|_| bad(format!("`{key}` must be 3 numbers, found {x}")))
                }
            }
        };
        c.crop_pct = float("crop_pct", c.crop_pct)?;
        if !(c.crop_pct > 0.0 && c.crop_pct <= 1.0) {
            return Err(bad(format!("`crop_pct` {} is not in (0, 1]", c.crop_pct)));
        }
        // The resize target's short edge (size, or int(size / crop_pct) below 384) sizes
        // every buffer after it.
        let short_edge = if c.size >= 384 {
            c.size as f64
        } else {
            c.size as f64 / c.crop_pct
        };
        if c.size > MAX_SIDE || short_edge > MAX_SIDE as f64 {
            return Err(bad(format!(
                "`size` {} with `crop_pct` {} resizes to a side over {MAX_SIDE}",
                c.size, c.crop_pct
            )));
        }
        c.rescale_factor = float("rescale_factor", c.rescale_factor)?;
        c.do_resize = flag("do_resize")?;
        c.do_rescale = flag("do_rescale")?;
        c.do_normalize = flag("do_normalize")?;
        c.image_mean = triple("image_mean", c.image_mean)?;
        c.image_std = triple("image_std", c.image_std)?;
        if c.image_std.contains(&0.0) {
            return Err(bad("`image_std` has a zero".into()));
        }
        if let Some(r) = v.get("resample").filter(|r| !r.is_null()) {
            let r = r
                .as_u64()
                .ok_or_else(|| bad(format!("`resample` is {r}, not a PIL filter code")))?;
            if r != 3 {
                return Err(bad(format!(
                    "`resample` {r} is not supported (only 3, bicubic, as ConvNeXt uses)"
                )));
            }
        }
        Ok(c)
    }

    /// The resize target (height, width) for an image of `h x w`, before any crop.
    pub fn resize_target(&self, h: usize, w: usize) -> (usize, usize) {
        if self.size >= 384 {
            return (self.size, self.size);
        }
        // transformers: int(shortest_edge / crop_pct), then the long edge int(short * long / short).
        let short_target = (self.size as f64 / self.crop_pct) as usize;
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let long_target = (short_target as f64 * long as f64 / short as f64) as usize;
        if w <= h {
            (long_target, short_target)
        } else {
            (short_target, long_target)
        }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<RgbImage> {
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(pixels.len()) || width == 0 || height == 0 {
            return Err(Error::InputShape {
                what: "RGB image".into(),
                expected: vec![height, width, 3],
                found: vec![pixels.len()],
            });
        }
        Ok(RgbImage {
            width,
            height,
            pixels,
        })
    }

    /// The `w x h` window at (`left`, `top`); it must lie inside the image.
    pub fn crop(&self, left: usize, top: usize, w: usize, h: usize) -> RgbImage {
        assert!(left + w <= self.width && top + h <= self.height);
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in top..top + h {
            let row = &self.pixels[(y * self.width + left) * 3..(y * self.width + left + w) * 3];
            pixels.extend_from_slice(row);
        }
        RgbImage {
            width: w,
            height: h,
            pixels,
        }
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output position: the first input index, the tap count, and fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax =
            (((center + support + 0.5) as i64).min(in_size as i64) as usize).saturating_sub(xmin);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = bicubic((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, &kx) in k.iter().enumerate().take(xmax) {
            let v = if ww != 0.0 { kx / ww } else { kx };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if v < 0.0 {
                (-0.5 + fixed) as i32
            } else {
                (0.5 + fixed) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        bounds,
        ksize,
        weights,
    }
}

/// Pillow's `clip8`: round-shifted fixed point to a byte.
fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's horizontal pass: every row resampled to `out_w` columns (8-bit result).
fn resample_horizontal(img: &RgbImage, out_w: usize) -> RgbImage {
    let c = coefficients(img.width, out_w);
    let mut out = vec![0u8; out_w * img.height * 3];
    for y in 0..img.height {
        let row = &img.pixels[y * img.width * 3..(y + 1) * img.width * 3];
        for xx in 0..out_w {
            let (xmin, xmax) = c.bounds[xx];
            let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
            for ch in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (x, &w) in k.iter().enumerate() {
                    ss += row[(x + xmin) * 3 + ch] as i64 * w as i64;
                }
                out[(y * out_w + xx) * 3 + ch] = clip8(ss);
            }
        }
    }
    RgbImage {
        width: out_w,
        height: img.height,
        pixels: out,
    }
}

/// Pillow's vertical pass: every column resampled to `out_h` rows (8-bit result).
fn resample_vertical(img: &RgbImage, out_h: usize) -> RgbImage {
    let c = coefficients(img.height, out_h);
    let stride = img.width * 3;
    let mut out = vec![0u8; stride * out_h];
    for yy in 0..out_h {
        let (ymin, ymax) = c.bounds[yy];
        let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
        for xx in 0..stride {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (y, &w) in k.iter().enumerate() {
                ss += img.pixels[(y + ymin) * stride + xx] as i64 * w as i64;
            }
            out[yy * stride + xx] = clip8(ss);
        }
    }
    RgbImage {
        width: img.width,
        height: out_h,
        pixels: out,
    }
}

/// `Image.resize((out_w, out_h), Image.BICUBIC)` on an 8-bit RGB image, bit for bit as Pillow
/// (12 and later) computes it: separable with an 8-bit intermediate, antialiased (the kernel
/// widens by the downscale factor), 22-bit fixed-point weights. The pass that removes more
/// rows goes first: vertical first when `H - h > 0` and `H - h > 2 (W - w)`, else horizontal
/// first (older Pillow always went horizontal first). A dimension that does not change gets
/// no pass.
pub fn resize_bicubic_like_pillow(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (dh, dw) = (
        img.height as i64 - out_h as i64,
        img.width as i64 - out_w as i64,
    );
    let vertical_first = dh > 0 && dh > 2 * dw;
    let mut cur = img.clone();
    if vertical_first {
        if out_h != cur.height {
            cur = resample_vertical(&cur, out_h);
        }
        if out_w != cur.width {
            cur = resample_horizontal(&cur, out_w);
        }
    } else {
        if out_w != cur.width {
            cur = resample_horizontal(&cur, out_w);
        }
        if out_h != cur.height {
            cur = resample_vertical(&cur, out_h);
        }
    }
    cur
}

/// Resize and crop as the processor does: the 8-bit image it then rescales and normalises.
pub fn resize_and_crop(img: &RgbImage, cfg: &PreprocessConfig) -> RgbImage {
    if !cfg.do_resize {
        return img.clone();
    }
    let (h, w) = cfg.resize_target(img.height, img.width);
    let resized = resize_bicubic_like_pillow(img, w, h);
    if cfg.size >= 384 {
        return resized;
    }
    let s = cfg.size;
    // The long edge is at least S because the short one is int(S / crop_pct) >= S.
    let top = (resized.height - s.min(resized.height)) / 2;
    let left = (resized.width - s.min(resized.width)) / 2;
    resized.crop(left, top, s.min(resized.width), s.min(resized.height))
}

/// `x * rescale_factor` then `(x - mean) / std` per channel, as numpy computes them (rescale in
/// f64 then cast to f32; normalise in f32), written as CHW into `out` (3 x H x W).
pub fn normalize_to_chw(img: &RgbImage, cfg: &PreprocessConfig, out: &mut [f32]) {
    let plane = img.width * img.height;
    assert_eq!(out.len(), 3 * plane);
    let mean = cfg.image_mean.map(|m| m as f32);
    let std = cfg.image_std.map(|s| s as f32);
    for (p, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let mut x = if cfg.do_rescale {
                (px[c] as f64 * cfg.rescale_factor) as f32
            } else {
                px[c] as f32
            };
            if cfg.do_normalize {
                x = (x - mean[c]) / std[c];
            }
            out[c * plane + p] = x;
        }
    }
}

/// The whole preprocessing of one image: `pixel_values` for it, `3 x S x S` (CHW).
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> (usize, usize, Vec<f32>) {
    let ready = resize_and_crop(img, cfg);
    let mut out = vec![0f32; 3 * ready.width * ready.height];
    normalize_to_chw(&ready, cfg, &mut out);
    (ready.height, ready.width, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_targets_follow_transformers() {
        let c = PreprocessConfig::for_size(224);
        assert_eq!(c.resize_target(300, 451), (256, 384)); // int(256 * 451 / 300) = 384
        assert_eq!(c.resize_target(640, 427), (383, 256)); // int(256 * 640 / 427) = 383
        assert_eq!(c.resize_target(512, 512), (256, 256));
        let c = PreprocessConfig::for_size(384);
        assert_eq!(c.resize_target(300, 451), (384, 384));
    }

    #[test]
    fn identity_and_constant_images_survive_resizing() {
        // Same size: no pass runs. A constant image stays constant (weights sum to 1 << 22).
        let img = RgbImage::new(5, 4, (0..60).map(|v| (v * 4) as u8).collect()).unwrap();
        assert_eq!(resize_bicubic_like_pillow(&img, 5, 4), img);
        let flat = RgbImage::new(37, 23, vec![200; 37 * 23 * 3]).unwrap();
        let out = resize_bicubic_like_pillow(&flat, 11, 50);
        assert!(out.pixels.iter().all(|&v| v == 200));
        assert_eq!((out.width, out.height), (11, 50));
    }

    #[test]
    fn config_parsing() {
        let c = PreprocessConfig::from_json(
            r#"{"size": {"shortest_edge": 384}, "crop_pct": null, "resample": 3}"#,
            224,
        )
        .unwrap();
        assert_eq!(c.size, 384);
        assert_eq!(c.crop_pct, 0.875);
        for bad in [
            r#"{"resample": 2}"#,
            r#"{"image_std": [1, 0, 1]}"#,
            r#"{"image_mean": [1, 2]}"#,
            r#"{"crop_pct": 0}"#,
            r#"{"size": {"longest_edge": 3}}"#,
            "[",
        ] {
            assert!(PreprocessConfig::from_json(bad, 224).is_err(), "{bad}");
        }
        for huge in [
            r#"{"size": {"shortest_edge": 100000}}"#,
            r#"{"size": {"shortest_edge": 224}, "crop_pct": 1e-9}"#,
        ] {
            assert!(PreprocessConfig::from_json(huge, 224).is_err(), "{huge}");
        }
    }
}
