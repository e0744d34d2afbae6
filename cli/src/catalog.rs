//! What `generate` reads from PostgreSQL's catalog: the relations of one schema, their columns,
//! keys, unique and foreign-key constraints, and every type a column uses.

use std::collections::{BTreeMap, HashMap};

use actor_orm::{Result, Session, Value};

/// A table, view or materialized view.
#[derive(Debug, Clone)]
pub struct Relation {
    /// Its name.
    pub name: String,
    /// `r` table, `p` partitioned table, `v` view, `m` materialized view.
    pub kind: char,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order.
    pub key: Vec<String>,
}

impl Relation {
    /// A view or materialized view.
    pub fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Its default expression, if any.
    pub default: Option<String>,
    /// `GENERATED ALWAYS AS … STORED`.
    pub generated: bool,
    /// An identity column (`GENERATED … AS IDENTITY`).
    pub identity: bool,
    /// A one-column UNIQUE constraint.
    pub unique: bool,
    /// The table a one-column foreign key references (in the same schema).
    pub references: Option<String>,
}

impl Column {
    /// Whether the database fills the column from a sequence (serial or identity).
    pub fn from_sequence(&self) -> bool {
        self.identity
            || self
                .default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("))
    }
}

/// A type, as `pg_type` has it.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    /// Its name.
    pub name: String,
    /// Its schema.
    pub schema: String,
    /// `b` base, `d` domain, `e` enum, `r` range, `c` composite, `p` pseudo, `m` multirange.
    pub kind: char,
    /// For an array type, the element type's OID.
    pub element: Option<u32>,
    /// For a domain, its base type's OID.
    pub base: Option<u32>,
}

/// Everything `generate` needs about a schema.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The schema's relations, by name.
    pub relations: Vec<Relation>,
    /// Every type, by OID.
    pub types: HashMap<u32, TypeInfo>,
    /// Enum types' labels in order, by type OID.
    pub enums: BTreeMap<u32, Vec<String>>,
}

fn text(row: &actor_orm::tokio_postgres::Row, i: usize) -> String {
    row.get::<_, Option<String>>(i).unwrap_or_default()
}

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or(' ')
}

/// Reads the catalog of `schema`.
pub async fn read(session: &Session, schema: &str) -> Result<Catalog> {
    let p = || vec![Value::from(schema)];
    let columns = session
        .raw_rows_autocommit(
            "SELECT c.relname::text, c.relkind::text, a.attname::text, a.atttypid::oid, \
                    a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attgenerated::text, \
                    a.attidentity::text \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition \
             ORDER BY c.relname, a.attnum",
            p(),
        )
        .await?;
    let mut relations: Vec<Relation> = Vec::new();
    for row in &columns {
        let name = text(row, 0);
        if relations.last().is_none_or(|r| r.name != name) {
            relations.push(Relation {
                name: name.clone(),
                kind: first_char(&text(row, 1)),
                columns: Vec::new(),
                key: Vec::new(),
            });
        }
        let generated = text(row, 6);
        let identity = text(row, 7);
        let column = Column {
            name: text(row, 2),
            type_oid: row.get(3),
            not_null: row.get(4),
            default: row
                .get::<_, Option<String>>(5)
                .filter(|_| generated.is_empty()),
            generated: !generated.is_empty(),
            identity: !identity.is_empty(),
            unique: false,
            references: None,
        };
        if let Some(r) = relations.last_mut() {
            r.columns.push(column);
        }
    }

    let keys = session
        .raw_rows_autocommit(
            "SELECT c.relname::text, a.attname::text \
             FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, at) \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
             WHERE n.nspname = $1 AND i.indisprimary \
             ORDER BY c.relname, k.at",
            p(),
        )
        .await?;
    for row in &keys {
        let (table, column) = (text(row, 0), text(row, 1));
        if let Some(r) = relations.iter_mut().find(|r| r.name == table) {
            r.key.push(column);
        }
    }

    let constraints = session
        .raw_rows_autocommit(
            "SELECT c.relname::text, a.attname::text, k.contype::text, f.relname::text, \
                    fn.nspname::text \
             FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.conkey[1] \
             LEFT JOIN pg_class f ON f.oid = k.confrelid \
             LEFT JOIN pg_namespace fn ON fn.oid = f.relnamespace \
             WHERE n.nspname = $1 AND k.contype IN ('u', 'f') AND cardinality(k.conkey) = 1",
            p(),
        )
        .await?;
    for row in &constraints {
        let (table, column, kind) = (text(row, 0), text(row, 1), text(row, 2));
        let Some(col) = relations
            .iter_mut()
            .find(|r| r.name == table)
            .and_then(|r| r.columns.iter_mut().find(|c| c.name == column))
        else {
            continue;
        };
        if kind == "u" {
            col.unique = true;
        } else if text(row, 4) == schema {
            col.references = Some(text(row, 3));
        }
    }

    let type_rows = session
        .raw_rows_autocommit(
            "SELECT t.oid, t.typname::text, n.nspname::text, t.typtype::text, \
                    CASE WHEN t.typcategory = 'A' THEN t.typelem END, \
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype END \
             FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
            vec![],
        )
        .await?;
    let mut types = HashMap::with_capacity(type_rows.len());
    for row in &type_rows {
        types.insert(
            row.get::<_, u32>(0),
            TypeInfo {
                name: text(row, 1),
                schema: text(row, 2),
                kind: first_char(&text(row, 3)),
                element: row.get(4),
                base: row.get(5),
            },
        );
    }

    let labels = session
        .raw_rows_autocommit(
            "SELECT e.enumtypid, e.enumlabel::text FROM pg_enum e \
             ORDER BY e.enumtypid, e.enumsortorder",
            vec![],
        )
        .await?;
    let mut enums: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for row in &labels {
        enums.entry(row.get(0)).or_default().push(text(row, 1));
    }
    Ok(Catalog {
        relations,
        types,
        enums,
    })
}
