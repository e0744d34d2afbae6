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
