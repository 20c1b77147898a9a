//! The single inference worker: one thread, inspecting pictures with the
//! live settings (inspector, heatmaps) it reads from a `watch` channel.
//!
//! For each job it reads and inspects the picture, stores the result in the
//! outbox through the [`ResultSink`], and only then hands the outcome to the
//! job's completion (the source's after-action). The order matters: a file
//! leaves the drop directory only once its result is on disk, so a crash at
//! any point loses nothing. The worker also pings the systemd watchdog, so a
//! hung pipeline gets the service restarted. With no inspector in the
//! settings (a model pack being swapped) it takes no job and waits.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Heatmap;
use crate::daemon::job::{Job, Outcome};
use crate::daemon::notify::Notifier;
use crate::daemon::record::{inspection_id, timestamp, HeatmapInfo, ResultRecord, Verdict};
use crate::daemon::sink::ResultSink;
use crate::heatmap;
use crate::inspector::{self, Inspector};
use crate::winclip::upsample;

/// What the worker inspects with; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The inspector; `None` while a model is being swapped (jobs wait).
    pub inspector: Option<Arc<Inspector>>,
    /// Heatmap rendering.
    pub heatmap: Heatmap,
}

/// The worker's state.
pub struct Worker {
    /// Result sink.
    pub sink: ResultSink,
    /// Live settings.
    pub settings: watch::Receiver<Settings>,
    /// Service manager.
    pub notifier: Arc<dyn Notifier>,
    /// Cancelled to stop after the current job.
    pub stop: CancellationToken,
    /// For waiting on the settings from this plain thread.
    pub runtime: tokio::runtime::Handle,
}

impl Worker {
    /// Run until `stop` is cancelled or every job sender is gone.
    pub fn run(mut self, jobs: flume::Receiver<Job>) {
        let tick = self
            .notifier
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        while !self.stop.is_cancelled() {
            self.notifier.watchdog();
            if self.settings.borrow_and_update().inspector.is_none() {
                self.wait_for_settings(tick);
                continue;
            }
            match jobs.recv_timeout(tick) {
                Ok(job) => {
                    self.sink.stats().queue_depth.store(jobs.len(), Ordering::Relaxed);
                    self.process(job, tick);
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        }
        log::debug!("inference worker stopped");
    }

    fn wait_for_settings(&mut self, tick: Duration) {
        let changed = self.settings.changed();
        let _ = self.runtime.block_on(tokio::time::timeout(tick, changed));
    }

    fn process(&mut self, job: Job, tick: Duration) {
        // The settings current now; a job that arrived while a model is
        // swapped waits for it (pinging the watchdog meanwhile).
        let settings = loop {
            let s = self.settings.borrow_and_update().clone();
            if s.inspector.is_some() || self.stop.is_cancelled() {
                break s;
            }
            self.notifier.watchdog();
            self.wait_for_settings(tick);
        };
        let Some(inspector) = settings.inspector else {
            return; // stopping: the job is dropped, its picture stays
        };
        let outcome = self.inspect_file(&inspector, &settings.heatmap, &job);
        job.completion.complete(outcome);
    }

    /// Inspect and store.
    fn inspect_file(&self, inspector: &Inspector, heatmap: &Heatmap, job: &Job) -> Outcome {
        let path = &job.path;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let station = self.sink.station();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                log::warn!("{} vanished before inspection", path.display());
                return Outcome::Vanished;
            }
            Err(e) => {
                let id = inspection_id(station, &job.source, &name, name.as_bytes());
                let rec = self.file_error(job, id, format!("cannot read {}: {e}", path.display()));
                return self.store(&rec, None, Outcome::Rejected);
            }
        };
        let id = inspection_id(station, &job.source, &name, &bytes);
        let captured_at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .map(timestamp);
        let t0 = Instant::now();
        let img = match crate::imageio::decode_rgb(&bytes, path) {
            Ok(img) => img,
            Err(e) => {
                let rec = self.file_error(job, id, e.to_string());
                return self.store(&rec, None, Outcome::Rejected);
            }
        };
        let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let ins = match inspector.inspect(&img) {
            Ok(i) => i,
            Err(e) => {
                let rec = self.file_error(job, id, format!("inspection failed: {e}"));
                return self.store(&rec, None, Outcome::Rejected);
            }
        };
        let t1 = Instant::now();
        let (heat, info) = if heatmap.enabled {
            render_heatmap(&img, &ins, inspector, heatmap, path)
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
            station: station.to_string(),
            source: job.source.clone(),
            file: Some(path.display().to_string()),
            trigger: job.trigger,
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
        self.sink.stats().inspected.fetch_add(1, Ordering::Relaxed);
        self.sink.stats().record_latency(total, latency_ms);
        self.store(&rec, heat.as_deref(), Outcome::Judged)
    }

    fn file_error(&self, job: &Job, id: String, error: String) -> ResultRecord {
        log::warn!("{error}");
        let mut rec = self.sink.error_record(id, &job.source, job.detected_at, error);
        rec.file = Some(job.path.display().to_string());
        rec.trigger = job.trigger;
        rec.latency_ms = round(job.detected.elapsed().as_secs_f64() * 1e3);
        rec
    }

    /// Store `rec`; `outcome` when stored, [`Outcome::NotStored`] otherwise.
    fn store(&self, rec: &ResultRecord, heatmap: Option<&[u8]>, outcome: Outcome) -> Outcome {
        match self.sink.store(rec, heatmap) {
            Ok(()) => outcome,
            Err(e) => {
                log::error!(
                    "cannot store result {} in the outbox: {e}; the image stays for a later retry",
                    rec.id
                );
                Outcome::NotStored
            }
        }
    }
}

/// The heatmap thumbnail as JPEG bytes, and its description.
fn render_heatmap(
    img: &image::RgbImage,
    ins: &inspector::Inspection,
    inspector: &Inspector,
    settings: &Heatmap,
    path: &Path,
) -> (Option<Vec<u8>>, Option<HeatmapInfo>) {
    let thumb = heatmap::thumbnail(img, settings.side);
    let (w, h) = thumb.dimensions();
    let map = upsample::bilinear(ins.outcome.map.view(), h as usize, w as usize);
    let over = heatmap::overlay(&thumb, map.view(), inspector.bank().meta.colour_range, 0.55);
    match heatmap::jpeg(&over, settings.quality) {
        Ok(bytes) => {
            let info = HeatmapInfo {
                topic: None,
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
}

fn round(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}
