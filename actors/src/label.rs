//! A session's label (its name and where it was created) and where a spare actor finds the
//! label of the session it serves next.

use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where a spare session actor finds the label of the session it serves next: set by
/// [`spawn`] before the new handle exists, taken by the actor with the first message that
/// handle sends (so a reused actor costs no message of its own).
#[derive(Default)]
pub(crate) struct NextLabel {
    ready: AtomicBool,
    label: Mutex<Option<Label>>,
}

impl NextLabel {
    pub(crate) fn put(&self, label: Label) {
        *self.label.lock().unwrap_or_else(PoisonError::into_inner) = Some(label);
        self.ready.store(true, Ordering::Release);
    }

    /// The new label, if one was put since the last call: one atomic load otherwise. Only the
    /// actor takes, and only `put` on a spare (which runs no message meanwhile) sets `ready`.
    pub(crate) fn take(&self) -> Option<Label> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        self.ready.store(false, Ordering::Relaxed);
        self.label
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// The session's name (or `session-<id>`) and where it was created, for logs, leak reports and
/// timeout errors. Shared by the handle, the actor and the pool's lease record; the text is
/// written only when something asks for it, so a session nobody reports on never formats it.
#[derive(Clone)]
pub(crate) struct Label(pub(crate) Arc<LabelInner>);

pub(crate) struct LabelInner {
    pub(crate) name: Option<String>,
    pub(crate) site: &'static Location<'static>,
    /// Set by the actor as it starts (ractor assigns the id at spawn).
    pub(crate) id: std::sync::OnceLock<ractor::ActorId>,
    pub(crate) text: std::sync::OnceLock<String>,
}

impl Label {
    pub(crate) fn new(name: Option<String>, site: &'static Location<'static>) -> Label {
        Label(Arc::new(LabelInner {
            name,
            site,
            id: std::sync::OnceLock::new(),
            text: std::sync::OnceLock::new(),
        }))
    }

    pub(crate) fn as_str(&self) -> &str {
        let l = &self.0;
        l.text.get_or_init(|| match (&l.name, l.id.get()) {
            (Some(n), _) => format!("{n} (created at {})", l.site),
            (None, Some(id)) => format!("session-{id} (created at {})", l.site),
            (None, None) => format!("session (created at {})", l.site),
        })
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The tracing span of a session's work.
pub(crate) fn span_for(label: &Label) -> tracing::Span {
    tracing::info_span!("session", session = %label)
}
