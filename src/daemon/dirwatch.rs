//! The camera drop directory source.
//!
//! Acts on `IN_CLOSE_WRITE` (a writer finished) and `IN_MOVED_TO` (a writer
//! renamed a finished temporary file into place), never on `IN_CREATE`. Scans
//! once at start-up for files that arrived while the daemon was down, and
//! rescans when the kernel's event queue overflowed. Dot files, names ending in
//! `~`, non-images and names not matching the pattern are ignored.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::config::After;
use crate::daemon::worker::{Job, JobKind};
use crate::fsutil::is_image_name;

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

/// Identity of a kept file: name, size, modification time.
type FileKey = (String, u64, i64);

fn key_of(path: &Path) -> io::Result<FileKey> {
    let m = std::fs::metadata(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
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
        let mut keys = HashSet::new();
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
                let key: FileKey = (name.to_string(), size, mtime);
                if key_of(&dir.join(name)).ok().as_ref() == Some(&key) {
                    keys.insert(key);
                }
            }
        }
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

/// A drop directory being watched.
#[derive(Debug)]
pub struct DirSource {
    /// Source name.
    pub name: String,
    /// Watched directory.
    pub path: PathBuf,
    /// File-name glob.
    pub pattern: Option<glob::Pattern>,
    /// After-action.
    pub after: After,
    /// Record of kept files.
    pub seen: Option<Arc<SeenLog>>,
    /// Files queued and not done.
    pub queued: Queued,
}

/// How often a blocked watcher checks whether it should stop.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

impl DirSource {
    /// Watch until `stop` is set; `Err` when the directory cannot be watched.
    /// Blocking: run it on its own thread.
    pub fn run(self, tx: flume::Sender<Job>, stop: Arc<AtomicBool>) -> io::Result<()> {
        std::fs::create_dir_all(&self.path)?;
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io::Error::from)?;
        inotify
            .add_watch(
                &self.path,
                AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(io::Error::from)?;
        log::info!("source {}: watching {}", self.name, self.path.display());
        self.scan(&tx, &stop)?;
        while !stop.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(
                &mut fds,
                PollTimeout::try_from(POLL.as_millis() as i32).unwrap_or(PollTimeout::NONE),
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
                } else if let Some(name) = ev.name {
                    self.offer(self.path.join(name), &tx, &stop)?;
                }
            }
            if rescan {
                log::warn!("source {}: inotify queue overflowed, rescanning", self.name);
                self.scan(&tx, &stop)?;
            }
        }
        Ok(())
    }

    /// Queue every eligible file, in name order.
    fn scan(&self, tx: &flume::Sender<Job>, stop: &AtomicBool) -> io::Result<()> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for f in files {
            self.offer(f, tx, stop)?;
        }
        Ok(())
    }

    fn eligible(&self, path: &Path) -> bool {
        if !is_image_name(path) || !path.is_file() {
            return false;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if self.pattern.as_ref().is_some_and(|p| !p.matches(name)) {
            return false;
        }
        !self.seen.as_ref().is_some_and(|s| s.contains(path))
    }

    fn offer(&self, path: PathBuf, tx: &flume::Sender<Job>, stop: &AtomicBool) -> io::Result<()> {
        if !self.eligible(&path) || !self.queued.claim(&path) {
            return Ok(());
        }
        let mut job = Job {
            source: self.name.clone(),
            kind: JobKind::File {
                path: path.clone(),
                after: self.after.clone(),
                seen: self.seen.clone(),
                queued: self.queued.clone(),
            },
            detected: Instant::now(),
            detected_at: SystemTime::now(),
        };
        // A full queue makes us wait: the files stay safely on disk meanwhile.
        loop {
            match tx.send_timeout(job, POLL) {
                Ok(()) => return Ok(()),
                Err(flume::SendTimeoutError::Timeout(j)) => {
                    if stop.load(Ordering::Relaxed) {
                        self.queued.release(&path);
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
