//! Bulk loading with `COPY … FROM STDIN BINARY`, the fastest path into PostgreSQL, inside the
//! session's transaction and with the same typed value errors as inserts.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut as _, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use tokio_postgres::types::IsNull;
use tokio_postgres::{CopyInSink, ToStatement};

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
        let mut models = Models(Box::new(models.into_iter()));
        self.copy_in_from(conn, Pin::new(&mut models)).await
    }

    /// [`copy_in`](Self::copy_in) of the models a stream yields, taken as the COPY goes (rows
    /// read from another database, say): memory stays bounded. An error from the stream aborts
    /// the COPY: nothing of it is written.
    pub async fn copy_in_stream<M: Model + Writable>(
        &mut self,
        conn: &Connection,
        models: impl Stream<Item = Result<M>> + Send,
    ) -> Result<u64> {
        let models = std::pin::pin!(models);
        self.copy_in_from(conn, models).await
    }

    /// The COPY itself, of the models `source` yields.
    async fn copy_in_from<M: Model + Writable>(
        &mut self,
        conn: &Connection,
        mut source: Pin<&mut (impl Stream<Item = Result<M>> + ?Sized)>,
    ) -> Result<u64> {
        let meta = M::meta();
        let Some(first) = next_model(&mut source).await? else {
            return Ok(0);
        };
        let included = unit_of_work::included_columns(meta, &first);
        let unset: Vec<bool> = (0..meta.columns.len()).map(|i| first.is_unset(i)).collect();
        self.flush(conn).await?;
        if self.tx_state() == crate::TxState::Failed {
            return Err(Error::TransactionAborted);
        }
        let prepared = conn.mode() == crate::StatementMode::Prepared;
        if !prepared {
            // Behind a pooler the type probe is a statement prepared and closed on the server:
            // both must reach the same server connection, which only a transaction holds. With
            // prepared statements the probe is the statement cache's, and the COPY goes out
            // behind the BEGIN below.
            self.begin(conn).await?;
        }
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
        let copy = Copy {
            meta,
            included: &included,
            unset: &unset,
            types: &types,
        };
        // The COPY goes out behind the BEGIN when none is open: one round trip for both. With
        // prepared statements it is prepared once per connection, as every statement is (a
        // round trip less on each later COPY); behind a pooler, for this COPY alone.
        let result = if prepared {
            let statement = conn.statement(&sql).await?;
            self.in_transaction(conn, copy.run(conn, &statement, first, source))
                .await
        } else {
            self.in_transaction(conn, copy.run(conn, sql.as_str(), first, source))
                .await
        };
        if result.is_err() {
            // The aborted COPY failed the transaction on the server.
            self.mark_failed();
        }
        result
    }
}

/// One COPY's columns: which of the model's are sent, which the first row left to the
/// database (every row must leave the same), and their types as the server reported them.
struct Copy<'a> {
    meta: &'static crate::model::ModelMeta,
    included: &'a [usize],
    unset: &'a [bool],
    types: &'a [tokio_postgres::types::Type],
}

impl Copy<'_> {
    /// Sends the COPY and the rows of `first` and `source` after it.
    async fn run<M: Model + Writable>(
        &self,
        conn: &Connection,
        statement: &(impl ToStatement + Sync + ?Sized),
        first: M,
        mut source: Pin<&mut (impl Stream<Item = Result<M>> + ?Sized)>,
    ) -> Result<u64> {
        let meta = self.meta;
        let sink = conn
            .raw_client()
            .copy_in::<_, bytes::Bytes>(statement)
            .await?;
        let mut sink = std::pin::pin!(sink);
        // The binary COPY format, written straight into one buffer: a header, per row a field
        // count and each field's length and bytes, and a trailer.
        let mut buf = BytesMut::with_capacity(FLUSH_AT + 4096);
        buf.put_slice(b"PGCOPY\n\xff\r\n\0");
        buf.put_i32(0);
        buf.put_i32(0);
        let fields = i16::try_from(self.included.len())
            .map_err(|_| Error::InvalidInput("too many columns for COPY".into()))?;
        let mut next = Some(first);
        while let Some(model) = next.take() {
            if (0..meta.columns.len()).any(|i| model.is_unset(i) != self.unset[i]) {
                return Err(Error::InvalidInput(format!(
                    "copy_in into {}: every row must leave the same columns to the database (an unset key or default in some rows only)",
                    meta.table
                )));
            }
            buf.put_i16(fields);
            for (&i, ty) in self.included.iter().zip(self.types) {
                let col = &meta.columns[i];
                let at = buf.len();
                buf.put_i32(0);
                // Straight from the model's field, checked as an INSERT's bound value is.
                let written = model.encode_column(i, col, ty, &mut buf)?;
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
            next = next_model(&mut source).await?;
        }
        buf.put_i16(-1);
        send(sink.as_mut(), buf.split().freeze()).await?;
        Ok(sink.as_mut().finish().await?)
    }
}

/// An iterator's models as a stream that is always ready.
struct Models<I>(Box<I>);

impl<M, I: Iterator<Item = M>> Stream for Models<I> {
    type Item = Result<M>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<M>>> {
        Poll::Ready(self.0.next().map(Ok))
    }
}

/// The next model of `source`, `None` at the end.
async fn next_model<M, S: Stream<Item = Result<M>> + ?Sized>(
    source: &mut Pin<&mut S>,
) -> Result<Option<M>> {
    std::future::poll_fn(|cx| source.as_mut().poll_next(cx))
        .await
        .transpose()
}

/// How much COPY data is buffered before it is handed to the connection.
const FLUSH_AT: usize = 4 * 1024;

/// Hands one chunk of COPY data to the connection and waits until it has gone out, so that the
/// server works on it while the next chunk is encoded (queued without waiting, every chunk
/// would reach the connection only once the encoding yields: at the end of a small COPY).
async fn send(
    mut sink: std::pin::Pin<&mut CopyInSink<bytes::Bytes>>,
    chunk: bytes::Bytes,
) -> Result<()> {
    std::future::poll_fn(|cx| sink.as_mut().poll_ready(cx)).await?;
    sink.as_mut().start_send(chunk)?;
    std::future::poll_fn(|cx| sink.as_mut().poll_flush(cx)).await?;
    Ok(())
}
