//! The [`Session`] handle: what callers hold and clone, and every operation they send to the
//! session actor (see `session_actor`).

use std::sync::Arc;

use actor_orm_core::sea_query::Value;
use actor_orm_core::tokio_postgres::Row;
use actor_orm_core::{
    Connection, DeleteWhere, Error, IntoKey, Isolation, KeyValues, Lock, Model, OnConflict,
    Project, Result, Savepoint, Select, SelectPair, Selection, SessionState, TxState, UpdateWhere,
};
use ractor::ActorRef;
use tokio::sync::oneshot;

use crate::job::{BoxFuture, Call, Mode, once, read_mode};
use crate::label::Label;
use crate::pool::Pool;
use crate::session_actor::{Local, SessionMsg};

/// A handle on one session actor. Clones are cheap and all talk to the same session: they
/// share one transaction, one unit of work and one identity map, so one clone's `commit` also
/// writes what another clone queued. Give each job, request or loop iteration a session of its
/// own (`pool.session()`), and clone a handle only to hand the *same* unit of work to another
/// task. When the last clone is dropped the session ends: uncommitted work is rolled back and
/// the connection goes back to the pool.
///
/// ```no_run
/// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
/// let s = pool.session().await?;
/// let one = s.raw_rows("SELECT 1", vec![]).await?;
/// s.commit().await?;
/// # let _ = one; Ok(()) }
/// ```
///
/// Models cross into the session by value; the session keeps its own snapshot of what it loaded,
/// so [`Session::save`] writes only the columns that changed.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Handle>,
}

struct Handle {
    actor: ActorRef<SessionMsg>,
    label: Label,
    // Keeps the pool open while any session is alive; says whether this process may use it.
    pool: Pool,
    /// `close` has already ended the session.
    closed: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Through the mailbox, behind any operation already sent: those still run to the end.
        // This is the last handle: the actor may serve another session afterwards.
        let _ = self.actor.send_message(SessionMsg::Close {
            reply: None,
            last: true,
        });
    }
}

impl Session {
    pub(crate) fn new(actor: ActorRef<SessionMsg>, label: Label, pool: Pool) -> Session {
        Session {
            inner: Arc::new(Handle {
                actor,
                label,
                pool,
                closed: false,
            }),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("label", &self.inner.label)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session's name (or `session-<id>`) and where it was created.
    pub fn label(&self) -> &str {
        self.inner.label.as_str()
    }

    /// Whether the session actor is still running.
    pub fn is_running(&self) -> bool {
        self.inner.actor.get_status() < ractor::ActorStatus::Stopping
    }

    async fn call<T, F>(&self, mode: Mode, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.send_job(mode, once(f)).await
    }

    /// A read: may be sent again on another connection when the first turns out dead, so `f`
    /// may run more than once.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.send_job(Mode::Read, f).await
    }

    async fn send_job<T, F>(&self, mode: Mode, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnMut(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        let job = Box::new(Call { f, mode, reply });
        self.inner
            .actor
            .send_message(SessionMsg::Db(job))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    async fn local<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SessionState) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        let job: Local = Box::new(move |state| {
            let _ = reply.send(f(state));
        });
        self.inner
            .actor
            .send_message(SessionMsg::Local(job))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<()>>) -> SessionMsg,
    ) -> Result<()> {
        self.inner.pool.check_process()?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .actor
            .send_message(make(reply))
            .map_err(|_| Error::SessionClosed)?;
        rx.await.map_err(|_| Error::SessionClosed)?
    }

    /// Checks a connection out now instead of at the first statement: to fail fast with
    /// [`Error::PoolTimeout`] before doing any work, or to hold a connection ready.
    pub async fn acquire(&self) -> Result<()> {
        self.ask(SessionMsg::Acquire).await
    }

    // ----- reads -----

    /// The row of `M` with this key: from the session's identity map when already loaded,
    /// else one SELECT.
    pub async fn get<M: Model + actor_orm_core::Keyed>(
        &self,
        key: impl IntoKey<M>,
    ) -> Result<Option<M>> {
        let key = KeyValues(key.into_key_values());
        self.read(move |s, c| Box::pin(s.get::<M>(c, key.clone())))
            .await
    }

    /// The row of `M` with this key, locked `FOR UPDATE` until the transaction ends: other
    /// sessions that lock or write it wait for this one's COMMIT or ROLLBACK. Opens the
    /// transaction, always asks the server, and refreshes the session's copy of the row (so a
    /// `save` of it checks against what was locked).
    pub async fn get_for_update<M: Model + actor_orm_core::Keyed>(
        &self,
        key: impl IntoKey<M>,
    ) -> Result<Option<M>> {
        self.get_locked(key, Lock::update()).await
    }

    /// [`get_for_update`](Self::get_for_update) with any [`Lock`]: `Lock::share()`,
    /// `Lock::update().nowait()` (a held row fails at once with SQLSTATE 55P03), ….
    pub async fn get_locked<M: Model + actor_orm_core::Keyed>(
        &self,
        key: impl IntoKey<M>,
        lock: Lock,
    ) -> Result<Option<M>> {
        let key = KeyValues(key.into_key_values());
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.get_locked::<M>(c, key, lock))
        })
        .await
    }

    /// The rows of `M` with these keys, in one statement for those not loaded yet.
    pub async fn get_many<M: Model + actor_orm_core::Keyed, K: IntoKey<M>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<M>> {
        let keys: Vec<KeyValues> = keys
            .into_iter()
            .map(|k| KeyValues(k.into_key_values()))
            .collect();
        self.read(move |s, c| Box::pin(s.get_many::<M, _>(c, keys.clone())))
            .await
    }

    /// Every row the query selects.
    pub async fn all<M: Model>(&self, select: Select<M>) -> Result<Vec<M>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.all(c, select.clone())))
            .await
    }

    /// The first row the query selects.
    pub async fn first<M: Model>(&self, select: Select<M>) -> Result<Option<M>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.first(c, select.clone())))
            .await
    }

    /// How many rows the query selects.
    pub async fn count<M: Model>(&self, select: Select<M>) -> Result<i64> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| {
            let select = select.clone();
            Box::pin(async move { s.count(c, &select).await })
        })
        .await
    }

    /// Whether the query selects any row.
    pub async fn exists<M: Model>(&self, select: Select<M>) -> Result<bool> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| {
            let select = select.clone();
            Box::pin(async move { s.exists(c, &select).await })
        })
        .await
    }

    /// Rows of a join: each `M` with its `N`, if any.
    pub async fn all_pairs<M: Model, N: Model>(
        &self,
        select: SelectPair<M, N>,
    ) -> Result<Vec<(M, Option<N>)>> {
        let mode = read_mode(select.reads_only());
        self.send_job(mode, move |s, c| Box::pin(s.all_pairs(c, select.clone())))
            .await
    }

    /// Rows of a projection (selected columns and aggregates).
    pub async fn project<S: Selection + Clone>(
        &self,
        project: Project<S>,
    ) -> Result<Vec<S::Output>> {
        self.read(move |s, c| Box::pin(s.project(c, project.clone())))
            .await
    }

    /// The rows `query` selects, one at a time, with bounded memory: models from a
    /// [`Select`], pairs from a [`SelectPair`], tuples from a [`Project`]. The server is read no
    /// faster than the stream is consumed. Streamed models do not enter the identity map (see
    /// [`stream_with`](Self::stream_with)).
    ///
    /// While the stream is open the session's other operations wait behind it, and it uses the
    /// session's one connection. Dropping it part-way cancels the statement: the session's next
    /// operation runs at once, and a transaction the stream ran in goes on (the stream runs
    /// behind a savepoint there). Inside the session's transaction it sees the transaction's
    /// writes; outside one it is a plain read. An error part-way ends the stream with that
    /// error. See `actor_orm_core`'s `stream` module for the design.
    ///
    /// ```no_run
    /// # use actor_orm_actors::Pool;
    /// # use actor_orm_core::{Model, Select};
    /// # async fn demo<Payment: Model>(pool: Pool, payments: Select<Payment>) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// let mut rows = s.stream(payments).await?;
    /// while let Some(payment) = rows.next().await {
    ///     let payment = payment?;
    ///     # let _ = payment;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn stream<Q: actor_orm_core::Streamable>(
        &self,
        query: Q,
    ) -> Result<actor_orm_core::QueryStream<Q::Item>> {
        self.stream_with(query, actor_orm_core::StreamOptions::new())
            .await
    }

    /// [`stream`](Self::stream) with [`StreamOptions`](actor_orm_core::StreamOptions): whether
    /// streamed models enter the identity map.
    pub async fn stream_with<Q: actor_orm_core::Streamable>(
        &self,
        query: Q,
        options: actor_orm_core::StreamOptions,
    ) -> Result<actor_orm_core::QueryStream<Q::Item>> {
        let (out, rows) = actor_orm_core::stream_channel();
        self.start_stream(query, options, out).await?;
        Ok(rows)
    }

    /// The result of `query` as COPY data in `format` (`COPY (…) TO STDOUT`): chunks of CSV,
    /// text or binary COPY data (one row each, as PostgreSQL sends them), read as the stream is
    /// consumed — for exports, and for loading another database with `COPY … FROM STDIN`. The
    /// query's values stay bound parameters (see `actor_orm_core`'s `copy_out` module: a query
    /// with values runs in the session's transaction, opened if none is). Streaming, dropping
    /// part-way and errors are as for [`stream`](Self::stream); to read models, stream them.
    ///
    /// ```no_run
    /// # use actor_orm_actors::Pool;
    /// # use actor_orm_core::{CopyFormat, Model, Select};
    /// # async fn demo<Payment: Model>(pool: Pool, payments: Select<Payment>) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// let mut csv = s.copy_out(payments, CopyFormat::csv().with_header()).await?;
    /// let mut file = Vec::new();
    /// while let Some(line) = csv.next().await {
    ///     file.extend_from_slice(&line?);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn copy_out<Q: actor_orm_core::Streamable>(
        &self,
        query: Q,
        format: actor_orm_core::CopyFormat,
    ) -> Result<actor_orm_core::QueryStream<bytes::Bytes>> {
        let (out, data) = actor_orm_core::stream_channel();
        self.start_stream(query, format, out).await?;
        Ok(data)
    }

    /// Sends a stream's job and waits until its statement has begun answering.
    async fn start_stream<Q, K>(
        &self,
        query: Q,
        kind: K,
        out: actor_orm_core::StreamSender<K::Item>,
    ) -> Result<()>
    where
        Q: actor_orm_core::Streamable,
        K: crate::stream_job::StreamKind<Q>,
    {
        self.inner.pool.check_process()?;
        let (opened, ready) = oneshot::channel();
        let job = Box::new(crate::stream_job::StreamJob {
            query,
            kind,
            out,
            opened: Some(opened),
        });
        self.inner
            .actor
            .send_message(SessionMsg::Db(job))
            .map_err(|_| Error::SessionClosed)?;
        ready.await.map_err(|_| Error::SessionClosed)?
    }

    // ----- writes -----

    /// Queues `model` for INSERT at the next flush. Bad values are refused now.
    pub async fn add<M: Model + actor_orm_core::Writable>(&self, model: M) -> Result<()> {
        self.local(move |s| s.add(model)).await
    }

    /// Queues many models for INSERT at the next flush, in one message. All are checked first;
    /// if one is refused, none is queued.
    pub async fn add_all<M: Model + actor_orm_core::Writable>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        self.local(move |s| s.add_all(models)).await
    }

    /// Queues models for INSERT at the next flush with nothing read back (no `RETURNING`): for
    /// rows this session will not use again, such as log or history rows. They do not enter the
    /// identity map. All are checked first; if one is refused, none is queued.
    pub async fn add_without_returning<M: Model + actor_orm_core::Writable>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        self.local(move |s| s.add_without_returning(models)).await
    }

    /// Inserts `model` now and returns it as stored (generated key and defaults filled in).
    pub async fn insert<M: Model + actor_orm_core::Writable>(&self, model: M) -> Result<M> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.insert(c, model)))
            .await
    }

    /// The models `select` returns, each with what `loader` loads for it — a relation
    /// (`Film::ACTORS`), a nested one (`Category::FILMS.with(Film::ACTORS)`) or a tuple of them —
    /// in one statement for the models and one per relation, whatever their number. Loaded rows
    /// enter the identity map; a to-one relation already there costs no statement.
    ///
    /// ```no_run
    /// # use actor_orm_actors::Pool;
    /// # use actor_orm_core::{Loader, Model, Select, With};
    /// # async fn demo<Film: Model, L: Loader<Film>>(pool: Pool, films: Select<Film>, actors: L) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// let loaded: Vec<With<Film, L::Output>> = s.load(films, actors).await?;
    /// # Ok(()) }
    /// ```
    pub async fn load<M: Model, L: actor_orm_core::Loader<M>>(
        &self,
        select: Select<M>,
        loader: L,
    ) -> Result<Vec<actor_orm_core::With<M, L::Output>>> {
        self.call(read_mode(select.reads_only()), move |s, c| {
            Box::pin(async move { s.load(c, select, &loader).await })
        })
        .await
    }

    /// Inserts `parent` and its new `children` in one call: the parent first, then the children
    /// with their foreign key filled in from the parent's stored (generated) key. Returns both as
    /// stored.
    pub async fn insert_with<P, C>(
        &self,
        parent: P,
        relation: actor_orm_core::HasMany<P, C>,
        children: impl IntoIterator<Item = C>,
    ) -> Result<actor_orm_core::With<P, Vec<C>>>
    where
        P: Model + actor_orm_core::Writable,
        C: Model + actor_orm_core::Writable,
    {
        let children: Vec<C> = children.into_iter().collect();
        self.call(Mode::Complete, move |s, c| {
            Box::pin(async move { s.insert_with(c, parent, &relation, children).await })
        })
        .await
    }

    /// Links two rows through a many-to-many relation's join model (nothing if already linked).
    pub async fn link<P: Model, C: Model, J: Model + actor_orm_core::Writable>(
        &self,
        relation: actor_orm_core::ManyToMany<P, C, J>,
        parent: &P,
        child: &C,
    ) -> Result<()> {
        let (parent, child) = (parent.clone(), child.clone());
        self.call(Mode::Complete, move |s, c| {
            Box::pin(async move { s.link(c, &relation, &parent, &child).await })
        })
        .await
    }

    /// Removes the link between two rows of a many-to-many relation; whether there was one.
    pub async fn unlink<P: Model, C: Model, J: Model + actor_orm_core::Writable>(
        &self,
        relation: actor_orm_core::ManyToMany<P, C, J>,
        parent: &P,
        child: &C,
    ) -> Result<bool> {
        let (parent, child) = (parent.clone(), child.clone());
        self.call(Mode::Complete, move |s, c| {
            Box::pin(async move { s.unlink(c, &relation, &parent, &child).await })
        })
        .await
    }

    /// The models `select` returns, each with its to-one `relation` read in the same statement
    /// (a LEFT JOIN): the joined strategy — one statement in all.
    pub async fn load_joined<C: Model, P: Model>(
        &self,
        select: Select<C>,
        relation: actor_orm_core::BelongsTo<C, P>,
    ) -> Result<Vec<actor_orm_core::With<C, Option<P>>>> {
        self.call(read_mode(select.reads_only()), move |s, c| {
            Box::pin(async move { s.load_joined(c, select, &relation).await })
        })
        .await
    }

    /// The models `roots` returns with their descendants through a self-referential relation
    /// (`Category::CHILDREN`): one statement per level of the tree.
    pub async fn load_tree<M: Model>(
        &self,
        roots: Select<M>,
        children: actor_orm_core::HasMany<M, M>,
    ) -> Result<Vec<actor_orm_core::Tree<M>>> {
        self.call(read_mode(roots.reads_only()), move |s, c| {
            Box::pin(async move { s.load_tree(c, roots, &children).await })
        })
        .await
    }

    /// Inserts every model now, one statement per batch, and returns the stored rows in the
    /// order given (generated keys, defaults and generated columns filled in), matched to their
    /// inputs by key or by an ordinal sent with the batch, never by the order of `RETURNING`.
    ///
    /// ```no_run
    /// # use actor_orm_actors::Pool;
    /// # use actor_orm_core::{Model, Writable};
    /// # async fn demo<Film: Model + Writable>(pool: Pool, new: fn(&str) -> Film) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// let films = s
    ///     .insert_all(vec![new("Academy Dinosaur"), new("Ace Goldfinger")])
    ///     .await?; // each with its generated key, in the order given
    /// assert_eq!(films.len(), 2);
    /// s.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn insert_all<M: Model + actor_orm_core::Writable>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<Vec<M>> {
        let models: Vec<M> = models.into_iter().collect();
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.insert_all(c, models))
        })
        .await
    }

    /// `NOTIFY` inside the session's transaction: delivered to listeners when it commits.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        let (channel, payload) = (channel.to_owned(), payload.to_owned());
        self.call(Mode::Complete, move |s, c| {
            Box::pin(async move { s.notify(c, &channel, &payload).await })
        })
        .await
    }

    /// Loads many rows with `COPY … FROM STDIN BINARY` inside the session's transaction (see
    /// [`SessionState::copy_in`](actor_orm_core::SessionState::copy_in)): a bad value is a typed
    /// error naming its column and nothing of the COPY is written. Returns the rows copied.
    pub async fn copy_in<M: Model + actor_orm_core::Writable>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<u64> {
        let models: Vec<M> = models.into_iter().collect();
        self.call(Mode::Complete, move |s, c| Box::pin(s.copy_in(c, models)))
            .await
    }

    /// [`copy_in`](Self::copy_in) of the models a stream yields, taken as the COPY goes, so
    /// memory stays bounded: for example another database's rows, from its session's
    /// [`stream`](Self::stream) (not this session's: it is busy with the COPY). An error from
    /// the stream aborts the COPY and nothing of it is written.
    pub async fn copy_in_stream<M, S>(&self, models: S) -> Result<u64>
    where
        M: Model + actor_orm_core::Writable,
        S: futures_core::Stream<Item = Result<M>> + Send + 'static,
    {
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.copy_in_stream(c, models))
        })
        .await
    }

    /// INSERT … ON CONFLICT: the stored row, or `None` when the conflict did nothing.
    pub async fn upsert<M: Model + actor_orm_core::Keyed + actor_orm_core::Writable>(
        &self,
        model: M,
        on_conflict: OnConflict,
    ) -> Result<Option<M>> {
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.upsert(c, model, on_conflict))
        })
        .await
    }

    /// Queues the changes in `model` (compared with what this session loaded) for the next flush.
    ///
    /// The UPDATE is written only if the row still holds what this session loaded: its version
    /// (for a model with a version column), or else the loaded value of every column it changes.
    /// A row changed by someone else in between fails the flush with [`Error::Stale`] instead of
    /// being overwritten (see [`SessionState::save`] for the cost and how to turn it off);
    /// [`Pool::transaction`](crate::Pool::transaction) runs the work again on it.
    pub async fn save<M: Model + actor_orm_core::Keyed + actor_orm_core::Writable>(
        &self,
        model: M,
    ) -> Result<()> {
        self.local(move |s| s.save(model)).await
    }

    /// [`save`](Self::save) for many models, in one message: all are checked first, and if one
    /// is refused none is queued. Rows of one table changing the same columns go out as one
    /// `UPDATE … FROM unnest(…)` at the flush, each still checked against what was loaded.
    ///
    /// ```no_run
    /// # use actor_orm_core::{Keyed, Model, Writable};
    /// # async fn demo<U: Model + Keyed + Writable>(
    /// #     s: actor_orm_actors::Session,
    /// #     change: impl Fn(&mut U),
    /// # ) -> actor_orm_core::Result<()> {
    /// let mut rows = s.all(actor_orm_core::Select::<U>::new()).await?;
    /// rows.iter_mut().for_each(change);
    /// s.save_all(rows).await?;
    /// s.commit().await // one UPDATE for all of them, then COMMIT
    /// # }
    /// ```
    pub async fn save_all<M: Model + actor_orm_core::Keyed + actor_orm_core::Writable>(
        &self,
        models: impl IntoIterator<Item = M>,
    ) -> Result<()> {
        let models: Vec<M> = models.into_iter().collect();
        self.local(move |s| s.save_all(models)).await
    }

    /// Queues `model`'s row for DELETE at the next flush.
    pub async fn delete<M: Model + actor_orm_core::Keyed + actor_orm_core::Writable>(
        &self,
        model: M,
    ) -> Result<()> {
        self.local(move |s| s.delete(&model)).await
    }

    /// Sends every queued change now, parents before children.
    pub async fn flush(&self) -> Result<()> {
        self.call(Mode::Complete, |s, c| Box::pin(s.flush(c))).await
    }

    /// UPDATE … WHERE for many rows at once, with no `RETURNING`; returns how many changed.
    /// New values may be expressions over the row (`Account::BALANCE.add(delta)`), computed by
    /// the server from the row as it is when the UPDATE runs, so no concurrent change is lost.
    pub async fn update_where<M: Model + actor_orm_core::Writable>(
        &self,
        update: UpdateWhere<M>,
    ) -> Result<u64> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.update_where(c, update))
        })
        .await
    }

    /// Queues an UPDATE of every row matching a filter for the next flush instead of running it
    /// now: it runs where it was queued among the session's changes, its row count unread, and
    /// at [`commit`](Self::commit) it goes out with the pending inserts and the COMMIT in one
    /// round trip. See [`SessionState::defer_update_where`](actor_orm_core::SessionState::defer_update_where).
    ///
    /// ```no_run
    /// # use actor_orm_actors::Session;
    /// # use actor_orm_core::{Column, SingleKey, UpdateWhere, Writable};
    /// # async fn demo<Teller: Writable + SingleKey>(session: Session, balance: Column<Teller, i64>) -> actor_orm_core::Result<()> {
    /// session
    ///     .defer_update_where(UpdateWhere::<Teller>::key(7_i64).set(balance, balance.add(100_i64)))
    ///     .await?;
    /// session.commit().await?; // the UPDATE and the COMMIT in one round trip
    /// # Ok(()) }
    /// ```
    pub async fn defer_update_where<M: Model + actor_orm_core::Writable>(
        &self,
        update: UpdateWhere<M>,
    ) -> Result<()> {
        self.local(move |s| s.defer_update_where(update)).await
    }

    /// [`defer_update_where`](Self::defer_update_where) for a DELETE of every row matching a
    /// filter.
    pub async fn defer_delete_where<M: Model + actor_orm_core::Writable>(
        &self,
        delete: DeleteWhere<M>,
    ) -> Result<()> {
        self.local(move |s| {
            s.defer_delete_where(delete);
            Ok(())
        })
        .await
    }

    /// [`update_where`](Self::update_where) that reads the updated rows back (`RETURNING`),
    /// e.g. one row by key: `UpdateWhere::<Account>::key(7).set(..)`.
    pub async fn update_returning<M: Model + actor_orm_core::Writable>(
        &self,
        update: UpdateWhere<M>,
    ) -> Result<Vec<M>> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.update_returning(c, update))
        })
        .await
    }

    /// DELETE … WHERE for many rows at once; returns how many went.
    pub async fn delete_where<M: Model + actor_orm_core::Writable>(
        &self,
        delete: DeleteWhere<M>,
    ) -> Result<u64> {
        self.call(Mode::Cancellable, move |s, c| {
            Box::pin(s.delete_where(c, delete))
        })
        .await
    }

    // ----- transactions -----

    /// Flushes and commits. After a failed statement the transaction is rolled back instead and
    /// [`Error::TransactionAborted`] returned, as PostgreSQL does.
    pub async fn commit(&self) -> Result<()> {
        self.ask(SessionMsg::Commit).await
    }

    /// Rolls back the transaction and drops every queued change.
    pub async fn rollback(&self) -> Result<()> {
        self.ask(SessionMsg::Rollback).await
    }

    /// Flushes, then sets a savepoint.
    pub async fn savepoint(&self) -> Result<Savepoint> {
        self.call(Mode::Complete, |s, c| Box::pin(s.savepoint(c)))
            .await
    }

    /// Undoes everything since `sp`; clears a failed statement's error.
    pub async fn rollback_to(&self, sp: Savepoint) -> Result<()> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.rollback_to(c, sp)))
            .await
    }

    /// Keeps everything since `sp` and forgets the savepoint.
    pub async fn release(&self, sp: Savepoint) -> Result<()> {
        self.call(Mode::Complete, move |s, c| Box::pin(s.release(c, sp)))
            .await
    }

    /// Opens the transaction now. Without this a session opens it at its first write (see
    /// [`PoolBuilder::autocommit_reads`](crate::PoolBuilder::autocommit_reads)); call it first
    /// when reads must be part of the transaction too (so that `now()` or a raw
    /// `SET TRANSACTION ISOLATION LEVEL …` applies to them).
    pub async fn begin(&self) -> Result<()> {
        self.call(Mode::Complete, |s, c| Box::pin(s.begin(c))).await
    }

    /// Opens the transaction now with this isolation level (`BEGIN ISOLATION LEVEL …`). Must
    /// come before the transaction's first statement: with a transaction open, or changes
    /// pending, it is an [`Error::InvalidInput`]. Under REPEATABLE READ and SERIALIZABLE, rows
    /// loaded before are read again from the server rather than served from the identity map.
    pub async fn begin_with(&self, isolation: Isolation) -> Result<()> {
        self.call(Mode::Complete, move |s, c| {
            Box::pin(s.begin_with(c, isolation))
        })
        .await
    }

    /// Where the session's transaction stands.
    pub async fn tx_state(&self) -> Result<TxState> {
        self.local(|s| Ok(s.tx_state())).await
    }

    /// Gives the session a deadline (`None` removes it): waiting for a connection ends there,
    /// a statement still running then is cancelled on the server, and a COMMIT is not sent after
    /// it — each an [`Error::DeadlineExceeded`](actor_orm_core::Error::DeadlineExceeded). A
    /// request's whole database time is bounded by giving its session the request's deadline.
    ///
    /// ```no_run
    /// # async fn demo(pool: actor_orm_actors::Pool) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// s.set_deadline(Some(std::time::Instant::now() + std::time::Duration::from_millis(250)))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_deadline(&self, deadline: Option<std::time::Instant>) -> Result<()> {
        self.local(move |s| {
            s.set_deadline(deadline);
            Ok(())
        })
        .await
    }

    /// The session's causal token: the WAL position of its last commit (in a pool with read
    /// replicas), or the one given to [`read_after`](Self::read_after); `None` before either.
    /// Hand it to the next request (a cookie, a header) so that its reads see this one's writes.
    pub async fn causal_token(&self) -> Result<Option<crate::Lsn>> {
        self.local(|s| Ok((s.causal_lsn() > 0).then(|| crate::Lsn(s.causal_lsn()))))
            .await
    }

    /// Makes this session's reads see at least `token` (a WAL position from an earlier
    /// session's [`causal_token`](Self::causal_token)): reads go only to a replica that has
    /// replayed it, else to the primary. Read-your-writes across requests.
    ///
    /// ```no_run
    /// # async fn demo(pool: actor_orm_actors::Pool, cookie: &str) -> actor_orm_core::Result<()> {
    /// let s = pool.session().await?;
    /// if let Ok(token) = cookie.parse() {
    ///     s.read_after(token).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_after(&self, token: crate::Lsn) -> Result<()> {
        self.local(move |s| {
            s.read_after(token.0);
            Ok(())
        })
        .await
    }

    // ----- raw SQL -----

    /// Raw SQL whose rows decode to `M`; values are bound as `$1, $2, …`.
    pub async fn raw<M: Model>(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<Vec<M>> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw::<M>(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning its rows as they are.
    pub async fn raw_rows(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<Vec<Row>> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw_rows(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning its rows, run on its own when the session has no transaction open
    /// (autocommit, as on a plain connection): no BEGIN, and no ROLLBACK when the session ends.
    /// Whatever it changes is committed at once, beyond the reach of a later rollback; inside an
    /// open transaction (or with changes pending, flushed first) it joins the transaction. For
    /// statements that only read: health checks, reports. SQL that does not start with
    /// `SELECT`, `WITH`, `VALUES`, `TABLE` or `SHOW` is treated as [`raw_rows`](Self::raw_rows)
    /// treats it for the session's bookkeeping.
    pub async fn raw_rows_autocommit(
        &self,
        sql: impl Into<String>,
        params: Vec<Value>,
    ) -> Result<Vec<Row>> {
        let sql = sql.into();
        let mode = if actor_orm_core::leaves_transaction_alone(&sql) {
            Mode::Autocommit
        } else {
            Mode::UntrackedCancellable
        };
        self.call(mode, move |s, c| {
            Box::pin(async move { s.raw_rows_autocommit(c, &sql, params).await })
        })
        .await
    }

    /// Raw SQL returning how many rows it affected.
    pub async fn raw_execute(&self, sql: impl Into<String>, params: Vec<Value>) -> Result<u64> {
        let sql = sql.into();
        self.call(Mode::UntrackedCancellable, move |s, c| {
            Box::pin(async move { s.raw_execute(c, &sql, params).await })
        })
        .await
    }

    /// Runs `f` inside the session actor with its state and connection: several operations with
    /// no message hop between them. A panic in `f` ends the session (its connection is
    /// reclaimed and reset by the pool).
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut SessionState, &'a Connection) -> BoxFuture<'a, Result<T>>
            + Send
            + 'static,
    {
        self.call(Mode::Untracked, f).await
    }

    // ----- ending -----

    /// Ends the session now: uncommitted work is rolled back and the connection returned.
    /// Returns once the pool has it back. Other clones of this handle then get
    /// [`Error::SessionClosed`].
    pub async fn close(mut self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        // Only the last handle may let the actor serve another session (with clones left, it
        // stops, and they get `SessionClosed`); its own drop then sends nothing more.
        let last = match Arc::get_mut(&mut self.inner) {
            Some(handle) => {
                handle.closed = true;
                true
            }
            None => false,
        };
        let close = SessionMsg::Close {
            reply: Some(reply),
            last,
        };
        if self.inner.actor.send_message(close).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Stops the actor the way ractor stops one (after the message it is running, without the
    /// session's own close): the pool then reclaims the connection from the death notice. For
    /// fault tests.
    #[doc(hidden)]
    pub fn stop_actor(&self) {
        self.inner.actor.stop(Some("stopped by request".into()));
    }

    /// Aborts the session at once, as a crash would, even mid-statement. The pool reclaims its
    /// connection and resets it; nothing uncommitted is kept.
    pub fn kill(&self) {
        self.inner.actor.kill();
    }
}
