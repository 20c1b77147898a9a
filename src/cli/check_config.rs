//! `winclip-edge check-config`: validate a configuration and show what it resolves to;
//! the model pack and the bank get the same checks as `run` (the model is loaded).

use std::path::Path;
use std::process::ExitCode;

use crate::config::{self, After, Broker, DirectorySource, GpioSource, Source};

pub(crate) fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let c = match config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            c.config
        }
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(super::EXIT_CONFIG));
        }
    };
    println!("config        {}", path.display());
    println!(
        "station       {} (state in {})",
        c.station.name,
        c.station.state_dir.display()
    );
    println!(
        "threads       {}",
        if c.station.threads == 0 {
            "one per core".to_string()
        } else {
            c.station.threads.to_string()
        }
    );
    println!("queue         {} images", c.station.queue_capacity);
    let m = &c.mqtt;
    match &m.broker {
        Broker::External { host, port } => println!(
            "mqtt          {host}:{port}{}",
            if m.tls.is_some() { " (TLS)" } else { "" }
        ),
        Broker::Embedded {
            listen,
            allow_anonymous,
        } => println!(
            "mqtt          embedded broker on {listen}{}",
            match (&m.username, allow_anonymous) {
                (Some(u), _) => format!(", clients log in as {u:?}"),
                (None, true) => ", anonymous clients allowed".into(),
                (None, false) => String::new(),
            }
        ),
    }
    println!(
        "topics        {0}/{1}/status|result|heatmap/<id>|stats",
        m.prefix, c.station.name
    );
    println!("client id     {}", m.client_id);
    if let Some(u) = &m.username {
        let pw = match &m.password {
            Some(config::Secret::File(p)) => format!("password from {}", p.display()),
            Some(config::Secret::Credential(n)) => format!("password from systemd credential {n:?}"),
            None => "no password".into(),
        };
        println!("credentials   user {u:?}, {pw}");
    }
    println!(
        "heatmaps      {}",
        if c.heatmap.enabled {
            format!("{} px, JPEG quality {}", c.heatmap.side, c.heatmap.quality)
        } else {
            "off".into()
        }
    );
    println!(
        "stats every   {:?}; reconnect {:?}..{:?}; max packet {} bytes",
        m.stats_interval, m.reconnect_min, m.reconnect_max, m.max_packet_bytes
    );
    println!(
        "outbox        {} results / {} bytes at most",
        c.outbox.max_entries, c.outbox.max_bytes
    );
    for s in &c.sources {
        match s {
            Source::Directory(DirectorySource { name, path, pattern, after, .. }) => {
                let after = match after {
                    After::Move { done_dir, failed_dir } => {
                        format!("move to {} / {}", done_dir.display(), failed_dir.display())
                    }
                    After::Delete => "delete".into(),
                    After::Keep => "keep (recorded)".into(),
                };
                println!("source        {name}: directory {} pattern {} then {after}", path.display(), pattern.as_deref().unwrap_or("<images>"));
            }
            Source::Gpio(GpioSource { name, chip, line, edge, debounce, capture, .. }) => println!(
                "source        {name}: GPIO {} line {line} {edge:?} edge, debounce {debounce:?}, capture {capture:?}",
                chip.display()
            ),
        }
    }
    // The model pack and the bank: the very checks `run` makes (every file's
    // sha256, the bank's checksums and its pack, the model loaded).
    match crate::daemon::engine::load(&c.model) {
        Ok(loaded) => {
            let i = &loaded.inspector;
            let m = i.model_ref();
            println!(
                "model pack    {} (id {}, {}; verified and loaded)",
                c.model.pack.display(),
                m.id,
                m.name
            );
            println!(
                "bank          {} (id {}, {:?}, {} shots, threshold {})",
                c.model.bank.display(),
                i.bank_id(),
                i.bank().meta.object,
                i.bank().meta.shots,
                i.threshold()
            );
            println!("OK");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(super::EXIT_CONFIG))
        }
    }
}
