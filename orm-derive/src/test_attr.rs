//! `#[actor_orm::test]`: an `async fn` taking a `Pool` becomes a `#[test]` that runs it in the
//! test sandbox (`actor_orm::testing::Sandbox`), with the schema and isolation the arguments
//! name.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream, Parser as _};
use syn::punctuated::Punctuated;
use syn::{Ident, ItemFn, LitStr, Path, Token};

/// The attribute's arguments.
#[derive(Default)]
struct Args {
    models: Vec<Path>,
    enums: Vec<Path>,
    migrations: Option<LitStr>,
    database: bool,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            match key.to_string().as_str() {
                "models" | "enums" => {
                    let inner;
                    syn::parenthesized!(inner in input);
                    let paths = Punctuated::<Path, Token![,]>::parse_terminated(&inner)?;
                    let list = if key == "models" {
                        &mut args.models
                    } else {
                        &mut args.enums
                    };
                    list.extend(paths);
                }
                "migrations" => {
                    input.parse::<Token![=]>()?;
                    args.migrations = Some(input.parse()?);
                }
                "isolation" => {
                    input.parse::<Token![=]>()?;
                    let value: LitStr = input.parse()?;
                    args.database = match value.value().as_str() {
                        "database" => true,
                        "transaction" => false,
                        _ => {
                            return Err(syn::Error::new(
                                value.span(),
                                "isolation is \"transaction\" (the default: one outer \
                                 transaction, rolled back) or \"database\" (a database of the \
                                 test's own, with real commits)",
                            ));
                        }
                    };
                }
                _ => {
                    return Err(syn::Error::new(
                        key.span(),
                        "expected models(..), enums(..), migrations = \"dir\" or \
                         isolation = \"transaction\" | \"database\"",
                    ));
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = Args::parse.parse2(args)?;
    let mut test: ItemFn = syn::parse2(item)?;
    if test.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            test.sig.fn_token,
            "#[actor_orm::test] goes on an `async fn` taking the test's `Pool`",
        ));
    }
    if test.sig.inputs.len() != 1 {
        return Err(syn::Error::new_spanned(
            &test.sig.inputs,
            "#[actor_orm::test] functions take one argument: the sandbox's `actor_orm::Pool`",
        ));
    }
    let name = test.sig.ident.clone();
    let vis = test.vis.clone();
    let attrs = std::mem::take(&mut test.attrs);
    let output = test.sig.output.clone();
    let body = format_ident!("__actor_orm_test_body");
    test.sig.ident = body.clone();
    let models = &args.models;
    let enums = &args.enums;
    let migrations = args.migrations.iter().map(|dir| {
        quote! {
            .migrations_dir(::std::path::Path::new(::core::env!("CARGO_MANIFEST_DIR")).join(#dir))
        }
    });
    let isolation = if args.database {
        quote!(::actor_orm::testing::Isolation::Database)
    } else {
        quote!(::actor_orm::testing::Isolation::Transaction)
    };
    Ok(quote! {
        #(#attrs)*
        #[::core::prelude::v1::test]
        #vis fn #name() #output {
            #test
            ::actor_orm::testing::Sandbox::new()
                .models(::actor_orm::SchemaModels::new()
                    #(.model::<#models>())*
                    #(.db_enum::<#enums>())*)
                #(#migrations)*
                .isolation(#isolation)
                .run(#body)
        }
    })
}
