//! `migrate new | up | down | status | generate`: the migration commands, for the `actor-orm`
//! binary and for a binary of the application's own, which alone knows its models and so can
//! `generate`:
//!
//! ```no_run
//! // src/bin/migrate.rs of the application
//! # mod models { #[derive(actor_orm::Model, Clone)] pub struct User { #[orm(primary_key)] pub id: i64 } }
//! fn main() -> std::process::ExitCode {
//!     let models = actor_orm::SchemaModels::new().model::<models::User>();
//!     actor_orm::migrate_command::main(Some(models))
//! }
//! ```
//!
//! `cargo run --bin migrate -- generate add_users --url postgres://…` then writes
//! `migrations/0003_add_users.up.sql` and `.down.sql` for review.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{Migrations, Pool, SchemaModels};

/// How the commands are used.
pub const USAGE: &str = "usage: migrate <command> [--url URL] [--dir DIR]

  new NAME         writes empty DIR/<next>_NAME.up.sql and .down.sql
  up               applies every migration of DIR not applied yet
  down [--steps N] reverts the last N applied migrations (default 1)
  status           lists the migrations of DIR, applied or pending
  generate NAME    writes the migration from the database's schema to the models
                   (only from a binary of the application's, which knows them)

  --url defaults to $DATABASE_URL, --dir to migrations";

struct Args {
    command: String,
    name: Option<String>,
    url: Option<String>,
    dir: PathBuf,
    steps: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = args.next().ok_or("no command given")?;
    let mut out = Args {
        command,
        name: None,
        url: std::env::var("DATABASE_URL").ok(),
        dir: PathBuf::from("migrations"),
        steps: 1,
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => out.url = Some(value()?),
            "--dir" => out.dir = PathBuf::from(value()?),
            "--steps" => {
                out.steps = value()?
                    .parse()
                    .map_err(|_| "--steps needs a number".to_owned())?;
            }
            other if other.starts_with("--") => return Err(format!("unknown option `{other}`")),
            other if out.name.is_none() => out.name = Some(other.to_owned()),
            other => return Err(format!("unexpected `{other}`")),
        }
    }
    Ok(out)
}

/// Runs one command given by `args` (without the program's name); what to print on success.
pub async fn run(
    args: impl Iterator<Item = String>,
    models: Option<&SchemaModels>,
) -> Result<String, String> {
    let args = parse(args)?;
    let text = |e: crate::Error| e.to_string();
    if args.command == "new" {
        let name = args.name.ok_or("new needs a NAME")?;
        let empty = crate::GeneratedMigration::empty();
        let path = empty.write_to(&args.dir, &name).map_err(text)?;
        return Ok(format!("wrote {}", path.display()));
    }
    let migrations = || Migrations::from_dir(&args.dir).map_err(text);
    let url = args.url.clone().ok_or("give --url or set DATABASE_URL")?;
    let pool = Pool::builder(url.as_str())
        .max_size(1)
        .build()
        .await
        .map_err(text)?;
    let out = match args.command.as_str() {
        "up" => {
            let done = pool.migrate(&migrations()?).await.map_err(text)?;
            format!("applied {} migration(s): {done:?}", done.len())
        }
        "down" => {
            let done = pool
                .migrate_down(&migrations()?, args.steps)
                .await
                .map_err(text)?;
            format!("reverted {} migration(s): {done:?}", done.len())
        }
        "status" => {
            let status = pool.migration_status(&migrations()?).await.map_err(text)?;
            let mut lines = Vec::new();
            for s in status {
                let state = match (s.applied, s.edited) {
                    (true, true) => "applied, EDITED since",
                    (true, false) => "applied",
                    (false, _) => "pending",
                };
                lines.push(format!("{:>6} {:<40} {state}", s.version, s.name));
            }
            lines.join("\n")
        }
        "generate" => {
            let name = args.name.ok_or("generate needs a NAME")?;
            let Some(models) = models else {
                return Err(
                    "generate needs the application's models: run it from a binary of \
                            the application's that calls actor_orm::migrate_command::main with \
                            them (see the README's Migrations section)"
                        .into(),
                );
            };
            match pool.generate_migration(models).await.map_err(text)? {
                None => "the database already matches the models: nothing to write".into(),
                Some(m) => {
                    let path = m.write_to(&args.dir, &name).map_err(text)?;
                    let mut out = format!("wrote {} — review it before applying", path.display());
                    for w in &m.warnings {
                        out.push_str("\n  ");
                        out.push_str(w);
                    }
                    out
                }
            }
        }
        other => return Err(format!("unknown command `{other}`")),
    };
    let _ = pool.close(std::time::Duration::from_secs(1)).await;
    Ok(out)
}

/// A `main` for a migrate binary: runs the command of the process's arguments, prints the
/// result or the error (with the usage), and says how it went in the exit code.
pub fn main(models: Option<SchemaModels>) -> ExitCode {
    main_from(std::env::args().skip(1), models)
}

/// [`main`] with the arguments given (without the program's name, and for the `actor-orm`
/// binary without its `migrate`).
pub fn main_from(args: impl Iterator<Item = String>, models: Option<SchemaModels>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, models.as_ref())) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("migrate: {e}\n\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}
