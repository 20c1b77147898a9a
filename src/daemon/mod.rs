//! The inspection daemon: sources → one inference worker → durable outbox → MQTT.
//!
//! The only part of the crate with tokio, inotify, GPIO, MQTT and systemd.
//! Data flows one way through its modules:
//!
//! - [`source`]: the contract every source follows; [`dirwatch`] (drop
//!   directories) and [`gpio`] (trigger lines) build [`job::Job`]s, each
//!   carrying the source's own after-action ([`job::Completion`]);
//! - [`worker`]: inspects each job with the live [`worker::Settings`] and
//!   stores the result through [`sink`] into the [`outbox`];
//! - [`mqtt`]: publishes the outbox, with the pure [`delivery`] state;
//!   topic names come from [`topics`];
//! - [`http`]: serves the page, [`metrics`] (OpenMetrics text of
//!   [`stats`]) and the JSON API, read-only, with the recent results the
//!   sink keeps in [`history`];
//! - [`engine`]: loads the inspector and swaps it on reload;
//! - [`record`], [`stats`], [`notify`], [`broker`]: the result format,
//!   counters, systemd, the embedded broker.
//!
//! Signals become a [`Signal`] handled in one loop: TERM/INT finish the current
//! image, flush the outbox, publish `offline` and exit 0; HUP applies the
//! [`config::ReloadPlan`] between the running and the new configuration,
//! keeping everything as it runs when any part of the new one fails.

pub mod broker;
pub mod commands;
pub mod delivery;
pub mod dirwatch;
pub mod engine;
pub mod gpio;
pub mod handshake;
pub mod history;
pub mod homeassistant;
pub mod http;
pub mod job;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod operator;
pub mod outbox;
pub mod recipes;
pub mod sink;
pub mod source;
pub mod state_lock;
pub mod stats;
pub mod teach;
pub mod topics;
pub mod worker;

#[cfg(test)]
pub(crate) mod testing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Broker, Config, ReloadPlan, Source};
use crate::inspector::Inspector;
use crate::record::as_printed;
use job::Job;
use notify::Notifier;
use sink::ResultSink;
use source::{SourceContext, SourceHandle};
use worker::{Settings, Worker};

/// What a signal asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT.
    Shutdown,
    /// SIGHUP.
    Reload,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration, the model pack, the bank or a source cannot be
    /// used as configured: starting again will not help.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// Anything else (the machine, the runtime).
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

/// `winclip-edge run`: load everything, serve until SIGTERM.
pub fn run(config_path: &Path) -> Result<(), Error> {
    let checked = config::load(config_path).map_err(|e| Error::Config(e.into()))?;
    for w in &checked.warnings {
        log::warn!("{}: {w}", config_path.display());
    }
    let config = checked.config;
    crate::model::set_threads(config.station.threads);
    // What commands set is laid over the file, also for the first load.
    let operator = operator::Operator::load(&config.station.state_dir)
        .with_context(|| "the settings commands made".to_string())
        .map_err(Error::Config)?;
    let loaded = engine::load(&operator.over(&config).model).map_err(Error::Config)?;
    let notifier: Arc<dyn Notifier> = match notify::Systemd::from_env() {
        Some(n) => Arc::new(n),
        None => Arc::new(notify::Noop),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(e.into()))?;
    rt.block_on(async move {
        let mut signals = signals().map_err(|e| Error::Runtime(e.into()))?;
        let mut daemon = Daemon::start(Options {
            config_path: config_path.to_owned(),
            config,
            operator,
            loaded,
            notifier,
            lines: Arc::new(gpio::Gpiocdev),
        })
        .await?;
        let mut commands = daemon.take_commands();
        let mut taught = daemon.take_taught();
        // Signals and commands are handled here, one at a time: a reload and
        // a command never change the station at once.
        // A script switches recipes by writing <state_dir>/active-recipe.
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                sig = signals.recv() => match sig {
                    Some(Signal::Reload) => daemon.reload().await,
                    Some(Signal::Shutdown) | None => break,
                },
                Some(c) = next(&mut commands) => daemon.command(c).await,
                Some(t) = next(&mut taught) => daemon.taught(t).await,
                _ = poll.tick() => daemon.check_choices().await,
            }
        }
        daemon.shutdown().await;
        Ok(())
    })
}

/// The next message, or never without a channel.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

/// What each source's results name: its active recipe's identity.
fn identities(
    recipes: &recipes::Recipes,
    active: &recipes::Active,
) -> std::collections::BTreeMap<String, crate::record::Identity> {
    active
        .0
        .iter()
        .filter_map(|(source, recipe)| {
            let mut id = crate::record::Identity::of(recipes.get(recipe)?);
            id.recipe = Some(recipe.clone());
            Some((source.clone(), id))
        })
        .collect()
}

/// A finished bank rebuild: what was built and how it ended.
pub type Taught = (teach::Building, anyhow::Result<teach::Taught>);

/// Remove what a rebuild killed midway left in the recipe directories
/// (the old version stays current; see [`crate::recipe_dir`]).
fn clean_recipe_dirs(config: &Config) {
    for name in config.recipe_names() {
        let Some(path) = engine::bank_path(config, name) else {
            continue;
        };
        if !crate::recipe_dir::RecipeDir::is_recipe_dir(path) {
            continue;
        }
        match crate::recipe_dir::RecipeDir::open(path).and_then(|d| d.clean()) {
            Ok(removed) if !removed.is_empty() => log::warn!(
                "recipe {name}: removed what an interrupted rebuild left ({}); the bank in use is the version before it",
                removed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ),
            Ok(_) => {}
            Err(e) => log::error!("recipe {name}: {e}"),
        }
    }
}

/// A file's size and modification time (`None`: there is none).
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Lines of the active-recipe file for sources that do not exist do nothing: say so.
fn warn_unknown(choices: &recipes::Choices, sources: &[&str]) {
    for s in choices.unknown_sources(sources) {
        log::warn!("active-recipe: there is no source {s:?}; its line does nothing");
    }
}

/// How long an unload waits for the worker to finish the picture it is on.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// What a daemon starts with.
pub struct Options {
    /// The file reloads read.
    pub config_path: PathBuf,
    /// The checked configuration, as the file says.
    pub config: Config,
    /// What commands set, laid over `config` (`<state_dir>/operator.json`).
    pub operator: operator::Operator,
    /// The inspector, loaded from `config.model` with `operator` over it.
    pub loaded: engine::Loaded,
    /// The service manager.
    pub notifier: Arc<dyn Notifier>,
    /// Where GPIO lines come from.
    pub lines: Arc<dyn gpio::Lines>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.http_stop.cancel();
    }
}

/// A running daemon.
pub struct Daemon {
    /// Held for the daemon's life: one daemon per state directory.
    _state_lock: state_lock::StateLock,
    config_path: PathBuf,
    /// What runs (a reload's effective configuration, with the operator's
    /// settings over it).
    config: Config,
    /// What commands set.
    operator: operator::Operator,
    /// The file as last read, before `operator` (a cleared override returns to it).
    file: Config,
    /// The recipes chosen by command or script (`<state_dir>/active-recipe`).
    choices: recipes::Choices,
    /// The active-recipe file as last seen (size, modification time), to
    /// notice a script's change.
    choices_seen: Option<(u64, std::time::SystemTime)>,
    /// Commands from the broker and the page, until the main loop takes them.
    commands: Option<mpsc::Receiver<commands::Incoming>>,
    /// Where the page sends commands (with `[commands]` on and an `[http]` token).
    commands_tx: Option<mpsc::Sender<commands::Incoming>>,
    /// The same queue for the sources' teach buttons (there also with `[commands]` off).
    queue: mpsc::Sender<commands::Incoming>,
    /// The state published retained on `…/state`.
    state: watch::Sender<Vec<u8>>,
    /// The bank rebuild a `teach` started, while it runs (one at a time).
    teaching: Option<teach::Building>,
    /// How the last one ended, for `…/state`.
    last_taught: Option<serde_json::Value>,
    /// Where rebuilds report, and the main loop's end of it (until taken).
    taught_tx: mpsc::Sender<Taught>,
    taught_rx: Option<mpsc::Receiver<Taught>>,
    notifier: Arc<dyn Notifier>,
    sink: ResultSink,
    settings: watch::Sender<Settings>,
    mqtt_settings: watch::Sender<config::Mqtt>,
    /// Bytes of the running model's weights.
    weights: u64,
    /// The resident memory now (a seam for tests, which share their process).
    rss: fn() -> u64,
    jobs: flume::Sender<Job>,
    claims: dirwatch::Claims,
    lines: Arc<dyn gpio::Lines>,
    sources: Vec<SourceHandle>,
    sources_shutdown: CancellationToken,
    mqtt: mpsc::Sender<mqtt::Control>,
    mqtt_task: JoinHandle<()>,
    /// Stops the HTTP endpoint.
    http_stop: CancellationToken,
    worker_stop: CancellationToken,
    worker: Option<std::thread::JoinHandle<()>>,
    status_task: JoinHandle<()>,
}

impl Daemon {
    /// Start the broker (if embedded), the sources, the worker and the publisher.
    pub async fn start(o: Options) -> Result<Self, Error> {
        let file = o.config.clone();
        let config = o.operator.over(&o.config);
        let station = config.station.name.clone();
        let state_lock =
            state_lock::StateLock::acquire(&config.station.state_dir).map_err(|e| Error::Config(e.into()))?;
        if let Broker::Embedded { listen, .. } = &config.mqtt.broker {
            let login = match (&config.mqtt.username, &config.mqtt.password) {
                (Some(user), Some(secret)) => Some((
                    user.clone(),
                    secret
                        .read()
                        .context("the password the embedded broker requires")
                        .map_err(Error::Config)?,
                )),
                (Some(user), None) => Some((user.clone(), String::new())),
                _ => None,
            };
            broker::start(listen, config.mqtt.max_packet_bytes, login).map_err(Error::Config)?;
        }
        let outbox_dir = config.station.state_dir.join("outbox");
        let outbox = outbox::Outbox::open(&outbox_dir, config.outbox.max_entries, config.outbox.max_bytes)
            .with_context(|| format!("opening the outbox {}", outbox_dir.display()))
            .map_err(Error::Runtime)?;
        if !outbox.index().is_empty() {
            log::info!(
                "outbox: {} results from a previous run will be delivered first",
                outbox.index().len()
            );
        }
        let stats = Arc::new(stats::Stats::default());
        stats
            .model_load_seconds
            .store(o.loaded.seconds.to_bits(), Ordering::Relaxed);
        stats
            .outbox_pending
            .store(outbox.index().len(), Ordering::Relaxed);
        stats
            .outbox_quarantined
            .store(outbox.quarantined(), Ordering::Relaxed);
        let outbox = Arc::new(Mutex::new(outbox));
        let wake = Arc::new(tokio::sync::Notify::new());
        let history_dir = config.station.state_dir.join("history");
        let history = match history::History::open(&history_dir, config.history.clone()) {
            Ok(h) => h,
            Err(e) => {
                // The page loses its past; inspection and delivery go on.
                log::error!(
                    "history: cannot use {} ({e}); recent results are not kept for the page",
                    history_dir.display()
                );
                history::History::in_memory()
            }
        };
        let sink = ResultSink::new(
            &station,
            Arc::clone(&outbox),
            Arc::clone(&wake),
            Arc::clone(&stats),
        )
        .with_history(Arc::new(history))
        .map_err(|e| Error::Runtime(e.into()))?;
        let ids = (
            o.loaded.inspector.model_id().to_string(),
            o.loaded.inspector.bank_id().to_string(),
        );
        let recipes = engine::recipes(o.loaded.inspector, &config).map_err(Error::Config)?;
        let names: Vec<&str> = config.sources.iter().map(Source::name).collect();
        let choices = recipes::Choices::load(&config.station.state_dir, &names)
            .map_err(|e| Error::Config(anyhow::Error::new(e).context("the recipes chosen by command")))?;
        warn_unknown(&choices, &names);
        let active = choices.resolve(&config, &recipes).map_err(|e| {
            Error::Config(anyhow::anyhow!(
                "{e}: it was chosen by command or script in {} (switch it back, or edit or remove the file)",
                recipes::Choices::path(&config.station.state_dir).display()
            ))
        })?;
        sink.set_identities(identities(&recipes, &active));
        let (jobs_tx, jobs_rx) = flume::bounded(config.station.queue_capacity);
        if o.operator.paused {
            log::warn!(
                "the station is PAUSED by command ({}): it takes no pictures until the command \"resume\"",
                operator::Operator::path(&config.station.state_dir).display()
            );
        }
        sink.set_paused(o.operator.paused);
        let (settings, settings_rx) = watch::channel(Settings {
            recipes: Some(Arc::new(recipes)),
            active: Arc::new(active),
            heatmap: config.heatmap,
            limits: config.station.limits,
            jpeg_dct_scaling: config.station.jpeg_dct_scaling,
            paused: o.operator.paused,
        });
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (taught_tx, taught_rx) = mpsc::channel(1);
        clean_recipe_dirs(&config);
        let commands_on = config.commands.enabled;
        let (state, state_rx) = watch::channel(Vec::new());
        let (mqtt_settings, mqtt_rx) = watch::channel(config.mqtt.clone());
        let (mqtt_tx, control_rx) = mpsc::channel(4);

        let mut daemon = Self {
            _state_lock: state_lock,
            config_path: o.config_path,
            operator: o.operator,
            file,
            choices_seen: file_stamp(&recipes::Choices::path(&config.station.state_dir)),
            choices,
            commands: Some(commands_rx),
            commands_tx: commands_on.then(|| commands_tx.clone()),
            queue: commands_tx.clone(),
            state,
            teaching: None,
            last_taught: None,
            taught_tx,
            taught_rx: Some(taught_rx),
            notifier: o.notifier,
            sink: sink.clone(),
            settings,
            mqtt_settings,
            weights: o.loaded.weights,
            rss: || crate::bench::memory().map_or(0, |m| m.rss),
            jobs: jobs_tx,
            claims: dirwatch::Claims::default(),
            lines: o.lines,
            sources: Vec::new(),
            sources_shutdown: CancellationToken::new(),
            mqtt: mqtt_tx,
            mqtt_task: tokio::spawn(async {}),
            http_stop: CancellationToken::new(),
            worker_stop: CancellationToken::new(),
            worker: None,
            status_task: tokio::spawn(async {}),
            config,
        };
        // Sources first: one that cannot start fails the start at once
        // (the handles already made stop as they are dropped).
        let sources = daemon.config.sources.clone();
        for s in &sources {
            let h = daemon.start_source(s).map_err(|e| Error::Config(e.into()))?;
            daemon.sources.push(h);
        }
        let worker = Worker {
            sink,
            settings: settings_rx,
            notifier: Arc::clone(&daemon.notifier),
            stop: daemon.worker_stop.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        daemon.worker = Some(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || worker.run(jobs_rx))
                .map_err(|e| Error::Runtime(e.into()))?,
        );
        let publisher = mqtt::Publisher {
            settings: mqtt_rx,
            station: station.clone(),
            outbox,
            wake,
            stats: Arc::clone(&stats),
            commands: commands_on.then_some(commands_tx),
            state: state_rx,
        };
        daemon.publish_state();
        daemon.mqtt_task = tokio::spawn(publisher.run(control_rx));
        daemon.start_http(&stats).await?;
        daemon.status_task = {
            let notifier = Arc::clone(&daemon.notifier);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let s = stats.snapshot(&station);
                    let problems = stats.problems().map(|p| format!("; {p}")).unwrap_or_default();
                    notifier.status(&format!(
                        "{} pass, {} fail, {} errors; queue {}, outbox {}{problems}",
                        s["pass"], s["fail"], s["errors"], s["queue_depth"], s["outbox_pending"]
                    ));
                }
            })
        };
        daemon.notifier.ready();
        daemon.notifier.status("inspecting");
        log::info!(
            "station {} ready: {} source(s), model {}, bank {}",
            daemon.config.station.name,
            daemon.sources.len(),
            ids.0,
            ids.1
        );
        Ok(daemon)
    }

    /// The configuration that runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The commands from the broker, the page and the teach buttons (once).
    pub fn take_commands(&mut self) -> Option<mpsc::Receiver<commands::Incoming>> {
        self.commands.take()
    }

    /// Where finished bank rebuilds arrive (once): the main loop hands them to [`Daemon::taught`].
    pub fn take_taught(&mut self) -> Option<mpsc::Receiver<Taught>> {
        self.taught_rx.take()
    }

    /// The station's state: what `…/state` and command replies carry.
    pub fn state(&self) -> serde_json::Value {
        let settings = self.settings.borrow();
        let m = settings
            .recipes
            .as_deref()
            .map(|r| metrics::ModelInfo::of(r.primary()));
        let recipes: serde_json::Map<String, serde_json::Value> = settings
            .recipes
            .iter()
            .flat_map(|r| r.iter())
            .map(|(name, i)| {
                let v = serde_json::json!({
                    "bank": i.bank_id(),
                    "object": i.bank().meta.object,
                    "shots": i.bank().meta.shots,
                    "threshold": as_printed(i.threshold()),
                    "threshold_override": self.operator.thresholds.get(name).copied().map(as_printed),
                    "roi": i.bank().meta.roi,
                    "version": engine::bank_path(&self.config, name)
                        .filter(|p| crate::recipe_dir::RecipeDir::is_recipe_dir(p))
                        .and_then(|p| crate::recipe_dir::RecipeDir::open(p).ok()?.current().ok()),
                });
                (name.to_string(), v)
            })
            .collect();
        serde_json::json!({
            "station": self.config.station.name,
            "paused": self.operator.paused,
            "threshold": m.as_ref().and_then(|m| m.threshold),
            "threshold_override": self.operator.thresholds.get(&self.config.model.recipe).copied().map(as_printed),
            "model": m.as_ref().map(|m| &m.model),
            "bank": m.as_ref().map(|m| &m.bank),
            "object": m.as_ref().map(|m| &m.object),
            "precision": m.as_ref().map(|m| &m.precision),
            "active_recipes": &*settings.active,
            "recipe_codes": self.recipe_codes(),
            "recipes": recipes,
            "commands_enabled": self.config.commands.enabled,
            "teaching": self.teaching.as_ref().map(teach::Building::state).or_else(|| self.last_taught.clone()),
            "version": env!("CARGO_PKG_VERSION"),
        })
    }

    /// The sources whose PLC chooses each trigger's recipe by code: their
    /// lines and the recipe of each code.
    fn recipe_codes(&self) -> serde_json::Value {
        self.config
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Gpio(g) if !g.recipe_lines.is_empty() => Some((
                    g.name.clone(),
                    serde_json::json!({ "lines": g.recipe_lines, "codes": g.recipe_codes }),
                )),
                _ => None,
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    fn publish_state(&self) {
        self.state.send_replace(self.state().to_string().into_bytes());
    }

    /// Carry out one command and answer it: on `…/cmd/reply`, or to the
    /// HTTP request that sent it.
    pub async fn command(&mut self, incoming: commands::Incoming) {
        let (id, outcome) = match commands::parse(&incoming.payload) {
            Ok(r) => {
                log::info!("command: {:?} (request {})", r.command, r.request_id);
                let t0 = std::time::Instant::now();
                let outcome = self.carry_out(r.command).await;
                match &outcome {
                    Ok(()) => log::info!(
                        "command carried out in {:.2} ms (request {})",
                        t0.elapsed().as_secs_f64() * 1e3,
                        r.request_id
                    ),
                    Err(e) => log::warn!("command refused: {e}"),
                }
                (r.request_id, outcome)
            }
            Err(refused) => {
                log::warn!("command refused: {}", refused.error);
                (refused.request_id, Err(refused.error))
            }
        };
        self.publish_state();
        let reply = commands::reply(&id, outcome, &self.state());
        if let Some(to) = incoming.reply {
            let _ = to.send(reply);
        } else if self.mqtt.send(mqtt::Control::Reply(reply)).await.is_err() {
            log::warn!("commands: the publisher is gone, the reply is lost");
        }
    }

    async fn carry_out(&mut self, command: commands::Command) -> Result<(), String> {
        use commands::Command;
        let state_dir = self.config.station.state_dir.clone();
        let mut next = self.operator.clone();
        match command {
            Command::Status => return Ok(()),
            Command::Pause | Command::Resume => {
                next.paused = command == Command::Pause;
                next.save(&state_dir)
                    .map_err(|e| format!("cannot keep the setting ({e}); nothing changed"))?;
                self.operator = next;
                let paused = self.operator.paused;
                self.sink.set_paused(paused);
                self.settings.send_modify(|s| s.paused = paused);
                log::info!(
                    "{}",
                    if paused {
                        "paused by command"
                    } else {
                        "resumed by command"
                    }
                );
                self.notifier
                    .status(if paused { "paused by command" } else { "inspecting" });
            }
            Command::Threshold { recipe, value } => {
                let recipe = self.named_recipe(recipe)?;
                match value {
                    Some(t) => next.thresholds.insert(recipe.clone(), t),
                    None => next.thresholds.remove(&recipe),
                };
                // Kept first: a crash right after must not undo what was answered.
                next.save(&state_dir)
                    .map_err(|e| format!("cannot keep the setting ({e}); nothing changed"))?;
                let plan = next.over(&self.file).reload_plan(&self.config);
                if let Err(e) = self.apply(&plan).await {
                    if let Err(undo) = self.operator.save(&state_dir) {
                        log::error!(
                            "commands: cannot restore {}: {undo}",
                            operator::Operator::path(&state_dir).display()
                        );
                    }
                    return Err(format!("{e:#}"));
                }
                self.config = plan.effective;
                self.operator = next;
                let now = self
                    .settings
                    .borrow()
                    .recipes
                    .as_ref()
                    .and_then(|r| Some(r.get(&recipe)?.threshold()));
                log::info!(
                    "recipe {recipe}: threshold {} by command",
                    now.map_or("?".into(), |t| t.to_string())
                );
            }
            Command::Recipe { source, name } => {
                let mut choices = self.choices.clone();
                let coded = self.coded_sources();
                let sources: Vec<String> = match source {
                    Some(s) if coded.contains_key(&s) => {
                        return Err(format!(
                            "source {s} takes each trigger's recipe from its recipe code lines {:?}: \
                             the PLC chooses it, a command cannot",
                            coded[&s]
                        ))
                    }
                    Some(s) if self.config.sources.iter().any(|x| x.name() == s) => vec![s],
                    Some(s) => {
                        return Err(format!(
                            "there is no source {s:?} (sources: {})",
                            self.source_names().join(", ")
                        ))
                    }
                    // Every source the command can switch.
                    None => {
                        let all: Vec<String> = self
                            .source_names()
                            .into_iter()
                            .filter(|s| !coded.contains_key(s))
                            .collect();
                        if all.is_empty() {
                            return Err(
                                "every source takes its recipe from its recipe code lines: the PLC chooses them".into(),
                            );
                        }
                        all
                    }
                };
                for s in sources {
                    match &name {
                        Some(n) => choices.0.insert(s, n.clone()),
                        None => choices.0.remove(&s),
                    };
                }
                self.switch(choices, "by command", true).await?;
            }
            Command::Teach {
                id,
                source,
                set,
                recipe,
            } => {
                let id = match (id, source) {
                    (Some(id), _) => id,
                    (None, Some(source)) => self.sink.history().latest_of(&source).ok_or_else(|| {
                        format!(
                            "source {source} has no kept result to teach (or there is no source {source:?})"
                        )
                    })?,
                    (None, None) => return Err("teach: give \"id\" or \"source\"".into()),
                };
                self.start_teach(&id, set, recipe)?
            }
            Command::Rollback { recipe } => self.rollback(recipe).await?,
        }
        Ok(())
    }

    /// `recipe`, or the one every source uses; an error names the recipes there are.
    fn named_recipe(&self, recipe: Option<String>) -> Result<String, String> {
        let common = self.settings.borrow().active.common().map(str::to_string);
        let Some(recipe) = recipe.or(common) else {
            return Err(format!(
                "the sources inspect with different recipes ({}): name one with \"recipe\"",
                self.active_list()
            ));
        };
        if !self.config.recipe_names().any(|n| n == recipe) {
            return Err(format!(
                "there is no recipe {recipe:?} (recipes: {})",
                self.config.recipe_names().collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(recipe)
    }

    /// Recipe `name`'s directory, where its bank is a recipe directory.
    fn recipe_dir(&self, name: &str) -> Result<PathBuf, String> {
        let path =
            engine::bank_path(&self.config, name).ok_or_else(|| format!("there is no recipe {name:?}"))?;
        if !crate::recipe_dir::RecipeDir::is_recipe_dir(path) {
            return Err(format!(
                "recipe {name}'s bank {} is a file, not a recipe directory: the station can rebuild only a \
                 bank made with `winclip-edge bank --recipe-dir DIR` (name DIR as the recipe's bank)",
                path.display()
            ));
        }
        Ok(path.to_owned())
    }

    /// `teach`: start rebuilding the bank of the recipe inspection `id` was
    /// judged with (or `recipe`) with its picture added to `set`.
    fn start_teach(
        &mut self,
        id: &str,
        set: crate::recipe_dir::Set,
        recipe: Option<String>,
    ) -> Result<(), String> {
        if let Some(b) = &self.teaching {
            return Err(format!(
                "recipe {}'s bank is being rebuilt (teaching {}): wait until …/state says it is done",
                b.recipe, b.inspection
            ));
        }
        let history = Arc::clone(self.sink.history());
        let kept = format!(
            "the station keeps the last {} results ([history] results)",
            self.config.history.results
        );
        let record = history
            .get(id)
            .ok_or_else(|| format!("no inspection {id:?} among the kept results ({kept})"))?;
        let recipe = match recipe {
            Some(r) => r,
            None => record["recipe"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("inspection {id} names no recipe: name one with \"recipe\""))?,
        };
        let recipe = self.named_recipe(Some(recipe))?;
        let dir = self.recipe_dir(&recipe)?;
        let picture = history.picture(id).ok_or_else(|| {
            format!("the picture of {id} was not kept ([history] pictures = true keeps them; {kept})")
        })?;
        // Refused in the reply, not later: a picture the recipe has already.
        crate::recipe_dir::RecipeDir::open(&dir)
            .map_err(anyhow::Error::new)
            .and_then(|d| teach::check_new(&d, &recipe, &picture.bytes))
            .map_err(|e| format!("{e:#}"))?;
        let inspector = self
            .recipes()
            .and_then(|r| r.get(&recipe).cloned())
            .ok_or_else(|| "no model is loaded: restart the service".to_string())?;
        let building = teach::Building {
            recipe: recipe.clone(),
            inspection: id.to_string(),
            set,
            started: std::time::Instant::now(),
        };
        let job = teach::Job {
            recipe,
            dir,
            inspector,
            config: self.config.clone(),
            inspection: id.to_string(),
            picture: picture.bytes,
            extension: picture.format.extensions_str().first().copied().unwrap_or("img"),
            set,
        };
        log::info!(
            "teaching: recipe {} gets the picture of {id} as a {} picture; rebuilding its bank in the background",
            building.recipe,
            set.name()
        );
        let tx = self.taught_tx.clone();
        let b = building.clone();
        tokio::task::spawn_blocking(move || {
            // Always answered, so that a later teach is not refused for ever.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| teach::rebuild(job)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the rebuild failed unexpectedly (a panic)")));
            let _ = tx.blocking_send((b, outcome));
        });
        self.teaching = Some(building);
        Ok(())
    }

    /// A rebuild finished: use the new bank (already current on disk), or say why not.
    pub async fn taught(&mut self, (building, outcome): Taught) {
        self.teaching = None;
        let installed = outcome.and_then(|t| {
            // On the running model and settings, which a reload may have changed meanwhile.
            let set = self.recipes().context("no model is loaded")?;
            let built = set
                .get(&t.recipe)
                .with_context(|| format!("recipe {} is gone (reloaded meanwhile)", t.recipe))
                .and_then(|current| engine::retune(current, t.bank.clone(), &self.config, &t.recipe));
            match built {
                Ok(inspector) => Ok((t, inspector, set)),
                Err(e) => {
                    self.switch_back(&t);
                    Err(e)
                }
            }
        });
        self.last_taught = Some(match installed {
            Ok((t, inspector, set)) => {
                let before = set.get(&t.recipe).map(|i| i.threshold());
                let after = inspector.threshold();
                log::info!(
                    "teaching: recipe {} is now version {} (from {}), threshold {} -> {after}, bank {}, rebuilt in {:.1} s",
                    t.recipe,
                    t.version,
                    t.previous,
                    before.map_or("?".into(), |b| b.to_string()),
                    inspector.bank_id(),
                    t.seconds
                );
                let value = serde_json::json!({
                    "state": "done",
                    "recipe": t.recipe,
                    "inspection": building.inspection,
                    "as": building.set,
                    "version": t.version,
                    "previous": t.previous,
                    "bank": inspector.bank_id(),
                    "threshold": as_printed(after),
                    "seconds": t.seconds,
                });
                self.install(&t.recipe, inspector, &set);
                value
            }
            Err(e) => {
                log::error!(
                    "teaching recipe {} failed: {e:#}; it keeps its bank",
                    building.recipe
                );
                serde_json::json!({
                    "state": "failed",
                    "recipe": building.recipe,
                    "inspection": building.inspection,
                    "as": building.set,
                    "error": format!("{e:#}"),
                })
            }
        });
        self.publish_state();
    }

    /// Make the version `t` was built from current again (its bank cannot be used now).
    fn switch_back(&self, t: &teach::Taught) {
        let back = self
            .recipe_dir(&t.recipe)
            .map_err(anyhow::Error::msg)
            .and_then(|d| Ok(crate::recipe_dir::RecipeDir::open(&d)?.switch(t.previous)?));
        if let Err(e) = back {
            log::error!(
                "recipe {}: cannot make version {} current again ({e:#}): the station still judges with it, but the directory points at {} (a restart would use that)",
                t.recipe,
                t.previous,
                t.version
            );
        }
    }

    /// Make `inspector` recipe `name`'s, from the next picture on.
    fn install(&self, name: &str, inspector: Inspector, set: &recipes::Recipes) {
        let mut next = set.clone();
        next.insert(name, inspector);
        let active = Arc::clone(&self.settings.borrow().active);
        self.sink.set_identities(identities(&next, &active));
        self.settings.send_modify(|s| s.recipes = Some(Arc::new(next)));
    }

    /// `rollback`: the recipe's bank version before the current one.
    async fn rollback(&mut self, recipe: Option<String>) -> Result<(), String> {
        let recipe = self.named_recipe(recipe)?;
        if self.teaching.as_ref().is_some_and(|b| b.recipe == recipe) {
            return Err(format!(
                "recipe {recipe}'s bank is being rebuilt: wait until …/state says it is done"
            ));
        }
        let path = self.recipe_dir(&recipe)?;
        let set = self.recipes().ok_or("no model is loaded: restart the service")?;
        let current = Arc::clone(
            set.get(&recipe)
                .ok_or("no model is loaded: restart the service")?,
        );
        let config = self.config.clone();
        let name = recipe.clone();
        let done = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let dir = crate::recipe_dir::RecipeDir::open(&path)?;
            let (from, to) = (dir.current()?, dir.previous()?);
            let bytes = std::fs::read(dir.bank_path(to)).with_context(|| format!("version {to}"))?;
            let bank = crate::bank::Bank::from_bytes(&bytes).with_context(|| format!("version {to}"))?;
            let inspector = engine::retune(&current, bank, &config, &name)?;
            dir.switch(to)?;
            Ok((from, to, inspector))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}; the recipe keeps its bank"))?;
        let (from, to, inspector) = done;
        log::info!(
            "rollback: recipe {recipe} from version {from} to {to} (bank {}, threshold {})",
            inspector.bank_id(),
            inspector.threshold()
        );
        self.install(&recipe, inspector, &set);
        Ok(())
    }

    /// The sources whose recipe code lines choose each trigger's recipe, with those lines.
    fn coded_sources(&self) -> BTreeMap<String, Vec<u32>> {
        self.config
            .sources
            .iter()
            .filter_map(|s| match s {
                Source::Gpio(g) if !g.recipe_lines.is_empty() => {
                    Some((g.name.clone(), g.recipe_lines.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn source_names(&self) -> Vec<String> {
        self.config.sources.iter().map(|s| s.name().to_string()).collect()
    }

    /// `cam1: a, cam2: b`.
    fn active_list(&self) -> String {
        self.settings.borrow().active.to_string()
    }

    /// Make `choices` the recipes chosen: checked against the recipes, kept
    /// in the active-recipe file, then in effect from the next picture on.
    /// Refused (nothing changes) when one names no recipe.
    /// `save`: write the file (not when a script just wrote it).
    async fn switch(&mut self, choices: recipes::Choices, how: &str, save: bool) -> Result<(), String> {
        let state_dir = self.config.station.state_dir.clone();
        let active = {
            let settings = self.settings.borrow();
            let Some(recipes) = settings.recipes.as_deref() else {
                return Err("no model is loaded: restart the service".into());
            };
            choices.resolve(&self.config, recipes)?
        };
        if save && choices != self.choices {
            choices
                .save(&state_dir)
                .map_err(|e| format!("cannot keep the choice ({e}); nothing changed"))?;
            self.choices_seen = file_stamp(&recipes::Choices::path(&state_dir));
        }
        self.choices = choices;
        let changed = *self.settings.borrow().active != active;
        if changed {
            if let Some(r) = self.settings.borrow().recipes.as_deref() {
                self.sink.set_identities(identities(r, &active));
            }
            log::info!("recipes {how}: {active}");
            self.settings.send_modify(|s| s.active = Arc::new(active));
        }
        Ok(())
    }

    /// A script may have written the active-recipe file: switch to what it
    /// says (or say loudly why not, keeping the recipes as they are).
    pub async fn check_choices(&mut self) {
        let path = recipes::Choices::path(&self.config.station.state_dir);
        let stamp = file_stamp(&path);
        if stamp == self.choices_seen {
            return;
        }
        self.choices_seen = stamp;
        let names: Vec<&str> = self.config.sources.iter().map(Source::name).collect();
        let outcome = match recipes::Choices::load(&self.config.station.state_dir, &names) {
            Ok(c) => {
                warn_unknown(&c, &names);
                self.switch(c, "from the active-recipe file", false).await
            }
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(()) => self.publish_state(),
            Err(e) => log::error!(
                "{}: {e}; the recipes stay as they are ({})",
                path.display(),
                self.active_list()
            ),
        }
    }

    /// `[model]`'s inspector (`None` while a model is being swapped).
    pub fn inspector(&self) -> Option<Arc<Inspector>> {
        self.recipes().map(|r| Arc::clone(r.primary()))
    }

    /// Every recipe's inspector (`None` while a model is being swapped).
    pub fn recipes(&self) -> Option<Arc<recipes::Recipes>> {
        self.settings.borrow().recipes.clone()
    }

    fn start_source(&self, s: &Source) -> std::io::Result<SourceHandle> {
        let ctx = SourceContext {
            jobs: self.jobs.clone(),
            sink: self.sink.clone(),
            shutdown: self.sources_shutdown.child_token(),
            state_dir: self.config.station.state_dir.clone(),
            commands: self.queue.clone(),
        };
        match s {
            Source::Directory(d) => dirwatch::build(d, ctx, &self.claims),
            Source::Gpio(g) => gpio::build(g, ctx, &*self.lines),
        }
    }

    /// SIGHUP: re-read the configuration and apply what changed (see
    /// [`ReloadPlan`]); keep everything as it runs when any part fails.
    pub async fn reload(&mut self) {
        self.notifier.reloading();
        log::info!("reloading {}", self.config_path.display());
        let checked = match config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return self.reload_failed(&e.to_string()),
        };
        for w in &checked.warnings {
            log::warn!("{}: {w}", self.config_path.display());
        }
        for (recipe, t) in &self.operator.thresholds {
            if checked.config.recipe_threshold(recipe) != self.file.recipe_threshold(recipe) {
                log::warn!(
                    "recipe {recipe}: the threshold changed in the file, but the threshold {t} set by command \
                     stays (send the command threshold with value null to use the file's)"
                );
            }
        }
        let file = checked.config.clone();
        let plan = self.operator.over(&checked.config).reload_plan(&self.config);
        for c in plan.needs_restart() {
            log::warn!(
                "{c} changed: that needs a restart (systemctl restart winclip-edge); the running value stays"
            );
        }
        match self.apply(&plan).await {
            Ok(()) => {
                self.config = plan.effective.clone();
                self.file = file;
                self.publish_state();
                let summary = plan.summary();
                log::info!("reloaded: {summary}");
                self.sink.stats().set_reload_problem(None);
                self.notifier.ready();
                self.notifier.status(&format!("reloaded: {summary}"));
            }
            Err(e) => self.reload_failed(&format!("{e:#}")),
        }
    }

    /// Apply `plan`: prepare the inspector, change the sources, then install
    /// the new settings. Undoes what it did when a step fails.
    async fn apply(&mut self, plan: &ReloadPlan) -> anyhow::Result<()> {
        let new = &plan.effective;
        let current_set = self
            .recipes()
            .context("no model is loaded (an earlier reload failed to restore it); restart the service")?;
        let current = Arc::clone(current_set.primary());
        let rss = (self.rss)();
        let (change, model, weights) = (plan.engine(), new.model.clone(), self.weights);
        let running = Arc::clone(&current);
        let swap =
            tokio::task::spawn_blocking(move || engine::prepare(change, &running, &model, rss, weights))
                .await
                .context("preparing the inspector")??;
        let mut unloaded = false;
        let next = match swap {
            engine::Swap::Keep => None,
            engine::Swap::Ready(i) => Some((Arc::new(*i), self.weights)),
            engine::Swap::Model(m) => {
                log::info!(
                    "model pack {}: resident memory now {} MB, predicted peak {} MB (model.memory_budget_mb = {}){}",
                    new.model.pack.display(),
                    rss / 1_000_000,
                    m.peak / 1_000_000,
                    new.model.memory_budget / 1_000_000,
                    if m.unload_first {
                        "; the running model is unloaded first: inspections wait until the new one is loaded"
                    } else {
                        "; loading it beside the running one"
                    }
                );
                let measured = crate::bench::reset_peak();
                drop(current);
                if m.unload_first {
                    self.unload(current_set).await;
                    unloaded = true;
                } else {
                    drop(current_set);
                }
                let loaded = tokio::task::spawn_blocking(move || m.load())
                    .await
                    .map_err(anyhow::Error::new)
                    .and_then(|r| r);
                match loaded {
                    Ok(l) => {
                        if let Some(mem) = crate::bench::memory().filter(|_| measured) {
                            log::info!(
                                "model loaded: peak resident memory during the swap {} MB",
                                mem.peak / 1_000_000
                            );
                        }
                        self.sink
                            .stats()
                            .model_load_seconds
                            .store(l.seconds.to_bits(), Ordering::Relaxed);
                        Some((Arc::new(l.inspector), l.weights))
                    }
                    Err(e) => {
                        if unloaded {
                            self.restore_model().await;
                        }
                        return Err(e.context("loading the new model"));
                    }
                }
            }
        };
        // Every recipe's bank again, on the new model or with the new recipes.
        let weights = next.as_ref().map_or(self.weights, |(_, w)| *w);
        let set = match (plan.touches_recipes(), next) {
            (false, _) => self.recipes(),
            (true, next) => {
                let primary = match next.map(|(i, _)| i).or_else(|| self.inspector()) {
                    Some(p) => (*p).clone(),
                    None => anyhow::bail!("no model is loaded; restart the service"),
                };
                let config = new.clone();
                let built = tokio::task::spawn_blocking(move || engine::recipes(primary, &config))
                    .await
                    .map_err(anyhow::Error::new)
                    .and_then(|r| r);
                match built {
                    Ok(set) => Some(Arc::new(set)),
                    Err(e) => {
                        if unloaded {
                            self.restore_model().await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let active = match set.as_deref().map(|r| self.choices.resolve(new, r)).transpose() {
            Ok(a) => a.unwrap_or_default(),
            Err(e) => {
                if unloaded {
                    drop(set);
                    self.restore_model().await;
                }
                anyhow::bail!(
                    "{e}: it was chosen by command or script ({}): switch it first",
                    recipes::Choices::path(&new.station.state_dir).display()
                );
            }
        };
        if plan.touches_sources() {
            if let Err(e) = self.apply_sources(&new.sources).await {
                if unloaded {
                    drop(set);
                    self.restore_model().await;
                }
                return Err(e);
            }
        }
        self.weights = weights;
        if let Some(r) = &set {
            self.sink.set_identities(identities(r, &active));
        }
        self.settings.send_replace(Settings {
            recipes: set,
            active: Arc::new(active),
            heatmap: new.heatmap,
            limits: new.station.limits,
            jpeg_dct_scaling: new.station.jpeg_dct_scaling,
            paused: self.operator.paused,
        });
        self.mqtt_settings.send_if_modified(|m| {
            let changed = *m != new.mqtt;
            *m = new.mqtt.clone();
            changed
        });
        Ok(())
    }

    /// Take the recipes from the worker and wait until it lets go of them
    /// (after the image it is on), so the model's memory is freed.
    async fn unload(&self, current: Arc<recipes::Recipes>) {
        self.settings.send_modify(|s| s.recipes = None);
        let deadline = tokio::time::Instant::now() + UNLOAD_TIMEOUT;
        while Arc::strong_count(&current) > 1 {
            if tokio::time::Instant::now() > deadline {
                log::warn!(
                    "the running model is still in use after {UNLOAD_TIMEOUT:?}: loading the new one anyway"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(current);
        engine::release_freed_memory();
        log::info!("running model unloaded");
    }

    /// Load the running configuration's model again after a failed swap.
    async fn restore_model(&mut self) {
        let config = self.config.clone();
        let load = move || -> anyhow::Result<_> {
            let l = engine::load(&config.model)?;
            Ok((l.weights, engine::recipes(l.inspector, &config)?))
        };
        match tokio::task::spawn_blocking(load).await {
            Ok(Ok((weights, set))) => {
                self.weights = weights;
                self.settings.send_modify(|s| s.recipes = Some(Arc::new(set)));
                log::info!("the previous model is loaded again");
            }
            Ok(Err(e)) => log::error!(
                "the previous model cannot be loaded again ({e:#}): no inspections until a reload or restart succeeds"
            ),
            Err(e) => log::error!("the previous model cannot be loaded again ({e}): restart the service"),
        }
    }

    /// Stop the sources that are gone or changed, start the new and changed
    /// ones; on failure stop what was started and start the old ones again.
    async fn apply_sources(&mut self, new: &[Source]) -> anyhow::Result<()> {
        let old = self.config.sources.clone();
        let unchanged = |name: &str| {
            let before = old.iter().find(|s| s.name() == name);
            before.is_some() && before == new.iter().find(|s| s.name() == name)
        };
        let (kept, stopping): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sources)
            .into_iter()
            .partition(|h| unchanged(h.name()));
        self.sources = kept;
        // Released (inotify watches, GPIO lines) before anything is requested again.
        for h in stopping {
            h.stop().await;
        }
        let mut started = Vec::new();
        for s in new.iter().filter(|s| !unchanged(s.name())) {
            match self.start_source(s) {
                Ok(h) => started.push(h),
                Err(e) => {
                    for h in started {
                        h.stop().await;
                    }
                    for s in old.iter().filter(|s| !unchanged(s.name())) {
                        match self.start_source(s) {
                            Ok(h) => self.sources.push(h),
                            Err(e) => log::error!("source {} could not be restored: {e}", s.name()),
                        }
                    }
                    return Err(anyhow::Error::new(e).context("starting the new sources"));
                }
            }
        }
        self.sources.extend(started);
        Ok(())
    }

    fn reload_failed(&self, why: &str) {
        log::error!("reload failed, keeping the running configuration: {why}");
        // One line: a status (and its line in `systemctl status`) ends at a newline, and
        // TOML's errors span several.
        let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
        self.sink.stats().set_reload_problem(Some(why.clone()));
        self.notifier.ready();
        self.notifier.status(&format!(
            "reload failed, running the previous configuration: {why}"
        ));
    }

    /// Finish the current image, flush, publish `offline`, stop.
    /// Serve `[http]`, if enabled. A port that cannot be bound costs the
    /// endpoint, never the inspection: logged, and reported in `/stats` and
    /// the systemd status.
    async fn start_http(&mut self, stats: &Arc<stats::Stats>) -> Result<(), Error> {
        let http = &self.config.http;
        if !http.enabled {
            return Ok(());
        }
        let token = match &http.token {
            None => None,
            Some(secret) => {
                let t = secret
                    .read()
                    .context("the token [http] requires")
                    .map_err(Error::Config)?;
                if t.is_empty() {
                    return Err(Error::Config(anyhow::anyhow!(
                        "the token [http] requires is empty"
                    )));
                }
                Some(Arc::from(t))
            }
        };
        match tokio::net::TcpListener::bind(http.listen).await {
            Ok(listener) => {
                log::info!(
                    "http: the page, /metrics and /api/ on http://{}/{}",
                    http.listen,
                    if token.is_some() {
                        " (bearer token required)"
                    } else {
                        ""
                    }
                );
                let shared = http::Shared {
                    station: self.config.station.name.clone(),
                    stats: Arc::clone(stats),
                    settings: self.settings.subscribe(),
                    history: Arc::clone(self.sink.history()),
                    // Control from the page needs commands on and a token to check.
                    commands: self.commands_tx.clone().filter(|_| token.is_some()),
                    token,
                    commands_enabled: self.config.commands.enabled,
                    stop: self.http_stop.clone(),
                };
                tokio::spawn(http::serve(listener, shared, self.http_stop.clone()));
            }
            Err(e) => {
                let problem = format!("cannot listen on {} ({e}); inspecting without it", http.listen);
                log::error!("http: {problem}");
                stats.set_http_problem(Some(problem));
            }
        }
        Ok(())
    }

    pub async fn shutdown(mut self) {
        self.notifier.stopping();
        log::info!("shutting down: finishing the current image");
        for h in std::mem::take(&mut self.sources) {
            h.stop().await;
        }
        self.worker_stop.cancel();
        if let Some(w) = self.worker.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.mqtt.send(mqtt::Control::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.mqtt_task.abort();
        self.status_task.abort();
        self.http_stop.cancel();
        log::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;
    use crate::config::{GpioSource, Model};
    use gpio::fake::FakeChip;
    use testing::{fixture, tiny_bank, tiny_pack};

    /// A station whose broker never answers (results stay in the outbox),
    /// with one GPIO source on line 5 of a fake chip.
    fn station(dir: &Path, pack: &Path) -> Config {
        let mut c = Config::new(
            "st",
            dir.join("state"),
            Model::new(pack.to_owned(), tiny_bank(dir, "bottle")),
            vec![gpio_source(dir, "trig", 5, 10)],
        );
        // Nothing listens on port 1 of loopback.
        c.mqtt.broker = Broker::External {
            host: "127.0.0.1".into(),
            port: 1,
        };
        c.http.enabled = false;
        c
    }

    fn gpio_source(dir: &Path, name: &str, line: u32, debounce_ms: u64) -> Source {
        Source::Gpio(GpioSource {
            name: name.into(),
            chip: "/dev/fake".into(),
            line,
            edge: config::Edge::Rising,
            debounce: Duration::from_millis(debounce_ms),
            active_low: false,
            capture: vec![
                "cp".into(),
                fixture("queries/good.png").display().to_string(),
                "{output}".into(),
            ],
            capture_timeout: Duration::from_secs(10),
            output_dir: dir.join("captures"),
            keep_captures: false,
            recipe_lines: Vec::new(),
            recipe_lines_active_low: false,
            recipe_codes: Vec::new(),
            outputs: None,
            teach_line: None,
            teach_as: crate::recipe_dir::Set::Calibration,
        })
    }

    fn write(path: &Path, c: &Config) {
        std::fs::write(path, c.to_toml().unwrap()).unwrap();
    }

    async fn start(dir: &Path, c: Config, chip: &Arc<FakeChip>) -> Daemon {
        let path = dir.join("config.toml");
        write(&path, &c);
        let loaded = engine::load(&c.model).unwrap();
        Daemon::start(Options {
            config_path: path,
            config: c,
            operator: operator::Operator::default(),
            loaded,
            notifier: Arc::new(notify::Noop),
            lines: Arc::clone(chip) as Arc<dyn gpio::Lines>,
        })
        .await
        .unwrap()
    }

    /// The results waiting in the outbox, in order.
    fn results(dir: &Path) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("state/outbox"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    async fn wait_results(dir: &Path, n: usize) -> Vec<serde_json::Value> {
        // Generous: the suite also runs under emulation.
        for _ in 0..2400 {
            let r = results(dir);
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} results: {:?}", results(dir));
    }

    /// Issue #17: a teach button on a GPIO source teaches that source's last
    /// kept picture: the recipe directory gets version 2 with it among the
    /// calibration pictures, and the recipe's bank is the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_teach_button_teaches_the_sources_last_picture() {
        use crate::recipe_dir::{RecipeDir, Set};
        let dir = tempfile::tempdir().unwrap();
        let chip = Arc::new(FakeChip::default());
        let mut c = station(dir.path(), &tiny_pack());
        // A recipe directory: the zero-shot bank and five good pictures (not
        // the one the trigger captures, queries/good.png).
        let calibration: Vec<_> = [
            "shots/000.png",
            "shots/001.png",
            "shots/002.png",
            "shots/003.png",
            "queries/scratch.png",
        ]
        .iter()
        .map(|n| (n.replace('/', "-"), std::fs::read(fixture(n)).unwrap()))
        .collect();
        let recipe = dir.path().join("recipe");
        RecipeDir::create(&recipe, &std::fs::read(&c.model.bank).unwrap(), &[], &calibration).unwrap();
        c.model.bank = recipe.clone();
        let Source::Gpio(g) = &mut c.sources[0] else {
            unreachable!()
        };
        g.teach_line = Some(7);
        let mut daemon = start(dir.path(), c, &chip).await;
        let mut commands = daemon.take_commands().unwrap();
        let mut taught = daemon.take_taught().unwrap();
        let bank_before = daemon.inspector().unwrap().bank_id().to_string();
        assert!(chip.is_held(7));
        assert!(chip.edge(5));
        wait_results(dir.path(), 1).await;
        for _ in 0..2400 {
            if daemon.sink.history().latest_of("trig").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(chip.edge(7));
        let press = tokio::time::timeout(Duration::from_secs(60), commands.recv())
            .await
            .unwrap()
            .unwrap();
        daemon.command(press).await;
        let done = tokio::time::timeout(Duration::from_secs(120), taught.recv())
            .await
            .unwrap()
            .unwrap();
        daemon.taught(done).await;
        let state = daemon.state();
        assert_eq!(state["teaching"]["state"], "done", "{state}");
        assert_eq!(state["recipes"]["default"]["version"], 2, "{state}");
        let names: Vec<String> = RecipeDir::open(&recipe)
            .unwrap()
            .pictures(2, Set::Calibration)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("taught-")), "{names:?}");
        assert_ne!(daemon.inspector().unwrap().bank_id(), bank_before);
        daemon.shutdown().await;
    }

    /// Issue #17: a PLC chooses each trigger's recipe by the code on its
    /// lines; every result names the recipe the code chose and its verdict
    /// follows that recipe; the fail output is driven; a command cannot
    /// switch such a source.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recipe_code_on_gpio_lines_chooses_each_triggers_recipe() {
        use crate::config::outputs::{OutputLine, Outputs, Signal};
        let dir = tempfile::tempdir().unwrap();
        let chip = Arc::new(FakeChip::default());
        let mut c = station(dir.path(), &tiny_pack());
        // [model]'s recipe passes everything, "strict" fails everything.
        c.model.threshold = Some(1.0);
        c.recipes.push(config::Recipe {
            name: "strict".into(),
            bank: tiny_bank(dir.path(), "bottle"),
            threshold: Some(0.0),
            early_exit: false,
        });
        let Source::Gpio(g) = &mut c.sources[0] else {
            unreachable!()
        };
        g.recipe_lines = vec![6];
        g.recipe_codes = vec![config::DEFAULT_RECIPE.into(), "strict".into()];
        g.outputs = Some(Outputs {
            chip: "/dev/fake".into(),
            hold: Duration::from_secs(60),
            lines: [(
                Signal::Fail,
                OutputLine {
                    line: 30,
                    active_low: false,
                    pulse: Duration::ZERO,
                },
            )]
            .into(),
        });
        let mut daemon = start(dir.path(), c, &chip).await;
        chip.set_level(5, true);
        for (n, code, recipe, verdict) in [
            (1, false, "default", "pass"),
            (2, true, "strict", "fail"),
            (3, false, "default", "pass"),
        ] {
            chip.set_level(6, code);
            assert!(chip.edge(5));
            let r = wait_results(dir.path(), n).await;
            let r = r.iter().find(|r| r["trigger"] == n).unwrap();
            assert_eq!(
                (r["recipe"].as_str(), r["verdict"].as_str()),
                (Some(recipe), Some(verdict)),
                "{r}"
            );
            for _ in 0..2400 {
                if chip.output(30) == (verdict == "fail") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                chip.output(30),
                verdict == "fail",
                "the fail output after trigger {n}"
            );
        }
        let refused = daemon
            .carry_out(commands::Command::Recipe {
                source: Some("trig".into()),
                name: Some("strict".into()),
            })
            .await
            .unwrap_err();
        assert!(refused.contains("recipe code lines [6]"), "{refused}");
        let refused = daemon
            .carry_out(commands::Command::Recipe {
                source: None,
                name: Some("strict".into()),
            })
            .await
            .unwrap_err();
        assert!(refused.contains("every source"), "{refused}");
        assert_eq!(daemon.state()["recipe_codes"]["trig"]["codes"][1], "strict");
        daemon.shutdown().await;
        assert!(!chip.output(30), "outputs inactive once stopped");
        assert!(!chip.is_held(30) && !chip.is_held(6) && !chip.is_held(5));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_gpio_source_requests_its_line_again_and_a_failed_reload_restores_it() {
        let dir = tempfile::tempdir().unwrap();
        let chip = Arc::new(FakeChip::default());
        let mut c = station(dir.path(), &tiny_pack());
        let mut daemon = start(dir.path(), c.clone(), &chip).await;
        assert!(chip.edge(5));
        let r = wait_results(dir.path(), 1).await;
        assert_eq!(r[0]["trigger"], 1);
        assert!(r[0]["verdict"] == "pass" || r[0]["verdict"] == "fail", "{}", r[0]);

        // A changed debounce: the source is stopped and its line requested again.
        c.sources = vec![gpio_source(dir.path(), "trig", 5, 20)];
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        assert_eq!(daemon.config().sources, c.sources, "the reload applied");
        assert!(chip.edge(5));
        wait_results(dir.path(), 2).await;

        // A reload whose second source cannot get its line: nothing of it
        // applies, and the first source runs with its old settings again.
        let held = chip
            .request(match &gpio_source(dir.path(), "x", 6, 0) {
                Source::Gpio(g) => g,
                Source::Directory(_) => unreachable!(),
            })
            .unwrap();
        let mut bad = c.clone();
        bad.sources = vec![
            gpio_source(dir.path(), "trig", 5, 30),
            gpio_source(dir.path(), "other", 6, 0),
        ];
        write(&dir.path().join("config.toml"), &bad);
        daemon.reload().await;
        assert_eq!(daemon.config().sources, c.sources, "the running sources stay");
        assert!(chip.is_held(5), "the old source has its line again");
        assert!(chip.edge(5));
        wait_results(dir.path(), 3).await;
        drop(held);
        daemon.shutdown().await;
        assert!(!chip.is_held(5), "shutdown releases the line");
    }

    /// Issue #15, bug 4: a threshold or bank change neither reads nor loads
    /// the model pack. The pack here is damaged after start: a reload that
    /// re-hashed or loaded it would fail.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn threshold_and_bank_changes_keep_the_loaded_model() {
        let dir = tempfile::tempdir().unwrap();
        let pack = dir.path().join("pack");
        std::fs::create_dir_all(&pack).unwrap();
        for e in std::fs::read_dir(tiny_pack()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), pack.join(e.file_name())).unwrap();
            }
        }
        let chip = Arc::new(FakeChip::default());
        let mut c = station(dir.path(), &pack);
        let mut daemon = start(dir.path(), c.clone(), &chip).await;
        let model_id = daemon.inspector().unwrap().model_id().to_string();
        let bank_id = daemon.inspector().unwrap().bank_id().to_string();
        std::fs::write(pack.join("encoder.onnx"), b"damaged").unwrap();

        c.model.threshold = Some(0.01);
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        assert_eq!(daemon.config().model.threshold, Some(0.01), "the reload applied");
        assert_eq!(daemon.inspector().unwrap().threshold(), 0.01);

        c.model.bank = tiny_bank(dir.path(), "pcb");
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        let i = daemon.inspector().unwrap();
        assert_eq!(daemon.config().model.bank, c.model.bank, "the reload applied");
        assert_ne!(i.bank_id(), bank_id);
        assert_eq!(i.model_id(), model_id);
        assert_eq!(i.threshold(), 0.01, "the override stays");
        assert!(chip.edge(5));
        let r = wait_results(dir.path(), 1).await;
        assert_eq!(r[0]["bank"], i.bank_id());
        assert_eq!(r[0]["threshold"], 0.01f32);

        // Removing the override goes back to the bank's threshold.
        c.model.threshold = None;
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        assert_eq!(daemon.inspector().unwrap().threshold(), i.bank().meta.threshold);

        // A pack change to the damaged pack is refused; the model stays.
        let mut moved = c.clone();
        moved.model.pack = dir.path().join("pack-elsewhere");
        std::fs::rename(&pack, &moved.model.pack).unwrap();
        write(&dir.path().join("config.toml"), &moved);
        daemon.reload().await;
        assert_eq!(daemon.config().model.pack, pack, "refused");
        assert_eq!(daemon.inspector().unwrap().model_id(), model_id);
        daemon.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pack_change_loads_the_new_model_and_unloads_first_when_the_budget_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let chip = Arc::new(FakeChip::default());
        let mut c = station(dir.path(), &tiny_pack());
        let mut daemon = start(dir.path(), c.clone(), &chip).await;
        let before = Arc::downgrade(&daemon.inspector().unwrap());
        let model_id = daemon.inspector().unwrap().model_id().to_string();
        // The tests share one process: its memory says nothing of this daemon.
        daemon.rss = || 100_000_000;
        // The tiny pack's vision weights are 0.7 MB, loading them peaks at
        // 1.4 MB: 100 MB resident + 1.4 is over 100 MB even with the running
        // model unloaded first (100 − 0.7 + 1.4): refused.
        c.model.precision = crate::model::Precision::F16;
        c.model.memory_budget = 100_000_000;
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        assert_eq!(
            daemon.config().model.precision,
            crate::model::Precision::F32,
            "refused"
        );
        assert!(Weak::ptr_eq(
            &before,
            &Arc::downgrade(&daemon.inspector().unwrap())
        ));
        // f16 is a new model of the same pack: over 101 MB beside the
        // running one, within it once that is unloaded first.
        c.model.memory_budget = 101_000_000;
        write(&dir.path().join("config.toml"), &c);
        daemon.reload().await;
        assert_eq!(
            daemon.config().model.precision,
            crate::model::Precision::F16,
            "applied"
        );
        assert!(before.upgrade().is_none(), "the old model is freed");
        assert_eq!(daemon.inspector().unwrap().model_id(), model_id);
        assert!(chip.edge(5));
        let r = wait_results(dir.path(), 1).await;
        assert!(r[0]["verdict"] == "pass" || r[0]["verdict"] == "fail", "{}", r[0]);
        daemon.shutdown().await;
    }
}
