//! `winclip-edge check-config`: validate a configuration and show what it resolves to;
//! the model pack and the bank get the same checks as `run` (the model is loaded),
//! drop directories must exist (or say `create = true`), and with `--connect` the
//! broker is tried and the directories' permissions checked.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, After, Broker, Config, DirectorySource, GpioSource, Source};

pub(crate) fn run(path: &Path, connect: bool) -> anyhow::Result<ExitCode> {
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
    println!(
        "http          {}",
        match (&c.http.enabled, &c.http.token) {
            (false, _) => "off".to_string(),
            (true, None) => format!(
                "http://{}/ (the page), /metrics and /api/ (no token: loopback only)",
                c.http.listen
            ),
            (true, Some(config::Secret::File(p))) => format!(
                "http://{}/ (the page), /metrics and /api/, bearer token from {}",
                c.http.listen,
                p.display()
            ),
            (true, Some(config::Secret::Credential(n))) => format!(
                "http://{}/ (the page), /metrics and /api/, bearer token from systemd credential {n:?}",
                c.http.listen
            ),
        }
    );
    println!(
        "history       {}",
        if c.history.results == 0 {
            "none kept (the page shows only what arrives while it is open)".to_string()
        } else {
            format!(
                "the last {} results{} in {}/history, {} MB at most",
                c.history.results,
                if c.history.pictures {
                    " with their pictures"
                } else {
                    " (heatmaps, no pictures)"
                },
                c.station.state_dir.display(),
                c.history.max_bytes >> 20
            )
        }
    );
    println!(
        "commands      {}",
        if c.commands.enabled {
            format!(
                "on: {}/{}/cmd (restrict it with the broker's ACLs), replies on .../cmd/reply",
                m.prefix, c.station.name
            )
        } else {
            "off".into()
        }
    );
    println!(
        "home assistant {}",
        match &m.homeassistant {
            Some(prefix) => format!(
                "discovery under {prefix}/ (device {})",
                crate::daemon::homeassistant::node_id(&c.station.name)
            ),
            None => "off".into(),
        }
    );
    for s in &c.sources {
        match s {
            Source::Directory(DirectorySource {
                name,
                path,
                pattern,
                after,
                ..
            }) => {
                let after = match after {
                    After::Move { done_dir, failed_dir } => {
                        format!("move to {} / {}", done_dir.display(), failed_dir.display())
                    }
                    After::Delete => "delete".into(),
                    After::Keep => "keep (recorded)".into(),
                };
                println!(
                    "source        {name}: directory {} pattern {} then {after}",
                    path.display(),
                    pattern.as_deref().unwrap_or("<images>")
                );
            }
            Source::Gpio(
                g @ GpioSource {
                    name,
                    chip,
                    line,
                    edge,
                    debounce,
                    capture,
                    ..
                },
            ) => {
                println!(
                    "source        {name}: GPIO {} line {line} {edge:?} edge, debounce {debounce:?}, capture {capture:?}",
                    chip.display()
                );
                if !g.recipe_lines.is_empty() {
                    let codes: Vec<String> = g
                        .recipe_codes
                        .iter()
                        .enumerate()
                        .map(|(i, r)| format!("{i} = {}", if r.is_empty() { "(none: error)" } else { r }))
                        .collect();
                    println!(
                        "  recipe code lines {:?}{} (first = bit 0): {}; other codes: error",
                        g.recipe_lines,
                        if g.recipe_lines_active_low {
                            " active-low"
                        } else {
                            ""
                        },
                        codes.join(", ")
                    );
                }
                if let Some(l) = g.teach_line {
                    println!(
                        "  teach button  line {l}: a press teaches the last picture as {}",
                        g.teach_as.name()
                    );
                }
                if let Some(o) = &g.outputs {
                    let lines: Vec<String> = o
                        .lines
                        .iter()
                        .map(|(s, l)| {
                            let mut d = format!("{s} {}", l.line);
                            if l.active_low {
                                d.push_str(" active-low");
                            }
                            if !l.pulse.is_zero() {
                                d.push_str(&format!(" pulse {:?}", l.pulse));
                            }
                            d
                        })
                        .collect();
                    println!(
                        "  PLC outputs   {}: {}; result held until the trigger drops, at most {:?}",
                        o.chip.display(),
                        lines.join(", "),
                        o.hold
                    );
                }
            }
        }
    }
    let mut ok = true;
    for s in &c.sources {
        if let Source::Directory(d) = s {
            if !d.path.is_dir() && !d.create {
                eprintln!(
                    "error: source {}: drop directory {} does not exist (a typo in path? create it, or set create = true)",
                    d.name,
                    d.path.display()
                );
                ok = false;
            }
        }
    }
    if connect {
        ok &= check_permissions(&c);
        ok &= check_broker(&c);
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
            let backend = i.vision().backend();
            match (c.model.device, backend) {
                (crate::model::Device::Auto, crate::model::Backend::Cpu) => println!(
                    "device        cpu (device = \"auto\"; {})",
                    crate::model::cuda_unavailable().unwrap_or_default()
                ),
                _ => println!("device        {backend}"),
            }
            if let Some(n) = i.vision().encoder_numerics() {
                println!("encoder       {n}");
                if let Some(w) = &n.warning {
                    println!("warning: {w}");
                }
            }
            let roi = |i: &crate::inspector::Inspector| {
                let m = &i.bank().meta;
                let mut s = m
                    .roi
                    .map_or(String::new(), |r| format!(", region of interest {r}"));
                if let Some(mask) = &m.mask {
                    s.push_str(&format!(
                        ", mask {} of {} patches",
                        mask.inspected(),
                        mask.grid * mask.grid
                    ));
                }
                s
            };
            // A recipe directory: its version in use (teach and rollback make others).
            let version = |bank: &Path| {
                if !crate::recipe_dir::RecipeDir::is_recipe_dir(bank) {
                    return String::new();
                }
                crate::recipe_dir::RecipeDir::open(bank)
                    .and_then(|d| d.current())
                    .map_or_else(
                        |e| format!(" [recipe directory: {e}]"),
                        |v| format!(" [recipe directory, version {v}]"),
                    )
            };
            println!(
                "bank          {}{} (id {}, {:?}, {} shots, threshold {}{}; recipe {})",
                c.model.bank.display(),
                version(&c.model.bank),
                i.bank_id(),
                i.bank().meta.object,
                i.bank().meta.shots,
                i.threshold(),
                roi(i),
                c.model.recipe
            );
            // Every [[recipe]]'s bank, checked against the loaded model as the daemon does.
            match crate::daemon::engine::recipes(loaded.inspector.clone(), &c) {
                Ok(set) => {
                    for r in &c.recipes {
                        if let Some(i) = set.get(&r.name) {
                            println!(
                                "recipe        {}: bank {}{} (id {}, {:?}, {} shots, threshold {}{}{})",
                                r.name,
                                r.bank.display(),
                                version(&r.bank),
                                i.bank_id(),
                                i.bank().meta.object,
                                i.bank().meta.shots,
                                i.threshold(),
                                if r.early_exit { ", early exit" } else { "" },
                                roi(i)
                            );
                        }
                    }
                    for s in &c.sources {
                        println!("source recipe {}: {}", s.name(), c.default_recipe(s.name()));
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ok = false;
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ok = false;
        }
    }
    if ok {
        println!("OK");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(super::EXIT_CONFIG))
    }
}

/// Whether `dir` (or, while it does not exist, the nearest parent that
/// does) may be written by this process.
fn writable(dir: &Path) -> Result<(), String> {
    let mut d = dir;
    while !d.exists() {
        d = d.parent().ok_or("no existing parent")?;
    }
    nix::unistd::access(d, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("{} is not writable: {e}", d.display()))
}

/// The state directory and every directory a source writes to.
fn check_permissions(c: &Config) -> bool {
    let mut dirs = vec![("station.state_dir".to_string(), c.station.state_dir.clone())];
    let mut problems = Vec::new();
    for s in &c.sources {
        match s {
            Source::Directory(d) => {
                // Moving or deleting a file needs its directory writable.
                if !matches!(d.after, After::Keep) {
                    dirs.push((format!("source {}", d.name), d.path.clone()));
                }
                if let After::Move { done_dir, failed_dir } = &d.after {
                    dirs.push((format!("source {} done_dir", d.name), done_dir.clone()));
                    dirs.push((format!("source {} failed_dir", d.name), failed_dir.clone()));
                }
            }
            Source::Gpio(g) => {
                dirs.push((format!("source {} output_dir", g.name), g.output_dir.clone()));
                let chips = std::iter::once(&g.chip)
                    .chain(g.outputs.as_ref().map(|o| &o.chip).filter(|c| **c != g.chip));
                for chip in chips {
                    if let Err(e) = std::fs::OpenOptions::new().read(true).open(chip) {
                        problems.push(format!("source {}: {}: {e}", g.name, chip.display()));
                    }
                }
            }
        }
    }
    for (what, dir) in &dirs {
        match writable(dir) {
            Ok(()) => println!("writable      {what} {}", dir.display()),
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    problems.is_empty()
}

/// Connect to the broker (or check that the embedded one can listen).
fn check_broker(c: &Config) -> bool {
    if let Broker::Embedded { listen, .. } = &c.mqtt.broker {
        return match std::net::TcpListener::bind(listen.as_str()) {
            Ok(_) => {
                println!("broker        embedded: {listen} is free");
                true
            }
            Err(e) => {
                eprintln!(
                    "error: embedded broker: cannot listen on {listen}: {e} (a broker already running there? \
                     set mqtt.host to use it, or change mqtt.embedded_listen)"
                );
                false
            }
        };
    }
    let topics = crate::daemon::topics::Topics::new(&c.mqtt.prefix, &c.station.name);
    let attempt = || -> anyhow::Result<()> {
        let mut opts = crate::daemon::mqtt::options(&c.mqtt, &topics)?;
        // Not the station's id: a running station must not be knocked off.
        opts.set_client_id(format!("{}-check", c.mqtt.client_id));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let (client, mut events) = rumqttc::AsyncClient::new(opts, 8);
            let connected = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match events.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(anyhow::anyhow!("{e}")),
                    }
                }
            })
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 10 s"))?;
            let _ = client.disconnect().await;
            connected
        })
    };
    match attempt() {
        Ok(()) => {
            println!("broker        connected and logged in");
            true
        }
        Err(e) => {
            eprintln!("error: broker: {e:#}");
            false
        }
    }
}
