//! The identity map: one entry per (table, primary key) loaded in a session.

use std::any::Any;
use std::collections::HashMap;

use tokio_postgres::Row;

use crate::model::{Key, Model, ModelMeta, in_order};

type TableId = (&'static str, &'static str);

/// One loaded row as it was in the database.
enum Snapshot {
    /// A copy of the model.
    Model(Box<dyn Any + Send + Sync>),
    /// The row itself, decoded again when asked for: no copy at load time. Kept for large
    /// results only, since a row's bytes share the connection's read buffer, which stays
    /// allocated while any of them is held.
    Row(Row),
}

/// Row snapshots of one table, from [`IdentityMap::rows_of`].
pub struct RowSnapshots<'a>(&'a mut HashMap<Key, Snapshot>);

impl RowSnapshots<'_> {
    /// Records the row with this key, replacing an older snapshot.
    pub fn insert(&mut self, key: Key, row: Row) {
        self.0.insert(key, Snapshot::Row(row));
    }
}

/// Rows a session has loaded, as they are in the database inside its transaction: the snapshot
/// that dirty checking compares against.
#[derive(Default)]
pub struct IdentityMap {
    tables: HashMap<TableId, HashMap<Key, Snapshot>>,
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
    pub fn get<M: Model>(&self, key: &Key) -> Option<M> {
        match self.tables.get(&M::meta().identity())?.get(key)? {
            Snapshot::Model(m) => m.downcast_ref::<M>().cloned(),
            // It decoded when it was loaded; should it not now, it counts as not loaded.
            Snapshot::Row(row) => M::from_row(row, &in_order(M::meta().columns.len())).ok(),
        }
    }

    /// Whether a row of `M` with this key is loaded.
    pub fn contains<M: Model>(&self, key: &Key) -> bool {
        self.tables
            .get(&M::meta().identity())
            .is_some_and(|t| t.contains_key(key))
    }

    /// Records the row of `M` with this key, replacing an older snapshot.
    pub fn insert<M: Model>(&mut self, key: Key, model: M) {
        self.tables
            .entry(M::meta().identity())
            .or_default()
            .insert(key, Snapshot::Model(Box::new(model)));
    }

    /// Where many rows of `M` are recorded at once, keeping the rows themselves (holding `M`'s
    /// columns in order) as the snapshots; room for `n` is made first.
    pub fn rows_of<M: Model>(&mut self, n: usize) -> RowSnapshots<'_> {
        let table = self.tables.entry(M::meta().identity()).or_default();
        table.reserve(n);
        RowSnapshots(table)
    }

    /// Forgets one row.
    pub fn remove(&mut self, meta: &ModelMeta, key: &Key) {
        if let Some(t) = self.tables.get_mut(&meta.identity()) {
            t.remove(key);
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

    /// How many rows are held.
    pub fn len(&self) -> usize {
        self.tables.values().map(HashMap::len).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
