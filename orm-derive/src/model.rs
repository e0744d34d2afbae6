//! `#[derive(Model)]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned as _;
use syn::{Data, DeriveInput, Error, Fields, Result, Type};

use crate::attr::{entries, snake_case};

const STRUCT_KEYS: &[(&str, &str)] = &[
    ("table_name", "table_name = \"users\""),
    ("schema", "schema = \"app\""),
    ("dirty_check", "dirty_check = false"),
    ("read_only", "read_only"),
    ("no_key", "no_key"),
    (
        "has_many",
        "has_many(name = \"films\", model = Film, by = \"language_id\")",
    ),
    (
        "has_one",
        "has_one(name = \"details\", model = FilmDetails, by = \"film_id\")",
    ),
    (
        "belongs_to",
        "belongs_to(name = \"order\", model = Order, by = \"order_id, order_day\")",
    ),
    (
        "many_to_many",
        "many_to_many(name = \"actors\", model = Actor, through = FilmActor, from = \"film_id\", to = \"actor_id\")",
    ),
    (
        "index",
        "index(columns = \"last_name, first_name\", unique = true, name = \"people_by_name\")",
    ),
];

/// A relation declared on the struct.
struct Declared {
    kind: String,
    name: String,
    model: syn::Path,
    by: Vec<String>,
    through: Option<(syn::Path, String, String)>,
}

fn declared(e: &crate::attr::Entry, example: &str) -> Result<Declared> {
    let kind = e.key.to_string();
    let name = e.required("name", example)?.string(example)?.value();
    let model = e.required("model", example)?.path(example)?;
    let mut out = Declared {
        kind: kind.clone(),
        name,
        model,
        by: Vec::new(),
        through: None,
    };
    if kind == "many_to_many" {
        let through = e.required("through", example)?.path(example)?;
        let from = e.required("from", example)?.string(example)?.value();
        let to = e.required("to", example)?.string(example)?.value();
        out.through = Some((through, from, to));
    } else {
        out.by = column_names(&e.required("by", example)?.string(example)?.value());
    }
    for part in &e.list {
        let k = part.key.to_string();
        let allowed: &[&str] = if kind == "many_to_many" {
            &["name", "model", "through", "from", "to"]
        } else {
            &["name", "model", "by"]
        };
        if !allowed.contains(&k.as_str()) {
            return Err(Error::new(
                part.key.span(),
                format!(
                    "unknown part `{k}` of {kind}; the correct format looks like #[orm({example})]"
                ),
            ));
        }
    }
    Ok(out)
}

/// `"a, b"` as `["a", "b"]`: a comma-separated list of column names, blanks dropped.
fn column_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// `index(columns = "a, b", unique = true, name = "…")` on the struct: (name, columns, unique).
fn struct_index(e: &crate::attr::Entry) -> Result<(Option<String>, Vec<String>, bool)> {
    let example =
        "index(columns = \"last_name, first_name\", unique = true, name = \"people_by_name\")";
    let columns = column_names(&e.required("columns", example)?.string(example)?.value());
    if columns.is_empty() {
        return Err(Error::new(
            e.key.span(),
            format!("an index needs columns; the correct format looks like #[orm({example})]"),
        ));
    }
    let mut name = None;
    let mut unique = false;
    for part in &e.list {
        match part.key.to_string().as_str() {
            "columns" => {}
            "name" => name = Some(part.string(example)?.value()),
            "unique" => unique = part.bool(example)?,
            other => {
                return Err(Error::new(
                    part.key.span(),
                    format!(
                        "unknown part `{other}` of index; the correct format looks like #[orm({example})]"
                    ),
                ));
            }
        }
    }
    Ok((name, columns, unique))
}

const FIELD_KEYS: &[(&str, &str)] = &[
    ("primary_key", "primary_key"),
    ("auto_increment", "auto_increment"),
    ("column_name", "column_name = \"name\""),
    ("default", "default = \"now()\""),
    ("generated", "generated = \"price * quantity\""),
    ("version", "version"),
    ("skip", "skip"),
    ("json", "json"),
    ("references", "references = Parent"),
    ("unique", "unique"),
    ("max_length", "max_length = 64"),
    ("index", "index"),
];

struct Field {
    ident: syn::Ident,
    ty: Type,
    column: String,
    primary_key: bool,
    auto_increment: bool,
    default: Option<Option<syn::LitStr>>,
    generated: Option<Option<syn::LitStr>>,
    version: bool,
    json: bool,
    unique: bool,
    references: Option<syn::Path>,
    max_length: Option<u32>,
    index: bool,
}

/// The derive, over token streams.
pub(crate) fn expand(input: TokenStream) -> Result<TokenStream> {
    let input: DeriveInput = syn::parse2(input)?;
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(Error::new(
            input.generics.span(),
            "#[derive(Model)] does not support generic structs",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(Error::new(
            name.span(),
            "#[derive(Model)] needs a struct with named fields",
        ));
    };
    let Fields::Named(named) = &data.fields else {
        return Err(Error::new(
            name.span(),
            "#[derive(Model)] needs a struct with named fields, like `struct User { id: i64 }`",
        ));
    };

    let mut table = snake_case(&name.to_string());
    let mut schema: Option<String> = None;
    let mut dirty_check = true;
    let mut read_only = false;
    let mut no_key = false;
    let mut relations: Vec<Declared> = Vec::new();
    let mut indexes: Vec<(Option<String>, Vec<String>, bool)> = Vec::new();
    for e in entries(&input.attrs, STRUCT_KEYS, "a struct")? {
        let key = e.key.to_string();
        if key == "index" {
            indexes.push(struct_index(&e)?);
            continue;
        }
        if let Some((_, example)) = STRUCT_KEYS
            .iter()
            .find(|(k, ex)| *k == key && ex.starts_with(&format!("{key}(")))
        {
            relations.push(declared(&e, example)?);
            continue;
        }
        match key.as_str() {
            "table_name" => table = e.string("table_name = \"users\"")?.value(),
            "schema" => schema = Some(e.string("schema = \"app\"")?.value()),
            "dirty_check" => dirty_check = e.bool("dirty_check = false")?,
            "read_only" => read_only = true,
            "no_key" => no_key = true,
            _ => {}
        }
    }

    let mut fields: Vec<Field> = Vec::new();
    let mut skipped: Vec<syn::Ident> = Vec::new();
    for f in &named.named {
        let ident = f
            .ident
            .clone()
            .ok_or_else(|| Error::new(f.span(), "expected a named field"))?;
        let mut field = Field {
            column: ident.to_string().trim_start_matches("r#").to_owned(),
            ident,
            ty: f.ty.clone(),
            primary_key: false,
            auto_increment: false,
            default: None,
            generated: None,
            version: false,
            json: false,
            unique: false,
            references: None,
            max_length: None,
            index: false,
        };
        let mut skip = false;
        for e in entries(&f.attrs, FIELD_KEYS, "a field")? {
            match e.key.to_string().as_str() {
                "primary_key" => field.primary_key = true,
                "auto_increment" => field.auto_increment = true,
                "column_name" => field.column = e.string("column_name = \"name\"")?.value(),
                "default" => {
                    field.default = Some(match &e.value {
                        Some(_) => Some(e.string("default = \"now()\"")?),
                        None => None,
                    })
                }
                "generated" => {
                    field.generated = Some(match &e.value {
                        Some(_) => Some(e.string("generated = \"price * quantity\"")?),
                        None => None,
                    })
                }
                "version" => field.version = true,
                "skip" => skip = true,
                "json" => field.json = true,
                "unique" => field.unique = true,
                "references" => field.references = Some(e.path("references = Parent")?),
                "max_length" => field.max_length = Some(e.int("max_length = 64")?),
                "index" => field.index = true,
                _ => {}
            }
        }
        if skip {
            skipped.push(field.ident);
            continue;
        }
        if field.generated.is_some()
            && (field.default.is_some()
                || field.primary_key
                || field.version
                || field.auto_increment)
        {
            return Err(Error::new(
                field.ident.span(),
                "#[orm(generated)] marks a column the database computes: it cannot also be a key, a version, auto_increment or have a default",
            ));
        }
        if field.version && !is_named(&field.ty, &["i16", "i32", "i64"]) {
            return Err(Error::new(
                field.ty.span(),
                "#[orm(version)] needs an integer field (i16, i32 or i64)",
            ));
        }
        if field.auto_increment && !is_named(&field.ty, &["i16", "i32", "i64"]) {
            return Err(Error::new(
                field.ty.span(),
                "#[orm(auto_increment)] needs an integer field (i16, i32 or i64)",
            ));
        }
        if let Some(first) = fields.iter().find(|o| o.column == field.column) {
            return Err(Error::new(
                field.ident.span(),
                format!(
                    "duplicate column `{}`: field `{}` already maps to it; use #[orm(column_name = \"other\")]",
                    field.column, first.ident
                ),
            ));
        }
        fields.push(field);
    }
    let has_key = fields.iter().any(|f| f.primary_key);
    if !has_key && !read_only && !no_key {
        return Err(Error::new(
            name.span(),
            format!(
                "model `{name}` has no primary key; mark one or more fields with #[orm(primary_key)], or the struct with #[orm(read_only)] (a view) or #[orm(no_key)] (a table without a key: queried and inserted into, never saved or deleted)"
            ),
        ));
    }
    if has_key && no_key {
        return Err(Error::new(
            name.span(),
            "#[orm(no_key)] is for a table without a primary key, but a field is marked #[orm(primary_key)]",
        ));
    }
    if fields.iter().filter(|f| f.version).count() > 1 {
        return Err(Error::new(
            name.span(),
            "a model has at most one #[orm(version)] field",
        ));
    }

    let krate = quote!(::actor_orm::__private::core);
    let schema_tokens = match &schema {
        Some(s) => quote!(::core::option::Option::Some(#s)),
        None => quote!(::core::option::Option::None),
    };

    let column_metas = fields.iter().map(|f| {
        let column = &f.column;
        let field_name = f.ident.to_string();
        let ty = &f.ty;
        let sql_type = match (f.json, f.max_length) {
            (true, _) => quote!(#krate::SqlType::Jsonb),
            (false, Some(n)) => quote!(#krate::SqlType::Varchar(#n)),
            (false, None) => quote!(<#ty as #krate::ColumnValue>::SQL_TYPE),
        };
        let nullable = if f.json { let n = is_option(ty); quote!(#n) } else { quote!(<#ty as #krate::ColumnValue>::NULLABLE) };
        let (pk, ai, version, unique, json) = (f.primary_key, f.auto_increment, f.version, f.unique, f.json);
        let has_default = f.default.is_some();
        let default_sql = match &f.default {
            Some(Some(s)) => quote!(::core::option::Option::Some(#s)),
            _ => quote!(::core::option::Option::None),
        };
        let generated = f.generated.is_some();
        let generated_sql = match &f.generated {
            Some(Some(s)) => quote!(::core::option::Option::Some(#s)),
            _ => quote!(::core::option::Option::None),
        };
        let references = match &f.references {
            Some(p) => quote!(::core::option::Option::Some(<#p as #krate::Model>::meta as fn() -> &'static #krate::ModelMeta)),
            None => quote!(::core::option::Option::None),
        };
        quote! {{
            let mut c = #krate::ColumnMeta::new(#column, #field_name, #sql_type);
            c.nullable = #nullable;
            c.primary_key = #pk;
            c.auto_increment = #ai;
            c.has_default = #has_default;
            c.default_sql = #default_sql;
            c.generated = #generated;
            c.generated_sql = #generated_sql;
            c.version = #version;
            c.unique = #unique;
            c.json = #json;
            c.references = #references;
            c
        }}
    });

    // A field as a sea-query value.
    let value_of = |f: &Field| {
        let ident = &f.ident;
        let column = &f.column;
        if f.json {
            quote!(#krate::__private::json::to_value(&self.#ident, #column)?)
        } else {
            quote!(#krate::ColumnValue::to_value(&self.#ident))
        }
    };
    let values = fields.iter().map(value_of);
    // A field written as a COPY field, straight from the struct (no `Value` for plain types).
    let encoders = fields.iter().enumerate().map(|(i, f)| {
        let ident = &f.ident;
        if f.json {
            let value = value_of(f);
            quote!(#i => #krate::__private::encode_value(#value, column, ty, out),)
        } else {
            quote!(#i => #krate::ColumnValue::encode(&self.#ident, column, ty, out),)
        }
    });
    // The key alone, without converting every other field.
    let key_values: Vec<_> = fields
        .iter()
        .filter(|f| f.primary_key)
        .map(value_of)
        .collect();
    let key = if let [one] = key_values.as_slice() {
        quote!(#krate::Key::one(#one))
    } else {
        quote!(#krate::Key::new(::std::vec![#(#key_values),*]))
    };

    let unset_arms = fields.iter().enumerate().filter_map(|(i, f)| {
        let ident = &f.ident;
        if f.auto_increment {
            Some(quote!(#i => #krate::ColumnValue::is_unset_key(&self.#ident),))
        } else if f.generated.is_some() || (f.default.is_some() && !is_option(&f.ty)) {
            // Computed by the database, or a plain field over a column with a default: never in
            // an INSERT; RETURNING reads the database's value back.
            Some(quote!(#i => true,))
        } else if f.default.is_some() {
            Some(quote!(#i => ::core::option::Option::is_none(&self.#ident),))
        } else {
            None
        }
    });

    let decoders = fields.iter().enumerate().map(|(i, f)| {
        let ident = &f.ident;
        let ty = &f.ty;
        let column = &f.column;
        if f.json {
            quote!(#ident: #krate::__private::json::decode::<#ty>(row, positions[#i], #column)?)
        } else {
            quote!(#ident: <#ty as #krate::ColumnValue>::decode(row, positions[#i], #column)?)
        }
    });
    let skipped_init = skipped
        .iter()
        .map(|ident| quote!(#ident: ::core::default::Default::default()));

    // Each field type must be storable: the error points at the type.
    let type_checks = fields.iter().map(|f| {
        let ty = &f.ty;
        if f.json {
            quote_spanned! {ty.span()=>
                const _: fn() = || {
                    fn json_field<T: ::actor_orm::__private::serde::Serialize + ::actor_orm::__private::serde::de::DeserializeOwned>() {}
                    json_field::<#ty>();
                };
            }
        } else {
            quote_spanned! {ty.span()=>
                const _: fn() = || {
                    fn storable<T: #krate::ColumnValue>() {}
                    storable::<#ty>();
                };
            }
        }
    });
    let reference_checks = fields
        .iter()
        .filter_map(|f| f.references.as_ref())
        .map(|p| {
            quote_spanned! {p.span()=>
                const _: fn() = || {
                    fn model<T: #krate::Model>() {}
                    model::<#p>();
                };
            }
        });

    let handles = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.json)
        .map(|(i, f)| {
            let konst = format_ident!(
                "{}",
                f.ident.to_string().trim_start_matches("r#").to_uppercase(),
                span = f.ident.span()
            );
            let ty = &f.ty;
            let doc = format!("The `{}` column.", f.column);
            quote! {
                #[doc = #doc]
                pub const #konst: #krate::Column<#name, #ty> = #krate::Column::new(#i);
            }
        });
    // Relation handles: one belongs-to per `references` field, and the declared ones.
    let mut relation_consts = Vec::new();
    for f in &fields {
        let Some(parent) = &f.references else {
            continue;
        };
        let field = f.ident.to_string().trim_start_matches("r#").to_owned();
        let base = field.strip_suffix("_id").filter(|b| !b.is_empty());
        let konst = match base {
            Some(b) => b.to_uppercase(),
            None => format!("{}_REF", field.to_uppercase()),
        };
        let konst = format_ident!("{}", konst, span = f.ident.span());
        let column = &f.column;
        let doc = format!(
            "The row of `{}` that `{column}` references.",
            quote!(#parent)
        );
        relation_consts.push(quote! {
            #[doc = #doc]
            pub const #konst: #krate::BelongsTo<#name, #parent> =
                #krate::BelongsTo::new(#column, &[#column]);
        });
    }
    for r in &relations {
        let konst = format_ident!("{}", r.name.to_uppercase());
        let rel_name = &r.name;
        let model = &r.model;
        let by = &r.by;
        let doc = format!("The `{rel_name}` relation ({}).", r.kind.replace('_', "-"));
        relation_consts.push(match r.kind.as_str() {
            "has_many" => quote! {
                #[doc = #doc]
                pub const #konst: #krate::HasMany<#name, #model> = #krate::HasMany::new(#rel_name, &[#(#by),*]);
            },
            "has_one" => quote! {
                #[doc = #doc]
                pub const #konst: #krate::HasOne<#name, #model> = #krate::HasOne::new(#rel_name, &[#(#by),*]);
            },
            "belongs_to" => quote! {
                #[doc = #doc]
                pub const #konst: #krate::BelongsTo<#name, #model> = #krate::BelongsTo::new(#rel_name, &[#(#by),*]);
            },
            _ => {
                let (through, from, to) = r
                    .through
                    .as_ref()
                    .ok_or_else(|| Error::new(name.span(), "many_to_many needs `through`"))?;
                quote! {
                    #[doc = #doc]
                    pub const #konst: #krate::ManyToMany<#name, #model, #through> = #krate::ManyToMany::new(#rel_name, #from, #to);
                }
            }
        });
    }

    let n_columns = fields.len();
    let span = Span::call_site();
    // Only written when turned off, so the usual expansion stays as it was.
    let dirty_check = if dirty_check {
        quote!()
    } else {
        quote!(.without_dirty_check())
    };

    // Indexes: one per `#[orm(index)]` field, then the struct's.
    let mut all_indexes: Vec<(String, Vec<String>, bool)> = fields
        .iter()
        .filter(|f| f.index)
        .map(|f| {
            (
                format!("{table}_{}_idx", f.column),
                vec![f.column.clone()],
                false,
            )
        })
        .collect();
    for (name, columns, unique) in indexes {
        let name = name.unwrap_or_else(|| format!("{table}_{}_idx", columns.join("_")));
        all_indexes.push((name, columns, unique));
    }
    let with_indexes = if all_indexes.is_empty() {
        quote!()
    } else {
        let items = all_indexes.iter().map(|(name, columns, unique)| {
            quote!(#krate::IndexMeta { name: #name, columns: &[#(#columns),*], unique: #unique })
        });
        quote!(.with_indexes(&[#(#items),*]))
    };

    let keys = fields.iter().filter(|f| f.primary_key).count();
    let keyed = match keys {
        0 => quote!(),
        1 => quote! {
            #[automatically_derived] impl #krate::Keyed for #name {}
            #[automatically_derived] impl #krate::SingleKey for #name {}
        },
        _ => quote!(#[automatically_derived] impl #krate::Keyed for #name {}),
    };
    let writable = if read_only {
        quote!()
    } else {
        quote!(#[automatically_derived] impl #krate::Writable for #name {})
    };

    Ok(quote_spanned! {span=>
        #(#type_checks)*
        #(#reference_checks)*

        #[automatically_derived]
        impl #krate::Model for #name {
            fn meta() -> &'static #krate::ModelMeta {
                static COLUMNS: ::std::sync::LazyLock<[#krate::ColumnMeta; #n_columns]> =
                    ::std::sync::LazyLock::new(|| [#(#column_metas),*]);
                static META: ::std::sync::LazyLock<#krate::ModelMeta> =
                    ::std::sync::LazyLock::new(|| #krate::ModelMeta::new(#table, #schema_tokens, &*COLUMNS)#dirty_check #with_indexes);
                &META
            }

            fn values(&self) -> #krate::Result<::std::vec::Vec<#krate::__private::Value>> {
                ::core::result::Result::Ok(::std::vec![#(#values),*])
            }

            fn key(&self) -> #krate::Result<#krate::Key> {
                ::core::result::Result::Ok(#key)
            }

            fn key_values(&self) -> #krate::Result<::std::vec::Vec<#krate::__private::Value>> {
                ::core::result::Result::Ok(::std::vec![#(#key_values),*])
            }

            fn encode_column(
                &self,
                index: usize,
                column: &#krate::ColumnMeta,
                ty: &#krate::__private::Type,
                out: &mut #krate::__private::BytesMut,
            ) -> #krate::Result<#krate::__private::IsNull> {
                match index {
                    #(#encoders)*
                    _ => ::core::result::Result::Err(#krate::Error::InvalidInput(::std::format!(
                        "{}: no column {} in {}", column.name, index, #table
                    ))),
                }
            }

            fn is_unset(&self, index: usize) -> bool {
                match index {
                    #(#unset_arms)*
                    _ => false,
                }
            }

            fn from_row(row: &#krate::__private::Row, positions: &[usize]) -> #krate::Result<Self> {
                if positions.len() != #n_columns {
                    return ::core::result::Result::Err(#krate::Error::InvalidInput(::std::format!(
                        "{} positions given for {} columns", positions.len(), #n_columns
                    )));
                }
                ::core::result::Result::Ok(Self {
                    #(#decoders,)*
                    #(#skipped_init,)*
                })
            }
        }

        #keyed
        #writable

        #[automatically_derived]
        impl #name {
            #(#handles)*
            #(#relation_consts)*

            /// A query over every row of this model's table.
            pub fn query() -> #krate::Select<#name> {
                #krate::Select::new()
            }
        }
    })
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        _ => None,
    }
}

fn is_option(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == "Option")
}

fn is_named(ty: &Type, names: &[&str]) -> bool {
    last_segment(ty).is_some_and(|s| names.iter().any(|n| s.ident == n))
}
