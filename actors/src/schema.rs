//! A schema as the migration generator compares it: tables (columns, keys, unique and foreign-key
//! constraints, indexes) and enum types, read from the models ([`SchemaModels`]) or from the live
//! catalog. Types are written as `format_type()` writes them, so both sides compare as text.

use std::collections::BTreeMap;

use actor_orm_core::{DbEnum, Model, ModelMeta, SqlType};
use tokio_postgres::Client;

/// The models (and PostgreSQL enum types) a migration is generated for.
///
/// ```
/// use actor_orm_actors::SchemaModels;
/// let models = SchemaModels::new();
/// assert!(models.is_empty());
/// ```
#[derive(Debug, Clone, Default)]
pub struct SchemaModels {
    pub(crate) metas: Vec<&'static ModelMeta>,
    pub(crate) enums: Vec<(&'static str, &'static [&'static str])>,
}

impl SchemaModels {
    /// No models yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a model's table.
    pub fn model<M: Model>(mut self) -> Self {
        self.metas.push(M::meta());
        self
    }

    /// Adds a PostgreSQL enum type (a `DbEnum` with a `type_name`); text enums need none.
    pub fn db_enum<E: DbEnum>(mut self) -> Self {
        if let Some(name) = E::TYPE_NAME {
            self.enums.push((name, E::LABELS));
        }
        self
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty() && self.enums.is_empty()
    }

    /// The SQL that creates these models' schema in an empty database: enum types, tables with
    /// their keys and constraints, foreign keys, indexes (what the migration generator would
    /// write from nothing).
    ///
    /// ```
    /// use actor_orm_actors::SchemaModels;
    /// assert_eq!(SchemaModels::new().create_sql(), "");
    /// ```
    pub fn create_sql(&self) -> String {
        crate::generator::generate(&Schema::default(), &Schema::of_models(self))
            .map(|m| m.up)
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Schema {
    pub(crate) tables: BTreeMap<String, Table>,
    pub(crate) enums: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Table {
    pub(crate) name: String,
    pub(crate) columns: Vec<Col>,
    pub(crate) key: Option<Named>,
    pub(crate) uniques: Vec<Named>,
    pub(crate) foreign: Vec<Foreign>,
    pub(crate) indexes: Vec<Index>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Col {
    pub(crate) name: String,
    pub(crate) ty: String,
    pub(crate) not_null: bool,
    pub(crate) default: Option<String>,
    pub(crate) identity: bool,
    pub(crate) generated: Option<String>,
}

/// A constraint over columns (primary key, unique).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Foreign {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    pub(crate) table: String,
    pub(crate) to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
    pub(crate) unique: bool,
}

/// A type as `format_type()` writes it.
pub(crate) fn type_name(t: &SqlType) -> String {
    match t {
        SqlType::Varchar(n) => format!("character varying({n})"),
        SqlType::Timestamp => "timestamp without time zone".into(),
        SqlType::TimestampTz => "timestamp with time zone".into(),
        SqlType::Enum(name) => (*name).to_owned(),
        SqlType::Array(inner) => format!("{}[]", type_name(inner)),
        SqlType::Named(n) => match n.name {
            "time" => "time without time zone".into(),
            "timetz" => "time with time zone".into(),
            "varbit" => "bit varying".into(),
            other => other.to_owned(),
        },
        other => other.ddl(),
    }
}

impl Schema {
    /// The schema the models describe.
    pub(crate) fn of_models(models: &SchemaModels) -> Schema {
        let mut schema = Schema::default();
        for (name, labels) in &models.enums {
            schema.enums.insert(
                (*name).to_owned(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
            );
        }
        for meta in &models.metas {
            let name = meta.table.to_owned();
            let mut table = Table {
                name: name.clone(),
                ..Table::default()
            };
            for c in meta.columns {
                table.columns.push(Col {
                    name: c.name.to_owned(),
                    ty: type_name(&c.sql_type),
                    not_null: !c.nullable || c.primary_key,
                    default: c
                        .default_sql
                        .map(str::to_owned)
                        .or_else(|| c.version.then(|| "1".to_owned())),
                    identity: c.auto_increment,
                    generated: c.generated_sql.map(str::to_owned),
                });
                if c.unique {
                    table.uniques.push(Named {
                        name: format!("{name}_{}_key", c.name),
                        columns: vec![c.name.to_owned()],
                    });
                }
                if let Some(parent) = c.references {
                    let parent = parent();
                    table.foreign.push(Foreign {
                        name: format!("{name}_{}_fkey", c.name),
                        columns: vec![c.name.to_owned()],
                        table: parent.table.to_owned(),
                        to: parent
                            .key_columns()
                            .map(|(_, k)| k.name.to_owned())
                            .collect(),
                    });
                }
            }
            let key: Vec<String> = meta.key_columns().map(|(_, c)| c.name.to_owned()).collect();
            if !key.is_empty() {
                table.key = Some(Named {
                    name: format!("{name}_pkey"),
                    columns: key,
                });
            }
            for i in meta.indexes {
                table.indexes.push(Index {
                    name: i.name.to_owned(),
                    columns: i.columns.iter().map(|c| (*c).to_owned()).collect(),
                    unique: i.unique,
                });
            }
            schema.tables.insert(name, table);
        }
        schema
    }

    /// The tables and enum types of the schema first in the search path, as the catalog has
    /// them (the migrations' history table left out).
    pub(crate) async fn read(client: &Client) -> Result<Schema, tokio_postgres::Error> {
        let mut schema = Schema::default();
        for row in client
            .query(
                "SELECT t.typname::text, e.enumlabel::text FROM pg_type t
                 JOIN pg_enum e ON e.enumtypid = t.oid
                 WHERE t.typnamespace = current_schema()::regnamespace
                 ORDER BY t.typname, e.enumsortorder",
                &[],
            )
            .await?
        {
            schema.enums.entry(row.get(0)).or_default().push(row.get(1));
        }
        for row in client
            .query(
                "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
                        a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity <> '',
                        a.attgenerated <> ''
                 FROM pg_class c
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                 LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
                 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')
                   AND c.relname <> 'actor_orm_migrations'
                 ORDER BY c.relname, a.attnum",
                &[],
            )
            .await?
        {
            let table: String = row.get(0);
            let generated: bool = row.get(6);
            let expr: Option<String> = row.get(4);
            let entry = schema.tables.entry(table.clone()).or_insert_with(|| Table {
                name: table,
                ..Table::default()
            });
            entry.columns.push(Col {
                name: row.get(1),
                ty: row.get(2),
                not_null: row.get(3),
                default: if generated { None } else { expr.clone() },
                identity: row.get(5),
                generated: if generated { expr } else { None },
            });
        }
        for row in client
            .query(
                "SELECT c.relname::text, k.conname::text, k.contype::text,
                        ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
                              JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n
                              ORDER BY u.o),
                        f.relname::text,
                        ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
                              JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n
                              ORDER BY u.o)
                 FROM pg_constraint k
                 JOIN pg_class c ON c.oid = k.conrelid
                 LEFT JOIN pg_class f ON f.oid = k.confrelid
                 WHERE c.relnamespace = current_schema()::regnamespace AND k.contype IN ('p', 'u', 'f')
                 ORDER BY c.relname, k.conname",
                &[],
            )
            .await?
        {
            let Some(table) = schema.tables.get_mut(&row.get::<_, String>(0)) else {
                continue;
            };
            let name: String = row.get(1);
            let columns: Vec<String> = row.get(3);
            match row.get::<_, String>(2).as_str() {
                "p" => table.key = Some(Named { name, columns }),
                "u" => table.uniques.push(Named { name, columns }),
                _ => table.foreign.push(Foreign {
                    name,
                    columns,
                    table: row.get::<_, Option<String>>(4).unwrap_or_default(),
                    to: row.get(5),
                }),
            }
        }
        for row in client
            .query(
                "SELECT t.relname::text, i.relname::text, x.indisunique,
                        ARRAY(SELECT a.attname::text FROM unnest(x.indkey::int2[]) WITH ORDINALITY u(n, o)
                              JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = u.n
                              ORDER BY u.o)
                 FROM pg_index x
                 JOIN pg_class i ON i.oid = x.indexrelid
                 JOIN pg_class t ON t.oid = x.indrelid
                 WHERE t.relnamespace = current_schema()::regnamespace
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
                 ORDER BY t.relname, i.relname",
                &[],
            )
            .await?
        {
            if let Some(table) = schema.tables.get_mut(&row.get::<_, String>(0)) {
                table.indexes.push(Index {
                    name: row.get(1),
                    unique: row.get(2),
                    columns: row.get(3),
                });
            }
        }
        Ok(schema)
    }
}
