//! A value of the runtime's program types as the Rust expression that rebuilds it: the one
//! `ToTokens` for the op types, written once over their `serde::Serialize` (which the program
//! already derives for the ahead-of-time object), so a field added to an op is emitted with
//! no change here.
//!
//! The expression names types as serde does, bare (`Linear { in_features: 96, .. }`,
//! `Layout::Nhwc`), for code that imports them (and `Cow`, and has the prelude's `Some`);
//! strings and sequences become borrowed
//! statics (`Cow::Borrowed("..")`, `Cow::Borrowed(&[..])`, the form every `'static` table
//! of the runtime takes) and serde's tuples arrays (`[4, 4]`: the program types hold fixed
//! arrays, no tuples). A value serde cannot describe so (a map, bytes) becomes a
//! `compile_error!` naming it: the emitted code then fails to build with that message, and the
//! emitter's tests, which emit every op fused and unfused, would fail first.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{quote, ToTokens};
use serde::ser::{self, Serialize};

/// `value` as a Rust expression (see the module's documentation).
pub struct RustLiteral<'a, T: ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> ToTokens for RustLiteral<'_, T> {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(match self.0.serialize(Expr) {
            Ok(expr) => expr,
            Err(e) => {
                let message = format!("cnx: cannot write a value as Rust: {}", e.0);
                quote!(::core::compile_error!(#message))
            }
        });
    }
}

/// What cannot be written as a Rust expression.
#[derive(Debug)]
pub struct Unsupported(String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<M: std::fmt::Display>(msg: M) -> Self {
        Unsupported(msg.to_string())
    }
}

/// The serializer: each value becomes one expression.
struct Expr;

fn ident(name: &str) -> Ident {
    Ident::new(name, Span::call_site())
}

fn path(ty: &str, variant: &str) -> TokenStream {
    let (ty, variant) = (ident(ty), ident(variant));
    quote!(#ty::#variant)
}

/// A float literal, or the constant naming a value no literal writes (`Literal` refuses them).
fn float(v: f64, suffixed: impl FnOnce() -> Literal, ty: &str) -> TokenStream {
    let ty = ident(ty);
    match v {
        v if v.is_nan() => quote!(#ty::NAN),
        v if v == f64::INFINITY => quote!(#ty::INFINITY),
        v if v == f64::NEG_INFINITY => quote!(#ty::NEG_INFINITY),
        _ => suffixed().into_token_stream(),
    }
}

type Result = std::result::Result<TokenStream, Unsupported>;

impl ser::Serializer for Expr {
    type Ok = TokenStream;
    type Error = Unsupported;
    type SerializeSeq = Items;
    type SerializeTuple = Items;
    type SerializeTupleStruct = Items;
    type SerializeTupleVariant = Items;
    type SerializeMap = ser::Impossible<TokenStream, Unsupported>;
    type SerializeStruct = Fields;
    type SerializeStructVariant = Fields;

    fn serialize_bool(self, v: bool) -> Result {
        Ok(quote!(#v))
    }
    fn serialize_i8(self, v: i8) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result {
        Ok(Literal::i64_unsuffixed(v).into_token_stream())
    }
    fn serialize_u8(self, v: u8) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result {
        self.serialize_u64(v.into())
    }
    // Unsuffixed: the field's type (`usize` mostly) is inferred.
    fn serialize_u64(self, v: u64) -> Result {
        Ok(Literal::u64_unsuffixed(v).into_token_stream())
    }
    fn serialize_f32(self, v: f32) -> Result {
        Ok(float(v.into(), || Literal::f32_suffixed(v), "f32"))
    }
    fn serialize_f64(self, v: f64) -> Result {
        Ok(float(v, || Literal::f64_suffixed(v), "f64"))
    }
    fn serialize_char(self, v: char) -> Result {
        Ok(Literal::character(v).into_token_stream())
    }
    fn serialize_str(self, v: &str) -> Result {
        Ok(quote!(Cow::Borrowed(#v)))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result {
        Err(Unsupported("bytes".into()))
    }
    fn serialize_none(self) -> Result {
        Ok(quote!(None))
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result {
        let v = value.serialize(Expr)?;
        Ok(quote!(Some(#v)))
    }
    fn serialize_unit(self) -> Result {
        Ok(quote!(()))
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result {
        Ok(ident(name).into_token_stream())
    }
    fn serialize_unit_variant(self, ty: &'static str, _: u32, variant: &'static str) -> Result {
        Ok(path(ty, variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result {
        let (name, v) = (ident(name), value.serialize(Expr)?);
        Ok(quote!(#name(#v)))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        ty: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result {
        let (path, v) = (path(ty, variant), value.serialize(Expr)?);
        Ok(quote!(#path(#v)))
    }
    fn serialize_seq(self, _: Option<usize>) -> std::result::Result<Items, Unsupported> {
        Ok(Items::new(Wrap::BorrowedSlice))
    }
    fn serialize_tuple(self, _: usize) -> std::result::Result<Items, Unsupported> {
        Ok(Items::new(Wrap::Array))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> std::result::Result<Items, Unsupported> {
        Ok(Items::new(Wrap::Call(ident(name).into_token_stream())))
    }
    fn serialize_tuple_variant(
        self,
        ty: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Items, Unsupported> {
        Ok(Items::new(Wrap::Call(path(ty, variant))))
    }
    fn serialize_map(
        self,
        _: Option<usize>,
    ) -> std::result::Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported("a map".into()))
    }
    fn serialize_struct(
        self,
        name: &'static str,
        _: usize,
    ) -> std::result::Result<Fields, Unsupported> {
        Ok(Fields::new(ident(name).into_token_stream()))
    }
    fn serialize_struct_variant(
        self,
        ty: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> std::result::Result<Fields, Unsupported> {
        Ok(Fields::new(path(ty, variant)))
    }
}

/// How a list of items is written.
enum Wrap {
    /// `Cow::Borrowed(&[a, b])`: a `Vec` or `Cow<[T]>` field, as a static slice.
    BorrowedSlice,
    /// `[a, b]`: a fixed array.
    Array,
    /// `Name(a, b)`: a tuple struct or variant.
    Call(TokenStream),
}

/// The items of a sequence, tuple or tuple struct, as they are serialized.
struct Items {
    wrap: Wrap,
    items: Vec<TokenStream>,
}

impl Items {
    fn new(wrap: Wrap) -> Items {
        Items {
            wrap,
            items: Vec::new(),
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> std::result::Result<(), Unsupported> {
        self.items.push(value.serialize(Expr)?);
        Ok(())
    }

    fn finish(self) -> Result {
        let items = self.items;
        Ok(match self.wrap {
            Wrap::BorrowedSlice => quote!(Cow::Borrowed(&[#(#items),*])),
            Wrap::Array => quote!([#(#items),*]),
            Wrap::Call(name) => quote!(#name(#(#items),*)),
        })
    }
}

macro_rules! items {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Items {
            type Ok = TokenStream;
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> std::result::Result<(), Unsupported> {
                self.push(value)
            }
            fn end(self) -> Result {
                self.finish()
            }
        }
    )*};
}

items!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// The fields of a struct or struct variant: `Name { field: value, .. }`.
struct Fields {
    name: TokenStream,
    fields: Vec<TokenStream>,
}

impl Fields {
    fn new(name: TokenStream) -> Fields {
        Fields {
            name,
            fields: Vec::new(),
        }
    }

    fn push<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> std::result::Result<(), Unsupported> {
        let (key, value) = (ident(key), value.serialize(Expr)?);
        self.fields.push(quote!(#key: #value));
        Ok(())
    }

    fn finish(self) -> Result {
        let (name, fields) = (self.name, self.fields);
        Ok(quote!(#name { #(#fields),* }))
    }
}

macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Fields {
            type Ok = TokenStream;
            type Error = Unsupported;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> std::result::Result<(), Unsupported> {
                self.push(key, value)
            }
            fn end(self) -> Result {
                self.finish()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use cnx_runtime::ops::{Conv2d, Linear};
    use cnx_runtime::program::{Step, StepOp, Value};
    use cnx_runtime::weights::derive::ParamSpec;

    fn text<T: Serialize>(v: &T) -> String {
        RustLiteral(v).to_token_stream().to_string()
    }

    #[test]
    fn op_types_become_the_literals_that_build_them() {
        let conv = Conv2d::nchw(3, 96, 4, 4, 0, 1);
        assert_eq!(
            text(&conv),
            "Conv2d { in_channels : 3 , out_channels : 96 , kernel : [4 , 4] , stride : [4 , 4] , \
             padding : [0 , 0] , groups : 1 , layout : Layout :: Nchw , input_norm : None , \
             output_norm : None , precision : Precision :: F32 }"
        );
        let step = Step {
            name: "head".into(),
            op: StepOp::Linear {
                linear: Linear {
                    input_norm: Some(1e-6),
                    ..Linear::new(8, 4)
                },
                x: Value { slot: 1, len: 8 },
                scale: None,
                residual: None,
                weight: 0,
                bias: 1,
                sums: None,
            },
            out: Value { slot: 2, len: 4 },
            out_ty: cnx_runtime::ops::ValueType::features(4),
        };
        let s = text(&step);
        let head =
            "Step { name : Cow :: Borrowed (\"head\") , op : StepOp :: Linear { linear : Linear {";
        assert!(s.starts_with(head), "{s}");
        // f64 written in full: the shortest decimal that reads back as the same value.
        assert!(s.contains("input_norm : Some (0.000001f64)"), "{s}");
        let p = ParamSpec {
            name: "w".into(),
            shape: vec![2, 3].into(),
            derivation: None,
        };
        assert!(text(&p).contains("shape : Cow :: Borrowed (& [2 , 3])"));
        assert_eq!(text(&f64::NAN), "f64 :: NAN");
        // What has no literal form says so at compile time, without a panic.
        let map: std::collections::BTreeMap<u8, u8> = [(1, 2)].into();
        assert!(text(&map).contains("compile_error"));
    }
}
