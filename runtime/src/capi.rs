//! The runtime as a C library (`libconvnextv2.a` / `.so`): what an object written by
//! `cnx compile --emit obj` calls.
//!
//! The object's exported functions (`P_load`, `P_forward` ...; declared by its header) pass
//! their `P_descriptor` and their arguments to the `cnx_aot_*` function of the same job here;
//! its schedule calls the runtime's `cnx_step` (exported from `cnx-runtime`) once per step. Loading validates the checkpoint exactly as
//! `cnx run` does ([`Weights::load`], every mismatch in one message) against the checkpoint
//! list the object carries, and refuses an object this runtime cannot run (another format or
//! cnx version, another workspace layout).
//!
//! Every function returns a [`Code`] (0 = success) and leaves the failure's one-line message
//! in [`cnx_last_error`]; no panic crosses the boundary (each entry point catches them:
//! `CNX_ERROR_INTERNAL`). A model handle is checked against the live models before use, so a
//! freed or foreign handle is an error, not a read of freed memory.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cnx_runtime::artifact::{Artifact, FORMAT};
use cnx_runtime::compiled::{SharedWorkspace, Weights};
use cnx_runtime::program::{check_finite, NonFinite, Program, Value};
use cnx_runtime::schedule::{self, Entry};
use cnx_runtime::{pool, Error, WeightStore};

/// The C error codes (the header's `CNX_*` macros have the same values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Argument = 1,
    Io = 2,
    Weights = 3,
    Input = 4,
    Handle = 5,
    Object = 6,
    Internal = 7,
}

/// What an object's `P_descriptor` holds (its layout is fixed by `cnx_jit::aot`).
#[repr(C)]
pub struct AotDescriptor {
    magic: [u8; 8],
    format: u64,
    entry: Option<Entry>,
    artifact: *const u8,
    artifact_len: usize,
    weights: *const u8,
    weights_len: usize,
}

const MAGIC: [u8; 8] = *b"CNXAOT\0\0";

/// A loaded model: what `P_model *` points to.
pub struct Model {
    descriptor: usize,
    entry: Entry,
    program: Program,
    weights: Weights,
    workspace: SharedWorkspace,
    threads: AtomicUsize,
    logits: Value,
    pooled: Value,
}

/// A failure: its code and its one-line message.
struct Failure(Code, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Io { .. } => Code::Io,
            Error::InvalidSafetensors { .. }
            | Error::InvalidIndex { .. }
            | Error::UnsupportedDtype { .. }
            | Error::DuplicateTensor { .. }
            | Error::WeightMismatch(_) => Code::Weights,
            Error::NonFiniteInput { .. } => Code::Input,
            Error::InputShape { .. } | Error::InvalidPreprocessor { .. } => Code::Argument,
            Error::Derive(_) | Error::WeightTable(_) => Code::Internal,
        };
        Failure(code, e.to_string())
    }
}

fn argument(message: impl Into<String>) -> Failure {
    Failure(Code::Argument, message.into())
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// The models loaded and not freed, by address.
static LIVE: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<usize>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f`, catching panics; records a failure as this thread's last error.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        Err(Failure(
            Code::Internal,
            format!("this is a bug in cnx: {what}"),
        ))
    });
    match result {
        Ok(()) => Code::Ok as c_int,
        Err(Failure(code, message)) => {
            let line = message.replace(['\n', '\0'], " ");
            LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(line).unwrap_or_default());
            code as c_int
        }
    }
}

/// This thread's last failure, as one line (`""` if none). Valid until this thread's next
/// failure.
#[no_mangle]
pub extern "C" fn cnx_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The object's artifact, checked: the descriptor's magic and format, the program this
/// runtime can run.
///
/// # Safety
/// `descriptor` is null or an object's `P_descriptor`.
unsafe fn artifact_of(descriptor: *const AotDescriptor) -> Result<(Artifact, Entry), Failure> {
    let object = |why: &str| Failure(Code::Object, format!("the compiled model's object {why}"));
    // SAFETY: null, or the object's descriptor (the caller's contract).
    let Some(d) = (unsafe { descriptor.as_ref() }) else {
        return Err(object("descriptor is null"));
    };
    if d.magic != MAGIC {
        return Err(object("descriptor is not a cnx object's"));
    }
    if d.format != u64::from(FORMAT) {
        return Err(object(&format!(
            "has format {}; this runtime library runs format {FORMAT}: recompile it with this cnx",
            d.format
        )));
    }
    let Some(entry) = d.entry else {
        return Err(object("has no schedule"));
    };
    if d.artifact.is_null() {
        return Err(object("has no program"));
    }
    // SAFETY: the object's read-only artifact, `artifact_len` bytes (written together).
    let bytes = unsafe { std::slice::from_raw_parts(d.artifact, d.artifact_len) };
    let artifact = Artifact::from_json(bytes).map_err(|e| Failure(Code::Object, e.to_string()))?;
    Ok((artifact, entry))
}

/// Loads the model of `descriptor` from the checkpoint `open` gives, into `*out`.
///
/// # Safety
/// `descriptor` as [`artifact_of`]; `out` null or writable.
unsafe fn load(
    descriptor: *const AotDescriptor,
    out: *mut *mut Model,
    open: impl FnOnce() -> Result<WeightStore, Failure>,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(argument("out is NULL"));
    }
    // SAFETY: the caller's contract.
    let (artifact, entry) = unsafe { artifact_of(descriptor) }?;
    let store = open()?;
    let checkpoint = artifact
        .checkpoint
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()));
    let weights = Weights::load(store, checkpoint, &artifact.program.weights)?;
    let program = artifact.program;
    let output = |name: &str| {
        program.output(name).map(|o| o.value).ok_or_else(|| {
            Failure(
                Code::Object,
                format!("the compiled model's program has no `{name}` output"),
            )
        })
    };
    let (logits, pooled) = (output("logits")?, output("pooler_output")?);
    let model = Box::new(Model {
        descriptor: descriptor as usize,
        entry,
        workspace: SharedWorkspace::new(&program.slot_sizes, &program.sums_sizes),
        program,
        weights,
        threads: AtomicUsize::new(pool::available()),
        logits,
        pooled,
    });
    let ptr = Box::into_raw(model);
    live().insert(ptr as usize);
    // SAFETY: `out` is non-null and writable (the caller's contract).
    unsafe { *out = ptr };
    Ok(())
}

/// `P_load`: loads a checkpoint (a `.safetensors` file, a sharded index or a model
/// directory).
///
/// # Safety
/// `descriptor` is the calling object's; `path` null or a NUL-terminated string; `out` null
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_load(
    descriptor: *const AotDescriptor,
    path: *const c_char,
    out: *mut *mut Model,
) -> c_int {
    guard(|| {
        if path.is_null() {
            return Err(argument("weights_path is NULL"));
        }
        // SAFETY: a NUL-terminated string (the caller's contract).
        let path = unsafe { CStr::from_ptr(path) };
        let path = path
            .to_str()
            .map_err(|_| argument("weights_path is not UTF-8"))?;
        // SAFETY: the caller's contract.
        unsafe { load(descriptor, out, || Ok(WeightStore::open(Path::new(path))?)) }
    })
}

/// `P_load_from_memory`: loads a single-file checkpoint from `len` bytes (copied).
///
/// # Safety
/// `descriptor` is the calling object's; `bytes` null or `len` readable bytes; `out` null or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_load_from_memory(
    descriptor: *const AotDescriptor,
    bytes: *const u8,
    len: usize,
    out: *mut *mut Model,
) -> c_int {
    guard(|| {
        if bytes.is_null() {
            return Err(argument("bytes is NULL"));
        }
        // SAFETY: `len` readable bytes (the caller's contract).
        let bytes = unsafe { std::slice::from_raw_parts(bytes, len) };
        // SAFETY: the caller's contract.
        unsafe { load(descriptor, out, || Ok(WeightStore::from_bytes(bytes)?)) }
    })
}

/// `P_load_embedded`: loads the checkpoint compiled into the object (used in place).
///
/// # Safety
/// `descriptor` is the calling object's; `out` null or writable.
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_load_embedded(
    descriptor: *const AotDescriptor,
    out: *mut *mut Model,
) -> c_int {
    guard(|| {
        // SAFETY: null or the object's descriptor (the caller's contract).
        let weights = unsafe { descriptor.as_ref() }.map(|d| (d.weights, d.weights_len));
        let open = || match weights {
            Some((ptr, len)) if !ptr.is_null() => {
                // SAFETY: the object's read-only weights section, `len` bytes, as long-lived
                // as the object's code (loaded for the program's lifetime).
                let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(ptr, len) };
                Ok(WeightStore::from_static_bytes(bytes)?)
            }
            _ => Err(argument(
                "the object holds no weights (compile it with --embed-weights)",
            )),
        };
        // SAFETY: the caller's contract.
        unsafe { load(descriptor, out, open) }
    })
}

/// The live model `m` of `descriptor`'s object.
///
/// # Safety
/// `m` is null, a handle this library returned, or any other value (refused unless live).
unsafe fn model<'a>(
    descriptor: *const AotDescriptor,
    m: *const Model,
) -> Result<&'a Model, Failure> {
    if m.is_null() {
        return Err(argument("the model is NULL"));
    }
    if !live().contains(&(m as usize)) {
        return Err(Failure(
            Code::Handle,
            "not a live model (freed, or never loaded)".into(),
        ));
    }
    // SAFETY: a live handle: a `Box<Model>` this library leaked and has not freed.
    let model = unsafe { &*m };
    if model.descriptor != descriptor as usize {
        return Err(Failure(
            Code::Handle,
            "the model was loaded by another compiled model's functions".into(),
        ));
    }
    Ok(model)
}

/// `P_set_threads`.
///
/// # Safety
/// `descriptor` is the calling object's; `m` as [`model`].
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_set_threads(
    descriptor: *const AotDescriptor,
    m: *mut Model,
    threads: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let model = unsafe { model(descriptor, m) }?;
        if !(1..=pool::MAX_THREADS).contains(&threads) {
            return Err(argument(format!(
                "threads is {threads}; it must be 1 to {}",
                pool::MAX_THREADS
            )));
        }
        model.threads.store(threads, Ordering::Relaxed);
        Ok(())
    })
}

/// `P_run`: logits and pooled features of `pixel_len` pixel values, every length checked.
///
/// # Safety
/// `descriptor` is the calling object's; `m` as [`model`]; each pointer null or valid for
/// its length (`pixel_len` readable floats, `logits_len` / `pooled_len` writable ones).
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cnx_aot_run(
    descriptor: *const AotDescriptor,
    m: *const Model,
    pixel_values: *const f32,
    pixel_len: usize,
    logits: *mut f32,
    logits_len: usize,
    pooled: *mut f32,
    pooled_len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let model = unsafe { model(descriptor, m) }?;
        // SAFETY: the caller's contract, passed on.
        unsafe {
            model.run(
                pixel_values,
                pixel_len,
                [(logits, logits_len), (pooled, pooled_len)],
            )
        }
    })
}

/// `P_forward`: logits of `batch` images.
///
/// # Safety
/// As [`cnx_aot_run`], with `batch x C x H x W` pixel values and `batch x labels` logits.
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_forward(
    descriptor: *const AotDescriptor,
    m: *const Model,
    pixel_values: *const f32,
    batch: usize,
    logits: *mut f32,
) -> c_int {
    // SAFETY: the caller's contract, lengths from the batch.
    unsafe { run_batch(descriptor, m, pixel_values, batch, logits, Output::Logits) }
}

/// `P_embed`: pooled features (transformers' `pooler_output`) of `batch` images.
///
/// # Safety
/// As [`cnx_aot_run`], with `batch x C x H x W` pixel values and `batch x hidden` features.
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_embed(
    descriptor: *const AotDescriptor,
    m: *const Model,
    pixel_values: *const f32,
    batch: usize,
    pooled: *mut f32,
) -> c_int {
    // SAFETY: the caller's contract, lengths from the batch.
    unsafe { run_batch(descriptor, m, pixel_values, batch, pooled, Output::Pooled) }
}

/// The model's outputs, in [`Model::run`]'s order.
#[derive(Clone, Copy, PartialEq)]
enum Output {
    Logits = 0,
    Pooled = 1,
}

/// [`Model::run`] of one output, with the lengths a batch size implies.
///
/// # Safety
/// As [`cnx_aot_forward`].
unsafe fn run_batch(
    descriptor: *const AotDescriptor,
    m: *const Model,
    pixel_values: *const f32,
    batch: usize,
    out: *mut f32,
    which: Output,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let model = unsafe { model(descriptor, m) }?;
        if batch == 0 {
            return Err(argument("batch is 0"));
        }
        let [c, h, w] = model.program.chw();
        let value = model.outputs()[which as usize];
        let lens = batch
            .checked_mul(c * h * w)
            .zip(batch.checked_mul(value.len));
        let (pixel_len, out_len) =
            lens.ok_or_else(|| argument(format!("batch {batch} is too large")))?;
        let mut outputs = [(std::ptr::null_mut(), 0); 2];
        outputs[which as usize] = (out, out_len);
        // SAFETY: the caller's contract, with the lengths its batch implies.
        unsafe { model.run(pixel_values, pixel_len, outputs) }
    })
}

impl Model {
    /// The outputs' values, logits then pooled features.
    fn outputs(&self) -> [Value; 2] {
        [self.logits, self.pooled]
    }

    /// One forward pass of `pixel_len` pixel values into the outputs given as (pointer,
    /// length), logits then pooled features; a null pointer (with length 0) skips that output.
    /// Allocates nothing once the workspace has seen this batch size.
    ///
    /// # Safety
    /// Each pointer is null or valid for its length (`pixel_len` readable floats, each
    /// output's length writable ones).
    unsafe fn run(
        &self,
        pixel_values: *const f32,
        pixel_len: usize,
        outputs: [(*mut f32, usize); 2],
    ) -> Result<(), Failure> {
        let [c, h, w] = self.program.chw();
        let per_image = c * h * w;
        if pixel_values.is_null() {
            return Err(argument("pixel_values is NULL"));
        }
        if pixel_len == 0 || !pixel_len.is_multiple_of(per_image) {
            return Err(argument(format!(
                "pixel_values holds {pixel_len} floats, not a positive multiple of {c} x {h} x {w} = {per_image}"
            )));
        }
        let batch = pixel_len / per_image;
        let mut wanted: [Option<(Value, &mut [f32])>; 2] = [None, None];
        let names = ["logits", "pooled"];
        for (k, ((ptr, len), value)) in outputs.into_iter().zip(self.outputs()).enumerate() {
            let name = names[k];
            if ptr.is_null() {
                if len != 0 {
                    return Err(argument(format!("{name} is NULL but its length is {len}")));
                }
                continue;
            }
            let want = batch * value.len;
            if len != want {
                return Err(argument(format!(
                    "{name} holds {len} floats; {batch} image(s) give {batch} x {} = {want}",
                    value.len
                )));
            }
            // SAFETY: `len` writable floats (the caller's contract).
            wanted[k] = Some((value, unsafe { std::slice::from_raw_parts_mut(ptr, len) }));
        }
        if wanted.iter().all(Option::is_none) {
            return Err(argument(
                "logits and pooled are both NULL: nothing to compute",
            ));
        }
        // SAFETY: `pixel_len` readable floats (the caller's contract).
        let pixels = unsafe { std::slice::from_raw_parts(pixel_values, pixel_len) };
        check_finite(pixels, [c, h, w], NonFinite::Refuse)?;
        let threads = self.threads.load(Ordering::Relaxed);
        self.workspace.with(batch, |ws| {
            ws.set(self.program.input_value.slot, pixels);
            // SAFETY: `entry` is the schedule the object compiled from this program (checked
            // valid, its workspace layout equal to this runtime's, at load); `ws` has that
            // layout, sized for `batch`.
            unsafe { schedule::run(self.entry, &self.program, &self.weights, ws, batch, threads) }
                .map_err(|f| Failure(Code::Internal, f.to_string()))?;
            for (value, out) in wanted.into_iter().flatten() {
                ws.set_len(value.slot, out.len());
                out.copy_from_slice(ws.get(value.slot));
            }
            Ok(())
        })
    }
}

/// `P_free`: frees a model (null is ignored; a handle that is not live is left alone and
/// recorded as this thread's last error).
///
/// # Safety
/// `m` is null, a handle `cnx_aot_load*` returned, or any other value (left alone unless live).
#[no_mangle]
pub unsafe extern "C" fn cnx_aot_free(descriptor: *const AotDescriptor, m: *mut Model) {
    guard(|| {
        if m.is_null() {
            return Ok(());
        }
        // SAFETY: the caller's contract.
        unsafe { model(descriptor, m) }?;
        live().remove(&(m as usize));
        // SAFETY: a live handle (checked, now removed): the `Box` this library leaked.
        drop(unsafe { Box::from_raw(m) });
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_layout_is_the_objects() {
        // cnx_jit::aot writes: magic 0..8, format 8..16, entry 16..24, artifact 24..40,
        // weights 40..56.
        assert_eq!(std::mem::size_of::<AotDescriptor>(), 56);
        assert_eq!(std::mem::offset_of!(AotDescriptor, format), 8);
        assert_eq!(std::mem::offset_of!(AotDescriptor, entry), 16);
        assert_eq!(std::mem::offset_of!(AotDescriptor, artifact), 24);
        assert_eq!(std::mem::offset_of!(AotDescriptor, artifact_len), 32);
        assert_eq!(std::mem::offset_of!(AotDescriptor, weights), 40);
        assert_eq!(std::mem::offset_of!(AotDescriptor, weights_len), 48);
    }

    #[test]
    fn null_and_dead_handles_are_errors() {
        // SAFETY: null pointers and a handle that was never live: each refused before use.
        unsafe {
            assert_eq!(
                cnx_aot_set_threads(std::ptr::null(), std::ptr::null_mut(), 1),
                Code::Argument as c_int
            );
            let bogus = 0x1000 as *mut Model;
            assert_eq!(
                cnx_aot_set_threads(std::ptr::null(), bogus, 1),
                Code::Handle as c_int
            );
            let msg = CStr::from_ptr(cnx_last_error()).to_str().unwrap();
            assert!(msg.contains("not a live model"), "{msg}");
            let mut out = std::ptr::null_mut();
            assert_eq!(
                cnx_aot_load(std::ptr::null(), c"x.safetensors".as_ptr(), &mut out),
                Code::Object as c_int
            );
            assert!(out.is_null());
        }
    }
}
