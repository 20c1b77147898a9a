//! The inspection daemon: sources → one inference worker → durable outbox → MQTT.
//!
//! The only part of the crate with tokio, inotify, GPIO, MQTT and systemd.
//! Signals become a [`Signal`] handled in one loop: TERM/INT finish the current
//! image, flush the outbox, publish `offline` and exit 0; HUP reloads the
//! configuration and the bank, keeping the old ones if the new ones fail.

pub mod broker;
pub mod dirwatch;
pub mod gpio;
pub mod mqtt;
pub mod notify;
pub mod outbox;
pub mod record;
pub mod stats;
pub mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::bank::Bank;
use crate::config::{self, Broker, Config, Source};
use crate::inspector::Inspector;
use crate::model::{ModelPack, VisionModel};
use dirwatch::{DirSource, Queued, SeenLog};
use notify::Notifier;
use worker::{Emitter, HeatmapSettings, Job, Worker};

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT.
    Shutdown,
    /// SIGHUP.
    Reload,
}

/// Load the model pack and bank of `model` into an inspector.
pub fn load_inspector(model: &config::Model) -> anyhow::Result<Inspector> {
    let pack =
        ModelPack::open(&model.pack).with_context(|| format!("model pack {}", model.pack.display()))?;
    let bytes =
        std::fs::read(&model.bank).with_context(|| format!("reading bank {}", model.bank.display()))?;
    let bank = Bank::from_bytes(&bytes).with_context(|| format!("bank {}", model.bank.display()))?;
    let vision = VisionModel::load_with(&pack, model.precision)?;
    let mut inspector =
        Inspector::new(&pack, vision, bank).with_context(|| format!("bank {}", model.bank.display()))?;
    if let Some(t) = model.threshold {
        inspector.set_threshold(t);
    }
    inspector
        .set_early_exit(model.early_exit)
        .with_context(|| format!("model.early_exit with bank {}", model.bank.display()))?;
    if let Some(rule) = inspector.early_exit_rule().filter(|_| model.early_exit) {
        log::info!(
            "early exit on: a part whose score bound {rule} is at or below the threshold passes after the full-image pass"
        );
    }
    Ok(inspector)
}

/// `winclip-edge run`: load everything, serve until SIGTERM.
pub fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return Ok(ExitCode::from(crate::cli::EXIT_CONFIG));
        }
    };
    crate::model::set_threads(config.station.threads);
    let inspector = match load_inspector(&config.model) {
        Ok(i) => i,
        Err(e) => {
            log::error!("{e:#}");
            return Ok(ExitCode::from(crate::cli::EXIT_CONFIG));
        }
    };
    let notifier: Arc<dyn Notifier> = match notify::Systemd::from_env() {
        Some(n) => Arc::new(n),
        None => Arc::new(notify::Noop),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut signals = signals()?;
        let mut daemon = Daemon::start(config_path.to_owned(), config, inspector, notifier).await?;
        while let Some(sig) = signals.recv().await {
            match sig {
                Signal::Reload => daemon.reload().await,
                Signal::Shutdown => break,
            }
        }
        daemon.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Turn SIGTERM/SIGINT/SIGHUP into [`Signal`]s.
fn signals() -> std::io::Result<mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(4);
    for (kind, what) in [
        (SignalKind::terminate(), Signal::Shutdown),
        (SignalKind::interrupt(), Signal::Shutdown),
        (SignalKind::hangup(), Signal::Reload),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(what).await.is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// A running source: async tasks are aborted, blocking watchers see `stop`.
struct SourceHandle {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// A running daemon.
pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    notifier: Arc<dyn Notifier>,
    emitter: Emitter,
    inspector: Arc<Mutex<Arc<Inspector>>>,
    jobs: flume::Sender<Job>,
    queued: HashMap<String, Queued>,
    sources: Vec<SourceHandle>,
    mqtt: mpsc::Sender<mqtt::Control>,
    mqtt_task: JoinHandle<()>,
    worker_stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
    status_task: JoinHandle<()>,
}

impl Daemon {
    /// Start broker (if embedded), publisher, worker and sources.
    pub async fn start(
        config_path: PathBuf,
        config: Config,
        inspector: Inspector,
        notifier: Arc<dyn Notifier>,
    ) -> anyhow::Result<Self> {
        if let Broker::Embedded { listen } = &config.mqtt.broker {
            broker::start(listen, config.mqtt.max_packet_bytes)?;
        }
        let outbox_dir = config.station.state_dir.join("outbox");
        let outbox = outbox::Outbox::open(&outbox_dir, config.outbox.max_entries, config.outbox.max_bytes)
            .with_context(|| format!("opening the outbox {}", outbox_dir.display()))?;
        if !outbox.index().is_empty() {
            log::info!(
                "outbox: {} results from a previous run will be delivered first",
                outbox.index().len()
            );
        }
        let stats = Arc::new(stats::Stats::default());
        stats
            .outbox_pending
            .store(outbox.index().len(), Ordering::Relaxed);
        let emitter = Emitter {
            station: config.station.name.clone(),
            prefix: config.mqtt.prefix.clone(),
            outbox: Arc::new(Mutex::new(outbox)),
            wake: Arc::new(tokio::sync::Notify::new()),
            stats: Arc::clone(&stats),
        };
        let (mqtt_tx, mqtt_rx) = mpsc::channel(4);
        let publisher = mqtt::Publisher {
            config: config.mqtt.clone(),
            station: config.station.name.clone(),
            outbox: Arc::clone(&emitter.outbox),
            wake: Arc::clone(&emitter.wake),
            stats: Arc::clone(&stats),
        };
        let mqtt_task = tokio::spawn(publisher.run(mqtt_rx));

        let inspector = Arc::new(Mutex::new(Arc::new(inspector)));
        let (jobs_tx, jobs_rx) = flume::bounded(config.station.queue_capacity);
        let worker_stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            emitter: emitter.clone(),
            inspector: Arc::clone(&inspector),
            heatmap: HeatmapSettings {
                enabled: config.mqtt.heatmap,
                side: config.mqtt.heatmap_side,
                quality: config.mqtt.heatmap_quality,
            },
            notifier: Arc::clone(&notifier),
            stop: Arc::clone(&worker_stop),
        };
        let worker = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || worker.run(jobs_rx))?;

        let status_task = {
            let (notifier, stats, station) = (
                Arc::clone(&notifier),
                Arc::clone(&stats),
                config.station.name.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let s = stats.snapshot(&station);
                    notifier.status(&format!(
                        "{} pass, {} fail, {} errors; queue {}, outbox {}",
                        s["pass"], s["fail"], s["errors"], s["queue_depth"], s["outbox_pending"]
                    ));
                }
            })
        };
        let mut daemon = Self {
            config_path,
            config,
            notifier,
            emitter,
            inspector,
            jobs: jobs_tx,
            queued: HashMap::new(),
            sources: Vec::new(),
            mqtt: mqtt_tx,
            mqtt_task,
            worker_stop,
            worker: Some(worker),
            status_task,
        };
        daemon.start_sources()?;
        daemon.notifier.ready();
        daemon.notifier.status("inspecting");
        log::info!(
            "station {} ready: {} source(s), model {}, bank {}",
            daemon.config.station.name,
            daemon.sources.len(),
            daemon.current().model_id(),
            daemon.current().bank_id()
        );
        Ok(daemon)
    }

    fn current(&self) -> Arc<Inspector> {
        self.inspector
            .lock()
            .map(|g| Arc::clone(&g))
            .expect("inspector lock")
    }

    fn start_sources(&mut self) -> anyhow::Result<()> {
        for source in self.config.sources.clone() {
            let handle = match source {
                Source::Directory {
                    name,
                    path,
                    pattern,
                    after,
                } => {
                    let seen = match after {
                        config::After::Keep => {
                            let log_path = self
                                .config
                                .station
                                .state_dir
                                .join("seen")
                                .join(format!("{name}.log"));
                            Some(Arc::new(SeenLog::open(&log_path, &path).with_context(|| {
                                format!("source {name}: record {}", log_path.display())
                            })?))
                        }
                        _ => None,
                    };
                    let queued = self.queued.entry(name.clone()).or_default().clone();
                    let src = DirSource {
                        name: name.clone(),
                        path,
                        pattern: pattern.as_deref().map(glob::Pattern::new).transpose()?,
                        after,
                        seen,
                        queued,
                    };
                    let (tx, stop) = (self.jobs.clone(), Arc::new(AtomicBool::new(false)));
                    let flag = Arc::clone(&stop);
                    let task = tokio::task::spawn_blocking(move || {
                        if let Err(e) = src.run(tx, flag) {
                            log::error!("source {name} stopped: {e}");
                        }
                    });
                    SourceHandle { stop, task }
                }
                Source::Gpio {
                    name,
                    chip,
                    line,
                    edge,
                    debounce,
                    active_low,
                    capture,
                    capture_timeout,
                    output_dir,
                    keep_captures,
                } => {
                    let (edges, kernel_debounce) =
                        gpio::open_line(&chip, line, edge, debounce, active_low)
                            .with_context(|| format!("source {name}: GPIO {} line {line}", chip.display()))?;
                    let trigger = gpio::Trigger {
                        name,
                        capture,
                        timeout: capture_timeout,
                        output_dir,
                        keep: keep_captures,
                        debounce: if kernel_debounce { Duration::ZERO } else { debounce },
                        emitter: self.emitter.clone(),
                    };
                    let task = tokio::spawn(trigger.run(edges, self.jobs.clone()));
                    SourceHandle {
                        stop: Arc::new(AtomicBool::new(false)),
                        task,
                    }
                }
            };
            self.sources.push(handle);
        }
        Ok(())
    }

    fn stop_sources(&mut self) {
        for s in self.sources.drain(..) {
            s.stop.store(true, Ordering::Relaxed);
            s.task.abort();
        }
    }

    /// SIGHUP: re-read the configuration and the bank; keep everything as it
    /// is when anything new fails.
    pub async fn reload(&mut self) {
        self.notifier.reloading();
        log::info!("reloading {}", self.config_path.display());
        let new = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return self.reload_failed(&e.to_string()),
        };
        if new.station.name != self.config.station.name
            || new.station.state_dir != self.config.station.state_dir
        {
            log::warn!("station.name and station.state_dir changes need a restart; keeping the old values");
        }
        let model = new.model.clone();
        let loaded = tokio::task::spawn_blocking(move || load_inspector(&model)).await;
        let inspector = match loaded {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return self.reload_failed(&format!("{e:#}")),
            Err(e) => return self.reload_failed(&e.to_string()),
        };
        let mut new = new;
        new.station.name = self.config.station.name.clone();
        new.station.state_dir = self.config.station.state_dir.clone();
        let old = std::mem::replace(&mut self.config, new);
        self.stop_sources();
        if let Err(e) = self.start_sources() {
            log::error!("reload: {e:#}; restoring the previous sources");
            self.stop_sources();
            self.config = old;
            if let Err(e) = self.start_sources() {
                log::error!("previous sources failed too: {e:#}");
            }
            return self.reload_failed(&format!("{e:#}"));
        }
        if let Ok(mut g) = self.inspector.lock() {
            *g = Arc::new(inspector);
        }
        if self.config.mqtt != old.mqtt {
            let _ = self
                .mqtt
                .send(mqtt::Control::Reconfigure(Box::new(self.config.mqtt.clone())))
                .await;
        }
        log::info!("reloaded: bank {}", self.current().bank_id());
        self.notifier.ready();
        self.notifier.status("reloaded");
    }

    fn reload_failed(&self, why: &str) {
        log::error!("reload failed, keeping the running configuration: {why}");
        self.notifier.ready();
        self.notifier.status(&format!(
            "reload failed, running the previous configuration: {why}"
        ));
    }

    /// Finish the current image, flush, publish `offline`, stop.
    pub async fn shutdown(mut self) {
        self.notifier.stopping();
        log::info!("shutting down: finishing the current image");
        self.stop_sources();
        self.worker_stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.mqtt.send(mqtt::Control::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.mqtt_task.abort();
        self.status_task.abort();
        log::info!("stopped");
    }
}
