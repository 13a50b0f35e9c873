//! `convnextv2!`: expands to Rust specialised to one ConvNeXt V2 model.
//!
//! A thin shim: the parsing, the compiler pipeline and the emitter live in `cnx-compiler`
//! (`backend::rust::expand`), where they are unit-tested without a proc-macro context. Use the
//! macro through the `convnextv2` crate, which re-exports it beside the runtime its code links.

use std::path::PathBuf;

use proc_macro::TokenStream;

/// `convnextv2!(config = "tiny-1k-224")`: a classifier type specialised to one model.
///
/// Options: `config` (a preset such as `"tiny-1k-224"`, `"facebook/convnextv2-tiny-1k-224"`,
/// or a path to a `config.json` relative to the crate's `Cargo.toml`), `name = TypeName`
/// (default `ConvNextV2`), `image_size = 384` or `image_size = (97, 75)` (height, width;
/// default: the config's), `fuse = false` (the
/// unfused graph), `weights = "path/model.safetensors"` (compiled into the binary, loaded by
/// `TypeName::embedded()`).
#[proc_macro]
pub fn convnextv2(input: TokenStream) -> TokenStream {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_default();
    cnx_compiler::backend::rust::expand(input.into(), &manifest_dir).into()
}
