//! The C header of an ahead-of-time object: the model's sizes, its entry points and the error
//! codes of the runtime library, under the object's symbol prefix.

use std::fmt::Write;

/// The C error codes of the runtime library (`cnx_aot_*` and the object's functions): name,
/// value, meaning. The runtime library's `capi` module returns the same values (a test holds
/// the two equal).
pub const ERROR_CODES: &[(&str, i32, &str)] = &[
    ("CNX_OK", 0, "success"),
    (
        "CNX_ERROR_ARGUMENT",
        1,
        "a null pointer, a batch or thread count of 0, a buffer of the wrong length",
    ),
    ("CNX_ERROR_IO", 2, "the weights cannot be read"),
    (
        "CNX_ERROR_WEIGHTS",
        3,
        "not a valid checkpoint, or not this model's (every mismatch in the message)",
    ),
    ("CNX_ERROR_INPUT", 4, "pixel values NaN or infinite"),
    (
        "CNX_ERROR_HANDLE",
        5,
        "not a live model of this object (freed, or loaded by another model's functions)",
    ),
    (
        "CNX_ERROR_OBJECT",
        6,
        "the object was made by another cnx than the runtime library: recompile it",
    ),
    (
        "CNX_ERROR_INTERNAL",
        7,
        "a bug in cnx, caught (the message says where)",
    ),
];

/// What the header describes.
pub struct HeaderSpec<'a> {
    pub prefix: &'a str,
    /// How the user named the model, and the command that made the object.
    pub model: &'a str,
    pub command: &'a str,
    pub input_chw: [usize; 3],
    pub num_labels: usize,
    pub hidden_size: usize,
    /// Workspace bytes per image of a batch (activations; weights apart).
    pub workspace_bytes_per_image: usize,
    pub embedded_weights: bool,
    /// The products' arithmetic: "f32", "bf16" or "int8" (bf16: the weights are rounded, int8:
    /// quantised, at load).
    pub precision: &'a str,
    /// The object's file name, for the link line.
    pub object: &'a str,
}

/// The header's text.
pub fn c_header(spec: &HeaderSpec<'_>) -> String {
    let p = spec.prefix;
    let up = p.to_ascii_uppercase();
    let [c, h, w] = spec.input_chw;
    let mut s = String::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        s,
        "/* {p}.h: ConvNeXt V2 `{model}` ({h}x{w} input, {n} labels), compiled ahead of time by cnx {version}:\n *   {command}\n *\n * Link the object with the runtime library of the same cnx version:\n *   cc main.c {object} -L<dir of libconvnextv2> -lconvnextv2 -lpthread -ldl -lm\n *\n * Every function returning int returns CNX_OK (0) or an error code below; cnx_last_error()\n * then holds this thread's last failure as one line. Functions are safe to call from several\n * threads at once (concurrent calls on one model each get their own workspace). Using a\n * model after {p}_free is an error (CNX_ERROR_HANDLE) until another model reuses the address:\n * do not rely on it. */",
        model = spec.model.replace("*/", "* /"),
        n = spec.num_labels,
        command = spec.command.replace("*/", "* /"),
        object = spec.object.replace("*/", "* /"),
    );
    let _ = writeln!(s, "#ifndef {up}_H\n#define {up}_H\n");
    s.push_str("#include <stddef.h>\n\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
    let _ = writeln!(s, "/* pixel_values: batch x {up}_INPUT_CHANNELS x {up}_INPUT_HEIGHT x {up}_INPUT_WIDTH float32 (NCHW), preprocessed as the model's preprocessor_config.json says (`cnx preprocess` writes them). */");
    let _ = writeln!(s, "#define {up}_INPUT_CHANNELS {c}");
    let _ = writeln!(s, "#define {up}_INPUT_HEIGHT {h}");
    let _ = writeln!(s, "#define {up}_INPUT_WIDTH {w}");
    let _ = writeln!(s, "/* logits: batch x {up}_NUM_LABELS; pooled (transformers' pooler_output): batch x {up}_HIDDEN_SIZE. */");
    let _ = writeln!(s, "#define {up}_NUM_LABELS {}", spec.num_labels);
    let _ = writeln!(s, "#define {up}_HIDDEN_SIZE {}", spec.hidden_size);
    let _ = writeln!(
        s,
        "/* Activation memory a forward pass allocates per image of its batch (kept for the next call). */\n#define {up}_WORKSPACE_BYTES_PER_IMAGE {}",
        spec.workspace_bytes_per_image
    );
    let _ = writeln!(
        s,
        "/* 1 when the weights are in the object ({p}_load_embedded). */\n#define {up}_WEIGHTS_EMBEDDED {}",
        u8::from(spec.embedded_weights)
    );
    let _ = writeln!(
        s,
        "/* The 1x1 and downsampling convs' arithmetic: \"f32\", \"bf16\" (the f32 checkpoint's weights rounded to bf16 at load, activations as they are packed) or \"int8\" (weights quantised per output channel at load, activations per pixel). */\n#define {up}_PRECISION \"{}\"\n",
        spec.precision
    );
    s.push_str("/* The runtime library's error codes and last error, shared by every cnx model. */\n#ifndef CNX_OK\n");
    for (name, value, meaning) in ERROR_CODES {
        let _ = writeln!(s, "#define {name} {value} /* {meaning} */");
    }
    s.push_str("/* This thread's last failure, one line (\"\" if none); valid until this thread's next failure. */\nconst char *cnx_last_error(void);\n#endif\n\n");
    let _ = writeln!(s, "typedef struct {p}_model {p}_model;\n");
    let decls = [
        format!("/* Loads the weights (a .safetensors file, a sharded index or a model directory), validated exactly as `cnx run` validates them. */\nint {p}_load(const char *weights_path, {p}_model **out);"),
        format!("/* As {p}_load, from a safetensors file's bytes (copied: the caller may free them after). */\nint {p}_load_from_memory(const void *bytes, size_t len, {p}_model **out);"),
        format!("/* Threads for this model's forward passes, 1 to {} (default: every core). */\nint {p}_set_threads({p}_model *m, size_t threads);", cnx_runtime::pool::MAX_THREADS),
        format!("/* logits[batch x {up}_NUM_LABELS] of pixel_values[batch x C x H x W]. */\nint {p}_forward(const {p}_model *m, const float *pixel_values, size_t batch, float *logits);"),
        format!("/* pooled[batch x {up}_HIDDEN_SIZE] (the image embeddings) of pixel_values. */\nint {p}_embed(const {p}_model *m, const float *pixel_values, size_t batch, float *pooled);"),
        format!("/* Both at once, every length checked: pixel_len a multiple of C x H x W, logits_len and pooled_len the batch's (either output may be NULL with length 0). */\nint {p}_run(const {p}_model *m, const float *pixel_values, size_t pixel_len, float *logits, size_t logits_len, float *pooled, size_t pooled_len);"),
        format!("/* The label of class `index` (id2label), or NULL if out of range. */\nconst char *{p}_label(size_t index);\nextern const char *const {p}_labels[{up}_NUM_LABELS];"),
        format!("/* Frees the model (NULL is ignored). */\nvoid {p}_free({p}_model *m);"),
    ];
    for d in decls {
        s.push_str(&d);
        s.push_str("\n\n");
    }
    if spec.embedded_weights {
        let _ = writeln!(s, "/* Loads the weights compiled into the object (used in place, not copied). */\nint {p}_load_embedded({p}_model **out);\n");
    }
    let _ = writeln!(s, "/* Model-independent names, for code written once for any cnx model: define\n * CNX_MODEL_ALIASES before including one model's header. */\n#ifdef CNX_MODEL_ALIASES");
    for m in [
        "INPUT_CHANNELS",
        "INPUT_HEIGHT",
        "INPUT_WIDTH",
        "NUM_LABELS",
        "HIDDEN_SIZE",
        "WORKSPACE_BYTES_PER_IMAGE",
        "WEIGHTS_EMBEDDED",
        "PRECISION",
    ] {
        let _ = writeln!(s, "#define CNX_{m} {up}_{m}");
    }
    let _ = writeln!(s, "typedef {p}_model cnx_model;");
    let forwarded = crate::aot::FORWARDERS.iter().map(|f| f.0);
    for f in forwarded.chain(["label"]) {
        let _ = writeln!(s, "#define cnx_model_{f} {p}_{f}");
    }
    let _ = writeln!(s, "#define cnx_model_labels {p}_labels");
    if spec.embedded_weights {
        let _ = writeln!(s, "#define cnx_model_load_embedded {p}_load_embedded");
    }
    s.push_str("#endif\n\n#ifdef __cplusplus\n}\n#endif\n\n");
    let _ = writeln!(s, "#endif /* {up}_H */");
    s
}

/// Whether `prefix` is a C identifier that is not a reserved word.
pub fn is_c_identifier(prefix: &str) -> bool {
    const RESERVED: &[&str] = &[
        "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
        "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
        "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
        "union", "unsigned", "void", "volatile", "while",
    ];
    let mut chars = prefix.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&prefix)
        && prefix.len() <= 64
}

/// The default symbol prefix of a model name: its last path component, every character that
/// cannot be in a C identifier as `_` (`tiny-1k-224` gives `tiny_1k_224`).
pub fn default_prefix(model: &str) -> String {
    let last = model
        .trim_end_matches(['/', '\\'])
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(model);
    let last = last.strip_suffix(".json").unwrap_or(last);
    let mut p: String = last
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if !p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        p.insert(0, '_');
    }
    if !is_c_identifier(&p) {
        p.insert_str(0, "cnx_");
    }
    p.truncate(64);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefixes_are_c_identifiers() {
        assert_eq!(default_prefix("tiny-1k-224"), "tiny_1k_224");
        assert_eq!(
            default_prefix("models/facebook/convnextv2-atto-1k-224/"),
            "convnextv2_atto_1k_224"
        );
        assert_eq!(
            default_prefix("facebook/convnextv2-tiny-22k-384"),
            "convnextv2_tiny_22k_384"
        );
        assert_eq!(default_prefix("3x.json"), "_3x");
        assert_eq!(default_prefix("int"), "cnx_int");
        for p in ["tiny_1k_224", "_3x", "cnx_int"] {
            assert!(is_c_identifier(p));
        }
        for p in ["", "1a", "a-b", "int", "a b", "é"] {
            assert!(!is_c_identifier(p), "{p}");
        }
    }
}
