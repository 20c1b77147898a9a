//! The single inference worker: one thread, model and bank loaded once.
//!
//! It takes jobs from a bounded queue, inspects, stores the result durably in
//! the outbox, then does the source's after-action (move, delete, record). The
//! order matters: a file leaves the drop directory only once its result is on
//! disk, so a crash at any point loses nothing. The worker also pings the
//! systemd watchdog, so a hung pipeline gets the service restarted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::config::After;
use crate::daemon::dirwatch::{Queued, SeenLog};
use crate::daemon::notify::Notifier;
use crate::daemon::outbox::Outbox;
use crate::daemon::record::{inspection_id, timestamp, HeatmapInfo, ResultRecord, Verdict};
use crate::daemon::stats::Stats;
use crate::heatmap;
use crate::inspector::{self, Inspector};
use crate::winclip::upsample;

/// What to inspect.
#[derive(Debug)]
pub enum JobKind {
    /// A file that appeared in a drop directory.
    File {
        /// The file.
        path: PathBuf,
        /// What to do with it afterwards.
        after: After,
        /// Record of kept files (after = keep).
        seen: Option<Arc<SeenLog>>,
        /// The source's set of queued paths, to release.
        queued: Queued,
    },
    /// An image written by a GPIO-triggered capture command.
    Capture {
        /// The capture.
        path: PathBuf,
        /// Trigger number.
        trigger: u64,
        /// Keep the capture file.
        keep: bool,
        /// Cleared when done, so the next trigger is accepted.
        busy: Arc<AtomicBool>,
    },
}

/// One unit of work.
#[derive(Debug)]
pub struct Job {
    /// Source name.
    pub source: String,
    /// What to inspect.
    pub kind: JobKind,
    /// When the source saw it.
    pub detected: Instant,
    /// Wall-clock time of detection.
    pub detected_at: SystemTime,
}

/// Shared handles the worker and the sources use to emit results.
#[derive(Clone)]
pub struct Emitter {
    /// Station name.
    pub station: String,
    /// Topic prefix (for heatmap topics).
    pub prefix: String,
    /// The outbox.
    pub outbox: Arc<Mutex<Outbox>>,
    /// Wakes the publisher.
    pub wake: Arc<tokio::sync::Notify>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl Emitter {
    /// Store a result (and its heatmap) durably and wake the publisher.
    pub fn emit(&self, record: &ResultRecord, heatmap: Option<&[u8]>) -> std::io::Result<()> {
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
        drop(ob);
        match record.verdict {
            Verdict::Pass => self.stats.passed.fetch_add(1, Ordering::Relaxed),
            Verdict::Fail => self.stats.failed.fetch_add(1, Ordering::Relaxed),
            Verdict::Error => self.stats.errors.fetch_add(1, Ordering::Relaxed),
        };
        self.wake.notify_one();
        Ok(())
    }

    /// A result with verdict `error`.
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

/// Heatmap rendering settings.
#[derive(Debug, Clone, Copy)]
pub struct HeatmapSettings {
    /// Render and publish heatmaps.
    pub enabled: bool,
    /// Longest side.
    pub side: u32,
    /// JPEG quality.
    pub quality: u8,
}

/// The worker's state.
pub struct Worker {
    /// Result sink.
    pub emitter: Emitter,
    /// The current inspector; replaced on reload.
    pub inspector: Arc<Mutex<Arc<Inspector>>>,
    /// Heatmaps.
    pub heatmap: HeatmapSettings,
    /// Service manager.
    pub notifier: Arc<dyn Notifier>,
    /// Set to stop after the current job.
    pub stop: Arc<AtomicBool>,
}

impl Worker {
    /// Run until `stop` is set or every sender is gone.
    pub fn run(self, jobs: flume::Receiver<Job>) {
        let tick = self
            .notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        while !self.stop.load(Ordering::Relaxed) {
            self.notifier.watchdog();
            match jobs.recv_timeout(tick) {
                Ok(job) => {
                    self.emitter
                        .stats
                        .queue_depth
                        .store(jobs.len(), Ordering::Relaxed);
                    self.process(job);
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        log::debug!("inference worker stopped");
    }

    fn process(&self, job: Job) {
        let inspector = match self.inspector.lock() {
            Ok(g) => Arc::clone(&g),
            Err(_) => {
                log::error!("inspector lock poisoned");
                return;
            }
        };
        match &job.kind {
            JobKind::File { path, .. } | JobKind::Capture { path, .. } => {
                let path = path.clone();
                let outcome = self.inspect_file(&inspector, &job, &path);
                self.finish(job, outcome);
            }
        }
    }

    /// Inspect and store; returns whether the image could be inspected, or
    /// `None` when the result could not be stored (the file must stay).
    fn inspect_file(&self, inspector: &Inspector, job: &Job, path: &Path) -> Option<bool> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::warn!("{} vanished before inspection", path.display());
                return Some(false);
            }
            Err(e) => {
                let id = inspection_id(&self.emitter.station, &job.source, &name, name.as_bytes());
                let rec = self.file_error(job, path, id, format!("cannot read {}: {e}", path.display()));
                return self.store(&rec, None).then_some(false);
            }
        };
        let id = inspection_id(&self.emitter.station, &job.source, &name, &bytes);
        let captured_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .map(timestamp);
        let t0 = Instant::now();
        let img = match crate::imageio::decode_rgb(&bytes, path) {
            Ok(img) => img,
            Err(e) => {
                let rec = self.file_error(job, path, id, e.to_string());
                return self.store(&rec, None).then_some(false);
            }
        };
        let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ins = match inspector.inspect(&img) {
            Ok(i) => i,
            Err(e) => {
                let rec = self.file_error(job, path, id, format!("inspection failed: {e}"));
                return self.store(&rec, None).then_some(false);
            }
        };
        let t1 = Instant::now();
        let (heat, info) = if self.heatmap.enabled {
            let thumb = heatmap::thumbnail(&img, self.heatmap.side);
            let (w, h) = thumb.dimensions();
            let map = upsample::bilinear(ins.outcome.map.view(), h as usize, w as usize);
            let over = heatmap::overlay(&thumb, map.view(), inspector.bank().meta.colour_range, 0.55);
            match heatmap::jpeg(&over, self.heatmap.quality) {
                Ok(bytes) => {
                    let info = HeatmapInfo {
                        topic: format!("{}/{}/heatmap/{id}", self.emitter.prefix, self.emitter.station),
                        bytes: bytes.len(),
                        width: w,
                        height: h,
                    };
                    (Some(bytes), Some(info))
                }
                Err(e) => {
                    log::warn!("heatmap for {}: {e}", path.display());
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let heatmap_ms = t1.elapsed().as_secs_f64() * 1e3;
        let t = &ins.timings;
        let mut timings = serde_json::json!({
            "decode": round(decode_ms),
            "preprocess": round(t.preprocess_ms),
            "image": round(t.image_ms),
            "scoring": round(t.scoring_ms),
            "upsample": round(t.upsample_ms),
            "heatmap": round(heatmap_ms),
        });
        for (k, ms) in &t.windows_ms {
            timings[format!("windows_{k}")] = serde_json::json!(round(*ms));
        }
        let total = decode_ms + t.total_ms() + heatmap_ms;
        timings["total"] = serde_json::json!(round(total));
        let latency_ms = job.detected.elapsed().as_secs_f64() * 1e3;
        let rec = ResultRecord {
            id,
            station: self.emitter.station.clone(),
            source: job.source.clone(),
            file: Some(path.display().to_string()),
            trigger: trigger_of(job),
            captured_at,
            detected_at: timestamp(job.detected_at),
            inspected_at: timestamp(SystemTime::now()),
            verdict: match ins.verdict {
                inspector::Verdict::Pass => Verdict::Pass,
                inspector::Verdict::Fail => Verdict::Fail,
            },
            score: Some(ins.outcome.score),
            threshold: Some(ins.threshold),
            image_score: Some(ins.outcome.image_score),
            fewshot_max: ins.outcome.fewshot_max,
            early_exit: Some(ins.early_exit),
            map_max: Some(ins.outcome.map.iter().copied().fold(f32::NEG_INFINITY, f32::max)),
            error: None,
            timings_ms: Some(timings),
            latency_ms: round(latency_ms),
            model: inspector.model_id().to_string(),
            bank: inspector.bank_id().to_string(),
            heatmap: info,
        };
        self.emitter.stats.inspected.fetch_add(1, Ordering::Relaxed);
        self.emitter.stats.record_latency(total, latency_ms);
        self.store(&rec, heat.as_deref()).then_some(true)
    }

    fn file_error(&self, job: &Job, path: &Path, id: String, error: String) -> ResultRecord {
        log::warn!("{error}");
        let mut rec = self.emitter.error_record(id, &job.source, job.detected_at, error);
        rec.file = Some(path.display().to_string());
        rec.trigger = trigger_of(job);
        rec.latency_ms = round(job.detected.elapsed().as_secs_f64() * 1e3);
        rec
    }

    fn store(&self, rec: &ResultRecord, heatmap: Option<&[u8]>) -> bool {
        match self.emitter.emit(rec, heatmap) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "cannot store result {} in the outbox: {e}; the image stays for a later retry",
                    rec.id
                );
                false
            }
        }
    }

    /// The after-action, once the result is durable.
    fn finish(&self, job: Job, outcome: Option<bool>) {
        match job.kind {
            JobKind::File {
                path,
                after,
                seen,
                queued,
            } => {
                if let Some(inspected) = outcome {
                    if let Err(e) = after_action(&path, &after, seen.as_deref(), inspected) {
                        log::error!("after inspecting {}: {e}", path.display());
                    }
                }
                queued.release(&path);
            }
            JobKind::Capture { path, keep, busy, .. } => {
                if !keep && outcome.is_some() {
                    let _ = std::fs::remove_file(&path);
                }
                busy.store(false, Ordering::Release);
            }
        }
    }
}

fn trigger_of(job: &Job) -> Option<u64> {
    match job.kind {
        JobKind::Capture { trigger, .. } => Some(trigger),
        JobKind::File { .. } => None,
    }
}

fn round(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Move, delete or record a file whose result is stored.
fn after_action(path: &Path, after: &After, seen: Option<&SeenLog>, inspected: bool) -> std::io::Result<()> {
    match after {
        After::Move { done_dir, failed_dir } => {
            let dir = if inspected { done_dir } else { failed_dir };
            std::fs::create_dir_all(dir)?;
            let name = path.file_name().unwrap_or_default();
            let mut dest = dir.join(name);
            let mut n = 1;
            while dest.exists() {
                dest = dir.join(format!("{}.{n}", name.to_string_lossy()));
                n += 1;
            }
            std::fs::rename(path, dest)
        }
        After::Delete => match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
        After::Keep => match seen {
            Some(log) => log.record(path),
            None => Ok(()),
        },
    }
}
