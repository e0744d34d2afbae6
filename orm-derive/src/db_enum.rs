//! `#[derive(DbEnum)]`: a fieldless enum stored as text or as a PostgreSQL enum type.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Error, Fields, Result};

use crate::attr::{entries, snake_case};

const ENUM_KEYS: &[(&str, &str)] = &[
    ("type_name", "type_name = \"mood\""),
    ("rename_all", "rename_all = \"kebab-case\""),
];

/// The spellings `rename_all` takes, as serde names them.
const CASES: &[&str] = &[
    "snake_case",
    "kebab-case",
    "SCREAMING_SNAKE_CASE",
    "SCREAMING-KEBAB-CASE",
    "lowercase",
    "UPPERCASE",
    "camelCase",
    "PascalCase",
];

/// A variant's name in one of [`CASES`].
fn spelled(variant: &str, case: &str) -> String {
    let words: Vec<String> = snake_case(variant).split('_').map(str::to_owned).collect();
    let capital = |w: &str| {
        let mut c = w.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    };
    match case {
        "kebab-case" => words.join("-"),
        "SCREAMING_SNAKE_CASE" => words.join("_").to_uppercase(),
        "SCREAMING-KEBAB-CASE" => words.join("-").to_uppercase(),
        "lowercase" => words.concat(),
        "UPPERCASE" => words.concat().to_uppercase(),
        "camelCase" => {
            let mut out = words.first().cloned().unwrap_or_default();
            for w in words.iter().skip(1) {
                out.push_str(&capital(w));
            }
            out
        }
        "PascalCase" => words.iter().map(|w| capital(w)).collect(),
        _ => words.join("_"),
    }
}
const VARIANT_KEYS: &[(&str, &str)] = &[("rename", "rename = \"label\"")];

/// The derive, over token streams.
pub(crate) fn expand(input: TokenStream) -> Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let name = &input.ident;
    let Data::Enum(data) = &input.data else {
        return Err(Error::new(
            name.span(),
            "#[derive(DbEnum)] needs an enum with unit variants",
        ));
    };
    let mut type_name: Option<String> = None;
    let mut case = "snake_case".to_owned();
    for e in entries(&input.attrs, ENUM_KEYS, "an enum")? {
        if e.key == "type_name" {
            type_name = Some(e.string("type_name = \"mood\"")?.value());
        } else if e.key == "rename_all" {
            let lit = e.string("rename_all = \"kebab-case\"")?;
            case = lit.value();
            if !CASES.contains(&case.as_str()) {
                return Err(Error::new(
                    lit.span(),
                    format!(
                        "unknown case `{case}` for rename_all; expected one of: {}",
                        CASES.join(", ")
                    ),
                ));
            }
        }
    }
    let mut idents = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    for v in &data.variants {
        if !matches!(v.fields, Fields::Unit) {
            return Err(Error::new(
                v.ident.span(),
                "#[derive(DbEnum)] variants cannot hold data",
            ));
        }
        let mut label = spelled(&v.ident.to_string(), &case);
        for e in entries(&v.attrs, VARIANT_KEYS, "a variant")? {
            if e.key == "rename" {
                label = e.string("rename = \"label\"")?.value();
            }
        }
        if labels.contains(&label) {
            return Err(Error::new(
                v.ident.span(),
                format!("duplicate label `{label}`"),
            ));
        }
        idents.push(v.ident.clone());
        labels.push(label);
    }
    let krate = quote!(::actor_orm::__private::core);
    let type_tokens = match &type_name {
        Some(t) => quote!(::core::option::Option::Some(#t)),
        None => quote!(::core::option::Option::None),
    };
    let sql_type = match &type_name {
        Some(t) => quote!(#krate::SqlType::Enum(#t)),
        None => quote!(#krate::SqlType::Text),
    };
    Ok(quote! {
        #[automatically_derived]
        impl #krate::DbEnum for #name {
            const TYPE_NAME: ::core::option::Option<&'static str> = #type_tokens;
            const LABELS: &'static [&'static str] = &[#(#labels),*];
            fn label(&self) -> &'static str {
                match self {
                    #(Self::#idents => #labels,)*
                }
            }
            fn from_label(label: &str) -> ::core::option::Option<Self> {
                match label {
                    #(#labels => ::core::option::Option::Some(Self::#idents),)*
                    _ => ::core::option::Option::None,
                }
            }
        }

        #[automatically_derived]
        impl #krate::ColumnValue for #name {
            const SQL_TYPE: #krate::SqlType = #sql_type;
            fn to_value(&self) -> #krate::__private::Value {
                #krate::__private::enum_to_value(self)
            }
            fn null_value() -> #krate::__private::Value {
                #krate::__private::enum_null::<Self>()
            }
            fn decode(row: &#krate::__private::Row, idx: usize, column: &str) -> #krate::Result<Self> {
                #krate::__private::enum_decode(row, idx, column)
            }
        }
    })
}
