//! The identity map: one entry per (table, primary key) loaded in a session.
//!
//! Small results are kept as copies of their models. A large result is kept as it came: its rows
//! in one batch (their keys read from the rows' key columns, or given beside them for key types
//! that cannot be read so), and the batch is indexed by key only when the session first looks a
//! row of that table up. A session that reads 100,000 rows and never looks
//! one up again (an export, a report) pays for no hash table; one that does pays once, on its
//! first lookup, what it would have paid while loading.

use std::any::Any;
use std::collections::{HashMap, HashSet};

use tokio_postgres::Row;

use crate::model::{Key, Model, ModelMeta, in_order};

type TableId = (&'static str, &'static str);

/// One loaded row as it was in the database.
enum Snapshot {
    /// A copy of the model.
    Model(Box<dyn Any + Send + Sync>),
    /// Row `row` of batch `batch` of the table, decoded again when asked for.
    Batched { batch: u32, row: u32 },
}

/// The rows of one large result, kept as they came. A row's bytes share the connection's read
/// buffer, which stays allocated while any of them is held; that is why small results are kept
/// as copies instead.
struct Batch {
    keys: BatchKeys,
    rows: Vec<Row>,
}

/// A batch's keys: given with it, or read from the key columns of its rows when the batch is
/// indexed (no key is built while loading, and none is held by a result never looked up).
enum BatchKeys {
    Given(Vec<Key>),
    /// The key columns' positions in each row (integer, text or uuid columns).
    InRows(Vec<usize>),
}

impl Batch {
    /// The key of each row (`None` for a row whose key cannot be read: never indexed, so a
    /// lookup of it goes to the database).
    fn keys(&self) -> Vec<Option<Key>> {
        match &self.keys {
            BatchKeys::Given(keys) => keys.iter().cloned().map(Some).collect(),
            BatchKeys::InRows(columns) => self
                .rows
                .iter()
                .map(|row| {
                    let parts: Option<Vec<_>> = columns
                        .iter()
                        .map(|&i| crate::types::decode_key_part(row, i).ok())
                        .collect();
                    parts.map(Key::new)
                })
                .collect(),
        }
    }
}

/// Each key's snapshot. Keys come from data, so the hasher is seeded at random (foldhash, as
/// hashbrown uses by default: a fraction of SipHash's cost per lookup, which a point read pays
/// two or three times).
type KeyIndex = HashMap<Key, Snapshot, foldhash::fast::RandomState>;

/// Everything loaded from one table.
#[derive(Default)]
struct Table {
    /// The snapshot of each key, as of the last lookup.
    index: KeyIndex,
    /// Every batch the table's rows came in, oldest first.
    batches: Vec<Batch>,
    /// How many of `batches` are in `index` (the ones after came in since the last lookup).
    indexed: usize,
}

impl Table {
    /// Puts the batches that came since the last lookup into the index, oldest first, so a
    /// newer load of a key replaces an older one exactly as if it had been indexed on arrival.
    fn index(&mut self) -> &mut KeyIndex {
        for (b, batch) in self.batches.iter().enumerate().skip(self.indexed) {
            self.index.reserve(batch.rows.len());
            for (r, key) in batch.keys().into_iter().enumerate() {
                let Some(key) = key else {
                    continue;
                };
                let snapshot = Snapshot::Batched {
                    batch: index_u32(b),
                    row: index_u32(r),
                };
                self.index.insert(key, snapshot);
            }
        }
        self.indexed = self.batches.len();
        &mut self.index
    }

    fn row(&self, batch: u32, row: u32) -> Option<&Row> {
        self.batches.get(batch as usize)?.rows.get(row as usize)
    }

    /// Distinct keys held, without building the index.
    fn len(&self) -> usize {
        if self.indexed == self.batches.len() {
            return self.index.len();
        }
        let pending: Vec<Key> = self.batches[self.indexed..]
            .iter()
            .flat_map(|b| b.keys().into_iter().flatten())
            .collect();
        let mut keys: HashSet<&Key, foldhash::fast::RandomState> = self.index.keys().collect();
        keys.extend(pending.iter());
        keys.len()
    }
}

/// Batch and row positions fit in 32 bits: a batch is one query's result, which PostgreSQL
/// numbers with 64-bit counts but tokio-postgres holds in memory; more than 4 billion rows in one
/// session's memory is not a case to serve. Saturating keeps the code free of panics regardless.
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Rows a session has loaded, as they are in the database inside its transaction: the snapshot
/// that dirty checking compares against.
#[derive(Default)]
pub struct IdentityMap {
    /// Keyed by static schema and table names from the derive: a fast, unseeded hasher serves.
    /// (Each table's own map is seeded at random: its keys come from the data.)
    tables: HashMap<TableId, Table, rustc_hash::FxBuildHasher>,
}

impl std::fmt::Debug for IdentityMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityMap")
            .field("entries", &self.len())
            .finish()
    }
}

impl IdentityMap {
    /// The loaded row of `M` with this key, as it was loaded.
    pub fn get<M: Model>(&mut self, key: &Key) -> Option<M> {
        let table = self.tables.get_mut(&M::meta().identity())?;
        match table.index().get(key)? {
            Snapshot::Model(m) => m.downcast_ref::<M>().cloned(),
            // It decoded when it was loaded; should it not now, it counts as not loaded.
            &Snapshot::Batched { batch, row } => {
                let row = table.row(batch, row)?;
                M::from_row(row, &in_order(M::meta().columns.len())).ok()
            }
        }
    }

    /// Whether a row of `M` with this key is loaded.
    pub fn contains<M: Model>(&mut self, key: &Key) -> bool {
        self.tables
            .get_mut(&M::meta().identity())
            .is_some_and(|t| t.index().contains_key(key))
    }

    /// Records the row of `M` with this key, replacing an older snapshot.
    pub fn insert<M: Model>(&mut self, key: Key, model: M) {
        if !M::meta().has_key() {
            // A view or a key-less table: rows have no identity to keep them by.
            return;
        }
        self.tables
            .entry(M::meta().identity())
            .or_default()
            .index()
            .insert(key, Snapshot::Model(Box::new(model)));
    }

    /// Records many rows of `M` at once, each holding `M`'s columns in order, with their keys
    /// (`keys[i]` is the key of `rows[i]`). They replace older snapshots of the same keys, and
    /// are indexed when a row of `M` is next looked up.
    pub fn insert_rows<M: Model>(&mut self, keys: Vec<Key>, rows: Vec<Row>) {
        debug_assert_eq!(keys.len(), rows.len());
        self.insert_batch::<M>(BatchKeys::Given(keys), rows);
    }

    /// [`insert_rows`](Self::insert_rows) whose keys are read from the rows' columns at
    /// `key_columns` (integer, text or uuid) when the table is next looked up.
    pub(crate) fn insert_rows_keyed_by<M: Model>(
        &mut self,
        key_columns: Vec<usize>,
        rows: Vec<Row>,
    ) {
        self.insert_batch::<M>(BatchKeys::InRows(key_columns), rows);
    }

    fn insert_batch<M: Model>(&mut self, keys: BatchKeys, rows: Vec<Row>) {
        if rows.is_empty() || !M::meta().has_key() {
            return;
        }
        self.tables
            .entry(M::meta().identity())
            .or_default()
            .batches
            .push(Batch { keys, rows });
    }

    /// Forgets one row.
    pub fn remove(&mut self, meta: &ModelMeta, key: &Key) {
        if let Some(t) = self.tables.get_mut(&meta.identity()) {
            t.index().remove(key);
        }
    }

    /// Forgets every row of a table (after a bulk UPDATE or DELETE).
    pub fn forget_table(&mut self, meta: &ModelMeta) {
        self.tables.remove(&meta.identity());
    }

    /// Forgets everything (after COMMIT or ROLLBACK).
    pub fn clear(&mut self) {
        self.tables.clear();
    }

    /// How many distinct rows are held. After a large read that no lookup has indexed yet, this
    /// takes time in proportion to it.
    pub fn len(&self) -> usize {
        self.tables.values().map(Table::len).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tables
            .values()
            .all(|t| t.index.is_empty() && t.indexed == t.batches.len())
    }
}
