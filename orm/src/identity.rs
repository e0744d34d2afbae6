//! The identity map: one entry per (table, primary key) loaded in a session.

use std::any::Any;
use std::collections::HashMap;

use crate::model::{Key, Model, ModelMeta};

type TableId = (&'static str, &'static str);

/// Rows a session has loaded, as they are in the database inside its transaction: the snapshot
/// that dirty checking compares against.
#[derive(Default)]
pub struct IdentityMap {
    tables: HashMap<TableId, HashMap<Key, Box<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for IdentityMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityMap")
            .field("entries", &self.len())
            .finish()
    }
}

impl IdentityMap {
    /// The loaded row of `M` with this key.
    pub fn get<M: Model>(&self, key: &Key) -> Option<&M> {
        self.tables
            .get(&M::meta().identity())?
            .get(key)?
            .downcast_ref::<M>()
    }

    /// Records the row of `M` with this key, replacing an older snapshot.
    pub fn insert<M: Model>(&mut self, key: Key, model: M) {
        self.tables
            .entry(M::meta().identity())
            .or_default()
            .insert(key, Box::new(model));
    }

    /// Records many rows of `M` at once.
    pub fn insert_all<M: Model>(&mut self, rows: Vec<(Key, M)>) {
        let table = self.tables.entry(M::meta().identity()).or_default();
        table.reserve(rows.len());
        for (key, model) in rows {
            table.insert(key, Box::new(model));
        }
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
