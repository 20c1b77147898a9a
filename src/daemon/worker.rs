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
use crate::daemon::recipes::{Active, Recipes};
use crate::daemon::sink::ResultSink;
use crate::fsutil::escape_name;
use crate::heatmap;
use crate::imageio::{self, Limits};
use crate::inspector::{self, Inspector};
use crate::record::{inspection_id, timestamp, HeatmapInfo, Record};

/// What the worker inspects with; replaced as a whole on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every recipe's inspector; `None` while a model is being swapped (jobs wait).
    pub recipes: Option<Arc<Recipes>>,
    /// The recipe each source inspects with.
    pub active: Arc<Active>,
    /// Heatmap rendering.
    pub heatmap: Heatmap,
    /// What a picture may cost.
    pub limits: Limits,
    /// Decode JPEGs at reduced DCT scale.
    pub jpeg_dct_scaling: bool,
    /// Paused by command: jobs wait, as while a model is swapped.
    pub paused: bool,
}

impl Settings {
    /// The recipes to take jobs with now (none while paused or swapping).
    pub fn ready(&self) -> Option<&Arc<Recipes>> {
        self.recipes.as_ref().filter(|_| !self.paused)
    }

    /// The recipe a job from `source` inspects with now, and its inspector:
    /// `chosen` where the source chose one (a GPIO recipe code), else the
    /// source's active one (`[model]`'s for a source without one; the daemon
    /// resolves every source's before it installs the settings). `None`
    /// while not ready; an error when the chosen recipe is not loaded (that
    /// job is never inspected with another recipe).
    pub fn recipe_for(
        &self,
        source: &str,
        chosen: Option<&str>,
    ) -> Option<Result<(String, Arc<Inspector>), String>> {
        let recipes = self.ready()?;
        if let Some(n) = chosen {
            return Some(match recipes.get(n) {
                Some(i) => Ok((n.to_string(), Arc::clone(i))),
                None => Err(format!(
                    "recipe {n:?} (chosen by the recipe code) is not loaded (recipes: {})",
                    recipes.names()
                )),
            });
        }
        let (name, inspector) = match self.active.of(source) {
            Some(n) => match recipes.get(n) {
                Some(i) => (n, i),
                None => {
                    log::error!("source {source}: its recipe {n:?} is not loaded; inspecting with [model]'s");
                    (recipes.primary_name(), recipes.primary())
                }
            },
            None => (recipes.primary_name(), recipes.primary()),
        };
        Some(Ok((name.to_string(), Arc::clone(inspector))))
    }
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
            if self.settings.borrow_and_update().ready().is_none() {
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
        let settings = &mut self.settings;
        // The timer must be made inside the runtime's context.
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(tick, settings.changed()).await });
    }

    fn process(&mut self, job: Job, tick: Duration) {
        // The settings current now; a job that arrived while a model is
        // swapped waits for it (pinging the watchdog meanwhile).
        let settings = loop {
            let s = self.settings.borrow_and_update().clone();
            if s.ready().is_some() || self.stop.is_cancelled() {
                break s;
            }
            self.notifier.watchdog();
            self.wait_for_settings(tick);
        };
        let outcome = match settings.recipe_for(&job.source, job.recipe.as_deref()) {
            None => return, // stopping: the job is dropped, its picture stays
            Some(Ok((recipe, inspector))) => self.inspect_file(&recipe, &inspector, &settings, &job),
            Some(Err(e)) => {
                let name = job.path.file_name().map(escape_name).unwrap_or_default();
                let id = inspection_id(self.sink.station(), &job.source, &name, name.as_bytes());
                let mut rec = self.file_error(&job, id, e);
                rec.recipe = job.recipe.clone();
                self.store(&rec, None, None, Outcome::Rejected)
            }
        };
        job.completion.complete(outcome);
    }

    /// Inspect and store.
    fn inspect_file(&self, recipe: &str, inspector: &Inspector, settings: &Settings, job: &Job) -> Outcome {
        let path = &job.path;
        // Exact (escaped) bytes: names that are not UTF-8 keep distinct ids.
        let name = path.file_name().map(escape_name).unwrap_or_default();
        let station = self.sink.station();
        let vanished = || {
            log::warn!("{} vanished before inspection", path.display());
            Outcome::Vanished
        };
        let before = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return vanished(),
            Err(e) => {
                let id = inspection_id(station, &job.source, &name, name.as_bytes());
                let rec = self.file_error(job, id, format!("cannot read {}: {e}", path.display()));
                return self.store(&rec, None, None, Outcome::Rejected);
            }
        };
        // Identified by name and size where the content is not read.
        let unread_id = || inspection_id(station, &job.source, &name, &before.len().to_le_bytes());
        let bytes = match imageio::read_limited(path, &settings.limits) {
            Ok(b) => b,
            Err(imageio::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return vanished();
            }
            Err(e) => {
                let rec = self.file_error(job, unread_id(), e.to_string());
                return self.store(&rec, None, None, Outcome::Rejected);
            }
        };
        let stamp = |m: &std::fs::Metadata| (m.len(), m.modified().ok());
        let after = std::fs::metadata(path).ok();
        if after.as_ref().map(stamp) != Some(stamp(&before)) || bytes.len() as u64 != before.len() {
            let rec = self.file_error(
                job,
                unread_id(),
                format!(
                    "{} changed while it was read (still being written?): writers should write a \
                     temporary name and rename it into place, or set the source's settle_ms",
                    path.display()
                ),
            );
            return self.store(&rec, None, None, Outcome::Rejected);
        }
        let id = inspection_id(station, &job.source, &name, &bytes);
        let captured_at = before.modified().ok().map(timestamp);
        let t0 = Instant::now();
        let decoded = if settings.jpeg_dct_scaling {
            let input = inspector.vision().architecture().image_size as u32;
            imageio::decode_rgb_reduced(&bytes, path, &settings.limits, input)
        } else {
            imageio::decode_rgb_within(&bytes, path, &settings.limits).map(imageio::Reduced::full)
        };
        let decoded = match decoded {
            Ok(d) => d,
            Err(e) => {
                let rec = self.file_error(job, id, e.to_string());
                return self.store(&rec, None, None, Outcome::Rejected);
            }
        };
        let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let img = &decoded.image;
        let ins = match inspector.inspect_reduced(img, decoded.factor, (decoded.width, decoded.height)) {
            Ok(i) => i,
            Err(e) => {
                let rec = self.file_error(job, id, format!("inspection failed: {e}"));
                return self.store(&rec, None, None, Outcome::Rejected);
            }
        };
        let mut rec = Record::inspected(inspector, &ins, decoded.width, decoded.height);
        rec.decode_scale = (decoded.factor > 1).then_some(decoded.factor);
        rec.recipe = Some(recipe.to_string());
        let t1 = Instant::now();
        let (heat, info) = if settings.heatmap.enabled {
            render_heatmap(img, &ins, &rec, inspector, &settings.heatmap, path)
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
        rec.id = Some(id);
        rec.station = Some(station.to_string());
        rec.source = Some(job.source.clone());
        rec.file = Some(path.display().to_string());
        rec.file_escaped = escaped_path(path);
        rec.trigger = job.trigger;
        rec.captured_at = captured_at;
        rec.detected_at = Some(timestamp(job.detected_at));
        rec.inspected_at = timestamp(SystemTime::now());
        rec.timings_ms = Some(timings);
        rec.latency_ms = Some(round(latency_ms));
        rec.heatmap = info;
        self.sink.stats().inspected.fetch_add(1, Ordering::Relaxed);
        self.sink.stats().record_latency(&job.source, total, latency_ms);
        log::info!(
            "{} {}: {}, {total:.0} ms",
            job.source,
            path.display(),
            rec.summary()
        );
        self.store(&rec, heat.as_deref(), Some(bytes), Outcome::Judged(ins.verdict))
    }

    fn file_error(&self, job: &Job, id: String, error: String) -> Record {
        log::warn!("{error}");
        let mut rec = self.sink.error_record(id, &job.source, job.detected_at, error);
        rec.file = Some(job.path.display().to_string());
        rec.file_escaped = escaped_path(&job.path);
        rec.trigger = job.trigger;
        rec.latency_ms = Some(round(job.detected.elapsed().as_secs_f64() * 1e3));
        rec
    }

    /// Store `rec`; `outcome` when stored, [`Outcome::NotStored`] otherwise.
    fn store(
        &self,
        rec: &Record,
        heatmap: Option<&[u8]>,
        picture: Option<Vec<u8>>,
        outcome: Outcome,
    ) -> Outcome {
        match self.sink.store(rec, heatmap, picture) {
            Ok(()) => outcome,
            Err(e) => {
                log::error!(
                    "cannot store result {} in the outbox: {e}; the image stays for a later retry",
                    rec.id.as_deref().unwrap_or_default()
                );
                Outcome::NotStored
            }
        }
    }
}

/// The heatmap (explained: verdict, regions, scale) as JPEG bytes, and its description.
fn render_heatmap(
    img: &image::RgbImage,
    ins: &inspector::Inspection,
    rec: &Record,
    inspector: &Inspector,
    settings: &Heatmap,
    path: &Path,
) -> (Option<Vec<u8>>, Option<HeatmapInfo>) {
    let picture = heatmap::explained(
        img,
        ins.outcome.map.view(),
        inspector.bank().meta.colour_range,
        &rec.legend(&rec.boxes()),
        settings.side,
    );
    match heatmap::jpeg(&picture, settings.quality) {
        Ok(bytes) => {
            let info = HeatmapInfo {
                topic: None,
                bytes: bytes.len(),
                width: picture.width(),
                height: picture.height(),
            };
            (Some(bytes), Some(info))
        }
        Err(e) => {
            log::warn!("heatmap for {}: {e}", path.display());
            (None, None)
        }
    }
}

/// `path` with its odd bytes escaped, where that differs from the lossy form.
fn escaped_path(path: &Path) -> Option<String> {
    let escaped = escape_name(path.as_os_str());
    (escaped != path.to_string_lossy()).then_some(escaped)
}

fn round(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config;
    use crate::daemon::engine;
    use crate::daemon::job::Completion;
    use crate::daemon::notify::Noop;
    use crate::daemon::outbox::Outbox;
    use crate::daemon::stats::Stats;
    use crate::daemon::testing::{fixture, tiny_bank, tiny_pack};

    /// Sends the job's outcome back to the test.
    struct Report(std::sync::mpsc::Sender<Outcome>);

    impl Completion for Report {
        fn complete(self: Box<Self>, outcome: Outcome) {
            let _ = self.0.send(outcome);
        }
    }

    struct Rig {
        dir: tempfile::TempDir,
        jobs: flume::Sender<Job>,
        settings: watch::Sender<Settings>,
        outbox: Arc<Mutex<Outbox>>,
        outcomes: std::sync::mpsc::Receiver<Outcome>,
        report: std::sync::mpsc::Sender<Outcome>,
        stop: CancellationToken,
        thread: Option<std::thread::JoinHandle<()>>,
        inspector: Arc<Inspector>,
        _runtime: tokio::runtime::Runtime,
    }

    impl Rig {
        fn new(paused: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let bank = tiny_bank(dir.path(), "bottle");
            let inspector = Arc::new(
                engine::load(&config::Model::new(tiny_pack(), bank))
                    .unwrap()
                    .inspector,
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let outbox = Arc::new(Mutex::new(
                Outbox::open(&dir.path().join("outbox"), 100, 64 << 20).unwrap(),
            ));
            let sink = ResultSink::new(
                "st",
                Arc::clone(&outbox),
                Arc::new(tokio::sync::Notify::new()),
                Arc::new(Stats::default()),
            );
            let (settings, rx) = watch::channel(Settings {
                paused: false,
                recipes: (!paused).then(|| Arc::new(Recipes::new("default", (*inspector).clone()))),
                active: Arc::default(),
                heatmap: Heatmap::default(),
                limits: Limits::DEFAULT,
                jpeg_dct_scaling: false,
            });
            let (jobs, jobs_rx) = flume::bounded(8);
            let stop = CancellationToken::new();
            let worker = Worker {
                sink,
                settings: rx,
                notifier: Arc::new(Noop),
                stop: stop.clone(),
                runtime: runtime.handle().clone(),
            };
            let thread = std::thread::spawn(move || worker.run(jobs_rx));
            let (report, outcomes) = std::sync::mpsc::channel();
            Self {
                dir,
                jobs,
                settings,
                outbox,
                outcomes,
                report,
                stop,
                thread: Some(thread),
                inspector,
                _runtime: runtime,
            }
        }

        /// Queue `path` (relative to the rig's directory unless absolute).
        fn send(&self, path: &Path) {
            self.send_with(path, None);
        }

        /// Queue `path` with the recipe its source chose.
        fn send_with(&self, path: &Path, recipe: Option<&str>) {
            self.jobs
                .send(Job {
                    source: "cam".into(),
                    path: self.dir.path().join(path),
                    trigger: None,
                    recipe: recipe.map(str::to_string),
                    detected: Instant::now(),
                    detected_at: SystemTime::now(),
                    completion: Box::new(Report(self.report.clone())),
                })
                .unwrap();
        }

        fn outcome(&self) -> Outcome {
            self.outcomes.recv_timeout(Duration::from_secs(60)).unwrap()
        }

        fn results(&self) -> Vec<serde_json::Value> {
            let ob = self.outbox.lock().unwrap();
            ob.index()
                .after(0)
                .map(|s| serde_json::from_slice(&ob.read(s).unwrap().unwrap().json).unwrap())
                .collect()
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.stop.cancel();
            if let Some(t) = self.thread.take() {
                t.join().unwrap();
            }
        }
    }

    #[test]
    fn each_picture_gets_its_outcome_after_its_result_is_stored() {
        let rig = Rig::new(false);
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good.png")).unwrap();
        std::fs::write(rig.dir.path().join("broken.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
        rig.send(Path::new("good.png"));
        assert!(matches!(rig.outcome(), Outcome::Judged(_)));
        rig.send(Path::new("broken.png"));
        assert_eq!(rig.outcome(), Outcome::Rejected);
        rig.send(Path::new("missing.png"));
        assert_eq!(rig.outcome(), Outcome::Vanished);
        let results = rig.results();
        assert_eq!(
            results.len(),
            2,
            "nothing is stored for a vanished file: {results:?}"
        );
        assert!(results[0]["verdict"] == "pass" || results[0]["verdict"] == "fail");
        assert!(results[0]["heatmap"]["bytes"].as_u64().unwrap() > 0);
        assert!(
            results[0]["heatmap"].get("topic").is_none(),
            "the publisher names the topic"
        );
        assert_eq!(results[1]["verdict"], "error");
        assert!(results[1]["error"].as_str().unwrap().contains("broken.png"));
    }

    #[test]
    fn each_source_inspects_with_its_active_recipe() {
        let rig = Rig::new(false);
        let mut strict = (*rig.inspector).clone();
        strict.configure(Some(0.0), false).unwrap();
        let mut lenient = (*rig.inspector).clone();
        lenient.configure(Some(1.0), false).unwrap();
        let mut set = Recipes::new("default", (*rig.inspector).clone());
        set.insert("strict", strict);
        set.insert("lenient", lenient);
        rig.settings.send_modify(|s| {
            s.recipes = Some(Arc::new(set));
            s.active = Arc::new(Active(std::collections::BTreeMap::from([(
                "cam".into(),
                "strict".into(),
            )])));
        });
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good.png")).unwrap();
        rig.send(Path::new("good.png"));
        assert_eq!(rig.outcome(), Outcome::Judged(inspector::Verdict::Fail));
        let r = &rig.results()[0];
        assert_eq!(
            (r["recipe"].clone(), r["threshold"].clone()),
            ("strict".into(), 0.0.into())
        );
        assert_eq!(r["verdict"], "fail");
        // A source without an active recipe inspects with [model]'s.
        let of = |source: &str, chosen: Option<&str>| {
            rig.settings
                .borrow()
                .recipe_for(source, chosen)
                .unwrap()
                .map(|r| r.0)
        };
        assert_eq!(of("other", None).unwrap(), "default");
        // A recipe the source chose (a GPIO code) wins over its active one…
        assert_eq!(of("cam", Some("lenient")).unwrap(), "lenient");
        // (Another name each: the outbox keeps one result per inspection id.)
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good2.png")).unwrap();
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good3.png")).unwrap();
        rig.send_with(Path::new("good2.png"), Some("lenient"));
        assert_eq!(rig.outcome(), Outcome::Judged(inspector::Verdict::Pass));
        let r = &rig.results()[1];
        assert_eq!(
            (r["recipe"].clone(), r["verdict"].clone()),
            ("lenient".into(), "pass".into())
        );
        // …and one that is not loaded is an error, never another recipe's verdict.
        rig.send_with(Path::new("good3.png"), Some("gone"));
        assert_eq!(rig.outcome(), Outcome::Rejected);
        let r = &rig.results()[2];
        assert_eq!(
            (r["recipe"].clone(), r["verdict"].clone()),
            ("gone".into(), "error".into())
        );
        assert!(r["error"].as_str().unwrap().contains("\"gone\""), "{r}");
    }

    #[test]
    fn a_result_that_cannot_be_stored_leaves_the_picture_for_a_retry() {
        let rig = Rig::new(false);
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good.png")).unwrap();
        // The outbox directory is gone and a file sits in its place.
        let outbox = rig.dir.path().join("outbox");
        std::fs::remove_dir_all(&outbox).unwrap();
        std::fs::write(&outbox, b"not a directory").unwrap();
        rig.send(Path::new("good.png"));
        assert_eq!(rig.outcome(), Outcome::NotStored);
    }

    #[test]
    fn settings_apply_from_the_next_picture_and_a_paused_worker_waits() {
        let rig = Rig::new(true);
        std::fs::copy(fixture("queries/good.png"), rig.dir.path().join("good.png")).unwrap();
        rig.send(Path::new("good.png"));
        assert!(
            rig.outcomes.recv_timeout(Duration::from_millis(500)).is_err(),
            "no inspection without an inspector"
        );
        let mut strict = (*rig.inspector).clone();
        strict.configure(Some(0.0), false).unwrap();
        rig.settings.send_replace(Settings {
            paused: false,
            recipes: Some(Arc::new(Recipes::new("default", strict))),
            active: Arc::default(),
            heatmap: Heatmap {
                enabled: true,
                side: 32,
                quality: 50,
            },
            limits: Limits::DEFAULT,
            jpeg_dct_scaling: false,
        });
        assert_eq!(rig.outcome(), Outcome::Judged(inspector::Verdict::Fail));
        let r = &rig.results()[0];
        assert_eq!(r["threshold"], 0.0);
        assert_eq!(r["recipe"], "default");
        assert_eq!(r["verdict"], "fail");
        assert_eq!(r["heatmap"]["width"], 32);
        rig.settings.send_modify(|s| s.heatmap.enabled = false);
        std::fs::copy(fixture("queries/hole.png"), rig.dir.path().join("hole.png")).unwrap();
        rig.send(Path::new("hole.png"));
        assert_eq!(rig.outcome(), Outcome::Judged(inspector::Verdict::Fail));
        assert!(rig.results()[1]["heatmap"].is_null());
    }

    /// `station.jpeg_dct_scaling`: a 1280 × 1024 JPEG is decoded at ½ scale,
    /// judged as with the full decode to within the measured difference, and
    /// everything is said in the picture's own pixels, the region of
    /// interest included.
    #[test]
    fn a_jpeg_decoded_at_reduced_scale_is_reported_in_its_own_pixels() {
        let rig = Rig::new(true);
        let good = image::open(fixture("queries/good.png")).unwrap().to_rgb8();
        let big = image::imageops::resize(&good, 1280, 1024, image::imageops::FilterType::Triangle);
        let jpeg = crate::heatmap::jpeg(&big, 90).unwrap();
        for name in ["full.jpg", "reduced.jpg"] {
            std::fs::write(rig.dir.path().join(name), &jpeg).unwrap();
        }
        let mut bank = rig.inspector.bank().clone();
        bank.meta.roi = Some(crate::roi::Roi::Pixels([320, 256, 640, 512]));
        let with_roi = rig.inspector.with_bank(bank).unwrap();
        for (name, scaling) in [("full.jpg", false), ("reduced.jpg", true)] {
            rig.settings.send_replace(Settings {
                paused: false,
                recipes: Some(Arc::new(Recipes::new("default", with_roi.clone()))),
                active: Arc::default(),
                heatmap: Heatmap {
                    enabled: true,
                    side: 64,
                    quality: 50,
                },
                limits: Limits::DEFAULT,
                jpeg_dct_scaling: scaling,
            });
            rig.send(Path::new(name));
            assert!(matches!(rig.outcome(), Outcome::Judged(_)), "{name}");
        }
        let r = rig.results();
        let (full, reduced) = (&r[0], &r[1]);
        assert!(full.get("decode_scale").is_none(), "{full}");
        assert_eq!(reduced["decode_scale"], 2, "{reduced}");
        for x in [full, reduced] {
            assert_eq!(x["map"]["picture"], serde_json::json!([1280, 1024]), "{x}");
            assert_eq!(x["roi"], serde_json::json!([320, 256, 960, 768]), "{x}");
            let [ax, ay] = [0, 1].map(|i| x["map"]["argmax"][i].as_u64().unwrap());
            assert!((320..960).contains(&ax) && (256..768).contains(&ay), "{x}");
            assert!(x["heatmap"].is_object(), "{x}");
        }
        let moved = (full["score"].as_f64().unwrap() - reduced["score"].as_f64().unwrap()).abs();
        assert!(moved < 1e-2, "the score moved by {moved}");
    }
}
