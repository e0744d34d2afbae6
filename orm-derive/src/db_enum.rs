//! `#[derive(DbEnum)]`: a fieldless enum stored as text or as a PostgreSQL enum type.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Error, Fields, Result};

use crate::attr::{entries, snake_case};

const ENUM_KEYS: &[(&str, &str)] = &[("type_name", "type_name = \"mood\"")];
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
    for e in entries(&input.attrs, ENUM_KEYS, "an enum")? {
        if e.key == "type_name" {
            type_name = Some(e.string("type_name = \"mood\"")?.value());
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
        let mut label = snake_case(&v.ident.to_string());
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
