//! Read replicas with read-your-writes: the replicas a pool may send reads to, how far each has
//! replayed the primary's WAL, and whether it is in the rotation.
//!
//! A session's reads before its first write go to a replica whose replay position
//! (`pg_last_wal_replay_lsn()`) has reached the session's causal token — the WAL position of its
//! last commit, or one carried over from an earlier request ([`Lsn`]) — and otherwise to the
//! primary; writes and transactions always go to the primary. A monitor task asks every
//! `replica_check_interval` how far the primary has written and each replica replayed: a replica
//! more than `replica_lag_limit` behind, or not answering, leaves the rotation until it catches
//! up. A replica whose last known position is short of a token is asked again on the spot.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actor_orm_core::sea_query::Values;
use actor_orm_core::{Connection, Error, Result};

use crate::config::PoolConfig;
use crate::link::PoolLink;

/// A position in the primary's write-ahead log, as PostgreSQL writes it (`16/B374D848`): the
/// causal token of read-your-writes. Carry it across requests (a cookie, a header) with its
/// `Display` and `FromStr`, and hand it to [`Session::read_after`](crate::Session::read_after).
///
/// ```
/// use actor_orm_actors::Lsn;
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// assert!(lsn > "16/B374D847".parse().unwrap());
/// assert!("16-B3".parse::<Lsn>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Lsn> {
        let bad =
            || Error::InvalidInput(format!("`{s}` is not a WAL position such as 16/B374D848"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// One replica: its own pool of connections, and what the monitor knows of it.
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) link: PoolLink,
    /// The replay position last seen (only grows).
    replayed: AtomicU64,
    in_rotation: AtomicBool,
    /// How far behind it was at the last check, in milliseconds (`u64::MAX`: not answering).
    lag_ms: AtomicU64,
    reads: AtomicU64,
}

/// A replica as [`Pool::replica_stats`](crate::Pool::replica_stats) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// `host:port`.
    pub name: String,
    /// Whether reads go to it now.
    pub in_rotation: bool,
    /// How far behind the primary it was at the last check; `None` when it did not answer.
    pub lag: Option<Duration>,
    /// Reads it has served (sessions whose first statements it ran).
    pub reads: u64,
    /// The replay position last seen.
    pub replayed: Lsn,
}

/// The replicas of a pool.
pub(crate) struct ReplicaSet {
    pub(crate) replicas: Vec<Replica>,
    next: AtomicUsize,
    /// Reads that had a replica to go to but went to the primary (none caught up, or none in
    /// the rotation).
    pub(crate) primary_reads: AtomicU64,
    /// How long a read waits for a replica's connection before it goes to the primary instead
    /// (a replica that just went down, or whose pool is all in use).
    pub(crate) wait: Duration,
}

impl ReplicaSet {
    /// Starts a pool for each replica and the monitor.
    pub(crate) async fn start(config: &Arc<PoolConfig>) -> Result<Option<Arc<ReplicaSet>>> {
        if config.replicas.is_empty() {
            return Ok(None);
        }
        if !config.autocommit_reads {
            return Err(Error::Config(
                "read replicas serve reads outside transactions: they need autocommit_reads \
                 (the default), which this pool turns off"
                    .into(),
            ));
        }
        let mut replicas = Vec::new();
        for pg in &config.replicas {
            let mut own = PoolConfig::clone_for(config, pg.clone());
            own.min_idle = 0;
            let name = describe(pg);
            own.metrics_name = Some(format!(
                "{} replica {name}",
                config.pg.get_application_name().unwrap_or("actor-orm")
            ));
            let link = PoolLink::start(Arc::new(own), None).await?;
            replicas.push(Replica {
                name,
                link,
                replayed: AtomicU64::new(0),
                in_rotation: AtomicBool::new(false),
                lag_ms: AtomicU64::new(u64::MAX),
                reads: AtomicU64::new(0),
            });
        }
        let set = Arc::new(ReplicaSet {
            replicas,
            next: AtomicUsize::new(0),
            primary_reads: AtomicU64::new(0),
            wait: config
                .replica_check_interval
                .max(Duration::from_millis(100))
                * 4,
        });
        tokio::spawn(monitor(Arc::downgrade(&set), config.clone()));
        Ok(Some(set))
    }

    /// The replicas in the rotation, starting with the next in turn.
    pub(crate) fn candidates(&self) -> impl Iterator<Item = (usize, &Replica)> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(move |k| (start + k) % n)
            .map(|i| (i, &self.replicas[i]))
            .filter(|(_, r)| r.in_rotation.load(Ordering::Relaxed))
    }

    pub(crate) fn stats(&self) -> Vec<ReplicaStats> {
        self.replicas
            .iter()
            .map(|r| {
                let lag = r.lag_ms.load(Ordering::Relaxed);
                ReplicaStats {
                    name: r.name.clone(),
                    in_rotation: r.in_rotation.load(Ordering::Relaxed),
                    lag: (lag != u64::MAX).then(|| Duration::from_millis(lag)),
                    reads: r.reads.load(Ordering::Relaxed),
                    replayed: Lsn(r.replayed.load(Ordering::Relaxed)),
                }
            })
            .collect()
    }
}

impl Replica {
    /// Whether this replica has replayed `token`, as far as is known without asking.
    pub(crate) fn has_replayed(&self, token: Lsn) -> bool {
        self.replayed.load(Ordering::Relaxed) >= token.0
    }

    /// Asks the replica over `conn` how far it has replayed; whether that reaches `token`
    /// (`false` when it does not answer).
    pub(crate) async fn check(&self, conn: &Connection, token: Lsn) -> bool {
        let replayed = lsn(conn, "SELECT pg_last_wal_replay_lsn()::text")
            .await
            .unwrap_or_default();
        self.replayed.fetch_max(replayed.0, Ordering::Relaxed);
        replayed >= token
    }

    pub(crate) fn served(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }
}

/// The WAL position a one-column query (`SELECT pg_…_lsn()::text`) answers over `conn`; `None`
/// when it fails or answers NULL.
pub(crate) async fn lsn(conn: &Connection, sql: &str) -> Option<Lsn> {
    let rows = conn.query(sql, &Values(Vec::new()), None).await.ok()?;
    let text: Option<String> = rows.first()?.try_get(0).ok()?;
    text?.parse().ok()
}

/// `host:port` of the first host of `pg`.
fn describe(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// One plain connection of the monitor's, opened again when lost.
struct Probe {
    pg: tokio_postgres::Config,
    client: Option<tokio_postgres::Client>,
}

impl Probe {
    async fn lsn(&mut self, config: &PoolConfig, sql: &str) -> Option<Lsn> {
        if self
            .client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            let open = config.connector.connect(&self.pg);
            let (client, driver) = tokio::time::timeout(config.connect_timeout, open)
                .await
                .ok()?
                .ok()?;
            tokio::spawn(driver);
            self.client = Some(client);
        }
        let client = self.client.as_ref()?;
        let ask = client.simple_query(sql);
        let answer = tokio::time::timeout(config.health_check_timeout, ask).await;
        let rows = match answer {
            Ok(Ok(rows)) => rows,
            _ => {
                self.client = None;
                return None;
            }
        };
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|t| t.parse().ok()),
            _ => None,
        })
    }
}

/// Every `replica_check_interval`: how far the primary has written, how far each replica has
/// replayed, and so how far behind it is (the age of the oldest primary position it has not
/// reached). Ends with the pool.
async fn monitor(set: Weak<ReplicaSet>, config: Arc<PoolConfig>) {
    let mut primary = Probe {
        pg: config.pg.clone(),
        client: None,
    };
    let mut probes: Vec<Probe> = config
        .replicas
        .iter()
        .map(|pg| Probe {
            pg: pg.clone(),
            client: None,
        })
        .collect();
    let written: Mutex<VecDeque<(Instant, Lsn)>> = Mutex::new(VecDeque::new());
    let keep = config.replica_lag_limit * 2 + config.replica_check_interval * 4;
    loop {
        let now = Instant::now();
        if let Some(lsn) = primary
            .lsn(&config, "SELECT pg_current_wal_insert_lsn()::text")
            .await
            && let Ok(mut w) = written.lock()
        {
            w.push_back((now, lsn));
            while w
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > keep)
            {
                w.pop_front();
            }
        }
        let Some(set) = set.upgrade() else {
            return;
        };
        for (replica, probe) in set.replicas.iter().zip(&mut probes) {
            let replayed = probe
                .lsn(&config, "SELECT pg_last_wal_replay_lsn()::text")
                .await;
            let lag = replayed.map(|r| {
                replica.replayed.fetch_max(r.0, Ordering::Relaxed);
                let w = written.lock().map(|w| w.clone()).unwrap_or_default();
                w.iter()
                    .find(|(_, lsn)| *lsn > r)
                    .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t))
            });
            let was = replica.in_rotation.load(Ordering::Relaxed);
            let fit = lag.is_some_and(|l| l <= config.replica_lag_limit);
            replica.lag_ms.store(
                lag.map_or(u64::MAX, |l| l.as_millis().try_into().unwrap_or(u64::MAX)),
                Ordering::Relaxed,
            );
            replica.in_rotation.store(fit, Ordering::Relaxed);
            if was != fit {
                match lag {
                    Some(l) if fit => {
                        tracing::info!(replica = %replica.name, lag = ?l, "replica: back in the rotation")
                    }
                    Some(l) => {
                        tracing::warn!(replica = %replica.name, lag = ?l, limit = ?config.replica_lag_limit, "replica: too far behind; out of the rotation")
                    }
                    None => {
                        tracing::warn!(replica = %replica.name, "replica: not answering; out of the rotation")
                    }
                }
            }
        }
        drop(set);
        tokio::time::sleep(config.replica_check_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_order_and_read_back_as_postgresql_writes_them() {
        let a: Lsn = "0/16B3748".parse().expect("lsn");
        let b: Lsn = "1/0".parse().expect("lsn");
        assert!(a < b);
        assert_eq!(b.0, 1 << 32);
        assert_eq!(a.to_string(), "0/16B3748");
        assert!("".parse::<Lsn>().is_err());
        assert!("1/xyz".parse::<Lsn>().is_err());
    }
}
