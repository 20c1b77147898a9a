//! The GPIO trigger source: an edge on a line runs a capture command, and the
//! image it writes is inspected; where configured, a recipe code is read
//! from input lines at the trigger and PLC output lines follow the
//! [`Handshake`].
//!
//! Split in two so the trigger logic is tested without hardware: [`Lines`]
//! requests lines ([`Gpiocdev`]: `/dev/gpiochipN`, uAPI v2 with v1
//! fallback); [`Trigger`] turns any line's edges into jobs. The task that
//! holds the line requests belongs to the source's handle, so stopping the
//! source releases the lines at once (a reload can request them again),
//! after driving the outputs to their safe (inactive) state. A trigger that
//! arrives while the previous one is still being captured or inspected is
//! never silently dropped: it is counted in `/stats` and gets a result with
//! verdict `error`, so a PLC waiting for one answer per trigger gets one.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::outputs::Outputs;
use crate::config::{Edge, GpioSource};
use crate::daemon::handshake::{Handshake, OutputLines};
use crate::daemon::job::{Completion, Job, Outcome};
use crate::daemon::sink::ResultSink;
use crate::daemon::source::{SourceContext, SourceHandle};
use crate::record::{inspection_id, Verdict};

/// How often the trigger's level is read while a result is held (to see it
/// drop); PLC scan cycles are a few milliseconds and up.
const RELEASE_POLL: Duration = Duration::from_millis(2);

/// How often `ready` is brought up to date with pause and resume.
const READY_POLL: Duration = Duration::from_millis(50);

/// The next edge of a line: when it was read.
pub type EdgeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Instant>> + Send + 'a>>;

/// A requested line with edge detection; dropping it releases the line.
pub trait Line: Send {
    /// Whether the kernel debounces the line (else [`Trigger`] does, in software).
    fn kernel_debounce(&self) -> bool;
    /// Wait for the next edge.
    fn next_edge(&mut self) -> EdgeFuture<'_>;
    /// The line's logical level now (true: active).
    fn level(&self) -> io::Result<bool>;
}

/// Input lines read together (a recipe code); dropping them releases them.
pub trait Inputs: Send {
    /// Each line's logical level, in the order they were requested.
    fn read(&self) -> io::Result<Vec<bool>>;
}

/// Where lines come from: the kernel's GPIO character devices, or a fake in tests.
pub trait Lines: Send + Sync {
    /// Request the line `cfg` names, with its edge detection and debounce.
    fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>>;
    /// Request `lines` of `chip` as inputs.
    fn request_inputs(&self, chip: &Path, lines: &[u32], active_low: bool) -> io::Result<Box<dyn Inputs>>;
    /// Request the output lines of `outputs`, every one driven inactive.
    fn request_outputs(&self, outputs: &Outputs) -> io::Result<Box<dyn OutputLines>>;
}

/// Lines of `/dev/gpiochipN` through gpiocdev. Kernel debounce is used where
/// the kernel has it (uAPI v2); otherwise the line is requested without and
/// [`Trigger`] debounces in software.
#[derive(Debug, Default)]
pub struct Gpiocdev;

/// The environment variable that forces a GPIO uAPI version (`v1` or `v2`) instead of
/// the newest one the kernel offers: for a kernel whose v2 misbehaves, and for testing
/// the v1 path on a kernel that has both (tests/vm).
pub const UAPI_ENV: &str = "WINCLIP_GPIO_UAPI";

/// The uAPI version `value` (of [`UAPI_ENV`]) asks for; `None`: the newest the kernel has.
pub fn parse_uapi(value: &str) -> Result<Option<gpiocdev::AbiVersion>, String> {
    match value.trim() {
        "" | "auto" => Ok(None),
        "v1" => Ok(Some(gpiocdev::AbiVersion::V1)),
        "v2" => Ok(Some(gpiocdev::AbiVersion::V2)),
        other => Err(format!("{UAPI_ENV}={other:?} is none of v1, v2, auto")),
    }
}

/// A request builder for `chip`, with the forced uAPI version if there is one (an
/// unknown value is ignored, loudly: the newest version is the safe choice).
fn builder(chip: &Path) -> gpiocdev::request::Builder {
    let mut b = gpiocdev::Request::builder();
    b.on_chip(chip).with_consumer("winclip-edge");
    match std::env::var(UAPI_ENV).map(|v| parse_uapi(&v)) {
        Ok(Ok(Some(abi))) => {
            log::info!("GPIO: uAPI {abi:?} on {} ({UAPI_ENV})", chip.display());
            b.using_abi_version(abi);
        }
        Ok(Err(e)) => log::warn!("GPIO: {e}; using the newest uAPI the kernel has"),
        Ok(Ok(None)) | Err(_) => {}
    }
    b
}

struct CdevLine {
    request: gpiocdev::tokio::AsyncRequest,
    offset: u32,
    kernel_debounce: bool,
}

impl Line for CdevLine {
    fn kernel_debounce(&self) -> bool {
        self.kernel_debounce
    }

    fn next_edge(&mut self) -> EdgeFuture<'_> {
        Box::pin(async move {
            self.request
                .read_edge_event()
                .await
                .map(|_| Instant::now())
                .map_err(io::Error::other)
        })
    }

    fn level(&self) -> io::Result<bool> {
        let request: &gpiocdev::Request = self.request.as_ref();
        request
            .value(self.offset)
            .map(bool::from)
            .map_err(io::Error::other)
    }
}

struct CdevInputs {
    request: gpiocdev::Request,
    lines: Vec<u32>,
}

impl Inputs for CdevInputs {
    fn read(&self) -> io::Result<Vec<bool>> {
        // One read of every line: the code is latched as a whole.
        let mut values = gpiocdev::line::Values::from_offsets(&self.lines);
        self.request.values(&mut values).map_err(io::Error::other)?;
        self.lines
            .iter()
            .map(|l| {
                values
                    .get(*l)
                    .map(bool::from)
                    .ok_or_else(|| io::Error::other(format!("line {l} was not read")))
            })
            .collect()
    }
}

/// The output lines of one request and the level each is driven to.
struct CdevOutputs {
    request: gpiocdev::Request,
    levels: std::collections::BTreeMap<u32, bool>,
}

impl OutputLines for CdevOutputs {
    /// Sets every line of the request at once, the changed one included: uAPI v1 can only
    /// set all the lines of a request together (v2 could set one alone).
    fn set(&mut self, line: u32, active: bool) -> io::Result<()> {
        let mut levels = self.levels.clone();
        levels.insert(line, active);
        let mut values = gpiocdev::line::Values::default();
        for (l, a) in &levels {
            values.set(*l, gpiocdev::line::Value::from(*a));
        }
        self.request.set_values(&values).map_err(io::Error::other)?;
        self.levels = levels;
        Ok(())
    }
}

impl Lines for Gpiocdev {
    fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>> {
        use gpiocdev::line::EdgeDetection;
        let detection = match cfg.edge {
            Edge::Rising => EdgeDetection::RisingEdge,
            Edge::Falling => EdgeDetection::FallingEdge,
            Edge::Both => EdgeDetection::BothEdges,
        };
        let build = |with_debounce: bool| {
            let mut b = builder(&cfg.chip);
            b.with_line(cfg.line).with_edge_detection(detection);
            if cfg.active_low {
                b.as_active_low();
            }
            if with_debounce && !cfg.debounce.is_zero() {
                b.with_debounce_period(cfg.debounce);
            }
            b.request()
        };
        let (request, kernel_debounce) = match build(true) {
            Ok(r) => (r, true),
            Err(first) => {
                log::info!("GPIO: kernel debounce unavailable ({first}); debouncing in software");
                (build(false).map_err(io::Error::other)?, false)
            }
        };
        Ok(Box::new(CdevLine {
            request: gpiocdev::tokio::AsyncRequest::new(request),
            offset: cfg.line,
            kernel_debounce,
        }))
    }

    fn request_inputs(&self, chip: &Path, lines: &[u32], active_low: bool) -> io::Result<Box<dyn Inputs>> {
        let mut b = builder(chip);
        b.with_lines(lines).as_input();
        if active_low {
            b.as_active_low();
        }
        Ok(Box::new(CdevInputs {
            request: b.request().map_err(io::Error::other)?,
            lines: lines.to_vec(),
        }))
    }

    fn request_outputs(&self, outputs: &Outputs) -> io::Result<Box<dyn OutputLines>> {
        let mut b = builder(&outputs.chip);
        for l in outputs.lines.values() {
            b.with_line(l.line).as_output(gpiocdev::line::Value::Inactive);
            if l.active_low {
                b.as_active_low();
            } else {
                b.as_active_high();
            }
        }
        Ok(Box::new(CdevOutputs {
            request: b.request().map_err(io::Error::other)?,
            // Requested inactive, every one.
            levels: outputs.lines.values().map(|l| (l.line, false)).collect(),
        }))
    }
}

/// The recipe code lines of a source, read at each trigger.
pub struct RecipeCode {
    inputs: Box<dyn Inputs>,
    cfg: GpioSource,
}

impl RecipeCode {
    /// The recipe the lines select now, or why none.
    pub fn read(&self) -> Result<String, String> {
        let lines = &self.cfg.recipe_lines;
        let levels = self
            .inputs
            .read()
            .map_err(|e| format!("cannot read the recipe code lines {lines:?}: {e}"))?;
        let code = levels
            .iter()
            .enumerate()
            .fold(0usize, |c, (bit, on)| c | (usize::from(*on) << bit));
        self.cfg.recipe_of_code(code).map(str::to_string).ok_or_else(|| {
            let bits: Vec<u8> = levels.iter().map(|on| u8::from(*on)).collect();
            format!("recipe code {code} (lines {lines:?} read {bits:?}) selects no recipe in recipe_codes")
        })
    }
}

/// What a source drives and reads for its PLC besides the trigger.
#[derive(Default)]
pub struct Plc {
    /// The recipe code lines.
    pub code: Option<RecipeCode>,
    /// The output lines.
    pub handshake: Option<Handshake>,
}

impl Plc {
    /// Request the code and output lines `cfg` names.
    fn request(cfg: &GpioSource, lines: &dyn Lines) -> io::Result<Self> {
        let code = if cfg.recipe_lines.is_empty() {
            None
        } else {
            let inputs = lines
                .request_inputs(&cfg.chip, &cfg.recipe_lines, cfg.recipe_lines_active_low)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "source {}: GPIO {} recipe code lines {:?}: {e}",
                            cfg.name,
                            cfg.chip.display(),
                            cfg.recipe_lines
                        ),
                    )
                })?;
            Some(RecipeCode {
                inputs,
                cfg: cfg.clone(),
            })
        };
        let handshake = match &cfg.outputs {
            None => None,
            Some(o) => {
                let out = lines.request_outputs(o).map_err(|e| {
                    let wired: Vec<String> = o.lines.iter().map(|(s, l)| format!("{s} {}", l.line)).collect();
                    io::Error::new(
                        e.kind(),
                        format!(
                            "source {}: GPIO {} output lines ({}): {e}",
                            cfg.name,
                            o.chip.display(),
                            wired.join(", ")
                        ),
                    )
                })?;
                Some(Handshake::new(&cfg.name, o.clone(), out))
            }
        };
        Ok(Self { code, handshake })
    }

    /// When the trigger loop must look at the outputs next.
    fn wake(&self, now: Instant) -> Option<Instant> {
        let h = self.handshake.as_ref()?;
        let poll = if h.holding() { RELEASE_POLL } else { READY_POLL };
        Some(h.next_deadline().map_or(now + poll, |d| d.min(now + poll)))
    }

    /// Bring the outputs up to date: `ready`, a dropped trigger, pulses and holds.
    fn tick(&mut self, line: &dyn Line, edge: Edge, ready: bool) {
        let Some(h) = &mut self.handshake else {
            return;
        };
        h.set_ready(ready);
        if h.holding() && edge != Edge::Both {
            // After a rising edge the trigger is active; it drops when it is not.
            match line.level() {
                Ok(level) if level != (edge == Edge::Rising) => h.released(),
                Ok(_) => {}
                Err(e) => log::debug!("cannot read the trigger's level: {e}"),
            }
        }
        h.tick(Instant::now());
    }

    fn answer(&mut self, verdict: Verdict) {
        if let Some(h) = &mut self.handshake {
            h.result(verdict, Instant::now());
        }
    }
}

/// Request the lines of `cfg` from `lines` and start triggering on them.
/// The lines are requested before this returns: a line that cannot be had
/// is an error here.
pub fn build(cfg: &GpioSource, ctx: SourceContext, lines: &dyn Lines) -> io::Result<SourceHandle> {
    let line = lines.request(cfg).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "source {}: GPIO {} line {}: {e}",
                cfg.name,
                cfg.chip.display(),
                cfg.line
            ),
        )
    })?;
    let plc = Plc::request(cfg, lines)?;
    let button = cfg
        .teach_line
        .map(|l| {
            lines.request(&button_line(cfg, l)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "source {}: teach button, GPIO {} line {l}: {e}",
                        cfg.name,
                        cfg.chip.display()
                    ),
                )
            })
        })
        .transpose()?;
    log::info!(
        "source {}: GPIO {} line {}, {:?} edge{}{}",
        cfg.name,
        cfg.chip.display(),
        cfg.line,
        cfg.edge,
        if plc.code.is_some() {
            format!(", recipe code on lines {:?}", cfg.recipe_lines)
        } else {
            String::new()
        },
        if plc.handshake.is_some() {
            ", PLC outputs"
        } else {
            ""
        }
    );
    let trigger = Trigger {
        name: cfg.name.clone(),
        capture: cfg.capture.clone(),
        timeout: cfg.capture_timeout,
        output_dir: cfg.output_dir.clone(),
        keep: cfg.keep_captures,
        edge: cfg.edge,
        debounce: if line.kernel_debounce() {
            Duration::ZERO
        } else {
            cfg.debounce
        },
        sink: ctx.sink.clone(),
    };
    let mut tasks = vec![tokio::spawn(trigger.run(
        line,
        plc,
        ctx.jobs,
        ctx.shutdown.clone(),
    ))];
    if let Some(b) = button {
        let debounce = if b.kernel_debounce() {
            Duration::ZERO
        } else {
            cfg.debounce
        };
        log::info!(
            "source {}: teach button on line {}: a press teaches the last picture as {}",
            cfg.name,
            cfg.teach_line.unwrap_or_default(),
            cfg.teach_as.name()
        );
        tasks.push(tokio::spawn(teach_button(
            b,
            cfg.name.clone(),
            cfg.teach_as,
            debounce,
            ctx.commands,
            ctx.shutdown.clone(),
        )));
    }
    Ok(SourceHandle::new(&cfg.name, ctx.shutdown, tasks))
}

/// The teach button's line: same chip, polarity and debounce as the trigger, a press is a rising edge.
fn button_line(cfg: &GpioSource, line: u32) -> GpioSource {
    GpioSource {
        line,
        edge: Edge::Rising,
        recipe_lines: Vec::new(),
        recipe_codes: Vec::new(),
        outputs: None,
        teach_line: None,
        ..cfg.clone()
    }
}

/// Each press sends `{"command": "teach", "source": <name>, "as": …}` to the
/// station's command queue and logs the answer.
async fn teach_button(
    mut line: Box<dyn Line>,
    source: String,
    set: crate::recipe_dir::Set,
    debounce: Duration,
    commands: mpsc::Sender<crate::daemon::commands::Incoming>,
    shutdown: CancellationToken,
) {
    let mut last: Option<Instant> = None;
    loop {
        let at = tokio::select! {
            _ = shutdown.cancelled() => break,
            edge = line.next_edge() => match edge {
                Ok(at) => at,
                Err(e) => {
                    log::error!("source {source}: teach button line failed: {e}");
                    break;
                }
            },
        };
        if last.is_some_and(|l| at.duration_since(l) < debounce) {
            continue;
        }
        last = Some(at);
        let payload = serde_json::json!({
            "command": "teach",
            "source": source,
            "as": set.name(),
            "request_id": format!("teach button of {source}"),
        });
        let (reply, answer) = tokio::sync::oneshot::channel();
        let incoming = crate::daemon::commands::Incoming {
            payload: payload.to_string().into_bytes(),
            reply: Some(reply),
        };
        if commands.send(incoming).await.is_err() {
            break;
        }
        let source = source.clone();
        tokio::spawn(async move {
            let Ok(bytes) = answer.await else { return };
            let r: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if r["ok"] == true {
                log::info!("source {source}: teach button pressed: teaching its last picture");
            } else {
                log::warn!("source {source}: teach button pressed, refused: {}", r["error"]);
            }
        });
    }
}

/// The trigger → capture → inspect logic of one GPIO source.
pub struct Trigger {
    /// Source name.
    pub name: String,
    /// Capture argv with `{output}`.
    pub capture: Vec<String>,
    /// Capture time limit.
    pub timeout: Duration,
    /// Where captures go.
    pub output_dir: PathBuf,
    /// Keep captures after inspection.
    pub keep: bool,
    /// The edge that triggers (the handshake waits for the trigger to drop back).
    pub edge: Edge,
    /// Software debounce (zero when the kernel debounces).
    pub debounce: Duration,
    /// Result sink for error results.
    pub sink: ResultSink,
}

impl Trigger {
    /// Handle edges until `shutdown` is cancelled or the line fails; then
    /// stop running captures, drive the outputs inactive and release the lines.
    pub async fn run(
        self,
        mut line: Box<dyn Line>,
        mut plc: Plc,
        jobs: flume::Sender<Job>,
        shutdown: CancellationToken,
    ) {
        let busy = Arc::new(AtomicBool::new(false));
        let this = Arc::new(self);
        let mut captures = JoinSet::new();
        let mut count = 0u64;
        let mut last: Option<Instant> = None;
        // Verdicts of accepted triggers, for the outputs: (trigger, verdict).
        let (verdicts, mut verdicts_rx) = mpsc::unbounded_channel::<(u64, Verdict)>();
        let mut accepted = 0u64;
        plc.tick(&*line, this.edge, !this.sink.paused());
        loop {
            let now = Instant::now();
            let wake = plc.wake(now);
            let at = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = captures.join_next(), if !captures.is_empty() => continue,
                Some((n, verdict)) = verdicts_rx.recv() => {
                    // Only the trigger the outputs wait for sets them.
                    if n == accepted {
                        plc.answer(verdict);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now + READY_POLL).into()), if wake.is_some() => {
                    plc.tick(&*line, this.edge, !this.sink.paused());
                    continue;
                }
                edge = line.next_edge() => match edge {
                    Ok(at) => at,
                    Err(e) => {
                        log::error!("source {}: GPIO line failed: {e}", this.name);
                        break;
                    }
                },
            };
            if last.is_some_and(|l| at.duration_since(l) < this.debounce) {
                continue;
            }
            last = Some(at);
            count += 1;
            let detected_at = SystemTime::now();
            if this.sink.paused() {
                log::warn!(
                    "source {}: trigger #{count} while the station is paused",
                    this.name
                );
                this.report(
                    count,
                    detected_at,
                    format!("trigger #{count} not inspected: the station is paused (command \"resume\")"),
                );
                accepted = count;
                plc.answer(Verdict::Error);
                continue;
            }
            if busy.swap(true, Ordering::AcqRel) {
                this.sink.stats().busy_triggers.fetch_add(1, Ordering::Relaxed);
                log::warn!("source {}: trigger #{count} arrived while busy", this.name);
                this.report(
                    count,
                    detected_at,
                    format!("trigger #{count} ignored: station busy with the previous trigger"),
                );
                continue;
            }
            accepted = count;
            if let Some(h) = &mut plc.handshake {
                h.trigger();
            }
            // Latched now, at the trigger: the PLC may change the code once busy rises.
            let recipe = match plc.code.as_ref().map(RecipeCode::read).transpose() {
                Ok(r) => r,
                Err(e) => {
                    busy.store(false, Ordering::Release);
                    log::warn!("source {}: trigger #{count}: {e}", this.name);
                    this.report(count, detected_at, format!("trigger #{count} not inspected: {e}"));
                    plc.answer(Verdict::Error);
                    continue;
                }
            };
            let (this, jobs, verdicts) = (Arc::clone(&this), jobs.clone(), verdicts.clone());
            // Frees the station when the job is done, or dropped unfinished.
            let done = CaptureDone {
                path: None,
                keep: this.keep,
                busy: Arc::clone(&busy),
                trigger: count,
                verdicts: verdicts.clone(),
            };
            captures.spawn(async move {
                let mut done = done;
                match this.capture(count).await {
                    Ok(path) => {
                        done.path = Some(path.clone());
                        let job = Job {
                            source: this.name.clone(),
                            path,
                            trigger: Some(count),
                            recipe,
                            detected: at,
                            detected_at,
                            completion: Box::new(done),
                        };
                        let _ = jobs.send_async(job).await;
                    }
                    Err(e) => {
                        this.report(
                            count,
                            detected_at,
                            format!("trigger #{count}: capture failed: {e}"),
                        );
                        let _ = verdicts.send((count, Verdict::Error));
                    }
                }
            });
        }
        // The line is released at once; triggers already captured still get
        // their answer (each capture is bounded by its time limit).
        drop(line);
        if let Some(h) = &mut plc.handshake {
            h.safe();
        }
        drop(plc);
        log::debug!("source {}: GPIO lines released", this.name);
        while captures.join_next().await.is_some() {}
    }

    fn report(&self, count: u64, detected_at: SystemTime, error: String) {
        let ms = detected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let id = inspection_id(
            self.sink.station(),
            &self.name,
            &format!("trigger-{count}-{ms}"),
            b"",
        );
        let mut rec = self.sink.error_record(id, &self.name, detected_at, error);
        rec.trigger = Some(count);
        if let Err(e) = self.sink.store(&rec, None, None) {
            log::error!("cannot store trigger error result: {e}");
        }
    }

    /// Run the capture command for trigger `count`; returns the image path.
    async fn capture(&self, count: u64) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.output_dir)?;
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let output = self.output_dir.join(format!("{}-{ms}-{count}.jpg", self.name));
        let out_s = output.to_string_lossy();
        let argv: Vec<String> = self
            .capture
            .iter()
            .map(|a| a.replace("{output}", &out_s))
            .collect();
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty capture command"))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("{program}: {e}")))?;
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(std::io::Error::other(format!(
                    "{program} took longer than {:?}",
                    self.timeout
                )));
            }
        };
        if !status.success() {
            return Err(std::io::Error::other(format!("{program} exited with {status}")));
        }
        if !output.is_file() {
            return Err(std::io::Error::other(format!(
                "{program} did not write {}",
                output.display()
            )));
        }
        Ok(output)
    }
}

/// The after-action of one capture: the file goes (unless kept) once its
/// result is stored, the outputs are told the verdict, and the station is
/// free for the next trigger.
struct CaptureDone {
    path: Option<PathBuf>,
    keep: bool,
    busy: Arc<AtomicBool>,
    trigger: u64,
    verdicts: mpsc::UnboundedSender<(u64, Verdict)>,
}

impl Completion for CaptureDone {
    fn complete(self: Box<Self>, outcome: Outcome) {
        if let (Some(path), false, true) = (&self.path, self.keep, outcome.stored()) {
            let _ = std::fs::remove_file(path);
        }
        let _ = self.verdicts.send((self.trigger, outcome.verdict()));
    }
}

impl Drop for CaptureDone {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// A fake GPIO chip for tests: lines are exclusive like the kernel's (a
/// second request of a held line fails with EBUSY), edges are injected,
/// input levels set, and output writes logged.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;
    use crate::daemon::handshake::fake::{Log, Logged};

    #[derive(Default)]
    struct State {
        /// Trigger lines, with where their edges go.
        edges: HashMap<u32, mpsc::UnboundedSender<Instant>>,
        /// Every requested line.
        held: HashSet<u32>,
        /// Input levels (logical); unset lines read inactive.
        levels: HashMap<u32, bool>,
    }

    type Shared = Arc<Mutex<State>>;

    /// The chip.
    #[derive(Default)]
    pub(crate) struct FakeChip {
        state: Shared,
        /// Every output write, in order.
        pub(crate) writes: Log,
    }

    impl FakeChip {
        /// Request a line as another program would.
        pub(crate) fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>> {
            Lines::request(self, cfg)
        }

        /// Whether `line` is requested.
        pub(crate) fn is_held(&self, line: u32) -> bool {
            self.state.lock().unwrap().held.contains(&line)
        }

        /// An edge on `line`; false when nobody holds it.
        pub(crate) fn edge(&self, line: u32) -> bool {
            self.state
                .lock()
                .unwrap()
                .edges
                .get(&line)
                .is_some_and(|tx| tx.send(Instant::now()).is_ok())
        }

        /// Drive input `line` (as the PLC would).
        pub(crate) fn set_level(&self, line: u32, active: bool) {
            self.state.lock().unwrap().levels.insert(line, active);
        }

        /// What output `line` shows now (inactive before any write).
        pub(crate) fn output(&self, line: u32) -> bool {
            self.writes
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(l, _)| *l == line)
                .is_some_and(|(_, on)| *on)
        }

        fn claim(&self, lines: &[u32]) -> io::Result<()> {
            let mut st = self.state.lock().unwrap();
            if lines.iter().any(|l| st.held.contains(l)) {
                return Err(io::Error::from_raw_os_error(nix::libc::EBUSY));
            }
            st.held.extend(lines);
            Ok(())
        }
    }

    /// Releases its lines when dropped.
    struct Claim {
        lines: Vec<u32>,
        state: Shared,
    }

    impl Drop for Claim {
        fn drop(&mut self) {
            let mut st = self.state.lock().unwrap();
            for l in &self.lines {
                st.held.remove(l);
                st.edges.remove(l);
            }
        }
    }

    struct FakeLine {
        line: u32,
        edges: mpsc::UnboundedReceiver<Instant>,
        claim: Claim,
    }

    impl Line for FakeLine {
        fn kernel_debounce(&self) -> bool {
            true
        }

        fn next_edge(&mut self) -> EdgeFuture<'_> {
            Box::pin(async move {
                self.edges
                    .recv()
                    .await
                    .ok_or_else(|| io::Error::other("fake line closed"))
            })
        }

        fn level(&self) -> io::Result<bool> {
            let st = self.claim.state.lock().unwrap();
            Ok(st.levels.get(&self.line).copied().unwrap_or(false))
        }
    }

    struct FakeInputs(Claim);

    impl Inputs for FakeInputs {
        fn read(&self) -> io::Result<Vec<bool>> {
            let st = self.0.state.lock().unwrap();
            Ok(self
                .0
                .lines
                .iter()
                .map(|l| st.levels.get(l).copied().unwrap_or(false))
                .collect())
        }
    }

    struct FakeOutputs(Logged, #[allow(dead_code)] Claim);

    impl OutputLines for FakeOutputs {
        fn set(&mut self, line: u32, active: bool) -> io::Result<()> {
            self.0.set(line, active)
        }
    }

    impl Lines for FakeChip {
        fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>> {
            self.claim(&[cfg.line])?;
            let (tx, edges) = mpsc::unbounded_channel();
            self.state.lock().unwrap().edges.insert(cfg.line, tx);
            Ok(Box::new(FakeLine {
                line: cfg.line,
                edges,
                claim: Claim {
                    lines: vec![cfg.line],
                    state: Arc::clone(&self.state),
                },
            }))
        }

        fn request_inputs(
            &self,
            _chip: &Path,
            lines: &[u32],
            _active_low: bool,
        ) -> io::Result<Box<dyn Inputs>> {
            self.claim(lines)?;
            Ok(Box::new(FakeInputs(Claim {
                lines: lines.to_vec(),
                state: Arc::clone(&self.state),
            })))
        }

        fn request_outputs(&self, outputs: &Outputs) -> io::Result<Box<dyn OutputLines>> {
            let lines: Vec<u32> = outputs.lines.values().map(|l| l.line).collect();
            self.claim(&lines)?;
            Ok(Box::new(FakeOutputs(
                Logged(self.writes.clone()),
                Claim {
                    lines,
                    state: Arc::clone(&self.state),
                },
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::fake::FakeChip;
    use super::*;
    use crate::daemon::outbox::Outbox;
    use crate::daemon::stats::Stats;

    #[test]
    fn the_uapi_version_is_forced_only_by_a_known_value() {
        assert_eq!(parse_uapi("v1"), Ok(Some(gpiocdev::AbiVersion::V1)));
        assert_eq!(parse_uapi(" v2\n"), Ok(Some(gpiocdev::AbiVersion::V2)));
        assert_eq!(parse_uapi(""), Ok(None));
        assert_eq!(parse_uapi("auto"), Ok(None));
        let e = parse_uapi("V1").unwrap_err();
        assert!(
            e.contains("WINCLIP_GPIO_UAPI=\"V1\" is none of v1, v2, auto"),
            "{e}"
        );
    }

    /// A line whose edges come from a channel; it ends when the sender is dropped.
    struct ChannelLine(mpsc::Receiver<Instant>);

    impl Line for ChannelLine {
        fn kernel_debounce(&self) -> bool {
            false
        }

        fn next_edge(&mut self) -> EdgeFuture<'_> {
            Box::pin(async move { self.0.recv().await.ok_or_else(|| io::Error::other("closed")) })
        }

        fn level(&self) -> io::Result<bool> {
            Ok(false)
        }
    }

    struct Rig {
        sink: ResultSink,
        outbox: Arc<Mutex<Outbox>>,
    }

    fn rig(dir: &std::path::Path) -> Rig {
        let outbox = Arc::new(Mutex::new(
            Outbox::open(&dir.join("outbox"), 100, 1 << 20).unwrap(),
        ));
        let sink = ResultSink::new(
            "s",
            Arc::clone(&outbox),
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(Stats::default()),
        );
        Rig { sink, outbox }
    }

    fn trigger(dir: &std::path::Path, rig: &Rig, capture: Vec<String>, debounce: Duration) -> Trigger {
        Trigger {
            name: "t".into(),
            capture,
            timeout: Duration::from_secs(5),
            output_dir: dir.join("captures"),
            keep: false,
            edge: Edge::Rising,
            debounce,
            sink: rig.sink.clone(),
        }
    }

    fn config(dir: &std::path::Path, line: u32) -> GpioSource {
        GpioSource {
            name: "t".into(),
            chip: "/dev/fake".into(),
            line,
            edge: Edge::Rising,
            debounce: Duration::ZERO,
            active_low: false,
            capture: vec!["false".into(), "{output}".into()],
            capture_timeout: Duration::from_secs(5),
            output_dir: dir.join("captures"),
            keep_captures: false,
            recipe_lines: Vec::new(),
            recipe_lines_active_low: false,
            recipe_codes: Vec::new(),
            outputs: None,
            teach_line: None,
            teach_as: crate::recipe_dir::Set::Calibration,
        }
    }

    fn results(rig: &Rig) -> Vec<serde_json::Value> {
        let ob = rig.outbox.lock().unwrap();
        ob.index()
            .after(0)
            .map(|s| serde_json::from_slice(&ob.read(s).unwrap().unwrap().json).unwrap())
            .collect()
    }

    /// Wait (up to 60 s) until `n` results are stored; no timing is asserted.
    async fn wait_results(rig: &Rig, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..1200 {
            let r = results(rig);
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        results(rig)
    }

    /// A running trigger whose capture writes a file, fed edges through the
    /// sender; its jobs come out of the receiver (nobody inspects them).
    fn capturing_trigger(
        dir: &std::path::Path,
        rig: &Rig,
    ) -> (
        mpsc::Sender<Instant>,
        flume::Receiver<Job>,
        tokio::task::JoinHandle<()>,
    ) {
        let cmd = vec![
            "sh".into(),
            "-c".into(),
            "printf x > \"$0\"".into(),
            "{output}".into(),
        ];
        let t = trigger(dir, rig, cmd, Duration::ZERO);
        let (etx, erx) = mpsc::channel(8);
        let (jtx, jrx) = flume::bounded(8);
        let task = tokio::spawn(t.run(
            Box::new(ChannelLine(erx)),
            Plc::default(),
            jtx,
            CancellationToken::new(),
        ));
        (etx, jrx, task)
    }

    #[tokio::test]
    async fn a_trigger_while_paused_is_answered_with_an_error_result_and_captures_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        rig.sink.set_paused(true);
        let (etx, jrx, task) = capturing_trigger(dir.path(), &rig);
        etx.send(Instant::now()).await.unwrap();
        drop(etx);
        task.await.unwrap();
        let res = wait_results(&rig, 1).await;
        assert_eq!(res.len(), 1);
        assert_eq!(res[0]["verdict"], "error");
        assert!(res[0]["error"].as_str().unwrap().contains("paused"), "{}", res[0]);
        assert!(jrx.try_recv().is_err(), "no job: nothing was captured");
    }

    #[tokio::test]
    async fn a_trigger_while_busy_is_counted_and_answered_with_an_error_result() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        // The capture writes a file; the job stays queued (nobody inspects), so the station stays busy.
        let (etx, jrx, task) = capturing_trigger(dir.path(), &rig);
        etx.send(Instant::now()).await.unwrap();
        let job = tokio::time::timeout(Duration::from_secs(10), jrx.recv_async())
            .await
            .unwrap()
            .unwrap();
        etx.send(Instant::now()).await.unwrap();
        etx.send(Instant::now()).await.unwrap();
        drop(etx);
        task.await.unwrap();
        assert_eq!(rig.sink.stats().busy_triggers.load(Ordering::Relaxed), 2);
        let res = wait_results(&rig, 2).await;
        assert_eq!(res.len(), 2);
        assert_eq!(res[0]["verdict"], "error");
        assert_eq!(res[0]["trigger"], 2);
        assert!(res[0]["error"].as_str().unwrap().contains("busy"));
        assert_eq!(job.trigger, Some(1));
        assert_eq!(std::fs::read(&job.path).unwrap(), b"x");
        // Completing the job frees the station and removes the capture.
        let path = job.path.clone();
        job.completion
            .complete(Outcome::Judged(crate::inspector::Verdict::Pass));
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_failing_capture_gives_an_error_result_and_frees_the_station() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        let t = trigger(
            dir.path(),
            &rig,
            vec!["false".into(), "{output}".into()],
            Duration::ZERO,
        );
        let (etx, erx) = mpsc::channel(8);
        let (jtx, _jrx) = flume::bounded(8);
        let task = tokio::spawn(t.run(
            Box::new(ChannelLine(erx)),
            Plc::default(),
            jtx,
            CancellationToken::new(),
        ));
        etx.send(Instant::now()).await.unwrap();
        assert_eq!(wait_results(&rig, 1).await.len(), 1);
        // The failed capture freed the station: the next trigger is captured, not "busy".
        etx.send(Instant::now()).await.unwrap();
        let res = wait_results(&rig, 2).await;
        drop(etx);
        task.await.unwrap();
        assert_eq!(res.len(), 2, "{res:?}");
        for r in &res {
            assert!(r["error"].as_str().unwrap().contains("capture failed"), "{r}");
        }
        assert_eq!(rig.sink.stats().busy_triggers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn software_debounce_drops_bounces() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        let t = trigger(
            dir.path(),
            &rig,
            vec!["false".into(), "{output}".into()],
            Duration::from_millis(50),
        );
        let (etx, erx) = mpsc::channel(8);
        let (jtx, _jrx) = flume::bounded(8);
        let task = tokio::spawn(t.run(
            Box::new(ChannelLine(erx)),
            Plc::default(),
            jtx,
            CancellationToken::new(),
        ));
        let t0 = Instant::now();
        for ms in [0u64, 5, 10, 200] {
            etx.send(t0 + Duration::from_millis(ms)).await.unwrap();
        }
        drop(etx);
        task.await.unwrap();
        let res = wait_results(&rig, 2).await;
        let triggers: Vec<u64> = res.iter().map(|r| r["trigger"].as_u64().unwrap()).collect();
        assert_eq!(triggers.len(), 2, "two edges survive debouncing: {res:?}");
    }

    /// Wait (up to 60 s) until `cond` holds; no timing is asserted.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..6000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    const READY: u32 = 20;
    const BUSY: u32 = 21;
    const PASS: u32 = 22;
    const FAIL: u32 = 23;
    const ERROR: u32 = 24;
    const VALID: u32 = 25;

    /// A source on line 17 with a 2-line recipe code (3, 4) and every output wired.
    fn plc_config(dir: &std::path::Path) -> GpioSource {
        use crate::config::outputs::{OutputLine, Signal};
        let level = |line| OutputLine {
            line,
            active_low: false,
            pulse: Duration::ZERO,
        };
        let mut cfg = config(dir, 17);
        cfg.capture = vec![
            "sh".into(),
            "-c".into(),
            "printf x > \"$0\"".into(),
            "{output}".into(),
        ];
        cfg.recipe_lines = vec![3, 4];
        cfg.recipe_codes = vec!["".into(), "a".into(), "b".into()];
        cfg.outputs = Some(Outputs {
            chip: "/dev/fake".into(),
            hold: Duration::from_secs(30),
            lines: [
                (Signal::Ready, level(READY)),
                (Signal::Busy, level(BUSY)),
                (Signal::Pass, level(PASS)),
                (Signal::Fail, level(FAIL)),
                (Signal::Error, level(ERROR)),
                (Signal::ResultValid, level(VALID)),
            ]
            .into(),
        });
        cfg
    }

    /// Issue #17: the recipe code is latched at the trigger and goes with
    /// the job; the outputs follow the handshake (busy, one result line,
    /// result_valid until the trigger drops; ready follows pause), and a
    /// stopped source leaves every output inactive and its lines free.
    #[tokio::test]
    async fn the_recipe_code_is_latched_at_the_trigger_and_the_outputs_follow_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        let chip = Arc::new(FakeChip::default());
        let (jtx, jrx) = flume::bounded(8);
        let ctx = SourceContext {
            jobs: jtx,
            sink: rig.sink.clone(),
            shutdown: CancellationToken::new(),
            state_dir: dir.path().to_owned(),
            commands: mpsc::channel(1).0,
        };
        let handle = build(&plc_config(dir.path()), ctx, &*chip).unwrap();
        for l in [17, 3, 4, READY, BUSY, PASS, FAIL, ERROR, VALID] {
            assert!(chip.is_held(l), "line {l}");
        }
        let on = |l| chip.output(l);
        until("ready", || on(READY)).await;
        assert!(!on(BUSY) && !on(VALID));

        // Code 1 (line 3 high): recipe "a"; the PLC changes the code once busy rises.
        chip.set_level(3, true);
        chip.set_level(17, true);
        assert!(chip.edge(17));
        let job = tokio::time::timeout(Duration::from_secs(60), jrx.recv_async())
            .await
            .unwrap()
            .unwrap();
        assert!(on(BUSY));
        chip.set_level(4, true);
        assert_eq!(job.recipe.as_deref(), Some("a"), "latched at the trigger");
        job.completion
            .complete(Outcome::Judged(crate::inspector::Verdict::Fail));
        until("fail and result_valid", || on(FAIL) && on(VALID)).await;
        assert!(!on(BUSY) && !on(PASS) && !on(ERROR));
        // The result line was set before result_valid rose.
        let writes = chip.writes.lock().unwrap().clone();
        let at = |w: (u32, bool)| writes.iter().position(|x| *x == w).unwrap();
        assert!(at((FAIL, true)) < at((VALID, true)), "{writes:?}");
        assert!(at((BUSY, false)) < at((VALID, true)), "{writes:?}");
        // The trigger drops: the result is withdrawn.
        chip.set_level(17, false);
        until("result withdrawn", || !on(VALID) && !on(FAIL)).await;

        // Code 3 (both lines) is past recipe_codes; code 0 is "": no recipe, an error answer.
        for (l3, l4) in [(true, true), (false, false)] {
            chip.set_level(3, l3);
            chip.set_level(4, l4);
            let before = results(&rig).len();
            chip.set_level(17, true);
            assert!(chip.edge(17));
            until("error answered", || on(ERROR) && on(VALID)).await;
            let res = wait_results(&rig, before + 1).await;
            let err = res.last().unwrap()["error"].as_str().unwrap().to_string();
            assert!(err.contains("selects no recipe"), "{err}");
            chip.set_level(17, false);
            until("error withdrawn", || !on(ERROR) && !on(VALID)).await;
        }
        assert!(jrx.try_recv().is_err(), "no capture without a recipe");

        // Code 2 (line 4): recipe "b", passes.
        chip.set_level(4, true);
        chip.set_level(17, true);
        assert!(chip.edge(17));
        let job = tokio::time::timeout(Duration::from_secs(60), jrx.recv_async())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.recipe.as_deref(), Some("b"));
        job.completion
            .complete(Outcome::Judged(crate::inspector::Verdict::Pass));
        until("pass", || on(PASS) && on(VALID)).await;

        // Paused: ready falls; a trigger is answered with error.
        rig.sink.set_paused(true);
        until("not ready", || !on(READY)).await;
        rig.sink.set_paused(false);
        until("ready again", || on(READY)).await;

        handle.stop().await;
        for l in [READY, BUSY, PASS, FAIL, ERROR, VALID] {
            assert!(!on(l), "output {l} inactive after stop");
        }
        for l in [17, 3, 4, READY, VALID] {
            assert!(!chip.is_held(l), "line {l} released");
        }
    }

    /// Issue #15, bug 2: the line request belongs to the source's handle.
    /// Stopping the source releases the line at once, without waiting for
    /// another edge, so it can be requested again (a reload, or restoring
    /// the old sources after a failed one).
    #[tokio::test]
    async fn stopping_a_source_releases_its_line_so_it_can_be_requested_again() {
        let dir = tempfile::tempdir().unwrap();
        let rig = rig(dir.path());
        let chip = FakeChip::default();
        let (jtx, _jrx) = flume::bounded(8);
        let ctx = |token: CancellationToken| SourceContext {
            jobs: jtx.clone(),
            sink: rig.sink.clone(),
            shutdown: token,
            state_dir: dir.path().to_owned(),
            commands: mpsc::channel(1).0,
        };
        let cfg = config(dir.path(), 17);
        let handle = build(&cfg, ctx(CancellationToken::new()), &chip).unwrap();
        assert!(chip.is_held(17));
        let again = build(&cfg, ctx(CancellationToken::new()), &chip);
        assert!(
            again.unwrap_err().to_string().contains("line 17"),
            "a held line is refused, as the kernel does"
        );
        handle.stop().await;
        assert!(
            !chip.is_held(17),
            "released when the source stopped, with no edge in between"
        );
        let handle = build(&cfg, ctx(CancellationToken::new()), &chip).unwrap();
        // The new request works: an edge gives a result (the capture fails here).
        assert!(chip.edge(17));
        assert_eq!(wait_results(&rig, 1).await.len(), 1);
        // Dropping the handle (a failed start) releases the line too.
        drop(handle);
        for _ in 0..200 {
            if !chip.is_held(17) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!chip.is_held(17));
    }
}
