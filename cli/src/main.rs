//! `actor-orm`: models generated from a live database, and versioned migrations.
//!
//! ```text
//! actor-orm generate --url postgres://user@host/db [--schema public] --out src/models
//! actor-orm migrate new|up|down|status [NAME] [--url URL] [--dir migrations] [--steps N]
//! ```
#![deny(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use actor_orm::Pool;
use actor_orm_cli::{catalog, generate};

const USAGE: &str = "usage: actor-orm generate --url URL [--schema SCHEMA] --out DIR
       actor-orm migrate new|up|down|status [NAME] [--url URL] [--dir DIR] [--steps N]

  generate   writes one file of #[derive(Model)] structs per table and view of SCHEMA
             (default public) into DIR, with a mod.rs declaring them
  migrate    versioned migrations in DIR (default migrations); `migrate generate` runs from a
             binary of the application's (actor_orm::migrate_command::main with its models)";

struct Args {
    url: String,
    schema: String,
    out: PathBuf,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    match args.next().as_deref() {
        Some("generate") => {}
        Some(other) => return Err(format!("unknown command `{other}`")),
        None => return Err("no command given".into()),
    }
    let (mut url, mut schema, mut out) = (None, "public".to_owned(), None);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--schema" => schema = value()?,
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option `{other}`")),
        }
    }
    Ok(Args {
        url: url.ok_or("--url is required")?,
        schema,
        out: out.ok_or("--out is required")?,
    })
}

async fn run(args: Args) -> Result<usize, String> {
    let pool = Pool::builder(args.url.as_str())
        .max_size(1)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let session = pool.session().await.map_err(|e| e.to_string())?;
    let catalog = catalog::read(&session, &args.schema)
        .await
        .map_err(|e| e.to_string())?;
    if catalog.relations.is_empty() {
        return Err(format!("schema `{}` has no tables or views", args.schema));
    }
    let files = generate::generate(&catalog, &args.schema);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for f in &files {
        let path = args.out.join(&f.name);
        std::fs::write(&path, &f.text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let _ = session.close().await;
    let _ = pool.close(std::time::Duration::from_secs(1)).await;
    Ok(files.len())
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return actor_orm::migrate_command::main_from(std::env::args().skip(2), None);
    }
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("actor-orm: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let out = args.out.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("actor-orm: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(n) => {
            println!("wrote {n} files to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("actor-orm: {e}");
            ExitCode::FAILURE
        }
    }
}
