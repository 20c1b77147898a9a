//! The camera drop directory source.
//!
//! Acts on `IN_CLOSE_WRITE` (a writer finished) and `IN_MOVED_TO` (a writer
//! renamed a finished temporary file into place), never on `IN_CREATE`. Scans
//! once at start-up for files that arrived while the daemon was down, and
//! rescans when the kernel's event queue overflowed. Dot files, names ending in
//! `~`, non-images and names not matching the pattern are ignored. Once a
//! file's result is stored, the job's completion moves, deletes or records it
//! (`after`); a file leaves the directory only after its result is on disk.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio_util::sync::CancellationToken;

use crate::config::{After, DirectorySource};
use crate::daemon::job::{Completion, Job, Outcome};
use crate::daemon::sink::ResultSink;
use crate::daemon::source::{SourceContext, SourceHandle};
use crate::fsutil::{escape_name, is_image_name};

/// Paths queued for inspection and not yet done, so a rescan does not queue
/// a file twice.
#[derive(Debug, Clone, Default)]
pub struct Queued(Arc<Mutex<HashSet<PathBuf>>>);

impl Queued {
    /// Claim `path`; false when it is already queued.
    pub fn claim(&self, path: &Path) -> bool {
        self.0
            .lock()
            .map(|mut s| s.insert(path.to_owned()))
            .unwrap_or(false)
    }

    /// Release `path` after its job is done.
    pub fn release(&self, path: &Path) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(path);
        }
    }
}

/// The queued paths of every watched directory, kept by the daemon across
/// reloads: a source started anew does not queue again a file its previous
/// instance queued and the worker has not done yet.
#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<PathBuf, Queued>>>);

impl Claims {
    /// The claims on the files of `dir`.
    fn of(&self, dir: &Path) -> Queued {
        self.0
            .lock()
            .map(|mut m| m.entry(dir.to_owned()).or_default().clone())
            .unwrap_or_default()
    }
}

/// Identity of a kept file: name, size, modification time.
type FileKey = (String, u64, i64);

fn key_of(path: &Path) -> io::Result<FileKey> {
    let m = std::fs::metadata(path)?;
    // Escaped: no tab or newline can break the log's lines, and names that
    // are not UTF-8 stay distinct.
    let name = path.file_name().map(escape_name).unwrap_or_default();
    Ok((name, m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// The record of inspected files that stay in place (`after = "keep"`): an
/// append-only log, fsynced per entry, compacted at start-up.
#[derive(Debug)]
pub struct SeenLog {
    keys: Mutex<HashSet<FileKey>>,
    file: Mutex<File>,
}

impl SeenLog {
    /// Open the log at `path` for the files of `dir`; entries of files that no
    /// longer exist are dropped.
    pub fn open(path: &Path, dir: &Path) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut logged = HashSet::new();
        if let Ok(f) = File::open(path) {
            for line in io::BufReader::new(f).lines() {
                let line = line?;
                let mut parts = line.split('\t');
                let (Some(name), Some(size), Some(mtime)) = (parts.next(), parts.next(), parts.next()) else {
                    continue; // a torn last line after power loss
                };
                let (Ok(size), Ok(mtime)) = (size.parse(), mtime.parse()) else {
                    continue;
                };
                logged.insert((name.to_string(), size, mtime));
            }
        }
        // Only files still there, unchanged, stay recorded.
        let keys: HashSet<FileKey> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| key_of(&e.ok()?.path()).ok())
                .filter(|k| logged.contains(k))
                .collect(),
            // Not there now (a share not mounted yet): keep every record.
            Err(_) => logged,
        };
        let mut text = String::new();
        for (n, s, m) in &keys {
            text.push_str(&format!("{n}\t{s}\t{m}\n"));
        }
        crate::fsutil::write_atomic(path, text.as_bytes())?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            keys: Mutex::new(keys),
            file: Mutex::new(file),
        })
    }

    /// Whether `path` (same name, size and mtime) was inspected already.
    pub fn contains(&self, path: &Path) -> bool {
        match key_of(path) {
            Ok(k) => self.keys.lock().map(|s| s.contains(&k)).unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Record `path` as inspected (durably).
    pub fn record(&self, path: &Path) -> io::Result<()> {
        let key = key_of(path)?;
        let mut f = self
            .file
            .lock()
            .map_err(|_| io::Error::other("seen-log lock poisoned"))?;
        writeln!(f, "{}\t{}\t{}", key.0, key.1, key.2)?;
        f.sync_data()?;
        if let Ok(mut s) = self.keys.lock() {
            s.insert(key);
        }
        Ok(())
    }
}

/// Start watching `cfg.path`. The watch and the record of inspected files
/// are set up before this returns, so a directory that cannot be watched is
/// an error here, not a source that silently watches nothing.
pub fn build(cfg: &DirectorySource, ctx: SourceContext, claims: &Claims) -> io::Result<SourceHandle> {
    let fail =
        |what: &str, e: io::Error| io::Error::new(e.kind(), format!("source {}: {what}: {e}", cfg.name));
    // Kept files, and files whose move or delete failed: inspected once only.
    let log_path = ctx.state_dir.join("seen").join(format!("{}.log", cfg.name));
    let seen = SeenLog::open(&log_path, &cfg.path)
        .map_err(|e| fail(&format!("record {}", log_path.display()), e))?;
    let pattern = match cfg.pattern.as_deref().map(glob::Pattern::new).transpose() {
        Ok(p) => p,
        Err(e) => return Err(fail("pattern", io::Error::other(e))),
    };
    if !cfg.path.is_dir() {
        if !cfg.create {
            return Err(fail(
                &cfg.path.display().to_string(),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the drop directory does not exist (a typo in path? create it, or set create = true)",
                ),
            ));
        }
        std::fs::create_dir_all(&cfg.path).map_err(|e| fail(&cfg.path.display().to_string(), e))?;
    }
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| fail("inotify", e.into()))?;
    let watch =
        Watch::add(&inotify, &cfg.path).map_err(|e| fail(&format!("watching {}", cfg.path.display()), e))?;
    log::info!("source {}: watching {}", cfg.name, cfg.path.display());
    let watcher = Watcher {
        name: cfg.name.clone(),
        path: cfg.path.clone(),
        settle: cfg.settle,
        settling: Mutex::new(HashMap::new()),
        pattern,
        after: cfg.after.clone(),
        seen: Arc::new(seen),
        queued: claims.of(&cfg.path),
        retry: Arc::new(Retry::default()),
        jobs: ctx.jobs,
        sink: ctx.sink,
        shutdown: ctx.shutdown.clone(),
    };
    let name = cfg.name.clone();
    let task = tokio::task::spawn_blocking(move || {
        if let Err(e) = watcher.run(&inotify, watch) {
            log::error!("source {name} stopped: {e}");
            watcher
                .sink
                .stats()
                .set_source_problem(&name, Some(format!("stopped: {e}")));
        }
    });
    Ok(SourceHandle::new(&cfg.name, ctx.shutdown, vec![task]))
}

/// Size and modification time: what tells that a file is still being written.
type Stamp = (u64, i64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// The inotify watch of the directory, and which directory it is on: a
/// share mounted over the path later is another directory (device, inode).
struct Watch {
    wd: WatchDescriptor,
    dir: (u64, u64),
}

impl Watch {
    fn add(inotify: &Inotify, path: &Path) -> io::Result<Self> {
        let wd = inotify
            .add_watch(
                path,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(io::Error::from)?;
        let m = std::fs::metadata(path)?;
        Ok(Self {
            wd,
            dir: (m.dev(), m.ino()),
        })
    }

    /// Whether `path` is still the directory watched.
    fn still_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == self.dir)
    }
}

/// Retrying files whose result could not be stored (state directory full):
/// a rescan after a delay that doubles while it goes on.
#[derive(Debug)]
struct Retry(Mutex<RetryState>);

#[derive(Debug)]
struct RetryState {
    due: Option<Instant>,
    delay: Duration,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Default for Retry {
    fn default() -> Self {
        Self(Mutex::new(RetryState {
            due: None,
            delay: RETRY_FIRST,
        }))
    }
}

impl Retry {
    /// A result could not be stored: rescan later.
    fn failed(&self) {
        if let Ok(mut r) = self.0.lock() {
            if r.due.is_none() {
                r.due = Some(Instant::now() + r.delay);
                r.delay = (r.delay * 2).min(RETRY_MAX);
            }
        }
    }

    /// A result was stored: the next failure retries soon again.
    fn succeeded(&self) {
        if let Ok(mut r) = self.0.lock() {
            r.delay = RETRY_FIRST;
        }
    }

    /// Whether a rescan is due now (it is then no longer pending).
    fn take_due(&self) -> bool {
        self.0.lock().is_ok_and(|mut r| match r.due {
            Some(t) if Instant::now() >= t => {
                r.due = None;
                true
            }
            _ => false,
        })
    }
}

/// A drop directory being watched.
struct Watcher {
    name: String,
    path: PathBuf,
    /// How long a closed file must stay unchanged before it is queued.
    settle: Duration,
    /// Files waiting to settle: their last stamp and since when it held.
    settling: Mutex<HashMap<PathBuf, (Stamp, Instant)>>,
    pattern: Option<glob::Pattern>,
    after: After,
    seen: Arc<SeenLog>,
    queued: Queued,
    retry: Arc<Retry>,
    jobs: flume::Sender<Job>,
    sink: ResultSink,
    shutdown: CancellationToken,
}

/// How often a blocked watcher checks whether it should stop.
const POLL: Duration = Duration::from_millis(250);
/// How often the watcher checks that the path is still the directory it watches.
const CHECK_DIR: Duration = Duration::from_secs(1);

/// Why watching stopped.
enum Stop {
    Shutdown,
    /// The directory is gone (removed, moved away, unmounted) or another
    /// one is now at its path (a share mounted over it).
    Lost(&'static str),
}

impl Watcher {
    /// Watch until shut down, watching again whenever the directory goes
    /// and comes back; `Err` when it cannot be read any more.
    /// Blocking: runs on its own thread.
    fn run(&self, inotify: &Inotify, mut watch: Watch) -> io::Result<()> {
        loop {
            match self.watch(inotify, &watch)? {
                Stop::Shutdown => return Ok(()),
                Stop::Lost(why) => {
                    let _ = inotify.rm_watch(watch.wd);
                    let problem = format!("drop directory {} {why}; waiting for it", self.path.display());
                    log::error!("source {}: {problem}", self.name);
                    self.sink.stats().set_source_problem(&self.name, Some(problem));
                    let Some(w) = self.wait_for_directory(inotify) else {
                        return Ok(());
                    };
                    watch = w;
                    log::warn!(
                        "source {}: watching {} again; looking for files that arrived meanwhile",
                        self.name,
                        self.path.display()
                    );
                    self.sink.stats().set_source_problem(&self.name, None);
                }
            }
        }
    }

    /// Wait (until shutdown) for a directory at the path, and watch it.
    fn wait_for_directory(&self, inotify: &Inotify) -> Option<Watch> {
        while !self.shutdown.is_cancelled() {
            // Only an existing directory is watched again: the daemon does
            // not create one under a share that failed to mount.
            if self.path.is_dir() {
                match Watch::add(inotify, &self.path) {
                    Ok(w) => return Some(w),
                    Err(e) => log::debug!("source {}: not watchable yet: {e}", self.name),
                }
            }
            std::thread::sleep(POLL);
        }
        None
    }

    fn watch(&self, inotify: &Inotify, watch: &Watch) -> io::Result<Stop> {
        self.scan()?;
        // While files settle, look at them often enough to see them settle.
        let tick = if self.settle.is_zero() {
            POLL
        } else {
            (self.settle / 4).clamp(Duration::from_millis(10), POLL)
        };
        let mut checked = Instant::now();
        while !self.shutdown.is_cancelled() {
            self.offer_settled()?;
            if self.retry.take_due() {
                log::info!(
                    "source {}: retrying the files whose results could not be stored",
                    self.name
                );
                self.scan()?;
            }
            if checked.elapsed() >= CHECK_DIR {
                checked = Instant::now();
                if !watch.still_at(&self.path) {
                    return Ok(Stop::Lost("was replaced (a file system mounted over it?)"));
                }
            }
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(tick.as_millis() as i32).unwrap_or(PollTimeout::NONE),
            ) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let events = match inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut rescan = false;
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    rescan = true;
                } else if ev.wd != watch.wd {
                    // An earlier watch of this directory, removed.
                } else if ev.mask.contains(AddWatchFlags::IN_DELETE_SELF) {
                    return Ok(Stop::Lost("was removed"));
                } else if ev.mask.contains(AddWatchFlags::IN_MOVE_SELF) {
                    return Ok(Stop::Lost("was moved away"));
                } else if ev.mask.contains(AddWatchFlags::IN_UNMOUNT) {
                    return Ok(Stop::Lost("was unmounted"));
                } else if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    return Ok(Stop::Lost("is no longer watched"));
                } else if let Some(name) = ev.name {
                    let path = self.path.join(name);
                    // A file renamed into place is complete; one just closed
                    // may be opened again by its writer.
                    if ev.mask.contains(AddWatchFlags::IN_MOVED_TO) {
                        self.offer(path)?;
                    } else {
                        self.arrived(path)?;
                    }
                }
            }
            if rescan {
                log::warn!("source {}: inotify queue overflowed, rescanning", self.name);
                self.scan()?;
            }
        }
        Ok(Stop::Shutdown)
    }

    /// Queue every eligible file, in name order.
    fn scan(&self) -> io::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            self.arrived(f)?;
        }
        Ok(())
    }

    /// A file that may still be written: queue it now, or once it settled.
    fn arrived(&self, path: PathBuf) -> io::Result<()> {
        if self.settle.is_zero() {
            return self.offer(path);
        }
        if let (Some(s), Ok(mut settling)) = (stamp(&path), self.settling.lock()) {
            settling.insert(path, (s, Instant::now()));
        }
        Ok(())
    }

    /// Queue the files whose size and time held for the settle period.
    fn offer_settled(&self) -> io::Result<()> {
        let ready: Vec<PathBuf> = {
            let Ok(mut settling) = self.settling.lock() else {
                return Ok(());
            };
            let now = Instant::now();
            let mut ready = Vec::new();
            settling.retain(|path, (last, since)| match stamp(path) {
                None => false, // gone
                Some(s) if s != *last => {
                    *last = s;
                    *since = now;
                    true
                }
                Some(_) if now.duration_since(*since) >= self.settle => {
                    ready.push(path.clone());
                    false
                }
                Some(_) => true,
            });
            ready.sort();
            ready
        };
        for path in ready {
            self.offer(path)?;
        }
        Ok(())
    }

    fn eligible(&self, path: &Path) -> bool {
        if !is_image_name(path) || !path.is_file() {
            return false;
        }
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if self.pattern.as_ref().is_some_and(|p| !p.matches(&name)) {
            return false;
        }
        !self.seen.contains(path)
    }

    fn offer(&self, path: PathBuf) -> io::Result<()> {
        if !self.eligible(&path) || !self.queued.claim(&path) {
            return Ok(());
        }
        let mut job = Job {
            source: self.name.clone(),
            path: path.clone(),
            trigger: None,
            recipe: None,
            detected: Instant::now(),
            detected_at: SystemTime::now(),
            // Releases the claim when done (or dropped).
            completion: Box::new(FileDone {
                path,
                after: self.after.clone(),
                seen: Arc::clone(&self.seen),
                queued: self.queued.clone(),
                retry: Arc::clone(&self.retry),
                sink: self.sink.clone(),
            }),
        };
        // A full queue makes us wait: the files stay safely on disk meanwhile.
        loop {
            match self.jobs.send_timeout(job, POLL) {
                Ok(()) => return Ok(()),
                Err(flume::SendTimeoutError::Timeout(j)) => {
                    if self.shutdown.is_cancelled() {
                        return Ok(());
                    }
                    job = j;
                }
                Err(flume::SendTimeoutError::Disconnected(_)) => {
                    return Err(io::Error::other("inference worker stopped"))
                }
            }
        }
    }
}

/// The after-action of one dropped file.
struct FileDone {
    path: PathBuf,
    after: After,
    seen: Arc<SeenLog>,
    queued: Queued,
    retry: Arc<Retry>,
    sink: ResultSink,
}

impl Completion for FileDone {
    fn complete(self: Box<Self>, outcome: Outcome) {
        let inspected = match outcome {
            Outcome::Judged(_) => true,
            Outcome::Rejected => false,
            Outcome::Vanished => return,
            // The file stays; it is offered again after a delay.
            Outcome::NotStored => return self.retry.failed(),
        };
        self.retry.succeeded();
        if let Err(e) = after_action(&self.path, &self.after, &self.seen, inspected) {
            self.sink.stats().after_errors.fetch_add(1, Ordering::Relaxed);
            // Its result is stored: recorded, so it is not inspected again
            // at every restart while it cannot be moved.
            let recorded = match self.seen.record(&self.path) {
                Ok(()) => "it stays and is recorded as inspected".to_string(),
                Err(r) => format!("it stays, and cannot even be recorded ({r}): a restart inspects it again"),
            };
            log::error!("after inspecting {}: {e}; {recorded}", self.path.display());
        }
    }
}

impl Drop for FileDone {
    fn drop(&mut self) {
        self.queued.release(&self.path);
    }
}

/// Move, delete or record a file whose result is stored.
fn after_action(path: &Path, after: &After, seen: &SeenLog, inspected: bool) -> io::Result<()> {
    match after {
        After::Move { done_dir, failed_dir } => {
            let dir = if inspected { done_dir } else { failed_dir };
            crate::fsutil::move_into(path, dir).map(drop)
        }
        After::Delete => match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
        After::Keep => seen.record(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seen_log_survives_restarts_and_forgets_vanished_files() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("state/seen.log");
        let a = dir.path().join("a.png");
        let b = dir.path().join("b.png");
        std::fs::write(&a, b"aaa").unwrap();
        std::fs::write(&b, b"bbb").unwrap();
        let log = SeenLog::open(&log_path, dir.path()).unwrap();
        assert!(!log.contains(&a));
        log.record(&a).unwrap();
        log.record(&b).unwrap();
        assert!(log.contains(&a));
        drop(log);
        std::fs::remove_file(&b).unwrap();
        let log = SeenLog::open(&log_path, dir.path()).unwrap();
        assert!(log.contains(&a));
        assert_eq!(std::fs::read_to_string(&log_path).unwrap().lines().count(), 1);
        // A rewritten file (new size) is new.
        std::fs::write(&a, b"aaaa").unwrap();
        assert!(!log.contains(&a));
    }

    #[test]
    fn queued_paths_are_claimed_once() {
        let q = Queued::default();
        assert!(q.claim(Path::new("x")));
        assert!(!q.claim(Path::new("x")));
        q.release(Path::new("x"));
        assert!(q.claim(Path::new("x")));
    }
}
