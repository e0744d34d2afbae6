//! Migrations written from the models: the difference between the schema the models describe and
//! the live one, as an up and a down SQL file for review. What cannot be decided (a rename looks
//! like a drop and an add) is asked in a comment, and operations that lock or rewrite a large
//! table are flagged with the safer way to do them.

use std::fmt::Write as _;

use actor_orm_core::{Result, quote_ident};

use crate::pool::Pool;
use crate::schema::{Col, Foreign, Index, Named, Schema, SchemaModels, Table};

/// A migration written by [`Pool::generate_migration`]: review it, then write it with
/// [`write_to`](Self::write_to).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GeneratedMigration {
    /// The up SQL.
    pub up: String,
    /// The down SQL.
    pub down: String,
    /// The flagged operations and open questions, as in the file's comments.
    pub warnings: Vec<String>,
}

impl GeneratedMigration {
    /// An empty migration to write by hand (`migrate new`).
    pub fn empty() -> Self {
        GeneratedMigration {
            up: "-- Write the migration here. A first line `-- actor-orm: no-transaction` runs it \
                 outside a transaction (one statement, e.g. CREATE INDEX CONCURRENTLY).\n"
                .into(),
            down: "-- Write what reverts the up migration here.\n".into(),
            warnings: Vec::new(),
        }
    }

    /// Writes `<version>_<name>.up.sql` and `.down.sql` into `dir`, the version one past the
    /// highest there (`1` in an empty folder); returns the up file's path.
    pub fn write_to(
        &self,
        dir: impl AsRef<std::path::Path>,
        name: &str,
    ) -> Result<std::path::PathBuf> {
        let dir = dir.as_ref();
        let io = |e: std::io::Error| {
            actor_orm_core::Error::Config(format!("cannot write to {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let next = crate::Migrations::from_dir(dir)?
            .list()
            .last()
            .map_or(1, |m| m.version + 1);
        let up = dir.join(format!("{next:04}_{name}.up.sql"));
        std::fs::write(&up, &self.up).map_err(io)?;
        std::fs::write(dir.join(format!("{next:04}_{name}.down.sql")), &self.down).map_err(io)?;
        Ok(up)
    }
}

impl Pool {
    /// Compares the models with the live schema (the first schema in the search path) and
    /// writes the migration that takes the one to the other; `None` when they agree.
    ///
    /// ```no_run
    /// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
    /// // With models: SchemaModels::new().model::<User>().model::<Post>().db_enum::<Mood>()
    /// let models = actor_orm_actors::SchemaModels::new();
    /// if let Some(m) = pool.generate_migration(&models).await? {
    ///     m.write_to("migrations", "add_users")?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn generate_migration(
        &self,
        models: &SchemaModels,
    ) -> Result<Option<GeneratedMigration>> {
        let client = crate::connect::server_client(
            self.config(),
            "the migration generator reads the catalog",
        )
        .await?;
        let live = Schema::read(&client).await?;
        Ok(generate(&live, &Schema::of_models(models)))
    }
}

/// One change, with its up and down SQL and what to say about it.
#[derive(Default)]
struct Step {
    up: Vec<String>,
    down: Vec<String>,
    notes: Vec<String>,
}

/// The migration from `from` to `to`; `None` when they agree.
pub(crate) fn generate(from: &Schema, to: &Schema) -> Option<GeneratedMigration> {
    let mut steps: Vec<Step> = Vec::new();
    // Enum types first: columns may use them.
    for (name, labels) in &to.enums {
        match from.enums.get(name) {
            None => steps.push(Step {
                up: vec![format!(
                    "CREATE TYPE {} AS ENUM ({})",
                    quote_ident(name),
                    literals(labels)
                )],
                down: vec![format!("DROP TYPE {}", quote_ident(name))],
                notes: Vec::new(),
            }),
            Some(old) if old != labels => steps.push(enum_labels(from, name, old, labels)),
            Some(_) => {}
        }
    }
    // Tables that go and tables that come: a rename looks like both.
    let dropped: Vec<&Table> = from
        .tables
        .values()
        .filter(|t| !to.tables.contains_key(&t.name))
        .collect();
    let created: Vec<&Table> = to
        .tables
        .values()
        .filter(|t| !from.tables.contains_key(&t.name))
        .collect();
    for t in &created {
        let mut step = Step {
            up: vec![create_table(t)],
            down: vec![format!("DROP TABLE {}", quote_ident(&t.name))],
            notes: Vec::new(),
        };
        if let Some(old) = dropped.iter().find(|d| same_shape(d, t)) {
            step.notes.push(format!(
                "QUESTION: was table {} renamed to {}? If so, replace the CREATE TABLE and the DROP TABLE of {} with: ALTER TABLE {} RENAME TO {};",
                old.name, t.name, old.name, quote_ident(&old.name), quote_ident(&t.name)
            ));
        }
        for i in &t.indexes {
            step.up.push(create_index(&t.name, i));
        }
        steps.push(step);
    }
    for t in to.tables.values() {
        if let Some(old) = from.tables.get(&t.name) {
            alter_table(old, t, &mut steps);
        }
    }
    for t in &dropped {
        let mut down = vec![create_table(t)];
        down.extend(t.indexes.iter().map(|i| create_index(&t.name, i)));
        steps.push(Step {
            up: vec![format!("DROP TABLE {}", quote_ident(&t.name))],
            down,
            notes: vec![format!("DATA LOSS: DROP TABLE {} deletes its rows; the down migration recreates the table empty", t.name)],
        });
    }
    // Foreign keys after every table they may point at exists.
    let mut foreign_steps = Vec::new();
    for t in to.tables.values() {
        let old = from.tables.get(&t.name);
        for f in &t.foreign {
            if old.is_none_or(|o| !o.foreign.contains(f)) {
                foreign_steps.push(Step {
                    up: vec![add_foreign(&t.name, f)],
                    down: vec![drop_constraint(&t.name, &f.name)],
                    notes: if old.is_some() {
                        vec![format!("LOCKS: adding foreign key {} checks every row of {} under a SHARE ROW EXCLUSIVE lock; on a large table add it NOT VALID, then VALIDATE CONSTRAINT in a later migration", f.name, t.name)]
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        if let Some(old) = old {
            for f in &old.foreign {
                if !t.foreign.contains(f) {
                    steps.insert(
                        0,
                        Step {
                            up: vec![drop_constraint(&t.name, &f.name)],
                            down: vec![add_foreign(&t.name, f)],
                            notes: Vec::new(),
                        },
                    );
                }
            }
        }
    }
    // Foreign keys of dropped tables go before the tables do.
    for t in &dropped {
        for f in &t.foreign {
            steps.insert(
                0,
                Step {
                    up: vec![drop_constraint(&t.name, &f.name)],
                    down: vec![add_foreign(&t.name, f)],
                    notes: Vec::new(),
                },
            );
        }
    }
    steps.extend(foreign_steps);
    if steps.is_empty() {
        return None;
    }
    let mut up =
        String::from("-- Generated by actor-orm from the models. Review it before applying.\n");
    let mut down =
        String::from("-- Generated by actor-orm: reverts the up migration of the same version.\n");
    let mut warnings = Vec::new();
    for step in &steps {
        up.push('\n');
        for note in &step.notes {
            let _ = writeln!(up, "-- {note}");
            warnings.push(note.clone());
        }
        for sql in &step.up {
            let _ = writeln!(up, "{sql};");
        }
    }
    for step in steps.iter().rev() {
        down.push('\n');
        for sql in &step.down {
            if sql.starts_with("--") {
                let _ = writeln!(down, "{sql}");
            } else {
                let _ = writeln!(down, "{sql};");
            }
        }
    }
    Some(GeneratedMigration { up, down, warnings })
}

fn literals(labels: &[String]) -> String {
    labels
        .iter()
        .map(|l| format!("'{}'", l.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// New labels are added in place; PostgreSQL cannot drop a label, so the down migration (and a
/// change that removes or reorders labels) rebuilds the type and the columns that use it.
fn enum_labels(from: &Schema, name: &str, old: &[String], new: &[String]) -> Step {
    let rebuild = |labels: &[String]| -> Vec<String> {
        let q = quote_ident(name);
        let tmp = quote_ident(&format!("{name}_old"));
        let mut sql = vec![
            format!("ALTER TYPE {q} RENAME TO {tmp}"),
            format!("CREATE TYPE {q} AS ENUM ({})", literals(labels)),
        ];
        for t in from.tables.values() {
            for c in t.columns.iter().filter(|c| c.ty == name) {
                sql.push(format!(
                    "ALTER TABLE {} ALTER COLUMN {} TYPE {q} USING {}::text::{q}",
                    quote_ident(&t.name),
                    quote_ident(&c.name),
                    quote_ident(&c.name)
                ));
            }
        }
        sql.push(format!("DROP TYPE {tmp}"));
        sql
    };
    let appended = new.starts_with(old);
    if appended {
        let up = new[old.len()..]
            .iter()
            .map(|l| {
                format!(
                    "ALTER TYPE {} ADD VALUE '{}'",
                    quote_ident(name),
                    l.replace('\'', "''")
                )
            })
            .collect();
        Step {
            up,
            down: rebuild(old),
            notes: Vec::new(),
        }
    } else {
        Step {
            up: rebuild(new),
            down: rebuild(old),
            notes: vec![format!(
                "REWRITES: labels of {name} removed or reordered: the type is rebuilt and every column using it rewritten (a row holding a removed label makes it fail)"
            )],
        }
    }
}

fn same_shape(a: &Table, b: &Table) -> bool {
    a.columns.len() == b.columns.len()
        && a.columns
            .iter()
            .zip(&b.columns)
            .all(|(x, y)| x.name == y.name && x.ty == y.ty)
}

fn column_def(c: &Col) -> String {
    let mut s = format!("{} {}", quote_ident(&c.name), c.ty);
    if c.identity {
        s.push_str(" GENERATED BY DEFAULT AS IDENTITY");
    }
    if let Some(expr) = &c.generated {
        let _ = write!(s, " GENERATED ALWAYS AS ({expr}) STORED");
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        let _ = write!(s, " DEFAULT {d}");
    }
    s
}

fn cols(columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn create_table(t: &Table) -> String {
    let mut lines: Vec<String> = t.columns.iter().map(column_def).collect();
    if let Some(k) = &t.key {
        lines.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote_ident(&k.name),
            cols(&k.columns)
        ));
    }
    for u in &t.uniques {
        lines.push(format!(
            "CONSTRAINT {} UNIQUE ({})",
            quote_ident(&u.name),
            cols(&u.columns)
        ));
    }
    format!(
        "CREATE TABLE {} (\n    {}\n)",
        quote_ident(&t.name),
        lines.join(",\n    ")
    )
}

fn create_index(table: &str, i: &Index) -> String {
    format!(
        "CREATE {}INDEX {} ON {} ({})",
        if i.unique { "UNIQUE " } else { "" },
        quote_ident(&i.name),
        quote_ident(table),
        cols(&i.columns)
    )
}

fn add_foreign(table: &str, f: &Foreign) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
        quote_ident(table),
        quote_ident(&f.name),
        cols(&f.columns),
        quote_ident(&f.table),
        cols(&f.to)
    )
}

fn add_unique(table: &str, u: &Named) -> String {
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})",
        quote_ident(table),
        quote_ident(&u.name),
        cols(&u.columns)
    )
}

fn drop_constraint(table: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT {}",
        quote_ident(table),
        quote_ident(name)
    )
}

/// Whether changing a column's type from `a` to `b` keeps the table as it is (PostgreSQL only
/// checks or relabels): a longer varchar, varchar to text.
fn binary_compatible(a: &str, b: &str) -> bool {
    let len = |t: &str| -> Option<u32> {
        t.strip_prefix("character varying(")?
            .strip_suffix(')')?
            .parse()
            .ok()
    };
    match (len(a), len(b)) {
        (Some(x), Some(y)) => y >= x,
        (Some(_), None) => b == "text" || b == "character varying",
        _ => false,
    }
}

/// Strips what the catalog adds to a default (`'x'::text`, parentheses) for comparison.
fn normal_default(d: &str) -> String {
    let mut s = d.trim();
    while s.starts_with('(') && s.ends_with(')') {
        s = &s[1..s.len() - 1];
    }
    match s.rfind("::") {
        Some(i) if !s[i..].contains(')') && !s[i..].contains('\'') => s[..i].to_owned(),
        _ => s.to_owned(),
    }
}

fn alter_table(old: &Table, new: &Table, steps: &mut Vec<Step>) {
    let t = quote_ident(&new.name);
    let added: Vec<&Col> = new
        .columns
        .iter()
        .filter(|c| !old.columns.iter().any(|o| o.name == c.name))
        .collect();
    let removed: Vec<&Col> = old
        .columns
        .iter()
        .filter(|c| !new.columns.iter().any(|n| n.name == c.name))
        .collect();
    for c in &added {
        let mut notes = Vec::new();
        if c.not_null && c.default.is_none() && !c.identity && c.generated.is_none() {
            notes.push(format!(
                "FAILS ON EXISTING ROWS: {}.{} is NOT NULL without a default; if the table has rows, add it nullable, fill it, then SET NOT NULL",
                new.name, c.name
            ));
        }
        if let Some(gone) = removed.iter().find(|r| r.ty == c.ty) {
            notes.push(format!(
                "QUESTION: was column {}.{} renamed to {}? If so, replace its ADD COLUMN and DROP COLUMN with: ALTER TABLE {t} RENAME COLUMN {} TO {};",
                new.name, gone.name, c.name, quote_ident(&gone.name), quote_ident(&c.name)
            ));
        }
        steps.push(Step {
            up: vec![format!("ALTER TABLE {t} ADD COLUMN {}", column_def(c))],
            down: vec![format!(
                "ALTER TABLE {t} DROP COLUMN {}",
                quote_ident(&c.name)
            )],
            notes,
        });
    }
    for c in &removed {
        steps.push(Step {
            up: vec![format!("ALTER TABLE {t} DROP COLUMN {}", quote_ident(&c.name))],
            down: vec![format!("ALTER TABLE {t} ADD COLUMN {}", column_def(c))],
            notes: vec![format!("DATA LOSS: dropping {}.{} deletes its values; the down migration adds it back empty", new.name, c.name)],
        });
    }
    for c in &new.columns {
        let Some(o) = old.columns.iter().find(|o| o.name == c.name) else {
            continue;
        };
        let col = quote_ident(&c.name);
        if o.ty != c.ty {
            let notes = if binary_compatible(&o.ty, &c.ty) {
                Vec::new()
            } else {
                vec![format!(
                    "REWRITES: changing {}.{} from {} to {} rewrites the table and its indexes under an ACCESS EXCLUSIVE lock; on a large table add a new column, fill it in batches, then switch",
                    new.name, c.name, o.ty, c.ty
                )]
            };
            steps.push(Step {
                up: vec![format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} TYPE {} USING {col}::{}",
                    c.ty, c.ty
                )],
                down: vec![format!(
                    "ALTER TABLE {t} ALTER COLUMN {col} TYPE {} USING {col}::{}",
                    o.ty, o.ty
                )],
                notes,
            });
        }
        if o.not_null != c.not_null && o.identity == c.identity {
            if c.not_null {
                steps.push(Step {
                    up: vec![format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL")],
                    down: vec![format!("ALTER TABLE {t} ALTER COLUMN {col} DROP NOT NULL")],
                    notes: vec![format!(
                        "LOCKS: SET NOT NULL on {}.{} scans the table under an ACCESS EXCLUSIVE lock; on a large table first ADD CONSTRAINT … CHECK ({} IS NOT NULL) NOT VALID and VALIDATE it, then SET NOT NULL skips the scan",
                        new.name, c.name, c.name
                    )],
                });
            } else {
                steps.push(Step {
                    up: vec![format!("ALTER TABLE {t} ALTER COLUMN {col} DROP NOT NULL")],
                    down: vec![format!("ALTER TABLE {t} ALTER COLUMN {col} SET NOT NULL")],
                    notes: Vec::new(),
                });
            }
        }
        let (od, nd) = (
            o.default.as_deref().map(normal_default),
            c.default.as_deref().map(normal_default),
        );
        if od != nd && !c.identity && !o.identity && c.generated.is_none() {
            let set = |d: &Option<String>| match d {
                Some(d) => format!("ALTER TABLE {t} ALTER COLUMN {col} SET DEFAULT {d}"),
                None => format!("ALTER TABLE {t} ALTER COLUMN {col} DROP DEFAULT"),
            };
            // A default the model does not declare is left alone (the model may not know it).
            if c.default.is_some() {
                steps.push(Step {
                    up: vec![set(&c.default)],
                    down: vec![set(&o.default)],
                    notes: Vec::new(),
                });
            }
        }
    }
    for u in &new.uniques {
        if !old.uniques.contains(u) {
            steps.push(Step {
                up: vec![add_unique(&new.name, u)],
                down: vec![drop_constraint(&new.name, &u.name)],
                notes: vec![format!("LOCKS: adding unique constraint {} builds its index under a lock that blocks writes to {}; on a large table build a UNIQUE index CONCURRENTLY first, then ADD CONSTRAINT … UNIQUE USING INDEX", u.name, new.name)],
            });
        }
    }
    for u in &old.uniques {
        if !new.uniques.contains(u) {
            steps.push(Step {
                up: vec![drop_constraint(&new.name, &u.name)],
                down: vec![add_unique(&new.name, u)],
                notes: Vec::new(),
            });
        }
    }
    if old.key != new.key {
        let mut step = Step::default();
        if let Some(k) = &old.key {
            step.up.push(drop_constraint(&new.name, &k.name));
        }
        if let Some(k) = &new.key {
            step.up.push(format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} PRIMARY KEY ({})",
                quote_ident(&k.name),
                cols(&k.columns)
            ));
            step.down.push(drop_constraint(&new.name, &k.name));
        }
        if let Some(k) = &old.key {
            step.down.push(format!(
                "ALTER TABLE {t} ADD CONSTRAINT {} PRIMARY KEY ({})",
                quote_ident(&k.name),
                cols(&k.columns)
            ));
        }
        step.notes.push(format!("LOCKS: changing the primary key of {} rebuilds its index under an ACCESS EXCLUSIVE lock", new.name));
        steps.push(step);
    }
    for i in &new.indexes {
        if !old.indexes.contains(i) {
            steps.push(Step {
                up: vec![create_index(&new.name, i)],
                down: vec![format!("DROP INDEX {}", quote_ident(&i.name))],
                notes: vec![format!(
                    "LOCKS: CREATE INDEX {} blocks writes to {} while it builds; on a large table write CREATE INDEX CONCURRENTLY in a migration of its own whose first line is `-- actor-orm: no-transaction`",
                    i.name, new.name
                )],
            });
        }
    }
    for i in &old.indexes {
        if !new.indexes.contains(i) {
            steps.push(Step {
                up: vec![format!("DROP INDEX {}", quote_ident(&i.name))],
                down: vec![create_index(&new.name, i)],
                notes: Vec::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, not_null: bool) -> Col {
        Col {
            name: name.into(),
            ty: ty.into(),
            not_null,
            default: None,
            identity: false,
            generated: None,
        }
    }

    fn table(name: &str, columns: Vec<Col>) -> Table {
        Table {
            name: name.into(),
            key: Some(Named {
                name: format!("{name}_pkey"),
                columns: vec![columns[0].name.clone()],
            }),
            columns,
            ..Table::default()
        }
    }

    fn schema(tables: Vec<Table>) -> Schema {
        Schema {
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            enums: Default::default(),
        }
    }

    #[test]
    fn equal_schemas_need_no_migration() {
        let s = schema(vec![table("a", vec![col("id", "bigint", true)])]);
        assert_eq!(generate(&s, &s), None);
    }

    #[test]
    fn a_rename_is_asked_not_guessed_and_risky_changes_are_flagged() {
        let old = schema(vec![table(
            "people",
            vec![
                col("id", "bigint", true),
                col("nick", "text", false),
                col("age", "integer", false),
            ],
        )]);
        let mut new_people = table(
            "people",
            vec![
                col("id", "bigint", true),
                col("handle", "text", false),
                col("age", "bigint", true),
            ],
        );
        new_people.indexes.push(Index {
            name: "people_age_idx".into(),
            columns: vec!["age".into()],
            unique: false,
        });
        let m = generate(&old, &schema(vec![new_people])).expect("a migration");
        assert!(
            m.up.contains("QUESTION: was column people.nick renamed to handle?"),
            "{}",
            m.up
        );
        assert!(
            m.up.contains("REWRITES: changing people.age from integer to bigint"),
            "{}",
            m.up
        );
        assert!(
            m.up.contains("LOCKS: SET NOT NULL on people.age"),
            "{}",
            m.up
        );
        assert!(
            m.up.contains("LOCKS: CREATE INDEX people_age_idx"),
            "{}",
            m.up
        );
        assert!(
            m.down
                .contains("ALTER TABLE \"people\" ADD COLUMN \"nick\" text"),
            "{}",
            m.down
        );
        assert_eq!(m.warnings.len(), 5, "{:?}", m.warnings);
    }

    #[test]
    fn safe_type_changes_and_catalog_defaults_are_recognised() {
        assert!(binary_compatible(
            "character varying(10)",
            "character varying(20)"
        ));
        assert!(binary_compatible("character varying(10)", "text"));
        assert!(!binary_compatible(
            "character varying(20)",
            "character varying(10)"
        ));
        assert!(!binary_compatible("integer", "bigint"));
        assert_eq!(normal_default("'active'::text"), "'active'");
        assert_eq!(normal_default("(now())"), "now()");
        assert_eq!(normal_default("0"), "0");
    }
}
