//! The one way results enter the outbox: stored durably, counted, and the
//! publisher woken; then kept in the [`History`] for the page. The worker and
//! the sources (GPIO error results) share it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::daemon::history::{History, Writer};
use crate::daemon::outbox::Outbox;
use crate::daemon::stats::Stats;
use crate::record::{timestamp, Identity, Record};

/// Stores results; cheap to clone.
#[derive(Clone)]
pub struct ResultSink {
    station: String,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    /// What each source inspects with, for error results made without an inspection.
    identities: Arc<RwLock<BTreeMap<String, Identity>>>,
    /// Recent results, for the page.
    history: Arc<History>,
    /// Writes them, off the result path (`None`: in line, as tests do).
    writer: Option<Writer>,
    /// Paused by command: trigger sources answer with error results.
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl ResultSink {
    /// A sink for `station` into `outbox`, waking `wake` after each result.
    pub fn new(station: &str, outbox: Arc<Mutex<Outbox>>, wake: Arc<Notify>, stats: Arc<Stats>) -> Self {
        Self {
            station: station.to_string(),
            outbox,
            wake,
            stats,
            identities: Arc::default(),
            history: Arc::new(History::in_memory()),
            writer: None,
            paused: Arc::default(),
        }
    }

    /// Paused by command (or not).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Whether the station is paused by command.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Keep results in `history` too, written on a thread of its own (by
    /// default only live events are sent).
    pub fn with_history(mut self, history: Arc<History>) -> std::io::Result<Self> {
        self.writer = Some(Writer::spawn(Arc::clone(&history), Arc::clone(&self.stats))?);
        self.history = history;
        Ok(self)
    }

    /// The recent results.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// The recipes in use changed: each source's error results name its own.
    pub fn set_identities(&self, identities: BTreeMap<String, Identity>) {
        if let Ok(mut i) = self.identities.write() {
            *i = identities;
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

    /// Store a result (and its heatmap) durably, count it, wake the publisher;
    /// then keep it with its picture in the history (where a failure costs
    /// only its place there: logged and counted). A failure to store it
    /// (state directory full) is counted and reported until a result is
    /// stored again.
    pub fn store(
        &self,
        record: &Record,
        heatmap: Option<&[u8]>,
        picture: Option<Vec<u8>>,
    ) -> std::io::Result<()> {
        let stored = self.push(record, heatmap, picture);
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

    fn push(&self, record: &Record, heatmap: Option<&[u8]>, picture: Option<Vec<u8>>) -> std::io::Result<()> {
        let json = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        let id = record.id.as_deref().unwrap_or_default();
        let mut ob = self
            .outbox
            .lock()
            .map_err(|_| std::io::Error::other("outbox lock poisoned"))?;
        match ob.push(id, &json, heatmap)? {
            Some(seq) => log::debug!("result {id} stored as #{seq}"),
            None => log::info!("result {id} is already pending: not stored twice"),
        }
        self.stats
            .outbox_pending
            .store(ob.index().len(), Ordering::Relaxed);
        self.stats.outbox_dropped.store(ob.dropped(), Ordering::Relaxed);
        self.stats
            .heatmaps_dropped
            .store(ob.dropped_heatmaps(), Ordering::Relaxed);
        drop(ob);
        self.stats
            .record_verdict(record.source.as_deref().unwrap_or_default(), record.verdict);
        self.wake.notify_one();
        match &self.writer {
            Some(w) => w.push(json, heatmap.map(<[u8]>::to_vec), picture),
            None => {
                if let Err(e) = self.history.push(&json, heatmap, picture.as_deref()) {
                    self.stats.history_errors.fetch_add(1, Ordering::Relaxed);
                    log::warn!("history: result {id} is not kept for the page: {e}");
                }
            }
        }
        Ok(())
    }

    /// A result with verdict `error` from `source`, naming the inspector in use.
    pub fn error_record(&self, id: String, source: &str, detected_at: SystemTime, error: String) -> Record {
        let identity = self
            .identities
            .read()
            .ok()
            .and_then(|i| i.get(source).cloned())
            .unwrap_or_default();
        let mut r = Record::error(error, &identity);
        r.id = Some(id);
        r.station = Some(self.station.clone());
        r.source = Some(source.to_string());
        r.detected_at = Some(timestamp(detected_at));
        r
    }
}
