//! Ahead-of-time objects: the JIT's schedule written by Cranelift into a relocatable,
//! position-independent object for the host target, with the C entry points a program links
//! against the runtime library (`libconvnextv2`).
//!
//! What the object holds, for symbol prefix `P`:
//! - `P_schedule` (local): the schedule, exactly the function the JIT compiles in memory
//!   ([`clif::define_schedule`]): one call of the runtime's `cnx_step` per step, every
//!   address an immediate offset scaled by the batch;
//! - `P_descriptor` (local, read-only): what the runtime needs to run it, laid out as the
//!   runtime library's `AotDescriptor` (magic, format, the schedule's address, the artifact,
//!   the embedded weights if any);
//! - `P_artifact` (local, read-only): the [`Artifact`] as JSON: the program the code was
//!   compiled from, the checkpoint to validate weights against, the workspace layout;
//! - `P_weights` (local, read-only, 64-byte aligned; `--embed-weights` only): the checkpoint
//!   as safetensors, used in place by `P_load_embedded`;
//! - `P_labels` (exported): the label strings, `P_NUM_LABELS` pointers;
//! - the exported C functions the header declares: each passes `P_descriptor` and its own
//!   arguments to the runtime library's `cnx_aot_*` function of the same job, except
//!   `P_label`, which reads `P_labels` in place.
//!
//! The object carries no machine-specific instructions (the schedule is address arithmetic
//! and calls; Cranelift is given the baseline x86-64 / AArch64 flags, not the host's): the
//! runtime's kernels choose their instruction set where the program runs.

use std::time::{Duration, Instant};

use cranelift_codegen::ir::{condcodes::IntCC, types, InstBuilder};
use cranelift_codegen::settings::Configurable;
use cranelift_module::{default_libcall_names, DataDescription, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};

use cnx_runtime::artifact::{Artifact, FORMAT};

use crate::clif::{self, err, CodegenError, Listings};

/// The descriptor's first eight bytes (the runtime library checks them).
pub const DESCRIPTOR_MAGIC: [u8; 8] = *b"CNXAOT\0\0";

/// What to put in an object.
pub struct ObjectSpec<'a> {
    pub artifact: &'a Artifact,
    /// The symbol prefix (a C identifier).
    pub prefix: &'a str,
    /// The label of each class, by index (`P_labels`).
    pub labels: &'a [String],
    /// The checkpoint as safetensors bytes, to put in the object (`--embed-weights`).
    pub weights: Option<&'a [u8]>,
    /// Run Cranelift's verifier.
    pub verify: bool,
}

/// A written object.
pub struct Object {
    pub bytes: Vec<u8>,
    /// Steps of the schedule (each a runtime call).
    pub steps: usize,
    /// Time to generate the code and write the object.
    pub compile_time: Duration,
}

/// The C functions that forward to the runtime library: (name after the prefix, parameters
/// after the descriptor, returns an `int`, runtime function). The header declares each.
pub const FORWARDERS: &[(&str, usize, bool, &str)] = &[
    ("load", 2, true, "cnx_aot_load"),
    ("load_from_memory", 3, true, "cnx_aot_load_from_memory"),
    ("set_threads", 2, true, "cnx_aot_set_threads"),
    ("forward", 4, true, "cnx_aot_forward"),
    ("embed", 4, true, "cnx_aot_embed"),
    ("run", 7, true, "cnx_aot_run"),
    ("free", 1, false, "cnx_aot_free"),
];

/// Writes the object of `spec`.
pub fn compile_object(spec: &ObjectSpec<'_>) -> Result<Object, CodegenError> {
    let start = Instant::now();
    let program = &spec.artifact.program;
    let workspace = program.workspace();
    let steps = crate::schedule_of(program, &workspace);
    let n_steps = steps.len();
    let schedule = clif::Schedule {
        steps,
        phases: program.phases.iter().map(|p| p.steps.clone()).collect(),
        verify: spec.verify,
        disassemble: false,
    };
    let mut module = ObjectModule::new(
        ObjectBuilder::new(object_isa(spec.verify)?, "cnx", default_libcall_names())
            .map_err(err)?,
    );
    let p = spec.prefix;
    let mut text = Listings::new(false);
    let entry = clif::define_schedule(
        &mut module,
        &schedule,
        &format!("{p}_schedule"),
        Linkage::Local,
        &mut text,
    )?;

    let artifact_json = spec.artifact.to_json();
    let artifact_len = artifact_json.len() as u64;
    let artifact = define_bytes(
        &mut module,
        &format!("{p}_artifact"),
        artifact_json,
        1,
        Linkage::Local,
    )?;
    let weights = match spec.weights {
        Some(bytes) => Some((
            define_bytes(
                &mut module,
                &format!("{p}_weights"),
                bytes.to_vec(),
                64,
                Linkage::Local,
            )?,
            bytes.len(),
        )),
        None => None,
    };
    let descriptor = define_descriptor(&mut module, p, entry, (artifact, artifact_len), weights)?;
    let (labels, count) = define_label_table(&mut module, p, spec.labels)?;
    define_forwarders(&mut module, p, descriptor, weights.is_some(), &mut text)?;
    define_label(&mut module, p, labels, count, &mut text)?;

    let bytes = module.finish().emit().map_err(err)?;
    Ok(Object {
        bytes,
        steps: n_steps,
        compile_time: start.elapsed(),
    })
}

/// `P_descriptor`: magic, format, schedule, artifact (pointer, length), weights (pointer,
/// length; null when not embedded). Its layout is the runtime library's `AotDescriptor`.
fn define_descriptor(
    module: &mut ObjectModule,
    prefix: &str,
    entry: cranelift_module::FuncId,
    (artifact, artifact_len): (cranelift_module::DataId, u64),
    weights: Option<(cranelift_module::DataId, usize)>,
) -> Result<cranelift_module::DataId, CodegenError> {
    let descriptor = module
        .declare_data(
            &format!("{prefix}_descriptor"),
            Linkage::Local,
            false,
            false,
        )
        .map_err(err)?;
    let mut desc = DataDescription::new();
    let mut bytes = vec![0u8; 56];
    bytes[..8].copy_from_slice(&DESCRIPTOR_MAGIC);
    bytes[8..16].copy_from_slice(&u64::from(FORMAT).to_le_bytes());
    bytes[32..40].copy_from_slice(&artifact_len.to_le_bytes());
    if let Some((_, len)) = weights {
        bytes[48..56].copy_from_slice(&(len as u64).to_le_bytes());
    }
    desc.define(bytes.into_boxed_slice());
    desc.set_align(8);
    let entry_ref = module.declare_func_in_data(entry, &mut desc);
    desc.write_function_addr(16, entry_ref);
    let artifact_ref = module.declare_data_in_data(artifact, &mut desc);
    desc.write_data_addr(24, artifact_ref, 0);
    if let Some((w, _)) = weights {
        let w = module.declare_data_in_data(w, &mut desc);
        desc.write_data_addr(40, w, 0);
    }
    module.define_data(descriptor, &desc).map_err(err)?;
    Ok(descriptor)
}

/// The labels as NUL-terminated strings, and the exported table of pointers to them
/// (`P_labels`); returns the table and its length.
fn define_label_table(
    module: &mut ObjectModule,
    prefix: &str,
    labels: &[String],
) -> Result<(cranelift_module::DataId, usize), CodegenError> {
    let mut strings = Vec::new();
    let mut starts = Vec::with_capacity(labels.len());
    for label in labels {
        starts.push(strings.len());
        // A NUL inside a label would end the C string early: written as a space.
        strings.extend(label.bytes().map(|b| if b == 0 { b' ' } else { b }));
        strings.push(0);
    }
    let label_strings = define_bytes(
        module,
        &format!("{prefix}_label_strings"),
        strings,
        1,
        Linkage::Local,
    )?;
    let table_id = module
        .declare_data(&format!("{prefix}_labels"), Linkage::Export, false, false)
        .map_err(err)?;
    let mut table = DataDescription::new();
    table.define(vec![0u8; 8 * starts.len().max(1)].into_boxed_slice());
    table.set_align(8);
    let strings_ref = module.declare_data_in_data(label_strings, &mut table);
    for (i, &s) in starts.iter().enumerate() {
        table.write_data_addr(8 * i as u32, strings_ref, s as i64);
    }
    module.define_data(table_id, &table).map_err(err)?;
    Ok((table_id, starts.len()))
}

/// The exported C functions of [`FORWARDERS`], and `P_load_embedded` when the weights are
/// embedded.
fn define_forwarders(
    module: &mut ObjectModule,
    prefix: &str,
    descriptor: cranelift_module::DataId,
    embedded_weights: bool,
    text: &mut Listings,
) -> Result<(), CodegenError> {
    for &(name, params, returns, target) in FORWARDERS {
        define_forwarder(
            module,
            &format!("{prefix}_{name}"),
            params,
            returns,
            target,
            descriptor,
            text,
        )?;
    }
    if embedded_weights {
        define_forwarder(
            module,
            &format!("{prefix}_load_embedded"),
            1,
            true,
            "cnx_aot_load_embedded",
            descriptor,
            text,
        )?;
    }
    Ok(())
}

/// The target's code generator for objects: position-independent, the architecture's
/// baseline instruction set (not the host's extensions: the object runs on other CPUs of the
/// same architecture).
fn object_isa(
    verify: bool,
) -> Result<std::sync::Arc<dyn cranelift_codegen::isa::TargetIsa>, CodegenError> {
    let mut flags = cranelift_codegen::settings::builder();
    flags.set("opt_level", "speed").map_err(err)?;
    flags
        .set("enable_verifier", if verify { "true" } else { "false" })
        .map_err(err)?;
    flags.set("is_pic", "true").map_err(err)?;
    cranelift_native::builder_with_options(false)
        .map_err(err)?
        .finish(cranelift_codegen::settings::Flags::new(flags))
        .map_err(err)
}

/// A read-only data object holding `bytes`.
fn define_bytes(
    module: &mut ObjectModule,
    name: &str,
    bytes: Vec<u8>,
    align: u64,
    linkage: Linkage,
) -> Result<cranelift_module::DataId, CodegenError> {
    let id = module
        .declare_data(name, linkage, false, false)
        .map_err(err)?;
    let mut data = DataDescription::new();
    // An empty object still needs a byte to have an address.
    data.define(if bytes.is_empty() {
        vec![0].into_boxed_slice()
    } else {
        bytes.into_boxed_slice()
    });
    data.set_align(align);
    module.define_data(id, &data).map_err(err)?;
    Ok(id)
}

/// `name(params...)`, exported: returns `target(&descriptor, params...)`.
#[allow(clippy::too_many_arguments)]
fn define_forwarder(
    module: &mut ObjectModule,
    name: &str,
    params: usize,
    returns: bool,
    target: &str,
    descriptor: cranelift_module::DataId,
    text: &mut Listings,
) -> Result<(), CodegenError> {
    let ret = returns.then_some(types::I32);
    let sig = clif::signature(module, params, ret);
    let target_sig = clif::signature(module, params + 1, ret);
    let callee = module
        .declare_function(target, Linkage::Import, &target_sig)
        .map_err(err)?;
    clif::define_function(
        module,
        name,
        Linkage::Export,
        sig,
        text,
        name,
        |module, b, params| {
            let desc = module.declare_data_in_func(descriptor, b.func);
            let callee = module.declare_func_in_func(callee, b.func);
            let mut args = vec![b.ins().symbol_value(types::I64, desc)];
            args.extend_from_slice(params);
            let call = b.ins().call(callee, &args);
            let results = b.inst_results(call).to_vec();
            b.ins().return_(&results);
        },
    )
    .map(|_| ())
}

/// `const char *P_label(size_t index)`: `P_labels[index]`, or null when out of range.
fn define_label(
    module: &mut ObjectModule,
    prefix: &str,
    labels: cranelift_module::DataId,
    count: usize,
    text: &mut Listings,
) -> Result<(), CodegenError> {
    let mut sig = clif::signature(module, 1, None);
    sig.returns
        .push(cranelift_codegen::ir::AbiParam::new(types::I64));
    let name = format!("{prefix}_label");
    clif::define_function(
        module,
        &name,
        Linkage::Export,
        sig,
        text,
        &name,
        |module, b, params| {
            let index = params[0];
            let (inside, outside) = (b.create_block(), b.create_block());
            let ok = b
                .ins()
                .icmp_imm_u(IntCC::UnsignedLessThan, index, count as i64);
            b.ins().brif(ok, inside, &[], outside, &[]);
            b.switch_to_block(inside);
            let table = module.declare_data_in_func(labels, b.func);
            let base = b.ins().symbol_value(types::I64, table);
            let offset = b.ins().imul_imm_u(index, 8);
            let addr = b.ins().iadd(base, offset);
            let trusted = cranelift_codegen::ir::MemFlagsData::trusted();
            let label = b.ins().load(types::I64, trusted, addr, 0);
            b.ins().return_(&[label]);
            b.switch_to_block(outside);
            let null = b.ins().iconst(types::I64, 0);
            b.ins().return_(&[null]);
        },
    )
    .map(|_| ())
}
