//! `#[derive(Model)]` and `#[derive(DbEnum)]` for actor-orm. Use them through the `actor-orm`
//! facade; the generated code refers to `::actor_orm`.
//!
//! Each derive is a thin entry over a function on `proc_macro2::TokenStream`, so the expansion
//! can be tested and pinned as a snapshot.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(clippy::unwrap_used)]

use proc_macro::TokenStream;

mod attr;
mod db_enum;
mod embed;
mod model;
mod test_attr;

/// Maps a struct with named fields to a table. See the `actor-orm` documentation for the
/// `#[orm(...)]` keys.
#[proc_macro_derive(Model, attributes(orm))]
pub fn derive_model(input: TokenStream) -> TokenStream {
    model::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Stores a fieldless enum as text, or as a PostgreSQL enum with `#[orm(type_name = "...")]`.
#[proc_macro_derive(DbEnum, attributes(orm))]
pub fn derive_db_enum(input: TokenStream) -> TokenStream {
    db_enum::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The migration files of a folder (relative to the crate's `Cargo.toml`), embedded in the
/// binary: `embed_migrations!("migrations")` gives an `actor_orm::Result<Migrations>`. A file
/// name that is not `<version>_<name>.up.sql` or `.down.sql` is a compile error. Editing a file
/// rebuilds the crate; adding one needs a rebuild of its own (`touch` the source that embeds
/// them).
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    embed::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[cfg(test)]
mod tests;

/// Turns an `async fn` taking an `actor_orm::Pool` into a test run in the test sandbox
/// (`actor_orm::testing::Sandbox`): every session of the pool runs inside one transaction that
/// is rolled back when the test ends, however it ends.
///
/// Arguments: `models(User, Post)` and `enums(Mood)` create the schema from the models;
/// `migrations = "migrations"` applies a folder of migrations (relative to the crate); both
/// are done once per test binary. `isolation = "database"` gives the test a database of its own
/// with real commits instead.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    test_attr::expand(args.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
