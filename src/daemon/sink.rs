//! The one way results enter the outbox: stored durably, counted, and the
//! publisher woken. The worker and the sources (GPIO error results) share it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::daemon::outbox::Outbox;
use crate::daemon::record::{timestamp, ResultRecord, Verdict};
use crate::daemon::stats::Stats;

/// Stores results; cheap to clone.
#[derive(Clone)]
pub struct ResultSink {
    station: String,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
}

impl ResultSink {
    /// A sink for `station` into `outbox`, waking `wake` after each result.
    pub fn new(station: &str, outbox: Arc<Mutex<Outbox>>, wake: Arc<Notify>, stats: Arc<Stats>) -> Self {
        Self {
            station: station.to_string(),
            outbox,
            wake,
            stats,
        }
    }

    /// The station's name.
    pub fn station(&self) -> &str {
        &self.station
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Store a result (and its heatmap) durably, count it, wake the publisher.
    /// A failure (state directory full) is counted and reported until a
    /// result is stored again.
    pub fn store(&self, record: &ResultRecord, heatmap: Option<&[u8]>) -> std::io::Result<()> {
        let stored = self.push(record, heatmap);
        match &stored {
            Ok(()) => self.stats.set_store_problem(None),
            Err(e) => {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                let full = e.raw_os_error() == Some(nix::libc::ENOSPC);
                self.stats.set_store_problem(Some(if full {
                    format!("full ({e}); pictures wait and are retried")
                } else {
                    format!("cannot store results ({e}); pictures wait and are retried")
                }));
            }
        }
        stored
    }

    fn push(&self, record: &ResultRecord, heatmap: Option<&[u8]>) -> std::io::Result<()> {
        let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let mut ob = self
            .outbox
            .lock()
            .map_err(|_| std::io::Error::other("outbox lock poisoned"))?;
        match ob.push(&record.id, &json, heatmap)? {
            Some(seq) => log::debug!("result {} stored as #{seq}", record.id),
            None => log::info!("result {} is already pending: not stored twice", record.id),
        }
        self.stats
            .outbox_pending
            .store(ob.index().len(), Ordering::Relaxed);
        self.stats.outbox_dropped.store(ob.dropped(), Ordering::Relaxed);
        self.stats
            .heatmaps_dropped
            .store(ob.dropped_heatmaps(), Ordering::Relaxed);
        drop(ob);
        match record.verdict {
            Verdict::Pass => self.stats.passed.fetch_add(1, Ordering::Relaxed),
            Verdict::Fail => self.stats.failed.fetch_add(1, Ordering::Relaxed),
            Verdict::Error => self.stats.errors.fetch_add(1, Ordering::Relaxed),
        };
        self.wake.notify_one();
        Ok(())
    }

    /// A result with verdict `error` from `source`.
    pub fn error_record(
        &self,
        id: String,
        source: &str,
        detected_at: SystemTime,
        error: String,
    ) -> ResultRecord {
        ResultRecord {
            id,
            station: self.station.clone(),
            source: source.to_string(),
            file: None,
            file_escaped: None,
            trigger: None,
            captured_at: None,
            detected_at: timestamp(detected_at),
            inspected_at: timestamp(SystemTime::now()),
            verdict: Verdict::Error,
            score: None,
            threshold: None,
            image_score: None,
            fewshot_max: None,
            early_exit: None,
            map_max: None,
            error: Some(error),
            timings_ms: None,
            latency_ms: 0.0,
            model: String::new(),
            bank: String::new(),
            heatmap: None,
        }
    }
}
