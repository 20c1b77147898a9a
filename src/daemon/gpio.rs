//! The GPIO trigger source: an edge on a line runs a capture command, and the
//! image it writes is inspected.
//!
//! Split in two so the trigger logic is tested without hardware: [`Lines`]
//! requests a line and yields its edges ([`Gpiocdev`]: `/dev/gpiochipN`,
//! uAPI v2 with v1 fallback); [`Trigger`] turns any line's edges into jobs.
//! The task that holds the line request belongs to the source's handle, so
//! stopping the source releases the line at once (a reload can request it
//! again). A trigger that arrives while the previous one is still being
//! captured or inspected is never silently dropped: it is counted in
//! `/stats` and gets a result with verdict `error`, so a PLC waiting for one
//! answer per trigger gets one.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Edge, GpioSource};
use crate::daemon::job::{Completion, Job, Outcome};
use crate::daemon::sink::ResultSink;
use crate::daemon::source::{SourceContext, SourceHandle};
use crate::record::inspection_id;

/// The next edge of a line: when it was read.
pub type EdgeFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Instant>> + Send + 'a>>;

/// A requested line with edge detection; dropping it releases the line.
pub trait Line: Send {
    /// Whether the kernel debounces the line (else [`Trigger`] does, in software).
    fn kernel_debounce(&self) -> bool;
    /// Wait for the next edge.
    fn next_edge(&mut self) -> EdgeFuture<'_>;
}

/// Where lines come from: the kernel's GPIO character devices, or a fake in tests.
pub trait Lines: Send + Sync {
    /// Request the line `cfg` names, with its edge detection and debounce.
    fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>>;
}

/// Lines of `/dev/gpiochipN` through gpiocdev. Kernel debounce is used where
/// the kernel has it (uAPI v2); otherwise the line is requested without and
/// [`Trigger`] debounces in software.
#[derive(Debug, Default)]
pub struct Gpiocdev;

struct CdevLine {
    request: gpiocdev::tokio::AsyncRequest,
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
            let mut b = gpiocdev::Request::builder();
            b.on_chip(&cfg.chip)
                .with_consumer("winclip-edge")
                .with_line(cfg.line)
                .with_edge_detection(detection);
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
            kernel_debounce,
        }))
    }
}

/// Request the line of `cfg` from `lines` and start triggering on it. The
/// line is requested before this returns: a line that cannot be had is an
/// error here.
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
    log::info!(
        "source {}: GPIO {} line {}, {:?} edge",
        cfg.name,
        cfg.chip.display(),
        cfg.line,
        cfg.edge
    );
    let trigger = Trigger {
        name: cfg.name.clone(),
        capture: cfg.capture.clone(),
        timeout: cfg.capture_timeout,
        output_dir: cfg.output_dir.clone(),
        keep: cfg.keep_captures,
        debounce: if line.kernel_debounce() {
            Duration::ZERO
        } else {
            cfg.debounce
        },
        sink: ctx.sink.clone(),
    };
    let task = tokio::spawn(trigger.run(line, ctx.jobs, ctx.shutdown.clone()));
    Ok(SourceHandle::new(&cfg.name, ctx.shutdown, vec![task]))
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
    /// Software debounce (zero when the kernel debounces).
    pub debounce: Duration,
    /// Result sink for error results.
    pub sink: ResultSink,
}

impl Trigger {
    /// Handle edges until `shutdown` is cancelled or the line fails; then
    /// stop running captures and release the line.
    pub async fn run(self, mut line: Box<dyn Line>, jobs: flume::Sender<Job>, shutdown: CancellationToken) {
        let busy = Arc::new(AtomicBool::new(false));
        let this = Arc::new(self);
        let mut captures = JoinSet::new();
        let mut count = 0u64;
        let mut last: Option<Instant> = None;
        loop {
            let at = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = captures.join_next(), if !captures.is_empty() => continue,
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
            let (this, jobs) = (Arc::clone(&this), jobs.clone());
            // Frees the station when the job is done, or dropped unfinished.
            let done = CaptureDone {
                path: None,
                keep: this.keep,
                busy: Arc::clone(&busy),
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
                            detected: at,
                            detected_at,
                            completion: Box::new(done),
                        };
                        let _ = jobs.send_async(job).await;
                    }
                    Err(e) => this.report(
                        count,
                        detected_at,
                        format!("trigger #{count}: capture failed: {e}"),
                    ),
                }
            });
        }
        // The line is released at once; triggers already captured still get
        // their answer (each capture is bounded by its time limit).
        drop(line);
        log::debug!("source {}: GPIO line released", this.name);
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
/// result is stored, and the station is free for the next trigger.
struct CaptureDone {
    path: Option<PathBuf>,
    keep: bool,
    busy: Arc<AtomicBool>,
}

impl Completion for CaptureDone {
    fn complete(self: Box<Self>, outcome: Outcome) {
        if let (Some(path), false, true) = (&self.path, self.keep, outcome.stored()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for CaptureDone {
    fn drop(&mut self) {
        self.busy.store(false, Ordering::Release);
    }
}

/// A fake GPIO chip for tests: lines are exclusive like the kernel's (a
/// second request of a held line fails with EBUSY) and edges are injected.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;

    use super::*;

    type Held = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Instant>>>>;

    /// The chip.
    #[derive(Default)]
    pub(crate) struct FakeChip {
        held: Held,
    }

    impl FakeChip {
        /// Request a line as another program would.
        pub(crate) fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>> {
            Lines::request(self, cfg)
        }

        /// Whether `line` is requested.
        pub(crate) fn is_held(&self, line: u32) -> bool {
            self.held.lock().unwrap().contains_key(&line)
        }

        /// An edge on `line`; false when nobody holds it.
        pub(crate) fn edge(&self, line: u32) -> bool {
            self.held
                .lock()
                .unwrap()
                .get(&line)
                .is_some_and(|tx| tx.send(Instant::now()).is_ok())
        }
    }

    struct FakeLine {
        line: u32,
        edges: mpsc::UnboundedReceiver<Instant>,
        held: Held,
    }

    impl Drop for FakeLine {
        fn drop(&mut self) {
            self.held.lock().unwrap().remove(&self.line);
        }
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
    }

    impl Lines for FakeChip {
        fn request(&self, cfg: &GpioSource) -> io::Result<Box<dyn Line>> {
            let mut held = self.held.lock().unwrap();
            if held.contains_key(&cfg.line) {
                return Err(io::Error::from_raw_os_error(nix::libc::EBUSY));
            }
            let (tx, edges) = mpsc::unbounded_channel();
            held.insert(cfg.line, tx);
            Ok(Box::new(FakeLine {
                line: cfg.line,
                edges,
                held: Arc::clone(&self.held),
            }))
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

    /// A line whose edges come from a channel; it ends when the sender is dropped.
    struct ChannelLine(mpsc::Receiver<Instant>);

    impl Line for ChannelLine {
        fn kernel_debounce(&self) -> bool {
            false
        }

        fn next_edge(&mut self) -> EdgeFuture<'_> {
            Box::pin(async move { self.0.recv().await.ok_or_else(|| io::Error::other("closed")) })
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
        let task = tokio::spawn(t.run(Box::new(ChannelLine(erx)), jtx, CancellationToken::new()));
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
        job.completion.complete(Outcome::Judged);
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
        let task = tokio::spawn(t.run(Box::new(ChannelLine(erx)), jtx, CancellationToken::new()));
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
        let task = tokio::spawn(t.run(Box::new(ChannelLine(erx)), jtx, CancellationToken::new()));
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
