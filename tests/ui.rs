//! Compile errors of `#[derive(Model)]` and of typed columns, pinned as `.rs`/`.stderr` pairs.

#[test]
fn compile_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
