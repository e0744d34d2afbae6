//! `COPY (query) TO STDOUT`: a query's result as COPY data — CSV, text or PostgreSQL's binary
//! format — read as the consumer takes it, for exports and for loading another database.
//!
//! COPY takes no parameters. So that a query's values are still bound, never written into the
//! SQL, each value is first bound into a transaction-local setting
//! (`SELECT set_config('actor_orm.copy_1', 'v' || CAST($1 AS integer)::text, true)`), and the
//! COPY reads it back (`CAST(substr(current_setting('actor_orm.copy_1'), 2) AS integer)`): the
//! value crosses as its own type's text form, which PostgreSQL reads back exactly. A query with
//! values therefore runs in the session's transaction (opened if none is open), and so does any
//! COPY on a connection with unnamed statements (behind a pooler: tokio-postgres prepares a COPY
//! as a named statement, which must live and die on one server connection); otherwise a COPY
//! without values runs on its own when no transaction is open. Streaming, back-pressure, dropping part-way and errors are as
//! for [`SessionState::stream`].

use bytes::Bytes;
use tokio_postgres::types::Type;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::session::{SessionState, TxState};
use crate::stream::{
    CHUNK, Fill, SAVEPOINT, Stop, StreamEnd, StreamMessage, StreamSender, Streamable, next_chunk,
};

/// The format of COPY data.
///
/// ```
/// use actor_orm_core::CopyFormat;
///
/// assert_eq!(CopyFormat::csv().with_header().options(), "(FORMAT csv, HEADER true)");
/// assert_eq!(CopyFormat::Binary.options(), "(FORMAT binary)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CopyFormat {
    /// Comma-separated values, one line per row; `header` adds a line of column names.
    Csv {
        /// Whether the first line names the columns.
        header: bool,
    },
    /// PostgreSQL's text format: tab-separated, `\N` for NULL.
    Text,
    /// PostgreSQL's binary format, as `COPY … FROM STDIN BINARY` (and
    /// [`copy_in`](SessionState::copy_in)) reads it.
    Binary,
}

impl CopyFormat {
    /// CSV without a header line.
    pub const fn csv() -> Self {
        CopyFormat::Csv { header: false }
    }

    /// The same format with a header line (CSV only; others are unchanged).
    pub const fn with_header(self) -> Self {
        match self {
            CopyFormat::Csv { .. } => CopyFormat::Csv { header: true },
            other => other,
        }
    }

    /// The COPY options clause.
    pub const fn options(&self) -> &'static str {
        match self {
            CopyFormat::Csv { header: true } => "(FORMAT csv, HEADER true)",
            CopyFormat::Csv { header: false } => "(FORMAT csv)",
            CopyFormat::Text => "(FORMAT text)",
            CopyFormat::Binary => "(FORMAT binary)",
        }
    }
}

/// The name of the setting that carries parameter `n` (from 1).
fn setting(n: usize) -> String {
    format!("'actor_orm.copy_{n}'")
}

/// A type as SQL names it in a cast: built-in types by name (`int4`, `_text`), others
/// schema-qualified and quoted.
fn cast_name(ty: &Type) -> String {
    if ty.schema() == "pg_catalog" || ty.schema().is_empty() {
        ty.name().to_owned()
    } else {
        format!(
            "{}.{}",
            crate::quote_ident(ty.schema()),
            crate::quote_ident(ty.name())
        )
    }
}

/// The statement that binds every value into its setting: `'v'` and the value's text, or an
/// empty string for NULL.
fn setter(types: &[Type]) -> String {
    let sets: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            format!(
                "set_config({}, coalesce('v' || CAST(${} AS {})::text, ''), true)",
                setting(i + 1),
                i + 1,
                cast_name(ty)
            )
        })
        .collect();
    format!("SELECT {}", sets.join(", "))
}

/// `sql` with each `$n` outside quoted text replaced by a read of its setting, cast back to the
/// parameter's type.
fn read_settings(sql: &str, types: &[Type]) -> Result<String> {
    let mut out = String::with_capacity(sql.len() + types.len() * 80);
    let mut chars = sql.char_indices().peekable();
    let mut quote: Option<char> = None;
    while let Some((_, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                out.push(c);
            }
            (Some(_), c) => out.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                out.push(c);
            }
            (None, '$') if chars.peek().is_some_and(|(_, d)| d.is_ascii_digit()) => {
                let mut digits = String::new();
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                let n: usize = digits.parse().unwrap_or(0);
                let Some(ty) = n.checked_sub(1).and_then(|i| types.get(i)) else {
                    return Err(Error::InvalidInput(format!(
                        "COPY of a query: parameter ${n} has no type"
                    )));
                };
                let name = setting(n);
                out.push_str(&format!(
                    "CAST(CASE WHEN current_setting({name}) = '' THEN NULL \
                     ELSE substr(current_setting({name}), 2) END AS {})",
                    cast_name(ty)
                ));
            }
            (None, c) => out.push(c),
        }
    }
    Ok(out)
}

impl SessionState {
    /// Streams the result of `query` as COPY data in `format` to `out` (see the module docs):
    /// pending changes are flushed first; `opened` is called once the server has begun
    /// answering. Returns how the stream ended; an error is returned, not sent.
    pub async fn copy_out<Q: Streamable>(
        &mut self,
        conn: &Connection,
        query: &Q,
        format: CopyFormat,
        out: &StreamSender<Bytes>,
        cancel_limit: std::time::Duration,
        opened: impl FnOnce(),
    ) -> Result<StreamEnd> {
        self.flush(conn).await?;
        let (sql, values) = query.statement();
        let bound = !values.0.is_empty();
        let (setter, copy) = if bound {
            // The values live in transaction-local settings: the transaction comes first (and
            // the types are asked inside it, see `param_types`).
            self.begin(conn).await?;
            let types = conn.param_types(&sql).await?;
            (
                setter(&types),
                format!(
                    "COPY ({}) TO STDOUT {}",
                    read_settings(&sql, &types)?,
                    format.options()
                ),
            )
        } else {
            (
                String::new(),
                format!("COPY ({sql}) TO STDOUT {}", format.options()),
            )
        };
        // tokio-postgres prepares a COPY (a named statement) before running it: with unnamed
        // statements (behind a pooler) both, and the statement's close, must reach one server
        // connection, so the COPY runs in a transaction.
        let in_transaction = bound
            || conn.mode() == crate::StatementMode::Unnamed
            || self.tx_state() != TxState::Idle
            || !query.is_read_only();
        let mut rows = if in_transaction {
            self.in_transaction(conn, async {
                conn.batch_known(&format!("SAVEPOINT {SAVEPOINT}")).await?;
                if bound {
                    conn.query(&setter, &values, None).await?;
                }
                conn.start_copy_out(&copy).await
            })
            .await?
        } else {
            conn.start_copy_out(&copy).await?
        };
        opened();
        let mut gone = std::pin::pin!(out.closed());
        let read = loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let fill = next_chunk(&mut rows, gone.as_mut(), &mut chunk).await;
            rows.count += chunk.len() as u64;
            let sent = chunk.is_empty() || out.send(StreamMessage::Items(chunk)).await.is_ok();
            match (fill, sent) {
                (Fill::Failed(e), _) => break Err(e),
                (Fill::Gone, _) | (_, false) => break Ok(Some(Stop::Dropped)),
                (Fill::End, true) => break Ok(None),
                (Fill::Chunk, true) => {}
            }
        };
        self.end_streaming(conn, rows, &copy, read, in_transaction, cancel_limit, out)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_reads_of_their_settings_outside_quoted_text() {
        let sql = r#"SELECT "a$1" FROM "t" WHERE "x" = $1 AND "y" = '$2' AND "z" IN ($2, $10)"#;
        let mut types = vec![Type::INT4, Type::TEXT];
        types.resize(10, Type::INT8);
        let out = read_settings(sql, &types).expect("rewritten");
        assert!(out.starts_with(r#"SELECT "a$1" FROM "t" WHERE "x" = CAST(CASE WHEN current_setting('actor_orm.copy_1') = ''"#), "{out}");
        assert!(out.contains("AS int4) AND \"y\" = '$2' AND"), "{out}");
        assert!(
            out.contains("current_setting('actor_orm.copy_10'), 2) END AS int8))"),
            "{out}"
        );
        assert!(!out.contains("$2,"), "{out}");
    }

    #[test]
    fn the_setter_binds_each_value_as_its_own_type() {
        assert_eq!(
            setter(&[Type::INT4, Type::TEXT_ARRAY]),
            "SELECT set_config('actor_orm.copy_1', coalesce('v' || CAST($1 AS int4)::text, ''), true), \
             set_config('actor_orm.copy_2', coalesce('v' || CAST($2 AS _text)::text, ''), true)"
        );
    }

    #[test]
    fn a_parameter_without_a_type_is_refused() {
        assert!(read_settings("SELECT $3", &[Type::INT4]).is_err());
    }
}
