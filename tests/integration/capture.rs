//! A tracing subscriber that keeps every event as text, for tests that check what the pool logs.
//! Installed per thread: use it from a current-thread runtime, where the pool runs too.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<(Level, String)>>>, Arc<Mutex<Vec<SpanSeen>>>);

/// A span as it was created and recorded into.
#[derive(Clone, Debug)]
pub struct SpanSeen {
    id: u64,
    /// Its name.
    pub name: String,
    /// Its fields as text, those recorded later appended.
    pub fields: String,
    /// The fields of the span it was created in.
    pub parent: String,
}

impl Captured {
    /// The events at `level` whose text contains `needle`.
    pub fn matching(&self, level: Level, needle: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(l, text)| *l == level && text.contains(needle))
            .map(|(_, text)| text.clone())
            .collect()
    }

    /// Every span named `name`.
    pub fn spans(&self, name: &str) -> Vec<SpanSeen> {
        self.1
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// Every event's text.
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}

struct Capture {
    out: Captured,
    next_span: AtomicU64,
    /// Each span's fields as text, and the spans entered now (innermost last): an event's text
    /// starts with the fields of the spans it happened in.
    spans: Mutex<(std::collections::HashMap<u64, String>, Vec<u64>)>,
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next_span.fetch_add(1, Ordering::Relaxed) + 1;
        let mut text = Text(String::new());
        attrs.record(&mut text);
        let mut spans = self.spans.lock().expect("lock");
        let parent = attrs
            .parent()
            .map(Id::into_u64)
            .or_else(|| {
                attrs
                    .is_contextual()
                    .then(|| spans.1.last().copied())
                    .flatten()
            })
            .and_then(|p| spans.0.get(&p).cloned())
            .unwrap_or_default();
        self.out.1.lock().expect("lock").push(SpanSeen {
            id,
            name: attrs.metadata().name().to_owned(),
            fields: text.0.clone(),
            parent,
        });
        spans.0.insert(id, text.0);
        Id::from_u64(id)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        let mut text = Text(String::new());
        values.record(&mut text);
        if let Some(fields) = self.spans.lock().expect("lock").0.get_mut(&id.into_u64()) {
            fields.push_str(&text.0);
        }
        if let Some(seen) = self
            .out
            .1
            .lock()
            .expect("lock")
            .iter_mut()
            .find(|s| s.id == id.into_u64())
        {
            seen.fields.push_str(&text.0);
        }
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        {
            let spans = self.spans.lock().expect("lock");
            for id in &spans.1 {
                if let Some(fields) = spans.0.get(id) {
                    text.0.push_str(fields);
                }
            }
        }
        event.record(&mut text);
        self.out
            .0
            .lock()
            .expect("lock")
            .push((*event.metadata().level(), text.0));
    }

    fn enter(&self, id: &Id) {
        self.spans.lock().expect("lock").1.push(id.into_u64());
    }

    fn exit(&self, id: &Id) {
        let mut spans = self.spans.lock().expect("lock");
        if let Some(at) = spans.1.iter().rposition(|s| *s == id.into_u64()) {
            spans.1.remove(at);
        }
    }
}

/// Captures the events of this thread until the guard is dropped.
pub fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let out = Captured::default();
    let guard = tracing::subscriber::set_default(Capture {
        out: out.clone(),
        next_span: AtomicU64::new(0),
        spans: Mutex::default(),
    });
    (out, guard)
}
