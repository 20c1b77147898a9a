//! The store of recent results (`[history]`, in `<state_dir>/history`): the
//! last N results with their heatmaps and pictures, for the page and
//! `/api/results`, kept across restarts and bounded in count and bytes.
//!
//! Each result is up to three files named by a sequence number: the picture
//! (`<seq>.picture.<ext>`, as read), the heatmap (`<seq>.heatmap.jpg`) and
//! the record (`<seq>.json`), written in that order, each to a temporary name
//! and renamed into place: a result exists once its record does, and a start
//! removes what a crash left half done. Nothing here is fsynced — the outbox
//! is what delivers results; this store shows them. Files are found by an
//! inspection id looked up in the index, never by a name a client gives.
//!
//! Every stored result is also sent to [`History::subscribe`]rs (the page's
//! live updates), also when nothing is kept (`results = 0`).

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::config;

/// Results a slow page may fall behind before it is told to catch up.
const EVENTS: usize = 64;

/// Results waiting for the [`Writer`]: few, since each may hold a camera
/// picture (the disk is slower than inspection only in bursts).
const WRITER_QUEUE: usize = 4;

/// One kept result.
#[derive(Debug, Clone)]
struct Item {
    seq: u64,
    id: String,
    failed: bool,
    bytes: u64,
    /// The picture's extension (its format), when kept.
    picture: Option<&'static str>,
    heatmap: bool,
}

#[derive(Debug)]
struct Inner {
    items: VecDeque<Item>,
    next_seq: u64,
    bytes: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            next_seq: 1,
            bytes: 0,
        }
    }
}

/// The store; shared between the result sink (writes) and the HTTP endpoint (reads).
#[derive(Debug)]
pub struct History {
    dir: PathBuf,
    bounds: config::History,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Value>>,
}

/// A picture as kept.
#[derive(Debug)]
pub struct Picture {
    /// The bytes as read from the camera's file.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: image::ImageFormat,
}

impl History {
    /// Open (or create) the store in `dir`, keeping what a previous run left
    /// within `bounds`. With `results = 0` nothing is kept and `dir` is not made.
    pub fn open(dir: &Path, bounds: config::History) -> io::Result<Self> {
        let mut inner = Inner::default();
        if bounds.results > 0 {
            std::fs::create_dir_all(dir)?;
            inner.items = scan(dir)?;
            inner.next_seq = inner.items.back().map_or(1, |i| i.seq + 1);
            inner.bytes = inner.items.iter().map(|i| i.bytes).sum();
        }
        let history = Self {
            dir: dir.to_owned(),
            bounds,
            inner: Mutex::new(inner),
            events: broadcast::channel(EVENTS).0,
        };
        {
            let mut inner = history.lock()?;
            history.evict(&mut inner);
        }
        Ok(history)
    }

    /// A store that keeps nothing (live events only): when the directory cannot be used.
    pub fn in_memory() -> Self {
        Self {
            dir: PathBuf::new(),
            bounds: config::History {
                results: 0,
                ..config::History::default()
            },
            inner: Mutex::default(),
            events: broadcast::channel(EVENTS).0,
        }
    }

    /// Live results, as [`History::push`] receives them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Value>> {
        self.events.subscribe()
    }

    /// Results kept now.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |i| i.items.len())
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep a result: its record (JSON), heatmap and picture. An earlier
    /// result with the same id (the same picture again) is replaced. The
    /// event is sent whether or not the files could be written.
    pub fn push(&self, record: &[u8], heatmap: Option<&[u8]>, picture: Option<&[u8]>) -> io::Result<()> {
        let parsed: Value = serde_json::from_slice(record).map_err(io::Error::other)?;
        let id = parsed["id"].as_str().unwrap_or_default().to_string();
        let failed = parsed["verdict"] == "fail";
        let picture = picture.filter(|_| self.bounds.pictures);
        let format = picture.and_then(|p| image::guess_format(p).ok());
        let extension = format.and_then(|f| f.extensions_str().first().copied());
        let kept = self.write(&id, failed, record, heatmap, picture.zip(extension));
        let (heatmap_kept, picture_kept) = match &kept {
            Ok(Some(item)) => (item.heatmap, item.picture.is_some()),
            _ => (false, false),
        };
        let _ = self
            .events
            .send(Arc::new(with_links(parsed, heatmap_kept, picture_kept)));
        kept.map(|_| ())
    }

    /// Tell the live subscribers of a result that is not kept.
    pub fn announce(&self, record: &[u8]) {
        if let Ok(parsed) = serde_json::from_slice(record) {
            let _ = self.events.send(Arc::new(with_links(parsed, false, false)));
        }
    }

    fn write(
        &self,
        id: &str,
        failed: bool,
        record: &[u8],
        heatmap: Option<&[u8]>,
        picture: Option<(&[u8], &'static str)>,
    ) -> io::Result<Option<Item>> {
        if self.bounds.results == 0 || id.is_empty() {
            return Ok(None);
        }
        let mut inner = self.lock()?;
        if let Some(at) = inner.items.iter().position(|i| i.id == id) {
            if let Some(old) = inner.items.remove(at) {
                inner.bytes -= old.bytes;
                self.delete(&old);
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let len = |b: Option<&[u8]>| b.map_or(0, |b| b.len() as u64);
        // A picture that alone would overflow the store is left out, not the result.
        let picture = picture
            .filter(|(p, _)| (p.len() as u64) + len(heatmap) + record.len() as u64 <= self.bounds.max_bytes);
        let item = Item {
            seq,
            id: id.to_string(),
            failed,
            bytes: record.len() as u64 + len(heatmap) + picture.map_or(0, |(p, _)| p.len() as u64),
            picture: picture.map(|(_, ext)| ext),
            heatmap: heatmap.is_some(),
        };
        let written = (|| {
            if let Some((bytes, ext)) = picture {
                write_file(&self.dir.join(picture_name(seq, ext)), bytes)?;
            }
            if let Some(jpg) = heatmap {
                write_file(&self.dir.join(heatmap_name(seq)), jpg)?;
            }
            write_file(&self.dir.join(record_name(seq)), record)
        })();
        if let Err(e) = written {
            self.delete(&item);
            return Err(e);
        }
        inner.bytes += item.bytes;
        inner.items.push_back(item.clone());
        self.evict(&mut inner);
        Ok(Some(item))
    }

    /// The newest results first, at most `limit`, only failures if `failed_only`.
    pub fn list(&self, limit: usize, failed_only: bool) -> Vec<Value> {
        let items: Vec<Item> = match self.lock() {
            Ok(inner) => inner
                .items
                .iter()
                .rev()
                .filter(|i| !failed_only || i.failed)
                .take(limit)
                .cloned()
                .collect(),
            Err(_) => return Vec::new(),
        };
        items.iter().filter_map(|i| self.read_record(i)).collect()
    }

    /// The inspection id of `source`'s newest kept result.
    pub fn latest_of(&self, source: &str) -> Option<String> {
        let items: Vec<Item> = self.lock().ok()?.items.iter().rev().cloned().collect();
        items
            .iter()
            .filter_map(|i| Some((i, self.read_record(i)?)))
            .find(|(_, r)| r["source"] == source)
            .map(|(i, _)| i.id.clone())
    }

    /// The result with inspection id `id`.
    pub fn get(&self, id: &str) -> Option<Value> {
        let item = self.find(id)?;
        self.read_record(&item)
    }

    /// The heatmap JPEG of result `id`.
    pub fn heatmap(&self, id: &str) -> Option<Vec<u8>> {
        let item = self.find(id).filter(|i| i.heatmap)?;
        std::fs::read(self.dir.join(heatmap_name(item.seq))).ok()
    }

    /// The picture of result `id`, as it was read.
    pub fn picture(&self, id: &str) -> Option<Picture> {
        let item = self.find(id)?;
        let ext = item.picture?;
        let bytes = std::fs::read(self.dir.join(picture_name(item.seq, ext))).ok()?;
        let format = image::ImageFormat::from_extension(ext)?;
        Some(Picture { bytes, format })
    }

    fn find(&self, id: &str) -> Option<Item> {
        let inner = self.lock().ok()?;
        inner.items.iter().rev().find(|i| i.id == id).cloned()
    }

    fn read_record(&self, item: &Item) -> Option<Value> {
        let bytes = std::fs::read(self.dir.join(record_name(item.seq))).ok()?;
        let record = serde_json::from_slice(&bytes).ok()?;
        Some(with_links(record, item.heatmap, item.picture.is_some()))
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.items.len() > self.bounds.results || inner.bytes > self.bounds.max_bytes {
            let Some(old) = inner.items.pop_front() else { break };
            inner.bytes -= old.bytes;
            self.delete(&old);
        }
    }

    fn delete(&self, item: &Item) {
        let mut names = vec![record_name(item.seq), heatmap_name(item.seq)];
        if let Some(ext) = item.picture {
            names.push(picture_name(item.seq, ext));
        }
        for name in names {
            match std::fs::remove_file(self.dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("history: cannot remove {name}: {e}"),
            }
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| io::Error::other("history lock poisoned"))
    }
}

/// One result on its way to the disk.
struct Pending {
    record: Vec<u8>,
    heatmap: Option<Vec<u8>>,
    picture: Option<Vec<u8>>,
}

/// Writes results into a [`History`] on a thread of its own, so the
/// inspection path never waits for the disk (an SD card takes ~0.1 s for a
/// camera picture). When it falls behind, a result is not kept (counted in
/// `history_errors`; the page still gets its event). Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: flume::Sender<Pending>,
    history: Arc<History>,
    stats: Arc<crate::daemon::stats::Stats>,
}

impl Writer {
    /// Start the thread; it ends when the last clone is dropped, after
    /// writing what is queued.
    pub fn spawn(history: Arc<History>, stats: Arc<crate::daemon::stats::Stats>) -> io::Result<Self> {
        let (tx, rx) = flume::bounded::<Pending>(WRITER_QUEUE);
        let (h, s) = (Arc::clone(&history), Arc::clone(&stats));
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                while let Ok(p) = rx.recv() {
                    if let Err(e) = h.push(&p.record, p.heatmap.as_deref(), p.picture.as_deref()) {
                        s.history_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        log::warn!("history: a result is not kept for the page: {e}");
                    }
                }
            })?;
        Ok(Self { tx, history, stats })
    }

    /// Queue a result (see [`History::push`]).
    pub fn push(&self, record: Vec<u8>, heatmap: Option<Vec<u8>>, picture: Option<Vec<u8>>) {
        let pending = Pending {
            record,
            heatmap,
            picture,
        };
        if let Err(e) = self.tx.try_send(pending) {
            self.stats
                .history_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::warn!("history: the disk is behind, a result is not kept for the page");
            // The page still hears of it, without anything to fetch.
            self.history.announce(&e.into_inner().record);
        }
    }

    /// The store it writes to.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }
}

/// The record with where its heatmap and picture are served.
fn with_links(mut record: Value, heatmap: bool, picture: bool) -> Value {
    let id = record["id"].as_str().unwrap_or_default().to_string();
    let url = |what: &str| Value::from(format!("/api/results/{id}/{what}"));
    if let Some(o) = record.as_object_mut() {
        o.insert(
            "links".into(),
            serde_json::json!({
                "heatmap": if heatmap { url("heatmap.jpg") } else { Value::Null },
                "image": if picture { url("image.jpg") } else { Value::Null },
            }),
        );
    }
    record
}

fn record_name(seq: u64) -> String {
    format!("{seq:012}.json")
}

fn heatmap_name(seq: u64) -> String {
    format!("{seq:012}.heatmap.jpg")
}

fn picture_name(seq: u64, ext: &str) -> String {
    format!("{seq:012}.picture.{ext}")
}

fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The files of one sequence number found at start.
#[derive(Default)]
struct Found {
    record: Option<Value>,
    bytes: u64,
    picture: Option<&'static str>,
    heatmap: bool,
}

/// What a previous run left: every complete result in order; the rest
/// (temporary files, parts without a record, unreadable records) is removed.
fn scan(dir: &Path) -> io::Result<VecDeque<Item>> {
    let mut by_seq: std::collections::BTreeMap<u64, Found> = std::collections::BTreeMap::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let parsed = name
            .to_str()
            .and_then(|n| n.split_once('.'))
            .and_then(|(seq, rest)| Some((seq.parse::<u64>().ok()?, rest.to_string())));
        let (Some((seq, rest)), Ok(meta)) = (parsed, entry.metadata()) else {
            strays.push(path);
            continue;
        };
        let found = by_seq.entry(seq).or_default();
        if rest == "json" {
            found.record = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            found.bytes += meta.len();
            continue;
        }
        if rest == "heatmap.jpg" {
            found.bytes += meta.len();
            found.heatmap = true;
            continue;
        }
        let ext = rest
            .strip_prefix("picture.")
            .and_then(image::ImageFormat::from_extension)
            .and_then(|f| f.extensions_str().first().copied());
        match ext {
            Some(ext) if rest == format!("picture.{ext}") => {
                found.bytes += meta.len();
                found.picture = Some(ext);
            }
            _ => strays.push(path),
        }
    }
    let mut items = VecDeque::new();
    for (seq, found) in by_seq {
        let Some(record) = found.record else {
            // Parts of a result whose record never made it (or is corrupt).
            strays.push(dir.join(record_name(seq)));
            strays.push(dir.join(heatmap_name(seq)));
            if let Some(ext) = found.picture {
                strays.push(dir.join(picture_name(seq, ext)));
            }
            continue;
        };
        items.push_back(Item {
            seq,
            id: record["id"].as_str().unwrap_or_default().to_string(),
            failed: record["verdict"] == "fail",
            bytes: found.bytes,
            picture: found.picture,
            heatmap: found.heatmap,
        });
    }
    for path in strays {
        match std::fs::remove_file(&path) {
            Ok(()) => log::info!("history: removed {} (left incomplete)", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("history: cannot remove {}: {e}", path.display()),
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, verdict: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": id, "verdict": verdict, "score": 0.5})).unwrap()
    }

    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn bounds(results: usize, max_bytes: u64) -> config::History {
        config::History {
            results,
            max_bytes,
            pictures: true,
        }
    }

    #[test]
    fn keeps_the_newest_within_bounds_and_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), bounds(3, 1 << 20)).unwrap();
        for (i, v) in ["pass", "fail", "pass", "fail"].iter().enumerate() {
            h.push(&record(&format!("id{i}"), v), Some(b"jpeg"), Some(&png()))
                .unwrap();
        }
        let ids = |h: &History, fail: bool| -> Vec<String> {
            h.list(10, fail)
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&h, false), ["id3", "id2", "id1"]);
        assert_eq!(ids(&h, true), ["id3", "id1"]);
        assert!(h.get("id0").is_none(), "the oldest is evicted");
        assert_eq!(h.heatmap("id2").unwrap(), b"jpeg");
        assert_eq!(h.picture("id2").unwrap().format, image::ImageFormat::Png);
        assert_eq!(
            h.get("id2").unwrap()["links"]["image"],
            "/api/results/id2/image.jpg"
        );
        // Files of evicted results are gone.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 9);
        drop(h);
        let again = History::open(dir.path(), bounds(2, 1 << 20)).unwrap();
        assert_eq!(
            ids(&again, false),
            ["id3", "id2"],
            "a smaller bound applies at start"
        );
        again.push(&record("id4", "pass"), None, None).unwrap();
        assert_eq!(ids(&again, false), ["id4", "id3"]);
        assert!(again.get("id4").unwrap()["links"]["heatmap"].is_null());
    }

    #[test]
    fn the_byte_bound_evicts_and_an_oversized_picture_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), bounds(100, 3000)).unwrap();
        let big = [png(), vec![0; 4000]].concat();
        h.push(&record("a", "fail"), Some(&[1; 1000]), Some(&big))
            .unwrap();
        let a = h.get("a").unwrap();
        assert!(a["links"]["image"].is_null(), "{a}");
        assert!(!a["links"]["heatmap"].is_null());
        h.push(&record("b", "fail"), Some(&[1; 1000]), None).unwrap();
        h.push(&record("c", "fail"), Some(&[1; 1000]), None).unwrap();
        assert!(
            h.get("a").is_none(),
            "3 heatmaps of 1000 bytes and their records exceed 3000"
        );
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_same_picture_again_replaces_its_result() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), bounds(10, 1 << 20)).unwrap();
        h.push(&record("x", "pass"), None, None).unwrap();
        h.push(&record("y", "pass"), None, None).unwrap();
        h.push(&record("x", "fail"), None, None).unwrap();
        let list = h.list(10, false);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["id"], "x");
        assert_eq!(list[0]["verdict"], "fail");
    }

    #[test]
    fn a_start_removes_what_a_crash_left_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path(), bounds(10, 1 << 20)).unwrap();
        h.push(&record("kept", "pass"), Some(b"j"), None).unwrap();
        drop(h);
        let p = dir.path();
        std::fs::write(p.join("000000000007.heatmap.jpg"), b"orphan").unwrap();
        std::fs::write(p.join("000000000008.json"), b"{torn").unwrap();
        std::fs::write(p.join("000000000009.json.tmp"), b"{}").unwrap();
        std::fs::write(p.join("notes.txt"), b"?").unwrap();
        let h = History::open(p, bounds(10, 1 << 20)).unwrap();
        assert_eq!(h.len(), 1);
        let mut left: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["000000000001.heatmap.jpg", "000000000001.json"]);
        h.push(&record("next", "pass"), None, None).unwrap();
        assert!(
            p.join("000000000002.json").exists(),
            "numbering goes on after the kept result"
        );
    }

    #[test]
    fn nothing_is_kept_with_results_zero_but_events_flow() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("history");
        let h = History::open(&store, bounds(0, 1 << 20)).unwrap();
        let mut events = h.subscribe();
        h.push(&record("z", "fail"), Some(b"j"), None).unwrap();
        assert!(!store.exists());
        assert!(h.is_empty());
        let event = events.try_recv().unwrap();
        assert_eq!(event["id"], "z");
        assert!(event["links"]["heatmap"].is_null(), "nothing to fetch: not kept");
    }

    /// Poll `f` for up to 10 s (no timing is asserted).
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        (0..1000).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            f()
        })
    }

    #[test]
    fn the_writer_keeps_results_off_the_caller_and_counts_what_it_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("history");
        let history = Arc::new(History::open(&store, bounds(10, 1 << 20)).unwrap());
        let stats = Arc::new(crate::daemon::stats::Stats::default());
        let writer = Writer::spawn(Arc::clone(&history), Arc::clone(&stats)).unwrap();
        let mut events = history.subscribe();
        for i in 0..3 {
            writer.push(
                record(&format!("w{i}"), "pass"),
                Some(b"jpeg".to_vec()),
                Some(png()),
            );
        }
        assert!(eventually(|| history.len() == 3));
        assert_eq!(history.heatmap("w2").unwrap(), b"jpeg");
        assert_eq!(events.try_recv().unwrap()["id"], "w0");
        // The disk refuses: counted, the page still told, nothing else lost.
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::write(&store, b"not a directory").unwrap();
        writer.push(record("lost", "fail"), Some(b"jpeg".to_vec()), None);
        let hits = |stats: &crate::daemon::stats::Stats| {
            stats.history_errors.load(std::sync::atomic::Ordering::Relaxed)
        };
        assert!(eventually(|| hits(&stats) == 1));
        let lost = std::iter::from_fn(|| events.try_recv().ok())
            .find(|e| e["id"] == "lost")
            .unwrap();
        assert!(lost["links"]["heatmap"].is_null(), "{lost}");
    }

    #[test]
    fn a_failed_write_costs_only_that_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("history");
        let h = History::open(&store, bounds(10, 1 << 20)).unwrap();
        h.push(&record("before", "pass"), None, None).unwrap();
        std::fs::remove_dir_all(&store).unwrap();
        std::fs::write(&store, b"not a directory").unwrap();
        assert!(h.push(&record("lost", "pass"), Some(b"j"), None).is_err());
        std::fs::remove_file(&store).unwrap();
        std::fs::create_dir(&store).unwrap();
        h.push(&record("after", "pass"), None, None).unwrap();
        let ids: Vec<_> = h.list(10, false).iter().map(|r| r["id"].clone()).collect();
        assert_eq!(
            ids,
            ["after"],
            "the lost one is not listed; the one whose files vanished neither"
        );
    }
}
