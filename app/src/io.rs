//! NumPy files: `.npy` input tensors and `.npz` output archives (as `np.savez` writes them).

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use cnx_runtime::Tensor;
use npyz::{NpyFile, NpyHeader, Order, WriterBuilder};

use crate::Error;

fn npy_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Npy {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// An array read from a `.npy` / `.npz`, widened to f64 (exact for f32 and f64 files).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    /// The dtype in the file, numpy-style (`<f4`, `<f8`).
    pub dtype: String,
}

/// What a `.npy` header promises: where the data starts and how many elements it holds.
struct NpyPromise {
    data_start: u64,
    numel: u64,
}

/// Checks what npyz would trust before it allocates: the header length against the file
/// (a v2 header may claim 4 GiB) and the shape's element count (its product must not
/// overflow). `bytes` may be the file's first bytes only.
fn precheck_npy(bytes: &[u8], path: &Path) -> Result<Option<NpyPromise>, Error> {
    if bytes.len() < 10 || !bytes.starts_with(b"\x93NUMPY") {
        return Err(npy_error(path, "not a .npy file (no \\x93NUMPY magic)"));
    }
    // bytes.len() >= 10 (checked above), and the v2/v3 arm checks for 12.
    let (start, header_len): (usize, usize) = match bytes[6] {
        1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            12,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        v => return Err(npy_error(path, format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| {
            npy_error(
                path,
                format!("header of {header_len} bytes does not fit the file: truncated"),
            )
        })?;
    let header = String::from_utf8_lossy(header);
    // npyz parses the header with a backtracking grammar that takes exponential time on
    // nested brackets (a 149-byte file of `[[[[...` ran for minutes: found by fuzzing). The
    // arrays cnx reads have a plain dtype, so their header is one flat dict with one tuple:
    // refuse anything else before npyz sees it.
    let count = |c: char| header.chars().filter(|&x| x == c).count();
    if header.len() > 1 << 16
        || count('[') > 0
        || count('{') > 1
        || count('(') > 1
        || count(')') > 1
    {
        return Err(npy_error(
            path,
            "the header is not a plain array's (nested or structured dtype, or over 64 KiB)",
        ));
    }
    if let Some(shape) = header
        .split_once("'shape'")
        .and_then(|(_, rest)| rest.split_once('('))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside)
    {
        let mut numel: u64 = 1;
        for dim in shape.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            let d: u64 = dim.trim_end_matches('L').parse().map_err(|_| {
                npy_error(path, format!("shape entry `{dim}` is not a whole number"))
            })?;
            numel = numel
                .checked_mul(d)
                .ok_or_else(|| npy_error(path, format!("shape ({shape}) overflows")))?;
        }
        return Ok(Some(NpyPromise {
            data_start: (start + header_len) as u64,
            numel,
        }));
    }
    Ok(None)
}

/// Parses one `.npy` image held in memory; float32 and float64, C order.
fn parse_npy(bytes: &[u8], path: &Path) -> Result<Array, Error> {
    parse_npy_of(bytes, path, false)
}

/// [`parse_npy`], also taking integer arrays (int64, int32, uint8) when `integers`: values
/// are exact in f64 up to 2^53.
fn parse_npy_of(bytes: &[u8], path: &Path, integers: bool) -> Result<Array, Error> {
    // Every element takes at least a byte, so a shape promising more elements than the file
    // has bytes is truncated (and its byte count cannot overflow inside npyz).
    if let Some(p) = precheck_npy(bytes, path)? {
        // precheck found the whole header inside `bytes`: data_start <= bytes.len().
        let available = bytes.len() as u64 - p.data_start;
        if p.numel > available {
            return Err(npy_error(
                path,
                format!(
                    "header promises {} elements but {available} bytes of data follow: truncated",
                    p.numel
                ),
            ));
        }
    }
    let mut cursor = Cursor::new(bytes);
    let header = NpyHeader::from_reader(&mut cursor)
        .map_err(|e| npy_error(path, format!("not a .npy file: {e}")))?;
    // The cursor only read `bytes`, so its position is at most bytes.len(): the slice and the
    // subtraction below are in range.
    let start = cursor.position() as usize;
    let npy = NpyFile::with_header(header, &bytes[start..]);
    if npy.order() == Order::Fortran {
        return Err(npy_error(
            path,
            "Fortran-order arrays are not supported; save a C-order array",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ty) => ty.to_string(),
        other => other.descr(),
    };
    let item = npy.dtype().num_bytes().unwrap_or(0);
    // Check the data is all there before reading, so a lying header allocates nothing.
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| npy_error(path, format!("shape {shape:?} overflows")))?;
    let available = bytes.len() - start;
    if numel.saturating_mul(item) > available {
        return Err(npy_error(
            path,
            format!(
                "header promises {shape:?} of {dtype} ({} bytes) but the file holds {available}: truncated",
                numel.saturating_mul(item)
            ),
        ));
    }
    let read_err = |e: std::io::Error| npy_error(path, e.to_string());
    let data: Vec<f64> = match npy.try_data::<f32>() {
        Ok(reader) => reader
            .map(|v| v.map(f64::from))
            .collect::<Result<_, _>>()
            .map_err(read_err)?,
        Err(npy) => match npy.try_data::<f64>() {
            Ok(reader) => reader.collect::<Result<_, _>>().map_err(read_err)?,
            Err(npy) if integers => read_integers(npy)
                .ok_or_else(|| {
                    npy_error(
                        path,
                        format!("dtype {dtype} is not supported (expected float32, float64, int64, int32 or uint8)"),
                    )
                })?
                .map_err(read_err)?,
            Err(_) => {
                return Err(npy_error(
                    path,
                    format!("dtype {dtype} is not supported (expected float32 or float64)"),
                ))
            }
        },
    };
    Ok(Array { shape, data, dtype })
}

/// An int64, int32 or uint8 array's values as f64; `None` for any other dtype.
fn read_integers(npy: NpyFile<&[u8]>) -> Option<std::io::Result<Vec<f64>>> {
    let npy = match npy.try_data::<i64>() {
        Ok(r) => return Some(r.map(|v| v.map(|v| v as f64)).collect()),
        Err(npy) => npy,
    };
    let npy = match npy.try_data::<i32>() {
        Ok(r) => return Some(r.map(|v| v.map(f64::from)).collect()),
        Err(npy) => npy,
    };
    match npy.try_data::<u8>() {
        Ok(r) => Some(r.map(|v| v.map(f64::from)).collect()),
        Err(_) => None,
    }
}

/// Reads a `.npy` file of float or integer values (labels) as an [`Array`]; read with the same
/// caps as [`read_npy`].
pub fn read_npy_array(path: &Path) -> Result<Array, Error> {
    let bytes = read_npy_bytes(path)?;
    parse_npy_of(&bytes, path, true)
}

/// Reads a `.npy` file (float32 or float64) as an f32 tensor. A file larger than the memory
/// limit is refused unread.
pub fn read_npy(path: &Path) -> Result<Tensor, Error> {
    let bytes = read_npy_bytes(path)?;
    npy_tensor(&bytes, path)
}

/// A `.npy` file's bytes, read no further than its header promises (and than a quarter of the
/// memory limit).
fn read_npy_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    // The bytes, the f64 array and the f32 tensor are alive at once: a quarter of the memory.
    let cap = crate::limits().memory_limit().map_or(u64::MAX, |m| m / 4);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // The header first: what it promises bounds what is read (and a file that is not a .npy,
    // `/dev/zero` say, is refused after 64 KiB).
    const PREFIX: u64 = 1 << 16;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(PREFIX)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 == PREFIX {
        // At most 8 bytes an element (float64) after the header.
        let need = precheck_npy(&bytes, path)?
            .map_or(u64::MAX, |p| {
                p.data_start.saturating_add(p.numel.saturating_mul(8))
            })
            .min(cap);
        (&mut file)
            .take(need.saturating_sub(PREFIX).saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > cap {
            return Err(npy_error(
                path,
                format!("larger than {cap} bytes, a quarter of the memory limit (see --limit memory-mb)"),
            ));
        }
    }
    Ok(bytes)
}

/// Reads at most `cap` bytes of `path`; a longer file (or an endless one, such as
/// `/dev/zero`) is an error naming it, after reading `cap + 1` bytes at most.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > cap {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "larger than {cap} bytes, more than this file can be (see --limit)"
            )),
        });
    }
    Ok(bytes)
}

/// A `.npy` file's bytes (float32 or float64) as an f32 tensor; `path` names it in errors.
pub fn npy_tensor(bytes: &[u8], path: &Path) -> Result<Tensor, Error> {
    let a = parse_npy(bytes, path)?;
    let data = a.data.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(&a.shape, data).map_err(|e| npy_error(path, e.to_string()))
}

/// Reads every array of a `.npz` archive (stored or deflated, float32 or float64).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>, Error> {
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| npy_error(path, format!("not a .npz archive: {e}")))?;
    let mut arrays = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| npy_error(path, format!("archive entry {i}: {e}")))?;
        let entry_name = entry
            .name()
            .map_err(|e| npy_error(path, format!("archive entry {i}: {e}")))?
            .to_string();
        let Some(name) = npyz::npz::array_name_from_file_name(&entry_name).map(str::to_string)
        else {
            continue;
        };
        // Read no more than the memory limit, whatever the entry claims (a zip bomb's
        // declared size is a lie).
        let cap = crate::limits().memory_limit().unwrap_or(u64::MAX);
        let mut bytes = Vec::new();
        (&mut entry)
            .take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| npy_error(path, format!("{name}: {e}")))?;
        if bytes.len() as u64 > cap {
            return Err(npy_error(path, format!("{name}: larger than {cap} bytes")));
        }
        let array = parse_npy(&bytes, &path.join(&name))?;
        arrays.insert(name, array);
    }
    Ok(arrays)
}

/// Writes named f32 tensors as a `.npz` archive, atomically: the arrays go to a temporary
/// file in the destination directory, renamed over `path` only once complete, so a failure
/// leaves no file (and never a half-written one).
pub fn write_npz(path: &Path, arrays: &[(&str, &Tensor)]) -> Result<(), Error> {
    write_atomically(path, |file| {
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(true);
        for (name, tensor) in arrays {
            zip.start_file(npyz::npz::file_name_from_array_name(name), options)
                .map_err(std::io::Error::other)?;
            let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
            let mut writer = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut zip)
                .begin_nd()?;
            writer.extend(tensor.data().iter().copied())?;
            writer.finish()?;
        }
        zip.finish().map_err(std::io::Error::other)?.flush()
    })
}

/// Writes an f32 tensor as a `.npy` file, atomically (see [`write_npz`]).
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<(), Error> {
    write_atomically(path, |file| {
        let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(std::io::BufWriter::new(file))
            .begin_nd()?;
        writer.extend(tensor.data().iter().copied())?;
        writer.finish()
    })
}

/// Runs `write` on a temporary file beside `path`, then renames it over `path`: a failure
/// leaves neither a file nor a temporary behind.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&std::fs::File) -> std::io::Result<()>,
) -> Result<(), Error> {
    let file = AtomicFile::create(path)?;
    write(file.tmp.as_file()).map_err(|source| file.io_error(source))?;
    file.commit()
}

/// An output file written in full before it appears: a temporary beside `path`, renamed over
/// it by [`AtomicFile::commit`]. Dropped uncommitted (an error, a panic), it leaves nothing.
pub struct AtomicFile {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile, Error> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".cnx-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
        })
    }

    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.tmp
            .as_file_mut()
            .write_all(bytes)
            .map_err(|source| self.io_error(source))
    }

    fn io_error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Flushes to disk and renames the file into place.
    pub fn commit(self) -> Result<(), Error> {
        let file = self.tmp.as_file();
        file.sync_all().map_err(|e| self.io_error(e))?;
        // Temporary files are created private (0600); the result is an ordinary output file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(0o644);
            file.set_permissions(perms).map_err(|e| self.io_error(e))?;
        }
        let path = self.path;
        self.tmp.persist(&path).map_err(|e| Error::Io {
            path,
            source: e.error,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.npz");
        let a = Tensor::from_vec(&[2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, 7.0]).unwrap();
        let b = Tensor::from_vec(&[1], vec![42.0]).unwrap();
        write_npz(&path, &[("a", &a), ("b", &b)]).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back["a"].shape, vec![2, 3]);
        assert_eq!(back["a"].dtype, "<f4");
        let a64: Vec<f64> = a.data().iter().map(|&v| v as f64).collect();
        assert_eq!(back["a"].data, a64);
        assert_eq!(back["b"].data, vec![42.0]);
        // Only the archive is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn truncated_npy_is_an_error_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("x.npy");
        let t = Tensor::from_vec(&[1, 3, 2, 2], (0..12).map(|v| v as f32).collect()).unwrap();
        write_npz(&dir.path().join("x.npz"), &[("x", &t)]).unwrap();
        // Extract the .npy bytes from the archive and write them truncated.
        let mut zip =
            zip::ZipArchive::new(std::fs::File::open(dir.path().join("x.npz")).unwrap()).unwrap();
        let mut bytes = Vec::new();
        zip.by_name("x.npy")
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::write(&good, &bytes).unwrap();
        assert_eq!(read_npy(&good).unwrap(), t);
        std::fs::write(&good, &bytes[..bytes.len() - 5]).unwrap();
        let err = read_npy(&good).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&good, b"not numpy").unwrap();
        assert!(read_npy(&good)
            .unwrap_err()
            .to_string()
            .contains("not a .npy"));
    }
}
