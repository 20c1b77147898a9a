//! `winclip-edge demo`: the whole station end to end on built-in defaults.
//!
//! Synthetic parts are generated, a 4-shot calibrated bank is built with the
//! bundled tiny model pack, the daemon starts with an embedded MQTT broker and
//! a drop directory, a subscriber connects, and pictures are dropped into the
//! directory the way a camera does. Every verdict and heatmap is shown as it
//! arrives over MQTT, with the end-to-end latency (file in place → result
//! received) and the sustained throughput.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::bank::FileRef;
use crate::config::{After, Broker, Config, DirectorySource, Model, Source};
use crate::daemon::{gpio, notify, Daemon, Options};
use crate::inspector::{self, BankSpec};
use crate::model::{ModelPack, TextModel, VisionModel};
use crate::synth::{Defect, Generator, Scene};

/// Arguments of `demo`.
pub(crate) struct Args {
    pub model: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub images: usize,
    pub port: Option<u16>,
    pub keep_running: bool,
    /// Inference threads (0 = one per core), as `station.threads`.
    pub threads: usize,
}

const STATION: &str = "demo";

/// Where the bundled tiny pack is: next to the sources, or installed.
fn find_tiny_pack() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("models/tiny"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny"),
    ];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(prefix) = exe.parent().and_then(Path::parent) {
            candidates.push(prefix.join("share/winclip-edge/models/tiny"));
        }
    }
    candidates.push(PathBuf::from("/usr/share/winclip-edge/models/tiny"));
    candidates.into_iter().find(|p| p.join("manifest.toml").is_file())
}

fn png(img: &image::RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut c = std::io::Cursor::new(Vec::new());
    img.write_to(&mut c, image::ImageFormat::Png)?;
    Ok(c.into_inner())
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = match args.model.or_else(find_tiny_pack) {
        Some(m) => m,
        None => bail!("the bundled tiny model pack was not found; pass --model DIR"),
    };
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("winclip-edge-demo-{}", std::process::id())),
    };
    if args.images == 0 {
        bail!("--images must be at least 1");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let port = match args.port {
        Some(p) => p,
        None => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
    };
    println!("winclip-edge demo in {}", dir.display());

    // 1. A bank: 4 good shots, 8 more good pictures to calibrate the threshold.
    let t0 = Instant::now();
    let pack = ModelPack::open(&model).with_context(|| format!("model pack {}", model.display()))?;
    let gen = Generator::new(Scene::Object, 256, 2026);
    let shots: Vec<(FileRef, image::RgbImage)> = (0..4)
        .map(|i| {
            (
                FileRef {
                    name: format!("shot{i}.png"),
                    sha256: String::new(),
                },
                gen.sample(i, None).image,
            )
        })
        .collect();
    let calibration: Vec<image::RgbImage> = (4..12).map(|i| gen.sample(i, None).image).collect();
    let vision = VisionModel::load(&pack)?;
    let text = TextModel::load(&pack)?;
    let bank = inspector::build_bank(
        &pack,
        &vision,
        &text,
        &BankSpec::new("bottle"),
        &shots,
        &calibration,
    )?;
    let bank_path = dir.join("bottle.bank");
    crate::fsutil::write_atomic(&bank_path, &bank.to_bytes()?)?;
    println!(
        "bank         4-shot WinCLIP+ for \"bottle\", threshold {:.5} from 8 calibration pictures ({:.1} s)",
        bank.meta.threshold,
        t0.elapsed().as_secs_f64()
    );

    // 2. The station's configuration: embedded broker, one drop directory.
    // Written out too, as a starting point for a real station.
    let incoming = dir.join("incoming");
    let mut config = Config::new(
        STATION,
        dir.join("state"),
        Model::new(std::fs::canonicalize(&model)?, bank_path),
        vec![Source::Directory(DirectorySource {
            name: "camera".into(),
            path: incoming.clone(),
            pattern: None,
            after: After::Move {
                done_dir: incoming.join("done"),
                failed_dir: incoming.join("failed"),
            },
            settle: Duration::ZERO,
            create: true,
        })],
    );
    config.mqtt.broker = Broker::Embedded {
        listen: format!("127.0.0.1:{port}"),
        allow_anonymous: false,
    };
    config.mqtt.stats_interval = Duration::from_secs(5);
    config.station.threads = args.threads;
    let config_path = dir.join("config.toml");
    let text = config
        .to_toml()
        .with_context(|| format!("{} holds a path that is not UTF-8", dir.display()))?;
    crate::fsutil::write_atomic(&config_path, text.as_bytes())?;
    crate::model::set_threads(config.station.threads);
    let loaded = crate::daemon::engine::load(&config.model)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config_path_shown = config_path.clone();
        let http = config.http.listen;
        let daemon = Daemon::start(Options {
            config_path,
            config,
            operator: crate::daemon::operator::Operator::default(),
            loaded,
            notifier: Arc::new(notify::Noop),
            lines: Arc::new(gpio::Gpiocdev),
        })
        .await?;
        println!(
            "station      \"{STATION}\" running: embedded MQTT broker on 127.0.0.1:{port}, watching {}",
            incoming.display()
        );
        println!("             (watch it live: mosquitto_sub -p {port} -t 'winclip/#' -v)");
        println!("             (the page: http://{http}/; metrics for Prometheus: http://{http}/metrics)");
        println!(
            "config       {}: start your own station from this file (winclip-edge run --config ...)",
            config_path_shown.display()
        );
        let outcome = drive(&dir, &incoming, port, &gen, args.images).await;
        if outcome.is_ok() && args.keep_running {
            println!(
                "\nthe station keeps running: drop pictures into {}, watch with \
                 mosquitto_sub -p {port} -t 'winclip/#' -v; Ctrl-C stops it",
                incoming.display()
            );
            wait_for_stop().await;
        }
        daemon.shutdown().await;
        outcome
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Until SIGINT or SIGTERM.
async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// What the subscriber got.
#[derive(Debug)]
enum Received {
    Result(serde_json::Value),
    Heatmap(String, Vec<u8>),
}

async fn subscriber(
    port: u16,
) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::UnboundedReceiver<Received>)> {
    let mut o = MqttOptions::new("winclip-edge-demo-viewer", "127.0.0.1", port);
    o.set_max_packet_size(8 << 20, 8 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 64);
    client
        .subscribe(format!("winclip/{STATION}/#"), QoS::AtLeastOnce)
        .await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let msg = if p.topic.ends_with("/result") {
                        serde_json::from_slice(&p.payload).ok().map(Received::Result)
                    } else if p.topic.contains("/heatmap/") {
                        Some(Received::Heatmap(p.topic.clone(), p.payload.to_vec()))
                    } else {
                        None
                    };
                    if let Some(m) = msg {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .context("subscribing to the embedded broker")??;
    Ok((client, rx))
}

async fn drive(dir: &Path, incoming: &Path, port: u16, gen: &Generator, n: usize) -> anyhow::Result<()> {
    let (_client, mut rx) = subscriber(port).await?;
    let received_dir = dir.join("received");
    std::fs::create_dir_all(&received_dir)?;
    // The stream: mostly good parts, every third one defective.
    let pictures: Vec<(String, Option<Defect>, Vec<u8>)> = (0..n)
        .map(|i| {
            let defect = (i % 3 == 2).then(|| Defect::ALL[(i / 3) % Defect::ALL.len()]);
            let s = gen.sample(100 + i as u64, defect);
            let label = defect.map_or("good".to_string(), |d| d.name().to_string());
            Ok((format!("part{i:03}-{label}.png"), defect, png(&s.image)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let sequential = n.div_ceil(2);
    println!(
        "\nphase 1: {sequential} pictures one at a time (latency), then {} at once (throughput)\n",
        n - sequential
    );
    println!(
        "{:<22} {:<7} {:>8} {:>9} {:>10}  heatmap",
        "file", "verdict", "score", "threshold", "latency"
    );
    let mut latencies = Vec::new();
    let mut heatmaps: HashMap<String, usize> = HashMap::new();
    let mut drop_at: HashMap<String, Instant> = HashMap::new();
    let mut results = 0usize;
    let mut burst_start = None;
    let mut burst_end = None;
    for (i, (name, _, bytes)) in pictures.iter().enumerate() {
        // Write under a temporary name, then rename into place, as cameras do.
        let tmp = incoming.join(format!(".{name}.part"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, incoming.join(name))?;
        drop_at.insert(name.clone(), Instant::now());
        if i + 1 == sequential {
            // Wait for the sequential phase to finish before the burst.
            results += collect(
                &mut rx,
                sequential - results,
                &drop_at,
                &mut latencies,
                &mut heatmaps,
                &received_dir,
            )
            .await?;
            burst_start = Some(Instant::now());
        } else if i < sequential {
            results += collect(&mut rx, 1, &drop_at, &mut latencies, &mut heatmaps, &received_dir).await?;
        }
    }
    let mut one_at_a_time = latencies.clone();
    if results < n {
        results += collect(
            &mut rx,
            n - results,
            &drop_at,
            &mut latencies,
            &mut heatmaps,
            &received_dir,
        )
        .await?;
        burst_end = Some(Instant::now());
    }
    // Each heatmap follows its result; give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while heatmaps.len() < results && Instant::now() < deadline {
        if let Ok(Some(Received::Heatmap(topic, bytes))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            let id = topic.rsplit('/').next().unwrap_or("heatmap").to_string();
            std::fs::write(received_dir.join(format!("{id}.jpg")), &bytes)?;
            heatmaps.insert(id, bytes.len());
        }
    }
    one_at_a_time.sort_by(f64::total_cmp);
    let p = |q: f64| {
        one_at_a_time[((q * one_at_a_time.len() as f64).ceil() as usize).clamp(1, one_at_a_time.len()) - 1]
    };
    println!(
        "\n{results} results and {} heatmaps received over MQTT; heatmaps saved in {}",
        heatmaps.len(),
        received_dir.display()
    );
    println!(
        "latency      file in place → result received, one picture at a time: median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        p(0.5),
        p(0.9),
        p(1.0)
    );
    if let (Some(s), Some(e)) = (burst_start, burst_end) {
        let k = n - sequential;
        println!(
            "throughput   {k} pictures dropped at once: {:.1} pictures/s sustained",
            k as f64 / (e - s).as_secs_f64()
        );
    }
    println!(
        "note         the bundled tiny model has random weights: the pipeline is real, the verdicts are not.\n\
         \x20            Export a real model pack (models/export.py) for meaningful inspection."
    );
    Ok(())
}

/// Wait for `want` results (and their heatmaps); print each.
async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    want: usize,
    drop_at: &HashMap<String, Instant>,
    latencies: &mut Vec<f64>,
    heatmaps: &mut HashMap<String, usize>,
    received_dir: &Path,
) -> anyhow::Result<usize> {
    let mut got = 0;
    while got < want {
        let msg = tokio::time::timeout(Duration::from_secs(300), rx.recv())
            .await
            .context("no result within 5 minutes")?
            .context("subscriber stopped")?;
        match msg {
            Received::Result(r) => {
                let file = r["file"]
                    .as_str()
                    .and_then(|f| Path::new(f).file_name())
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let latency = drop_at
                    .get(&file)
                    .map(|t| t.elapsed().as_secs_f64() * 1e3)
                    .unwrap_or(f64::NAN);
                if latency.is_finite() {
                    latencies.push(latency);
                }
                let heat = r["heatmap"]["bytes"]
                    .as_u64()
                    .map_or("-".to_string(), |b| format!("{b} B JPEG"));
                println!(
                    "{:<22} {:<7} {:>8.5} {:>9.5} {:>8.0} ms  {heat}",
                    file,
                    r["verdict"].as_str().unwrap_or("?"),
                    r["score"].as_f64().unwrap_or(f64::NAN),
                    r["threshold"].as_f64().unwrap_or(f64::NAN),
                    latency
                );
                got += 1;
            }
            Received::Heatmap(topic, bytes) => {
                let id = topic.rsplit('/').next().unwrap_or("heatmap").to_string();
                std::fs::write(received_dir.join(format!("{id}.jpg")), &bytes)?;
                heatmaps.insert(id, bytes.len());
            }
        }
    }
    Ok(got)
}
