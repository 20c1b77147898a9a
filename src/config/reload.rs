//! What a reload (SIGHUP) changes: every difference between the running and
//! the new configuration, each either applied live or reported as needing a
//! restart. Pure: the daemon applies the plan.

use super::{Broker, Config, Source};

/// Whether a setting takes effect on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Applied by `systemctl reload` (SIGHUP).
    Live,
    /// Kept at its running value until the daemon restarts.
    Restart,
}

/// One difference between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `station.name` (topics and inspection ids).
    StationName,
    /// `station.state_dir` (outbox, records, captures).
    StateDir,
    /// `station.threads` (tract's thread pool is built once).
    Threads,
    /// `station.queue_capacity`.
    QueueCapacity,
    /// `[outbox]` bounds.
    OutboxBounds,
    /// `[http]` (the listener is bound once).
    Http,
    /// `[history]` (the store is opened once).
    History,
    /// `[commands]` (the subscription is made once).
    Commands,
    /// The embedded broker: switching it on or off, or `mqtt.embedded_listen`.
    EmbeddedBroker,
    /// `model.pack`: the vision model is loaded again.
    Pack,
    /// `model.precision`: the vision model is loaded again.
    Precision,
    /// `model.f32_layers`: the vision model is loaded again.
    F32Layers,
    /// `model.device`: the vision model is loaded again.
    Device,
    /// `model.bank`: read again, the loaded model is kept.
    Bank,
    /// `model.threshold`.
    Threshold,
    /// `model.early_exit`.
    EarlyExit,
    /// `model.memory_budget_mb`.
    MemoryBudget,
    /// `[[recipe]]`, `model.recipe` or a source's `recipe`: every recipe's
    /// bank is read again for the loaded model.
    Recipes,
    /// How the MQTT connection is made (broker address, credentials, TLS,
    /// client id, keep-alive, packet size, reconnect delays): reconnects.
    MqttConnection,
    /// `mqtt.prefix`: topics move; reconnects (the Last Will moves too).
    MqttPrefix,
    /// `mqtt.stats_interval_secs`.
    StatsInterval,
    /// `mqtt.homeassistant`, `mqtt.homeassistant_prefix`: discovery is
    /// published (or removed) at once.
    HomeAssistant,
    /// `[heatmap]`.
    Heatmap,
    /// `station.max_image_mb`, `station.max_image_megapixels`.
    ImageLimits,
    /// `station.jpeg_dct_scaling`.
    JpegDctScaling,
    /// A `[[source]]` that was not there before: started.
    SourceAdded(String),
    /// A `[[source]]` that is gone: stopped.
    SourceRemoved(String),
    /// A `[[source]]` whose settings changed: stopped, then started anew.
    SourceChanged(String),
}

impl Change {
    /// Whether it applies live.
    pub fn applies(&self) -> Applies {
        match self {
            Change::StationName
            | Change::StateDir
            | Change::Threads
            | Change::QueueCapacity
            | Change::OutboxBounds
            | Change::Http
            | Change::History
            | Change::Commands
            | Change::EmbeddedBroker => Applies::Restart,
            _ => Applies::Live,
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::StationName => f.write_str("station.name"),
            Change::StateDir => f.write_str("station.state_dir"),
            Change::Threads => f.write_str("station.threads"),
            Change::QueueCapacity => f.write_str("station.queue_capacity"),
            Change::OutboxBounds => f.write_str("[outbox]"),
            Change::Http => f.write_str("[http]"),
            Change::History => f.write_str("[history]"),
            Change::Commands => f.write_str("[commands]"),
            Change::EmbeddedBroker => f.write_str("the embedded broker (mqtt.host / mqtt.embedded_listen)"),
            Change::Pack => f.write_str("model.pack"),
            Change::Precision => f.write_str("model.precision"),
            Change::F32Layers => f.write_str("model.f32_layers"),
            Change::Device => f.write_str("model.device"),
            Change::Bank => f.write_str("model.bank"),
            Change::Threshold => f.write_str("model.threshold"),
            Change::EarlyExit => f.write_str("model.early_exit"),
            Change::MemoryBudget => f.write_str("model.memory_budget_mb"),
            Change::Recipes => f.write_str("the recipes ([[recipe]], model.recipe, source recipes)"),
            Change::MqttConnection => f.write_str("the MQTT connection"),
            Change::MqttPrefix => f.write_str("mqtt.prefix"),
            Change::StatsInterval => f.write_str("mqtt.stats_interval_secs"),
            Change::HomeAssistant => f.write_str("mqtt.homeassistant"),
            Change::Heatmap => f.write_str("[heatmap]"),
            Change::ImageLimits => f.write_str("station.max_image_mb / max_image_megapixels"),
            Change::JpegDctScaling => f.write_str("station.jpeg_dct_scaling"),
            Change::SourceAdded(n) => write!(f, "source {n} (new)"),
            Change::SourceRemoved(n) => write!(f, "source {n} (removed)"),
            Change::SourceChanged(n) => write!(f, "source {n}"),
        }
    }
}

/// How the inspector must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EngineChange {
    /// Nothing to do.
    None,
    /// Threshold or early exit only: the loaded model and bank stay.
    Settings,
    /// A new bank for the loaded model.
    Bank,
    /// The vision model is loaded again (pack or precision).
    Model,
}

/// The differences between a running and a new configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadPlan {
    /// Every difference, in the order of the file.
    pub changes: Vec<Change>,
    /// What to run: the new configuration with every setting that needs a
    /// restart kept at its running value.
    pub effective: Config,
}

impl ReloadPlan {
    /// Compare `old` (running) with `new` (just read).
    pub fn new(old: &Config, new: &Config) -> Self {
        let mut changes = Vec::new();
        let mut note = |changed: bool, c: Change| {
            if changed {
                changes.push(c);
            }
        };
        let (os, ns) = (&old.station, &new.station);
        note(os.name != ns.name, Change::StationName);
        note(os.state_dir != ns.state_dir, Change::StateDir);
        note(os.threads != ns.threads, Change::Threads);
        note(os.queue_capacity != ns.queue_capacity, Change::QueueCapacity);
        note(os.limits != ns.limits, Change::ImageLimits);
        note(os.jpeg_dct_scaling != ns.jpeg_dct_scaling, Change::JpegDctScaling);
        note(old.outbox != new.outbox, Change::OutboxBounds);
        note(old.http != new.http, Change::Http);
        note(old.history != new.history, Change::History);
        note(old.commands != new.commands, Change::Commands);
        // The embedded broker is configured once, at start: its address,
        // whether it admits anonymous clients, the credentials it requires.
        let embedded = |c: &Config| match &c.mqtt.broker {
            Broker::Embedded { .. } => Some((
                c.mqtt.broker.clone(),
                c.mqtt.username.clone(),
                c.mqtt.password.clone(),
            )),
            Broker::External { .. } => None,
        };
        let broker_moves = embedded(old) != embedded(new);
        note(broker_moves, Change::EmbeddedBroker);
        let (om, nm) = (&old.model, &new.model);
        note(om.pack != nm.pack, Change::Pack);
        note(om.precision != nm.precision, Change::Precision);
        note(om.f32_layers != nm.f32_layers, Change::F32Layers);
        note(om.device != nm.device, Change::Device);
        note(om.bank != nm.bank, Change::Bank);
        note(om.threshold != nm.threshold, Change::Threshold);
        note(om.early_exit != nm.early_exit, Change::EarlyExit);
        note(
            om.recipe != nm.recipe || old.recipes != new.recipes || old.source_recipes != new.source_recipes,
            Change::Recipes,
        );
        note(om.memory_budget != nm.memory_budget, Change::MemoryBudget);

        // What runs: the new file, with the restart-only settings as they run.
        let mut effective = new.clone();
        effective.station.name = os.name.clone();
        effective.station.state_dir = os.state_dir.clone();
        effective.station.threads = os.threads;
        effective.station.queue_capacity = os.queue_capacity;
        effective.outbox = old.outbox.clone();
        effective.http = old.http.clone();
        effective.history = old.history.clone();
        effective.commands = old.commands.clone();
        if broker_moves {
            effective.mqtt.broker = old.mqtt.broker.clone();
        }
        // The default client id follows the station name, which stays.
        if effective.mqtt.client_id == super::default_client_id(&ns.name) {
            effective.mqtt.client_id = super::default_client_id(&os.name);
        }
        for s in &mut effective.sources {
            if let Source::Gpio(g) = s {
                // A default capture directory lives under the state dir that runs.
                if let Ok(rest) = g.output_dir.strip_prefix(&ns.state_dir) {
                    g.output_dir = os.state_dir.join(rest);
                }
            }
        }
        let (oq, eq) = (&old.mqtt, &effective.mqtt);
        note(oq.connection_differs(eq), Change::MqttConnection);
        note(oq.prefix != eq.prefix, Change::MqttPrefix);
        note(oq.stats_interval != eq.stats_interval, Change::StatsInterval);
        note(oq.homeassistant != eq.homeassistant, Change::HomeAssistant);
        note(old.heatmap != effective.heatmap, Change::Heatmap);
        for s in &old.sources {
            match effective.sources.iter().find(|n| n.name() == s.name()) {
                None => changes.push(Change::SourceRemoved(s.name().to_string())),
                Some(n) if n != s => changes.push(Change::SourceChanged(s.name().to_string())),
                Some(_) => {}
            }
        }
        for s in &effective.sources {
            if !old.sources.iter().any(|o| o.name() == s.name()) {
                changes.push(Change::SourceAdded(s.name().to_string()));
            }
        }
        Self { changes, effective }
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Changes applied now.
    pub fn live(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.applies() == Applies::Live)
    }

    /// Changes that wait for a restart.
    pub fn needs_restart(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.applies() == Applies::Restart)
    }

    /// How the inspector must change.
    pub fn engine(&self) -> EngineChange {
        self.changes
            .iter()
            .map(|c| match c {
                Change::Pack | Change::Precision | Change::F32Layers | Change::Device => EngineChange::Model,
                Change::Bank => EngineChange::Bank,
                Change::Threshold | Change::EarlyExit => EngineChange::Settings,
                _ => EngineChange::None,
            })
            .max()
            .unwrap_or(EngineChange::None)
    }

    /// Whether the recipe set must be made again: the recipes changed, or the
    /// inspector they share their model with.
    pub fn touches_recipes(&self) -> bool {
        self.engine() != EngineChange::None || self.changes.contains(&Change::Recipes)
    }

    /// Whether a source must be stopped or started.
    pub fn touches_sources(&self) -> bool {
        self.changes.iter().any(|c| {
            matches!(
                c,
                Change::SourceAdded(_) | Change::SourceRemoved(_) | Change::SourceChanged(_)
            )
        })
    }

    /// One line for the log and `systemctl status`.
    pub fn summary(&self) -> String {
        let list = |it: &mut dyn Iterator<Item = &Change>| {
            it.map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        let live = list(&mut self.live());
        let restart = list(&mut self.needs_restart());
        match (live.is_empty(), restart.is_empty()) {
            (true, true) => "nothing changed".into(),
            (false, true) => format!("applied {live}"),
            (true, false) => format!("nothing applied; needs a restart: {restart}"),
            (false, false) => format!("applied {live}; needs a restart: {restart}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = r#"
[station]
name = "line1"
state_dir = "/tmp/state"
[model]
pack = "/m/tiny"
bank = "/m/a.bank"
[[source]]
type = "directory"
name = "cam"
path = "/srv/drop"
"#;

    fn cfg(text: &str) -> Config {
        super::super::parse(text, Path::new("/etc/w/config.toml"))
            .unwrap()
            .config
    }

    fn plan(edit: impl Fn(&str) -> String) -> ReloadPlan {
        ReloadPlan::new(&cfg(BASE), &cfg(&edit(BASE)))
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let p = plan(str::to_string);
        assert!(p.is_empty(), "{:?}", p.changes);
        assert_eq!(p.engine(), EngineChange::None);
        assert_eq!(p.summary(), "nothing changed");
        assert_eq!(p.effective, cfg(BASE));
    }

    #[test]
    fn a_threshold_change_keeps_model_and_bank() {
        let p = plan(|s| s.replace("[model]", "[model]\nthreshold = 0.3"));
        assert_eq!(p.changes, vec![Change::Threshold]);
        assert_eq!(p.engine(), EngineChange::Settings);
        assert_eq!(p.effective.model.threshold, Some(0.3));
        assert!(!p.touches_sources());
    }

    #[test]
    fn a_bank_change_keeps_the_model_and_a_pack_change_reloads_it() {
        let p = plan(|s| {
            s.replace("a.bank", "b.bank")
                .replace("[model]", "[model]\nearly_exit = true")
        });
        assert_eq!(p.engine(), EngineChange::Bank);
        let p = plan(|s| s.replace("a.bank", "b.bank").replace("/m/tiny", "/m/full"));
        assert_eq!(p.engine(), EngineChange::Model);
        let p = plan(|s| s.replace("[model]", "[model]\nprecision = \"f16\""));
        assert_eq!(p.engine(), EngineChange::Model);
        let p = plan(|s| s.replace("[model]", "[model]\ndevice = \"auto\""));
        assert_eq!(p.engine(), EngineChange::Model);
    }

    #[test]
    fn a_recipe_change_rebuilds_the_recipes_and_keeps_the_model() {
        let p = plan(|s| format!("{s}[[recipe]]\nname = \"b\"\nbank = \"b.bank\"\n"));
        assert_eq!(p.changes, vec![Change::Recipes]);
        assert_eq!(p.engine(), EngineChange::None);
        assert!(p.touches_recipes() && !p.touches_sources());
        assert!(p.live().count() == 1);
        assert!(!plan(str::to_string).touches_recipes());
        assert!(
            plan(|s| s.replace("a.bank", "b.bank")).touches_recipes(),
            "[model]'s bank is a recipe"
        );
    }

    #[test]
    fn restart_settings_are_reported_and_keep_their_running_values() {
        let p = plan(|s| {
            s.replace(
                "name = \"line1\"",
                "name = \"line2\"\nthreads = 3\nqueue_capacity = 5",
            )
            .replace("/tmp/state", "/tmp/other")
                + "[outbox]\nmax_entries = 7\n[mqtt]\nembedded_listen = \"127.0.0.1:1999\"\n"
        });
        let restart: Vec<String> = p.needs_restart().map(ToString::to_string).collect();
        for key in [
            "station.name",
            "station.state_dir",
            "station.threads",
            "station.queue_capacity",
            "[outbox]",
            "the embedded broker",
        ] {
            assert!(restart.iter().any(|r| r.starts_with(key)), "{key} in {restart:?}");
        }
        assert_eq!(p.live().count(), 0, "{:?}", p.changes);
        assert_eq!(p.effective, cfg(BASE), "every running value stays");
        assert!(
            p.summary().contains("needs a restart: station.name"),
            "{}",
            p.summary()
        );
    }

    #[test]
    fn mqtt_prefix_connection_stats_and_heatmap_are_live() {
        let p = plan(|s| {
            format!(
                "{s}[mqtt]\nprefix = \"plant\"\nkeep_alive_secs = 9\nstats_interval_secs = 5\n[heatmap]\nside = 64\n"
            )
        });
        assert_eq!(
            p.changes,
            vec![
                Change::MqttConnection,
                Change::MqttPrefix,
                Change::StatsInterval,
                Change::Heatmap
            ]
        );
        assert!(p.needs_restart().next().is_none());
        assert_eq!(p.effective.mqtt.prefix, "plant");
        assert_eq!(p.effective.heatmap.side, 64);
    }

    #[test]
    fn image_limits_and_jpeg_dct_scaling_are_live() {
        let p = plan(|s| {
            s.replace(
                "[station]\n",
                "[station]\nmax_image_mb = 8\njpeg_dct_scaling = true\n",
            )
        });
        assert_eq!(p.changes, vec![Change::ImageLimits, Change::JpegDctScaling]);
        assert!(p.needs_restart().next().is_none());
        assert!(p.effective.station.jpeg_dct_scaling);
        assert!(!cfg(BASE).station.jpeg_dct_scaling, "off unless asked for");
        assert!(
            p.summary().contains("station.jpeg_dct_scaling"),
            "{}",
            p.summary()
        );
    }

    #[test]
    fn sources_are_compared_by_name() {
        let extra = "[[source]]\ntype = \"directory\"\nname = \"cam2\"\npath = \"/srv/two\"\n";
        let p = plan(|s| format!("{s}{extra}"));
        assert_eq!(p.changes, vec![Change::SourceAdded("cam2".into())]);
        assert!(p.touches_sources());
        let p = plan(|s| s.replace("/srv/drop", "/srv/elsewhere"));
        assert_eq!(p.changes, vec![Change::SourceChanged("cam".into())]);
        let p = ReloadPlan::new(&cfg(&format!("{BASE}{extra}")), &cfg(BASE));
        assert_eq!(p.changes, vec![Change::SourceRemoved("cam2".into())]);
    }

    #[test]
    fn a_renamed_station_keeps_its_default_client_id() {
        let p = plan(|s| s.replace("name = \"line1\"", "name = \"line2\""));
        assert_eq!(p.effective.mqtt.client_id, "winclip-edge-line1");
        assert!(!p.changes.contains(&Change::MqttConnection), "{:?}", p.changes);
    }
}
