//! `convnextv2!`: expands to Rust specialised to one ConvNeXt V2 model.
//!
//! The emitter lives in `cnx-compiler` so it can be unit-tested without a proc-macro context;
//! this crate stays a thin shim. Until the emitter lands, the macro rejects every call with a
//! compile error that says so, rather than emitting a half-working model.

use proc_macro::TokenStream;
use quote::quote_spanned;

/// `convnextv2!(config = "tiny-1k-224")`: not available yet (see the crate docs).
#[proc_macro]
pub fn convnextv2(input: TokenStream) -> TokenStream {
    let input = proc_macro2::TokenStream::from(input);
    let span = input
        .clone()
        .into_iter()
        .next()
        .map(|t| t.span())
        .unwrap_or_else(proc_macro2::Span::call_site);
    quote_spanned!(span=> compile_error!("convnextv2!: the code generator is not implemented yet; use the `cnx` command");).into()
}
