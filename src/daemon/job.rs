//! What a source hands the inference worker: a picture to inspect and a
//! completion that takes the source's after-action once the result is stored.
//!
//! The worker knows pictures and inspectors only. What happens to the file
//! afterwards (moved, deleted, recorded, a GPIO station freed) belongs to the
//! source that made the job, reached through [`Completion`]. A job dropped
//! without being completed (queue torn down at shutdown) completes nothing:
//! completions release what they hold in `Drop`, and the picture stays where
//! it was for the next start.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use crate::inspector::Verdict;

/// What became of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A verdict (pass or fail) is stored in the outbox.
    Judged(Verdict),
    /// The picture could not be inspected (unreadable, corrupt, too large);
    /// a result with verdict `error` is stored.
    Rejected,
    /// The file was gone before it could be read; nothing was stored.
    Vanished,
    /// The result could not be stored (outbox unwritable): the picture must
    /// stay where it is, to be inspected again later.
    NotStored,
}

impl Outcome {
    /// Whether a result is safely stored (the picture may go).
    pub fn stored(self) -> bool {
        matches!(self, Outcome::Judged(_) | Outcome::Rejected)
    }

    /// The verdict a PLC is given: pass or fail where one is stored, error otherwise.
    pub fn verdict(self) -> crate::record::Verdict {
        match self {
            Outcome::Judged(Verdict::Pass) => crate::record::Verdict::Pass,
            Outcome::Judged(Verdict::Fail) => crate::record::Verdict::Fail,
            _ => crate::record::Verdict::Error,
        }
    }
}

/// The source's after-action, run by the worker once the job's result is
/// stored (or could not be).
pub trait Completion: Send {
    /// Called exactly once, after the result is in the outbox.
    fn complete(self: Box<Self>, outcome: Outcome);
}

/// One picture to inspect.
pub struct Job {
    /// Source name.
    pub source: String,
    /// The picture.
    pub path: PathBuf,
    /// GPIO trigger number (since start), for trigger sources.
    pub trigger: Option<u64>,
    /// The recipe to inspect with, where the source chose it (a GPIO recipe
    /// code latched on the trigger); `None`: the source's active recipe.
    pub recipe: Option<String>,
    /// When the source saw it.
    pub detected: Instant,
    /// Wall-clock time of detection.
    pub detected_at: SystemTime,
    /// The source's after-action.
    pub completion: Box<dyn Completion>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("source", &self.source)
            .field("path", &self.path)
            .field("trigger", &self.trigger)
            .field("recipe", &self.recipe)
            .finish_non_exhaustive()
    }
}
