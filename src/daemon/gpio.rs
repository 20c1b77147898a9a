//! The GPIO trigger source: an edge on a line runs a capture command, and the
//! image it writes is inspected.
//!
//! Split in two so the trigger logic is tested without hardware:
//! [`open_line`] turns a `/dev/gpiochipN` line into a stream of edges (gpiocdev,
//! uAPI v2 with v1 fallback); [`Trigger::run`] consumes any stream of edges.
//! A trigger that arrives while the previous one is still being captured or
//! inspected is never silently dropped: it is counted in `/stats` and gets a
//! result with verdict `error`, so a PLC waiting for one answer per trigger
//! gets one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::config::Edge;
use crate::daemon::record::inspection_id;
use crate::daemon::worker::{Emitter, Job, JobKind};

/// One edge seen on the line.
#[derive(Debug, Clone, Copy)]
pub struct EdgeEvent {
    /// When it was read.
    pub at: Instant,
}

/// Request `line` on `chip` with edge detection and return its edges. Kernel
/// debounce is used where the kernel has it (uAPI v2); otherwise the line is
/// requested without and [`Trigger`] debounces in software.
pub fn open_line(
    chip: &std::path::Path,
    line: u32,
    edge: Edge,
    debounce: Duration,
    active_low: bool,
) -> std::io::Result<(mpsc::Receiver<EdgeEvent>, bool)> {
    use gpiocdev::line::EdgeDetection;
    let detection = match edge {
        Edge::Rising => EdgeDetection::RisingEdge,
        Edge::Falling => EdgeDetection::FallingEdge,
        Edge::Both => EdgeDetection::BothEdges,
    };
    let build = |with_debounce: bool| {
        let mut b = gpiocdev::Request::builder();
        b.on_chip(chip)
            .with_consumer("winclip-edge")
            .with_line(line)
            .with_edge_detection(detection);
        if active_low {
            b.as_active_low();
        }
        if with_debounce && !debounce.is_zero() {
            b.with_debounce_period(debounce);
        }
        b.request()
    };
    let (req, kernel_debounce) = match build(true) {
        Ok(r) => (r, true),
        Err(first) => {
            log::info!("GPIO: kernel debounce unavailable ({first}); debouncing in software");
            (
                build(false)
                    .map_err(|e| std::io::Error::other(format!("{}: line {line}: {e}", chip.display())))?,
                false,
            )
        }
    };
    let req = gpiocdev::tokio::AsyncRequest::new(req);
    let (tx, rx) = mpsc::channel(64);
    let chip = chip.display().to_string();
    tokio::spawn(async move {
        loop {
            match req.read_edge_event().await {
                Ok(_) => {
                    if tx.send(EdgeEvent { at: Instant::now() }).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    log::error!("GPIO {chip} line {line}: {e}");
                    break;
                }
            }
        }
    });
    Ok((rx, kernel_debounce))
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
    pub emitter: Emitter,
}

impl Trigger {
    /// Handle edges until the stream ends.
    pub async fn run(self, mut edges: mpsc::Receiver<EdgeEvent>, jobs: flume::Sender<Job>) {
        let busy = Arc::new(AtomicBool::new(false));
        let this = Arc::new(self);
        let mut count = 0u64;
        let mut last: Option<Instant> = None;
        while let Some(edge) = edges.recv().await {
            if last.is_some_and(|l| edge.at.duration_since(l) < this.debounce) {
                continue;
            }
            last = Some(edge.at);
            count += 1;
            let detected_at = SystemTime::now();
            if busy.swap(true, Ordering::AcqRel) {
                this.emitter.stats.busy_triggers.fetch_add(1, Ordering::Relaxed);
                log::warn!("source {}: trigger #{count} arrived while busy", this.name);
                this.report(
                    count,
                    detected_at,
                    format!("trigger #{count} ignored: station busy with the previous trigger"),
                );
                continue;
            }
            let (this, busy, jobs) = (Arc::clone(&this), Arc::clone(&busy), jobs.clone());
            tokio::spawn(async move {
                match this.capture(count).await {
                    Ok(path) => {
                        let job = Job {
                            source: this.name.clone(),
                            kind: JobKind::Capture {
                                path,
                                trigger: count,
                                keep: this.keep,
                                busy: Arc::clone(&busy),
                            },
                            detected: edge.at,
                            detected_at,
                        };
                        if jobs.send_async(job).await.is_err() {
                            busy.store(false, Ordering::Release);
                        }
                    }
                    Err(e) => {
                        this.report(
                            count,
                            detected_at,
                            format!("trigger #{count}: capture failed: {e}"),
                        );
                        busy.store(false, Ordering::Release);
                    }
                }
            });
        }
    }

    fn report(&self, count: u64, detected_at: SystemTime, error: String) {
        let ms = detected_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let id = inspection_id(
            &self.emitter.station,
            &self.name,
            &format!("trigger-{count}-{ms}"),
            b"",
        );
        let mut rec = self.emitter.error_record(id, &self.name, detected_at, error);
        rec.trigger = Some(count);
        if let Err(e) = self.emitter.emit(&rec, None) {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::daemon::outbox::Outbox;
    use crate::daemon::stats::Stats;

    fn emitter(dir: &std::path::Path) -> Emitter {
        Emitter {
            station: "s".into(),
            prefix: "winclip".into(),
            outbox: Arc::new(Mutex::new(
                Outbox::open(&dir.join("outbox"), 100, 1 << 20).unwrap(),
            )),
            wake: Arc::new(tokio::sync::Notify::new()),
            stats: Arc::new(Stats::default()),
        }
    }

    fn trigger(dir: &std::path::Path, capture: Vec<String>, debounce: Duration) -> Trigger {
        Trigger {
            name: "t".into(),
            capture,
            timeout: Duration::from_secs(5),
            output_dir: dir.join("captures"),
            keep: false,
            debounce,
            emitter: emitter(dir),
        }
    }

    fn results(e: &Emitter) -> Vec<serde_json::Value> {
        let ob = e.outbox.lock().unwrap();
        ob.index()
            .after(0)
            .map(|s| serde_json::from_slice(&ob.read(s).unwrap().unwrap().json).unwrap())
            .collect()
    }

    /// Wait (up to 20 s) until `n` results are stored; no timing is asserted.
    async fn wait_results(e: &Emitter, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..400 {
            let r = results(e);
            if r.len() >= n {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        results(e)
    }

    #[tokio::test]
    async fn a_trigger_while_busy_is_counted_and_answered_with_an_error_result() {
        let dir = tempfile::tempdir().unwrap();
        // The capture writes a file; the job stays queued (nobody inspects), so the station stays busy.
        let cmd = vec![
            "sh".into(),
            "-c".into(),
            "printf x > \"$0\"".into(),
            "{output}".into(),
        ];
        let t = trigger(dir.path(), cmd, Duration::ZERO);
        let (etx, erx) = mpsc::channel(8);
        let (jtx, jrx) = flume::bounded(8);
        let emitter = t.emitter.clone();
        let stats = Arc::clone(&t.emitter.stats);
        let task = tokio::spawn(t.run(erx, jtx));
        etx.send(EdgeEvent { at: Instant::now() }).await.unwrap();
        let job = tokio::time::timeout(Duration::from_secs(10), jrx.recv_async())
            .await
            .unwrap()
            .unwrap();
        etx.send(EdgeEvent { at: Instant::now() }).await.unwrap();
        etx.send(EdgeEvent { at: Instant::now() }).await.unwrap();
        drop(etx);
        task.await.unwrap();
        assert_eq!(stats.busy_triggers.load(Ordering::Relaxed), 2);
        let res = wait_results(&emitter, 2).await;
        assert_eq!(res.len(), 2);
        assert_eq!(res[0]["verdict"], "error");
        assert_eq!(res[0]["trigger"], 2);
        assert!(res[0]["error"].as_str().unwrap().contains("busy"));
        match job.kind {
            JobKind::Capture {
                path, trigger, busy, ..
            } => {
                assert_eq!(trigger, 1);
                assert_eq!(std::fs::read(&path).unwrap(), b"x");
                assert!(busy.load(Ordering::Acquire), "busy until the worker finishes");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failing_capture_gives_an_error_result_and_frees_the_station() {
        let dir = tempfile::tempdir().unwrap();
        let t = trigger(
            dir.path(),
            vec!["false".into(), "{output}".into()],
            Duration::ZERO,
        );
        let (etx, erx) = mpsc::channel(8);
        let (jtx, _jrx) = flume::bounded(8);
        let emitter = t.emitter.clone();
        let task = tokio::spawn(t.run(erx, jtx));
        etx.send(EdgeEvent { at: Instant::now() }).await.unwrap();
        assert_eq!(wait_results(&emitter, 1).await.len(), 1);
        // The failed capture freed the station: the next trigger is captured, not "busy".
        etx.send(EdgeEvent { at: Instant::now() }).await.unwrap();
        let res = wait_results(&emitter, 2).await;
        drop(etx);
        task.await.unwrap();
        assert_eq!(res.len(), 2, "{res:?}");
        for r in &res {
            assert!(r["error"].as_str().unwrap().contains("capture failed"), "{r}");
        }
        assert_eq!(emitter.stats.busy_triggers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn software_debounce_drops_bounces() {
        let dir = tempfile::tempdir().unwrap();
        let t = trigger(
            dir.path(),
            vec!["false".into(), "{output}".into()],
            Duration::from_millis(50),
        );
        let (etx, erx) = mpsc::channel(8);
        let (jtx, _jrx) = flume::bounded(8);
        let emitter = t.emitter.clone();
        let task = tokio::spawn(t.run(erx, jtx));
        let t0 = Instant::now();
        for ms in [0u64, 5, 10, 200] {
            etx.send(EdgeEvent {
                at: t0 + Duration::from_millis(ms),
            })
            .await
            .unwrap();
        }
        drop(etx);
        task.await.unwrap();
        let res = wait_results(&emitter, 2).await;
        let triggers: Vec<u64> = res.iter().map(|r| r["trigger"].as_u64().unwrap()).collect();
        assert_eq!(triggers.len(), 2, "two edges survive debouncing: {res:?}");
    }
}
