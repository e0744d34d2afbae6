//! Bulk loading with `COPY … FROM STDIN BINARY`, the fastest path into PostgreSQL, inside the
//! session's transaction and with the same typed value errors as inserts.

use bytes::{BufMut as _, BytesMut};
use futures_sink::Sink;
use tokio_postgres::CopyInSink;
use tokio_postgres::types::{IsNull, ToSql};

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
            let sink = conn
                .raw_client()
                .copy_in::<_, bytes::Bytes>(&sql)
                .await?;
            let mut sink = std::pin::pin!(sink);
            // The binary COPY format, written straight into one buffer: a header, per row a
            // field count and each field's length and bytes, and a trailer.
            let mut buf = BytesMut::with_capacity(FLUSH_AT + 4096);
            buf.put_slice(b"PGCOPY\n\xff\r\n\0");
            buf.put_i32(0);
            buf.put_i32(0);
            let fields = i16::try_from(included.len())
                .map_err(|_| Error::InvalidInput("too many columns for COPY".into()))?;
            for model in models {
                if (0..meta.columns.len()).any(|i| model.is_unset(i) != unset[i]) {
                    return Err(Error::InvalidInput(format!(
                        "copy_in into {}: every row must leave the same columns to the database (an unset key or default in some rows only)",
                        meta.table
                    )));
                }
                let mut values = model.values()?;
                buf.put_i16(fields);
                for (k, &i) in included.iter().enumerate() {
                    let col = &meta.columns[i];
                    let v = std::mem::replace(&mut values[i], sea_query::Value::Bool(None));
                    let v = col.sql_type.coerce(v, col.name)?;
                    let at = buf.len();
                    buf.put_i32(0);
                    let written = Bind::new(&v, i + 1, Some(col.name))
                        .to_sql(&types[k], &mut buf)
                        .map_err(|e| match e.downcast::<BindError>() {
                            Ok(b) => b.into_error(),
                            Err(other) => Error::InvalidInput(format!("{}: {other}", col.name)),
                        })?;
                    let len = match written {
                        IsNull::Yes => -1,
                        IsNull::No => i32::try_from(buf.len() - at - 4).map_err(|_| {
                            Error::InvalidInput(format!("{}: a value over 2 GiB", col.name))
                        })?,
                    };
                    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                if buf.len() >= FLUSH_AT {
                    send(sink.as_mut(), buf.split().freeze()).await?;
                }
            }
            buf.put_i16(-1);
            send(sink.as_mut(), buf.split().freeze()).await?;
            Ok(sink.as_mut().finish().await?)
        }
        .await;
        if result.is_err() {
            // The aborted COPY failed the transaction on the server.
            self.mark_failed();
        }
        result
    }
}

/// How much COPY data is buffered before it is handed to the connection.
const FLUSH_AT: usize = 64 * 1024;

/// Hands one chunk of COPY data to the connection, waiting while it is busy.
async fn send(
    mut sink: std::pin::Pin<&mut CopyInSink<bytes::Bytes>>,
    chunk: bytes::Bytes,
) -> Result<()> {
    std::future::poll_fn(|cx| sink.as_mut().poll_ready(cx)).await?;
    sink.as_mut().start_send(chunk)?;
    Ok(())
}
