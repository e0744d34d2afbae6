//! `embed_migrations!("dir")`: the migration files of a folder (relative to the crate's
//! `Cargo.toml`), embedded with `include_str!` so that editing one rebuilds the crate.

use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(input: TokenStream) -> syn::Result<TokenStream> {
    let lit: syn::LitStr = syn::parse2(input)?;
    let root = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = std::path::Path::new(&root).join(lit.value());
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        syn::Error::new(
            lit.span(),
            format!("cannot read migrations from {}: {e}", dir.display()),
        )
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".sql") {
            continue;
        }
        let ok = (name.ends_with(".up.sql") || name.ends_with(".down.sql"))
            && name
                .split_once('_')
                .is_some_and(|(v, rest)| v.parse::<i64>().is_ok() && !rest.starts_with('.'));
        if !ok {
            return Err(syn::Error::new(
                lit.span(),
                format!("migration file `{name}`: name it <version>_<name>.up.sql or .down.sql"),
            ));
        }
        let path = entry.path().display().to_string();
        files.push((name, path));
    }
    files.sort();
    let pairs = files
        .iter()
        .map(|(name, path)| quote!((#name, include_str!(#path))));
    Ok(quote! {
        ::actor_orm::Migrations::from_embedded(&[#(#pairs),*])
    })
}
