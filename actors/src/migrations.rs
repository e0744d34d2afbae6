//! Versioned migrations: SQL files named `<version>_<name>.up.sql` (and optionally
//! `<version>_<name>.down.sql`), read from a folder at run time ([`Migrations::from_dir`]) or
//! embedded in the binary (`actor_orm::embed_migrations!("migrations")`).
//!
//! A migration whose up file starts with the line `-- actor-orm: no-transaction` runs outside a
//! transaction (for `CREATE INDEX CONCURRENTLY`, which refuses one); it must hold one statement.

use std::borrow::Cow;
use std::path::Path;

use actor_orm_core::{Error, Result};

/// The first line that marks a migration to run outside a transaction.
pub const NO_TRANSACTION: &str = "-- actor-orm: no-transaction";

/// One versioned migration.
///
/// ```
/// use actor_orm_actors::Migrations;
///
/// let m = Migrations::from_files(vec![
///     ("0001_users.up.sql".into(), "CREATE TABLE users (id bigint PRIMARY KEY);".into()),
///     ("0001_users.down.sql".into(), "DROP TABLE users;".into()),
/// ])
/// .unwrap();
/// let first = &m.list()[0];
/// assert_eq!((first.version, first.name.as_str()), (1, "users"));
/// assert!(first.down.is_some() && !first.no_transaction);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// The number its file name starts with (a sequence or a timestamp); applied in its order.
    pub version: i64,
    /// The rest of the file name, without `.up.sql`.
    pub name: String,
    /// The SQL that applies it.
    pub up: Cow<'static, str>,
    /// The SQL that reverts it, if written.
    pub down: Option<Cow<'static, str>>,
    /// Run outside a transaction (see the module docs).
    pub no_transaction: bool,
}

impl Migration {
    /// SHA-256 of the up SQL: what the history table keeps, to tell an edited migration.
    pub fn checksum(&self) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.up.as_bytes()).to_vec()
    }
}

/// The migrations of an application, in version order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Migrations {
    list: Vec<Migration>,
}

/// What a migration file's name says: version, name, and whether it is the up or the down SQL.
fn parse_name(file: &str) -> Result<Option<(i64, String, bool)>> {
    let (stem, up) = if let Some(s) = file.strip_suffix(".up.sql") {
        (s, true)
    } else if let Some(s) = file.strip_suffix(".down.sql") {
        (s, false)
    } else if file.ends_with(".sql") {
        return Err(Error::Config(format!(
            "migration file `{file}`: name it <version>_<name>.up.sql or <version>_<name>.down.sql"
        )));
    } else {
        // Not a migration (a README, an editor's backup).
        return Ok(None);
    };
    let (version, name) = stem.split_once('_').unwrap_or((stem, ""));
    let version: i64 = version.parse().map_err(|_| {
        Error::Config(format!(
            "migration file `{file}`: its name must start with a version number and `_`"
        ))
    })?;
    if name.is_empty() {
        return Err(Error::Config(format!(
            "migration file `{file}`: the version needs a name after it (`{version}_add_users`)"
        )));
    }
    Ok(Some((version, name.to_owned(), up)))
}

impl Migrations {
    /// From `(file name, contents)` pairs (see the module docs for the names).
    pub fn from_files(files: Vec<(String, String)>) -> Result<Migrations> {
        Self::build(
            files
                .into_iter()
                .map(|(n, t)| (Cow::Owned(n), Cow::Owned(t))),
        )
    }

    /// From files embedded at compile time (what `embed_migrations!` expands to): their names
    /// were checked then.
    #[doc(hidden)]
    pub fn from_embedded(files: &[(&'static str, &'static str)]) -> Result<Migrations> {
        Self::build(
            files
                .iter()
                .map(|(n, t)| (Cow::Borrowed(*n), Cow::Borrowed(*t))),
        )
    }

    /// Reads the migration files of folder `dir`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Migrations> {
        let dir = dir.as_ref();
        let unreadable = |e: std::io::Error| {
            Error::Config(format!(
                "cannot read migrations from {}: {e}",
                dir.display()
            ))
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map_err(unreadable)?.is_file() && name.ends_with(".sql") {
                let text = std::fs::read_to_string(entry.path()).map_err(unreadable)?;
                files.push((name, text));
            }
        }
        Self::from_files(files)
    }

    fn build(
        files: impl Iterator<Item = (Cow<'static, str>, Cow<'static, str>)>,
    ) -> Result<Migrations> {
        let mut ups: Vec<Migration> = Vec::new();
        let mut downs: Vec<(i64, String, Cow<'static, str>)> = Vec::new();
        for (file, text) in files {
            let Some((version, name, up)) = parse_name(&file)? else {
                continue;
            };
            if !up {
                downs.push((version, name, text));
                continue;
            }
            if let Some(other) = ups.iter().find(|m| m.version == version) {
                return Err(Error::Config(format!(
                    "migrations `{version}_{}` and `{version}_{name}` share version {version}",
                    other.name
                )));
            }
            let no_transaction = text.trim_start().starts_with(NO_TRANSACTION);
            ups.push(Migration {
                version,
                name,
                up: text,
                down: None,
                no_transaction,
            });
        }
        for (version, name, text) in downs {
            match ups
                .iter_mut()
                .find(|m| m.version == version && m.name == name)
            {
                Some(m) => m.down = Some(text),
                None => {
                    return Err(Error::Config(format!(
                        "migration `{version}_{name}.down.sql` has no `{version}_{name}.up.sql`"
                    )));
                }
            }
        }
        ups.sort_by_key(|m| m.version);
        Ok(Migrations { list: ups })
    }

    /// The migrations, in version order.
    pub fn list(&self) -> &[Migration] {
        &self.list
    }

    /// The migration of `version`.
    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.list.iter().find(|m| m.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[(&str, &str)]) -> Result<Migrations> {
        Migrations::from_files(
            names
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn files_become_migrations_in_version_order() {
        let m = files(&[
            ("0010_b.up.sql", "SELECT 2"),
            ("README.md", "notes"),
            (
                "0002_a.up.sql",
                "-- actor-orm: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x)",
            ),
            ("0002_a.down.sql", "DROP INDEX i"),
        ])
        .expect("parsed");
        let got: Vec<_> = m
            .list()
            .iter()
            .map(|m| {
                (
                    m.version,
                    m.name.as_str(),
                    m.no_transaction,
                    m.down.is_some(),
                )
            })
            .collect();
        assert_eq!(got, vec![(2, "a", true, true), (10, "b", false, false)]);
        assert_ne!(m.list()[0].checksum(), m.list()[1].checksum());
    }

    #[test]
    fn bad_names_and_orphans_are_typed_errors() {
        for bad in [
            vec![("add_users.up.sql", "")],
            vec![("0001.up.sql", "")],
            vec![("0001_a.sql", "")],
            vec![("0001_a.up.sql", ""), ("0001_b.up.sql", "")],
            vec![("0001_a.down.sql", "")],
        ] {
            let err = files(&bad).expect_err("refused");
            assert!(matches!(err, Error::Config(_)), "{err:?}");
        }
    }
}
