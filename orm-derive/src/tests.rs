//! The derive's expansion, pinned as pretty-printed snapshots.

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    }
}

#[test]
fn model_expansion() {
    let input = quote::quote! {
        #[orm(table_name = "posts", schema = "blog")]
        struct Post {
            #[orm(primary_key, auto_increment)]
            id: i64,
            #[orm(references = User)]
            author_id: i64,
            #[orm(max_length = 200, unique)]
            title: String,
            #[orm(column_name = "body_text")]
            body: Option<String>,
            #[orm(default = "now()")]
            created_at: Option<chrono::DateTime<chrono::Utc>>,
            #[orm(version)]
            version: i32,
            #[orm(json)]
            tags: Vec<String>,
            #[orm(skip)]
            cached: Option<u32>,
        }
    };
    let out = crate::model::expand(input).expect("expands");
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn db_enum_expansion() {
    let input = quote::quote! {
        #[orm(type_name = "mood")]
        enum Mood { Happy, #[orm(rename = "so-so")] SoSo, Sad }
    };
    let out = crate::db_enum::expand(input).expect("expands");
    insta::assert_snapshot!(pretty(out));
}

fn error_of(tokens: proc_macro2::TokenStream) -> String {
    match crate::model::expand(tokens) {
        Ok(_) => "expanded without error".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn grammar_errors_name_the_problem_and_the_form() {
    let typo = error_of(quote::quote! { struct A { #[orm(primary_kye)] id: i64 } });
    insta::assert_snapshot!("typo", typo);
    let no_key = error_of(quote::quote! { struct A { id: i64 } });
    insta::assert_snapshot!("no_primary_key", no_key);
    let dup = error_of(
        quote::quote! { struct A { #[orm(primary_key)] id: i64, #[orm(column_name = "id")] other: i64 } },
    );
    insta::assert_snapshot!("duplicate_column", dup);
    let generated_key =
        error_of(quote::quote! { struct A { #[orm(primary_key, generated)] id: i64 } });
    insta::assert_snapshot!("generated_is_never_written", generated_key);
    let table_typo =
        error_of(quote::quote! { #[orm(table = "a")] struct A { #[orm(primary_key)] id: i64 } });
    insta::assert_snapshot!("struct_key_typo", table_typo);
}

#[test]
fn test_attribute_expansion() {
    let args = quote::quote! { models(User, Post), enums(Mood), migrations = "migrations" };
    let item = quote::quote! {
        #[ignore = "slow"]
        async fn writes(pool: actor_orm::Pool) -> Result<(), String> {
            pool.session().await.map_err(|e| e.to_string())?;
            Ok(())
        }
    };
    let out = crate::test_attr::expand(args, item).expect("expands");
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn test_attribute_refuses_what_it_cannot_run() {
    for (args, item, says) in [
        (
            quote::quote! {},
            quote::quote! { fn not_async(pool: Pool) {} },
            "async fn",
        ),
        (
            quote::quote! {},
            quote::quote! { async fn no_pool() {} },
            "one argument",
        ),
        (
            quote::quote! { isolation = "schema" },
            quote::quote! { async fn t(pool: Pool) {} },
            "\"transaction\"",
        ),
        (
            quote::quote! { tables(User) },
            quote::quote! { async fn t(pool: Pool) {} },
            "expected models",
        ),
    ] {
        let err = crate::test_attr::expand(args, item)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(says), "{err}");
    }
}
