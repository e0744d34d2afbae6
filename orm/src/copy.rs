//! Bulk loading with `COPY … FROM STDIN BINARY`, the fastest path into PostgreSQL, inside the
//! session's transaction and with the same typed value errors as inserts.

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;

use crate::bind::{Bind, BindError};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::model::{Model, Writable};
use crate::session::SessionState;
use crate::unit_of_work;

impl SessionState {
    /// Loads `models` into their table with `COPY … FROM STDIN BINARY`, inside the session's
    /// transaction (opened if needed): rows are encoded as they are sent, each value checked
    /// against its column's type. A value that does not fit is a typed error naming its column;
    /// the COPY is then aborted, nothing of it is written, and the transaction must be rolled
    /// back. Columns the models leave to the database (an unset `auto_increment` key, a
    /// `default` or `generated` column) are left out, and must be left out by every model alike.
    /// Rows copied do not enter the identity map. Returns how many rows were copied.
    pub async fn copy_in<M: Model + Writable>(
        &mut self,
        conn: &Connection,
        models: impl IntoIterator<Item = M>,
    ) -> Result<u64> {
        let meta = M::meta();
        let mut models = models.into_iter().peekable();
        let Some(first) = models.peek() else {
            return Ok(0);
        };
        let included = unit_of_work::included_columns(meta, first);
        let unset: Vec<bool> = (0..meta.columns.len()).map(|i| first.is_unset(i)).collect();
        self.flush(conn).await?;
        self.begin(conn).await?;
        let types = conn
            .param_types(&unit_of_work::insert_probe(meta, &included))
            .await?;
        let columns: Vec<String> = included
            .iter()
            .map(|&i| crate::quote_ident(meta.columns[i].name))
            .collect();
        let sql = format!(
            "COPY {} ({}) FROM STDIN BINARY",
            meta.qualified_name(),
            columns.join(", ")
        );
        let result = async {
            let sink = conn.raw_client().copy_in(&sql).await?;
            let writer = BinaryCopyInWriter::new(sink, &types);
            let mut writer = std::pin::pin!(writer);
            for model in models {
                if (0..meta.columns.len()).any(|i| model.is_unset(i) != unset[i]) {
                    return Err(Error::InvalidInput(format!(
                        "copy_in into {}: every row must leave the same columns to the database (an unset key or default in some rows only)",
                        meta.table
                    )));
                }
                let mut values = model.values()?;
                let mut coerced = Vec::with_capacity(included.len());
                for &i in &included {
                    let col = &meta.columns[i];
                    let v = std::mem::replace(&mut values[i], sea_query::Value::Bool(None));
                    coerced.push(col.sql_type.coerce(v, col.name)?);
                }
                let binds: Vec<Bind<'_>> = coerced
                    .iter()
                    .zip(&included)
                    .map(|(v, &i)| Bind::new(v, i + 1, Some(meta.columns[i].name)))
                    .collect();
                let refs: Vec<&(dyn ToSql + Sync)> =
                    binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                writer.as_mut().write(&refs).await.map_err(bind_error)?;
            }
            Ok(writer.finish().await?)
        }
        .await;
        if result.is_err() {
            // The aborted COPY failed the transaction on the server.
            self.mark_failed();
        }
        result
    }
}

/// A value refused while encoding is our typed error (naming its column); anything else is the
/// driver's.
fn bind_error(e: tokio_postgres::Error) -> Error {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BindError>() {
            return b.clone().into_error();
        }
        source = s.source();
    }
    Error::from(e)
}
