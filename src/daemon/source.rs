//! The contract every image source follows (after vector's
//! `SourceConfig::build(SourceContext)`): a source is built from its
//! configuration and a [`SourceContext`], and returns a [`SourceHandle`] that
//! owns every task it started. Stopping the handle (or dropping it) stops them
//! all and releases what they hold (inotify watches, GPIO line requests,
//! capture processes), so a reload can build the same source again at once.

use std::path::PathBuf;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::job::Job;
use crate::daemon::sink::ResultSink;

/// What a source is given to run.
#[derive(Clone)]
pub struct SourceContext {
    /// Where jobs go (bounded: a full queue makes the source wait).
    pub jobs: flume::Sender<Job>,
    /// For results a source makes itself (a GPIO trigger that finds the station busy).
    pub sink: ResultSink,
    /// Cancelled when the source must stop.
    pub shutdown: CancellationToken,
    /// The station's state directory (records of kept files).
    pub state_dir: PathBuf,
    /// The station's command queue (a teach button sends `teach` here, also
    /// with `[commands]` off: the button is configured on purpose).
    pub commands: tokio::sync::mpsc::Sender<crate::daemon::commands::Incoming>,
}

/// How long [`SourceHandle::stop`] waits for a task before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running source: stops its tasks when stopped or dropped.
#[derive(Debug)]
pub struct SourceHandle {
    name: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SourceHandle {
    /// A handle for `name`'s `tasks`, all of which end once `shutdown` is cancelled.
    pub fn new(name: &str, shutdown: CancellationToken, tasks: Vec<JoinHandle<()>>) -> Self {
        Self {
            name: name.to_string(),
            shutdown,
            tasks,
        }
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every task of the source has ended (it failed, or was stopped).
    pub fn is_finished(&self) -> bool {
        self.tasks.iter().all(JoinHandle::is_finished)
    }

    /// Stop the source and wait until its tasks have ended (so whatever they
    /// held is released).
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
                log::warn!(
                    "source {}: a task did not stop within {STOP_TIMEOUT:?}",
                    self.name
                );
                abort.abort();
            }
        }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        // Blocking tasks cannot be aborted; they see the cancellation.
        self.shutdown.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}
