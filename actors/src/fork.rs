//! Knowing cheaply whether this process is a `fork()` of the one that built a pool.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn in_child() {
    // Async-signal-safe: one atomic store.
    FORKED.store(true, Ordering::Relaxed);
}

/// Starts noting forks (once per process): from then on, a forked child knows it is one.
pub(crate) fn watch() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic; it runs in the child right
        // after fork(), where only async-signal-safe work is allowed.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// Whether this process was forked since [`watch`] was first called.
pub(crate) fn has_forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}
