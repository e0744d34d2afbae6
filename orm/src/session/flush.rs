//! The flush: the unit of work's changes as few statements as they can be, sent together.
//!
//! 1. **Plan.** Every statement is built, prepared and its values encoded before any is sent:
//!    runs of inserts become multi-row statements; runs of updates of one table and one shape
//!    (the same columns written and checked) become one `UPDATE … FROM unnest(…)` (see
//!    `update_batch`); deletes and lone updates stay one statement each. A value refused here
//!    leaves nothing half-written.
//! 2. **Send.** The statements go out back to back — behind the BEGIN when the transaction is
//!    not open yet — and their answers are read as they come: one round trip for the flush.
//! 3. **Read.** Answers in order; the first error is the caller's (the later statements fail
//!    only because the transaction is aborted). A row the lost-update check kept from being
//!    written — PostgreSQL reports no error for it — is [`Error::Stale`] for that row. Any
//!    failure after sending marks the transaction failed: the COMMIT after it rolls back, so
//!    nothing of a failed flush is ever committed.

use tokio_postgres::Row;

use super::{SessionState, batch_insert, batches, in_order, inserted_models, missing_row};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::model::Key;
use crate::unit_of_work::{self, Built, Op, Pending};
use crate::update_batch::{self, Shape};

/// One statement of a flush, and what its answer means.
enum Step<'a> {
    Inserts {
        models: Vec<&'a dyn Pending>,
        returning: bool,
    },
    /// Updates as one statement; each row that comes back carries its input's ordinal last.
    Updates(Vec<&'a Op>),
    Update(&'a Op),
    Delete(&'a Op),
    /// A deferred statement: its row count is not read.
    Statement,
}

enum Answer {
    Rows(Vec<Row>),
    Count(u64),
}

impl SessionState {
    pub(super) async fn flush_pending(&mut self, conn: &Connection) -> Result<()> {
        if self.tx == crate::TxState::Failed {
            return Err(Error::TransactionAborted);
        }
        let ops = self.work.take_ordered();
        let steps = plan(conn, &ops).await?;
        let sent = self
            .in_transaction(conn, async { Ok(send(conn, &steps).await) })
            .await?;
        let read = self.read(&steps, sent);
        if read.is_err() {
            // Part of the unit of work may be written already, and the rest is dropped: the
            // transaction must not be committed as it is (COMMIT now rolls it back).
            self.mark_failed();
        }
        read
    }

    fn read(&mut self, steps: &[(Step<'_>, Built)], answers: Vec<Result<Answer>>) -> Result<()> {
        for ((step, _), answer) in steps.iter().zip(answers) {
            match (step, answer?) {
                (Step::Inserts { models, returning }, Answer::Rows(rows)) if *returning => {
                    for (model, row) in models.iter().zip(rows.iter()) {
                        model.remember(row, &mut self.identity)?;
                    }
                }
                (Step::Inserts { .. }, _) => {}
                (Step::Update(op), Answer::Rows(rows)) => match (rows.first(), op) {
                    (Some(row), Op::Update { model, .. }) => {
                        model.remember(row, &mut self.identity)?;
                    }
                    _ => return Err(stale(op)),
                },
                (Step::Updates(ops), Answer::Rows(rows)) => {
                    let mut written = vec![false; ops.len()];
                    for row in &rows {
                        let Some(at) = ordinal(row, ops)? else {
                            continue;
                        };
                        written[at] = true;
                        if let Op::Update { model, .. } = ops[at] {
                            model.remember(row, &mut self.identity)?;
                        }
                    }
                    if let Some(at) = written.iter().position(|w| !w) {
                        return Err(stale(ops[at]));
                    }
                }
                (Step::Statement, Answer::Count(_)) => {}
                (Step::Delete(op), Answer::Count(n)) => {
                    if n == 0 {
                        return Err(stale(op));
                    }
                    if let Op::Delete { meta, key, .. } = op {
                        self.identity.remove(meta, key);
                    }
                }
                (_, _) => {
                    return Err(Error::InvalidInput(
                        "a statement of the flush answered in a way it cannot".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Which input row a returned row of a batched update is (its ordinal, the last column).
fn ordinal(row: &Row, ops: &[&Op]) -> Result<Option<usize>> {
    let n: i64 = row
        .try_get(row.len().saturating_sub(1))
        .map_err(Error::from)?;
    Ok(usize::try_from(n - 1).ok().filter(|at| *at < ops.len()))
}

/// The error for a row an update or delete did not find as loaded.
fn stale(op: &Op) -> Error {
    match op {
        Op::Update {
            model,
            key,
            expected_version,
            checked,
            ..
        } => missing_row(model.meta(), key, *expected_version, checked),
        Op::Delete {
            meta,
            key,
            expected_version,
            ..
        } => missing_row(meta, key, *expected_version, &[]),
        Op::Insert { model, .. } => Error::NotFound {
            table: model.meta().table.into(),
            key: "(an inserted row)".into(),
        },
        Op::Statement { meta, .. } => Error::NotFound {
            table: meta.table.into(),
            key: "(the rows of a deferred statement)".into(),
        },
    }
}

/// Every statement of the flush, built and checked; nothing sent yet.
async fn plan<'a>(conn: &Connection, ops: &'a [Op]) -> Result<Vec<(Step<'a>, Built)>> {
    let mut steps = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            Op::Insert { returning, .. } => {
                // A run of inserts goes out as multi-row statements.
                let returning = *returning;
                let start = i;
                while i < ops.len()
                    && matches!(&ops[i], Op::Insert { returning: r, .. } if *r == returning)
                {
                    i += 1;
                }
                for batch in batches(&inserted_models(&ops[start..i])) {
                    let built = batch_insert(conn, &batch, returning).await?;
                    steps.push((
                        Step::Inserts {
                            models: batch,
                            returning,
                        },
                        built,
                    ));
                }
                continue;
            }
            Op::Update { .. } => {
                if let Some((step, next)) = update_run(conn, ops, i).await? {
                    steps.push(step);
                    i = next;
                    continue;
                }
                let Op::Update {
                    model,
                    columns,
                    expected_version,
                    checked,
                    ..
                } = &ops[i]
                else {
                    continue;
                };
                let meta = model.meta();
                let values = model.values()?;
                let key_values: Vec<_> =
                    meta.key_columns().map(|(i, _)| values[i].clone()).collect();
                let built = unit_of_work::build_update(
                    meta,
                    &values,
                    &key_values,
                    columns,
                    *expected_version,
                    checked,
                )?;
                steps.push((Step::Update(&ops[i]), built));
            }
            Op::Delete {
                meta,
                key_values,
                expected_version,
                ..
            } => {
                let built = unit_of_work::build_delete(meta, key_values, *expected_version);
                steps.push((Step::Delete(&ops[i]), built));
            }
            Op::Statement { sql, values, .. } => {
                steps.push((Step::Statement, deferred(sql, values)));
            }
        }
        i += 1;
    }
    for (_, built) in &steps {
        conn.prepare_checked(&built.sql, &built.values, Some(&built.columns))
            .await?;
    }
    Ok(steps)
}

/// The updates from `ops[start]` on that can go as one statement — same table and shape,
/// distinct keys, prepared statements, columns that are not arrays — with the index after
/// them; `None` when fewer than two can.
async fn update_run<'a>(
    conn: &Connection,
    ops: &'a [Op],
    start: usize,
) -> Result<Option<((Step<'a>, Built), usize)>> {
    if conn.mode() != crate::StatementMode::Prepared {
        return Ok(None);
    }
    let Some((meta, shape)) = Shape::of(&ops[start]) else {
        return Ok(None);
    };
    let mut keys: std::collections::HashSet<&Key> = std::collections::HashSet::new();
    let mut end = start;
    while end < ops.len() && end - start < update_batch::MAX_ROWS {
        let same = match (&ops[end], Shape::of(&ops[end])) {
            (Op::Update { key, .. }, Some((m, s))) => {
                std::ptr::eq(m, meta) && s == shape && keys.insert(key)
            }
            _ => false,
        };
        if !same {
            break;
        }
        end += 1;
    }
    if end - start < 2 {
        return Ok(None);
    }
    let columns = shape.parameter_columns(meta);
    let probed = conn
        .param_types(&update_batch::type_probe(meta, &columns))
        .await?;
    let Some(types) = update_batch::types_in_order(&columns, &probed) else {
        return Ok(None);
    };
    if types
        .iter()
        .any(|t| matches!(t.kind(), tokio_postgres::types::Kind::Array(_)))
    {
        return Ok(None);
    }
    let group: Vec<&Op> = ops[start..end].iter().collect();
    let built = update_batch::build(meta, &shape, &group, &types)?;
    Ok(Some(((Step::Updates(group), built), end)))
}

/// A deferred statement as the flush sends it.
pub(super) fn deferred(sql: &str, values: &sea_query::Values) -> Built {
    Built {
        sql: sql.to_owned(),
        values: values.clone(),
        columns: Vec::new(),
    }
}

/// Sends every statement back to back and collects their answers, in order.
async fn send(conn: &Connection, steps: &[(Step<'_>, Built)]) -> Vec<Result<Answer>> {
    in_order(steps.iter().map(|(step, b)| async move {
        match step {
            Step::Delete(_)
            | Step::Statement
            | Step::Inserts {
                returning: false, ..
            } => conn
                .execute(&b.sql, &b.values, Some(&b.columns))
                .await
                .map(Answer::Count),
            _ => conn
                .query(&b.sql, &b.values, Some(&b.columns))
                .await
                .map(Answer::Rows),
        }
    }))
    .await
}
