//! Floors: the work of a missed target with only the part the design cannot remove, measured in
//! the same run as the ORM, so that the gap that is the ORM's own can be read off the table.
//!
//! A session is a ractor actor (mandated), kept as a spare between sessions: a checkout takes a
//! spare, a request is a message to it and a reply back, a return is one more message. A floor
//! does just that with a bare ractor actor ([`Bare`]) that runs each request on the connection
//! it is given (or holds) and replies, and nothing of the ORM:
//! - **point read**: a raw read asked of a bare actor holding the raw client;
//! - **request cycle, contended `SELECT 1`**: a deadpool connection handed to a spare bare actor
//!   with the request, then a message ending the "session" (the actor drops the connection);
//! - **checkouts per second**: a spare bare actor asked once and told once;
//! - **idle session**: the memory of a live idle actor with no state.
//!
//! PgBouncer's own cost (raw tokio-postgres through it and direct) is in `pooler`, and the
//! hand-written one-statement update in workload 6.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

use crate::{Res, Systems, by_hand};

/// Workload 1's and 3's floor system names.
pub(crate) const READ: &str = "floor: raw read asked of a bare ractor actor";
pub(crate) const CYCLE: &str = "floor: deadpool connection handed to a spare bare ractor actor";
/// Workload 4's and 8's.
pub(crate) const CHECKOUT: &str = "floor: spare bare ractor actor asked once and told once";
pub(crate) const IDLE: &str = "floor: idle ractor actor with no state";

const SQL: &str = "SELECT id, name, email, age FROM bench_users WHERE id = $1";

/// What a bare actor is asked.
pub(crate) enum What {
    /// Workload 1's read on the harness's raw client.
    Read(Arc<Systems>, tokio_postgres::Statement, i64),
    /// Workload 1's read on a connection handed over with the request.
    PooledRead(deadpool_postgres::Object, i64),
    /// `SELECT 1` on a connection handed over with the request.
    PooledSelect1(deadpool_postgres::Object),
    /// Nothing: a checkout's round trip.
    Ping,
}

/// A message to a bare actor: a request and where its answer goes, or (no reply) the end of a
/// "session".
pub(crate) struct Ask {
    what: What,
    reply: Option<oneshot::Sender<Res<i64>>>,
}

/// A ractor actor that runs each request and replies: nothing more.
pub(crate) struct Bare;

impl Actor for Bare {
    type Msg = Ask;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Ask>, (): ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Ask>,
        ask: Ask,
        (): &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let answer = serve(ask.what).await;
        if let Some(reply) = ask.reply {
            let _ = reply.send(answer);
        }
        Ok(())
    }
}

async fn serve(what: What) -> Res<i64> {
    Ok(match what {
        What::Read(s, stmt, k) => by_hand(&s.raw.query_one(&stmt, &[&k]).await?).id,
        What::PooledRead(c, k) => {
            let stmt = c.prepare_cached(SQL).await?;
            by_hand(&c.query_one(&stmt, &[&k]).await?).id
        }
        What::PooledSelect1(c) => {
            let stmt = c.prepare_cached("SELECT 1").await?;
            i64::from(c.query_one(&stmt, &[]).await?.get::<_, i32>(0))
        }
        What::Ping => 0,
    })
}

/// Asks `actor` and waits for its reply.
pub(crate) async fn ask(actor: &ActorRef<Ask>, what: What) -> Res<i64> {
    let (reply, answer) = oneshot::channel();
    actor
        .send_message(Ask {
            what,
            reply: Some(reply),
        })
        .map_err(|e| e.to_string())?;
    answer.await?
}

/// Tells `actor` the "session" is over (no reply, as a session's end).
fn tell_end(actor: &ActorRef<Ask>) -> Res<()> {
    actor
        .send_message(Ask {
            what: What::Ping,
            reply: None,
        })
        .map_err(|e| e.to_string().into())
}

/// Spare bare actors, as the ORM keeps spare session actors: taken for a request, put back
/// after. Stopped when dropped.
#[derive(Default)]
pub(crate) struct Spares(Mutex<Vec<ActorRef<Ask>>>);

impl Spares {
    async fn take(&self) -> Res<ActorRef<Ask>> {
        let spare = self.0.lock().map_err(|e| e.to_string())?.pop();
        match spare {
            Some(actor) => Ok(actor),
            None => Ok(Actor::spawn(None, Bare, ()).await?.0),
        }
    }

    fn put(&self, actor: ActorRef<Ask>) -> Res<()> {
        self.0.lock().map_err(|e| e.to_string())?.push(actor);
        Ok(())
    }

    /// One "session": a spare actor, asked `what`, told it is over, put back.
    pub(crate) async fn session(&self, what: What) -> Res<i64> {
        let actor = self.take().await?;
        let answer = ask(&actor, what).await;
        tell_end(&actor)?;
        self.put(actor)?;
        answer
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        if let Ok(actors) = self.0.get_mut() {
            for actor in actors.drain(..) {
                actor.stop(None);
            }
        }
    }
}

/// A bare actor for workload 1's reads.
pub(crate) async fn reader() -> Res<(ActorRef<Ask>, ractor::concurrency::JoinHandle<()>)> {
    Ok(Actor::spawn(None, Bare, ()).await?)
}

/// The least an actor can be: no state, and messages that do nothing.
struct Empty;

impl Actor for Empty {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, (): ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Allocated bytes per live idle empty actor, over `n` of them.
pub(crate) async fn idle_bytes(n: usize, allocated: impl Fn() -> usize) -> Res<f64> {
    let mut actors = Vec::with_capacity(n);
    let base = allocated();
    for _ in 0..n {
        actors.push(Actor::spawn(None, Empty, ()).await?);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let used = allocated().saturating_sub(base);
    for (actor, done) in actors {
        actor.stop(None);
        black_box(done.await?);
    }
    Ok(used as f64 / n as f64)
}
