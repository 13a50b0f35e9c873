//! Mistakes in a `convnextv2!` call are compile errors pointing at the offending token, with
//! a message that says what is wrong (snapshots in `tests/ui/*.stderr`; regenerate with
//! `TRYBUILD=overwrite cargo test -p cnx-tests --test macro_errors` and review the diff).

#[test]
fn macro_mistakes_are_compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
}
