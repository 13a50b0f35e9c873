//! Safetensors checkpoints: memory-mapped, converted to f32, renamed to Hugging Face names.
//!
//! A checkpoint is a single `.safetensors` file, a sharded one (`model.safetensors.index.json`
//! naming the shard of every tensor), or a directory holding either. Aligned little-endian f32
//! tensors are used in place (zero-copy from the mapping); f16, bf16 and f64 are converted once,
//! at load. Every structural defect (truncation, a header that claims more than the file holds,
//! offsets that overlap or leave gaps, a byte count that disagrees with dtype and shape) is
//! reported as a typed error before any tensor is touched.

pub mod derive;
mod naming;

pub use naming::NamingScheme;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::{Error, Result, ShapeMismatch, WeightMismatch};

/// The file name of a single-file checkpoint in a model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The file name of a sharded checkpoint's index in a model directory.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The bytes of a checkpoint file.
#[derive(Clone)]
enum Backing {
    /// A memory-mapped file.
    Map(Arc<Mmap>),
    /// Bytes compiled into the binary (`include_bytes!`).
    Static(&'static [u8]),
    /// A copy of bytes handed over by the caller.
    Owned(Arc<Vec<u8>>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Static(b) => b,
            Backing::Owned(v) => v,
        }
    }
}

enum Storage {
    /// f32 data used in place: `len` floats at byte `offset` of the file's bytes, 4-byte
    /// aligned in memory.
    Mapped {
        map: Backing,
        offset: usize,
        len: usize,
    },
    /// Data held as f32 (tensors handed over in memory).
    Owned(Vec<f32>),
    /// f16, bf16, f64 or unaligned f32 data: `bytes` bytes at `offset` of the file's bytes,
    /// converted to f32 the first time they are read. Converting lazily means a tensor that
    /// validation refuses (an unexpected 4 GiB one, say) never costs memory.
    Encoded {
        map: Backing,
        offset: usize,
        bytes: usize,
        dtype: Dtype,
        decoded: std::sync::OnceLock<Vec<f32>>,
    },
}

/// Little-endian `dtype` values as f32; `bytes.len()` is a multiple of the dtype's size
/// (safetensors checked the byte count against dtype and shape).
fn decode(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    // chunks_exact(k) yields slices of exactly k bytes, so the conversions cannot fail.
    match dtype {
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        // F32 (the only other dtype `load_bytes` stores as Encoded).
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// One tensor of a checkpoint, under its Hugging Face name and shape.
pub struct StoredTensor {
    /// The name in the file (differs from the Hugging Face name for timm and bare checkpoints).
    pub source_name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The dtype in the file (`F32`, `F16`, ...).
    pub source_dtype: String,
    /// The shape in Hugging Face terms.
    pub shape: Vec<usize>,
    storage: Storage,
}

impl StoredTensor {
    /// The values as f32, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.storage {
            Storage::Mapped { map, offset, len } => {
                let bytes = &map[*offset..*offset + *len * 4];
                // SAFETY: `load_bytes` creates `Mapped` only when `bytes` is 4-byte aligned in
                // memory, lies inside the file's bytes (checked by safetensors' header validation) and holds
                // exactly `len` little-endian f32 on a little-endian target; every bit pattern
                // is a valid f32. The mapping lives as long as `self` through the `Arc`.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            Storage::Owned(v) => v,
            Storage::Encoded {
                map,
                offset,
                bytes,
                dtype,
                decoded,
            } => decoded.get_or_init(|| decode(&map[*offset..*offset + *bytes], *dtype)),
        }
    }

    /// Whether the data is read in place from the file mapping.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }
}

/// All tensors of a checkpoint, keyed by Hugging Face name.
pub struct WeightStore {
    scheme: NamingScheme,
    tensors: BTreeMap<String, StoredTensor>,
    /// Names in the file that no Hugging Face ConvNeXt V2 tensor corresponds to.
    untranslatable: Vec<String>,
}

impl WeightStore {
    /// Opens a checkpoint: a `.safetensors` file, a `*.index.json` of a sharded one, or a
    /// directory holding `model.safetensors` or `model.safetensors.index.json`.
    pub fn open(path: &Path) -> Result<WeightStore> {
        let path = if path.is_dir() {
            let single = path.join(SINGLE_FILE);
            let index = path.join(SHARD_INDEX);
            if single.is_file() {
                single
            } else if index.is_file() {
                index
            } else {
                return Err(Error::Io {
                    path: single,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no {SINGLE_FILE} or {SHARD_INDEX} in this directory"),
                    ),
                });
            }
        } else {
            path.to_path_buf()
        };
        let raw = if path.to_string_lossy().ends_with(".index.json") {
            load_sharded(&path)?
        } else {
            load_file(&path)?
        };
        Self::from_raw(raw)
    }

    fn from_raw(raw: Vec<(String, StoredTensor)>) -> Result<WeightStore> {
        // A checkpoint whose names fit no scheme is read as Hugging Face: validation then lists
        // every tensor as unexpected and every expected one as missing.
        let scheme = NamingScheme::detect(raw.iter().map(|(n, _)| n.as_str()))
            .unwrap_or(NamingScheme::HuggingFace);
        let mut tensors = BTreeMap::new();
        let mut untranslatable = Vec::new();
        for (name, mut tensor) in raw {
            let Some(hf) = scheme.to_hf_name(&name) else {
                untranslatable.push(name);
                continue;
            };
            tensor.shape = scheme.to_hf_shape(&hf, &tensor.shape);
            if let Some(prev) = tensors.get(&hf) {
                let prev: &StoredTensor = prev;
                return Err(Error::DuplicateTensor {
                    name: hf,
                    first: prev.source_name.clone(),
                    second: name,
                });
            }
            tensors.insert(hf, tensor);
        }
        Ok(WeightStore {
            scheme,
            tensors,
            untranslatable,
        })
    }

    /// Reads a single-file checkpoint compiled into the binary (`include_bytes!`): f32
    /// tensors are used in place when the bytes are 4-byte aligned, else copied once.
    pub fn from_static_bytes(bytes: &'static [u8]) -> Result<WeightStore> {
        Self::from_raw(load_bytes(Backing::Static(bytes), Path::new("(embedded)"))?)
    }

    /// Reads a single-file checkpoint from bytes in memory (copied once).
    pub fn from_bytes(bytes: &[u8]) -> Result<WeightStore> {
        let owned = Backing::Owned(Arc::new(bytes.to_vec()));
        Self::from_raw(load_bytes(owned, Path::new("(memory)"))?)
    }

    /// Reads a sharded checkpoint held in memory: the index's text and each shard's bytes by
    /// the file name the index gives it (copied once). Validated as [`WeightStore::open`]
    /// validates files; a shard the index names but `shards` lacks is a missing file.
    pub fn from_sharded_bytes(
        index_json: &str,
        shards: &BTreeMap<String, Vec<u8>>,
    ) -> Result<WeightStore> {
        let index_path = Path::new("(memory)").join(SHARD_INDEX);
        let raw = load_index(index_json, &index_path, |shard| {
            let path = Path::new("(memory)").join(shard);
            let bytes = shards.get(shard).ok_or_else(|| Error::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such shard"),
            })?;
            load_bytes(Backing::Owned(Arc::new(bytes.clone())), &path)
        })?;
        Self::from_raw(raw)
    }

    /// A store of in-memory tensors with Hugging Face names (random weights, tests).
    pub fn from_tensors(
        tensors: impl IntoIterator<Item = (String, Vec<usize>, Vec<f32>)>,
    ) -> Result<WeightStore> {
        let raw = tensors
            .into_iter()
            .map(|(name, shape, data)| {
                let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if numel != Some(data.len()) {
                    return Err(Error::InputShape {
                        what: format!("tensor `{name}`"),
                        expected: shape,
                        found: vec![data.len()],
                    });
                }
                let tensor = StoredTensor {
                    source_name: name.clone(),
                    file: PathBuf::from("(memory)"),
                    source_dtype: "F32".into(),
                    shape,
                    storage: Storage::Owned(data),
                };
                Ok((name, tensor))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_raw(raw)
    }

    /// The naming scheme the checkpoint was written in.
    pub fn scheme(&self) -> NamingScheme {
        self.scheme
    }

    /// Whether the checkpoint carries a classifier (`classifier.weight`).
    pub fn has_classifier(&self) -> bool {
        self.tensors.contains_key("classifier.weight")
    }

    /// A tensor by Hugging Face name.
    pub fn get(&self, hf_name: &str) -> Option<&StoredTensor> {
        self.tensors.get(hf_name)
    }

    /// Hugging Face names of all tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Keeps only the tensors whose Hugging Face name satisfies `keep` (frees converted copies;
    /// mapped ones cost nothing until read).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.tensors.retain(|name, _| keep(name));
    }

    /// Checks the checkpoint against the `(Hugging Face name, shape)` pairs a graph expects and
    /// reports every missing, unexpected and mis-shaped tensor in one error.
    pub fn validate<'a>(
        &self,
        expected: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<()> {
        let mut report = WeightMismatch::default();
        let mut seen = std::collections::HashSet::new();
        for (name, shape) in expected {
            seen.insert(name);
            match self.tensors.get(name) {
                None => report.missing.push(self.display_name(name)),
                Some(t) if t.shape != shape => report.mis_shaped.push(ShapeMismatch {
                    name: t.source_name.clone(),
                    expected: shape.to_vec(),
                    found: t.shape.clone(),
                }),
                Some(_) => {}
            }
        }
        report.unexpected = self
            .tensors
            .iter()
            .filter(|(name, _)| !seen.contains(name.as_str()))
            .map(|(_, t)| t.source_name.clone())
            .chain(self.untranslatable.iter().cloned())
            .collect();
        report.unexpected.sort();
        if report.is_empty() {
            Ok(())
        } else {
            Err(Error::WeightMismatch(report))
        }
    }

    /// A Hugging Face name as the checkpoint's own scheme would spell it, for messages.
    fn display_name(&self, hf_name: &str) -> String {
        match self.scheme {
            NamingScheme::HuggingFaceBare => hf_name
                .strip_prefix("convnextv2.")
                .unwrap_or(hf_name)
                .to_string(),
            _ => hf_name.to_string(),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Explains a safetensors parse error in terms of the file.
fn describe(err: SafeTensorError, file_len: usize) -> String {
    match err {
        SafeTensorError::HeaderTooSmall => {
            format!("file is {file_len} bytes, too short for the 8-byte header length")
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("header length exceeds the file ({file_len} bytes): truncated or corrupt")
        }
        SafeTensorError::HeaderTooLarge => "header length is over 100 MB: corrupt".into(),
        SafeTensorError::MetadataIncompleteBuffer => format!(
            "tensor data does not end where the file ends ({file_len} bytes): truncated or padded"
        ),
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` has data offsets that overlap or leave a gap")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte count disagrees with its dtype and shape".into()
        }
        other => other.to_string(),
    }
}

/// Maps one safetensors file and reads its tensors (names as in the file).
fn load_file(path: &Path) -> Result<Vec<(String, StoredTensor)>> {
    let file = File::open(path).map_err(io_error(path))?;
    // SAFETY: the mapping is read-only and private to this process. Like every loader that
    // maps checkpoints (safetensors' own examples, candle), we rely on the file not being
    // truncated or rewritten by another process while cnx runs; the data is only ever read.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_error(path))?);
    load_bytes(Backing::Map(map), path)
}

/// Reads the tensors of a safetensors file held in `map` (`path` names it in messages).
fn load_bytes(map: Backing, path: &Path) -> Result<Vec<(String, StoredTensor)>> {
    let invalid = |reason: String| Error::InvalidSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&map).map_err(|e| invalid(describe(e, map.len())))?;
    let base = map.as_ptr() as usize;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let bytes = view.data();
        // safetensors' validation computed numel x dtype size with checked arithmetic and
        // required it to equal the tensor's byte count, so neither product overflows.
        let numel: usize = view.shape().iter().product();
        // `bytes` is a slice of `map`, so its address is at least `base`.
        let data_offset = bytes.as_ptr() as usize - base;
        let storage = match view.dtype() {
            Dtype::F32
                if cfg!(target_endian = "little")
                    && (bytes.as_ptr() as usize).is_multiple_of(4) =>
            {
                Storage::Mapped {
                    map: map.clone(),
                    offset: data_offset,
                    len: numel,
                }
            }
            dtype @ (Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) => Storage::Encoded {
                map: map.clone(),
                offset: data_offset,
                bytes: bytes.len(),
                dtype,
                decoded: std::sync::OnceLock::new(),
            },
            other => {
                return Err(Error::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        out.push((
            name.to_string(),
            StoredTensor {
                source_name: name.to_string(),
                file: path.to_path_buf(),
                source_dtype: format!("{:?}", view.dtype()),
                shape: view.shape().to_vec(),
                storage,
            },
        ));
    }
    Ok(out)
}

/// Reads `model.safetensors.index.json` and every shard it names.
fn load_sharded(index_path: &Path) -> Result<Vec<(String, StoredTensor)>> {
    // An index names each tensor once: published ones are a few KiB. 64 MiB bounds an endless
    // or corrupt file without refusing any real one.
    const MAX_INDEX_BYTES: u64 = 64 << 20;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            File::open(index_path).map_err(io_error(index_path))?,
            MAX_INDEX_BYTES + 1,
        ),
        &mut bytes,
    )
    .map_err(io_error(index_path))?;
    let invalid = |reason: &str| Error::InvalidIndex {
        path: index_path.to_path_buf(),
        reason: reason.into(),
    };
    if bytes.len() as u64 > MAX_INDEX_BYTES {
        return Err(invalid("larger than 64 MiB: not a shard index"));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text"))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));
    load_index(&text, index_path, |shard| load_file(&dir.join(shard)))
}

/// Reads the tensors of every shard a sharded index (`text`, named `index_path` in messages)
/// names, each read by `load_shard` (called once per shard).
fn load_index(
    text: &str,
    index_path: &Path,
    mut load_shard: impl FnMut(&str) -> Result<Vec<(String, StoredTensor)>>,
) -> Result<Vec<(String, StoredTensor)>> {
    let invalid = |reason: String| Error::InvalidIndex {
        path: index_path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid("no `weight_map` object".into()))?;
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| invalid(format!("shard of `{tensor}` is not a file name")))?;
        // Shards live beside the index; a name that climbs out of the directory is refused.
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(invalid(format!(
                "shard name `{shard}` is not a plain file name"
            )));
        }
        by_shard.entry(shard).or_default().push(tensor);
    }
    let mut all: Vec<(String, StoredTensor)> = Vec::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (shard, listed) in by_shard {
        let tensors = load_shard(shard)?;
        for name in listed {
            if !tensors.iter().any(|(n, _)| n == name) {
                return Err(invalid(format!(
                    "`{name}` is listed in shard `{shard}` but not stored there"
                )));
            }
        }
        for (name, t) in tensors {
            if let Some(first) = origin.insert(name.clone(), shard.to_string()) {
                return Err(Error::DuplicateTensor {
                    name,
                    first,
                    second: shard.to_string(),
                });
            }
            all.push((name, t));
        }
    }
    Ok(all)
}

/// Anything that hands out f32 tensors by Hugging Face name: a checkpoint, or a checkpoint plus
/// the weights a compiler pass derived from it.
pub trait WeightSource {
    fn tensor(&self, hf_name: &str) -> Option<&[f32]>;

    /// The weight rearranged for an optimised kernel, if it was prepared at load.
    fn prepared(&self, _hf_name: &str) -> Option<&crate::kernels::PreparedWeights> {
        None
    }
}

impl WeightSource for WeightStore {
    fn tensor(&self, hf_name: &str) -> Option<&[f32]> {
        self.get(hf_name).map(StoredTensor::data)
    }
}

impl WeightSource for std::collections::HashMap<String, Vec<f32>> {
    fn tensor(&self, hf_name: &str) -> Option<&[f32]> {
        self.get(hf_name).map(Vec::as_slice)
    }
}
