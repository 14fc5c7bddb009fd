//! The driver tasks of the runs this node drives while it leads: a table of tokio tasks by
//! run id, stopped all at once when leadership is lost. No decisions, no I/O of its own.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::task::JoinHandle;

/// The driver tasks of the runs this node drives while it leads, by run id.
#[derive(Debug, Default)]
pub struct Drivers {
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Drivers {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every driver (this node is no longer the leader). A step under way is cut short;
    /// the next leader applies the resume rules to it.
    pub fn stop_all(&self) {
        for (_, t) in self.lock().drain() {
            t.abort();
        }
    }
}
