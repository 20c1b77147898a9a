//! The durable outbox: every result is on disk before it is published, and
//! leaves the disk only when the broker acknowledged it.
//!
//! Layout: `<state>/outbox/<seq>.json` (the result) and, optionally,
//! `<seq>.jpg` (its heatmap). The heatmap is written first, the JSON last, each
//! by write-to-temp + fsync + rename, so an entry exists exactly when its JSON
//! does; a heatmap without JSON (a crash in between) is removed at start-up.
//! Entries are delivered in `seq` order.
//!
//! [`Index`] is the pure bookkeeping (ordering, de-duplication by inspection
//! id, size bounds); [`Outbox`] adds the files.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::write_atomic;

/// One pending entry's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Inspection id (de-duplication key).
    pub id: String,
    /// Size of the result JSON.
    pub json_bytes: u64,
    /// Size of the heatmap, if one is stored.
    pub heatmap_bytes: Option<u64>,
}

/// What had to go to keep the outbox within its bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Entries whose heatmap was dropped (the result stays).
    pub heatmaps: Vec<u64>,
    /// Entries dropped entirely.
    pub entries: Vec<u64>,
    /// The new entry's own heatmap does not fit: it is stored without it.
    pub own_heatmap: bool,
}

/// Pure outbox bookkeeping: no files.
#[derive(Debug, Clone)]
pub struct Index {
    entries: BTreeMap<u64, Meta>,
    ids: HashMap<String, u64>,
    bytes: u64,
    next_seq: u64,
    max_entries: usize,
    max_bytes: u64,
}

impl Index {
    /// An empty index with bounds.
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            ids: HashMap::new(),
            bytes: 0,
            next_seq: 1,
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes pending.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether `id` is pending.
    pub fn contains_id(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// Entry `seq`, if pending.
    pub fn get(&self, seq: u64) -> Option<&Meta> {
        self.entries.get(&seq)
    }

    /// Pending sequence numbers greater than `after`, in order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = u64> + '_ {
        self.entries.range(after + 1..).map(|(s, _)| *s)
    }

    /// Re-insert an entry found on disk.
    pub fn restore(&mut self, seq: u64, meta: Meta) {
        self.bytes += meta.json_bytes + meta.heatmap_bytes.unwrap_or(0);
        self.ids.insert(meta.id.clone(), seq);
        self.entries.insert(seq, meta);
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Plan the insertion of a new entry: `None` when its id is already pending
    /// (a re-inspection after a crash), else its seq and what must be evicted
    /// first to stay within bounds. Applies the eviction to the index.
    ///
    /// Pictures give way to results, never the other way round: the oldest
    /// pending heatmaps go first, then the new entry's own heatmap; pending
    /// results are dropped only to make room for the new result itself (or
    /// for the count bound).
    pub fn admit(&mut self, meta: &Meta) -> Option<(u64, Evicted)> {
        if self.ids.contains_key(&meta.id) {
            return None;
        }
        let mut meta = meta.clone();
        let mut ev = Evicted::default();
        let heat = meta.heatmap_bytes.unwrap_or(0);
        // A heatmap that cannot fit even in an empty outbox displaces nothing.
        if meta.json_bytes + heat > self.max_bytes {
            meta.heatmap_bytes = None;
            ev.own_heatmap = heat > 0;
        }
        let size = meta.json_bytes + meta.heatmap_bytes.unwrap_or(0);
        // First drop heatmaps, oldest first: results matter more than pictures.
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        for seq in &seqs {
            if self.bytes + size <= self.max_bytes {
                break;
            }
            if let Some(m) = self.entries.get_mut(seq) {
                if let Some(h) = m.heatmap_bytes.take() {
                    self.bytes -= h;
                    ev.heatmaps.push(*seq);
                }
            }
        }
        // Then the new heatmap: no result is dropped for a picture.
        if self.bytes + size > self.max_bytes && meta.heatmap_bytes.is_some() {
            meta.heatmap_bytes = None;
            ev.own_heatmap = true;
        }
        let size = meta.json_bytes + meta.heatmap_bytes.unwrap_or(0);
        // Then whole entries, oldest first.
        while (self.entries.len() + 1 > self.max_entries || self.bytes + size > self.max_bytes)
            && !self.entries.is_empty()
        {
            if let Some((seq, m)) = self.entries.pop_first() {
                self.bytes -= m.json_bytes + m.heatmap_bytes.unwrap_or(0);
                self.ids.remove(&m.id);
                ev.heatmaps.retain(|s| *s != seq);
                ev.entries.push(seq);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.restore(seq, meta);
        Some((seq, ev))
    }

    /// Forget entry `seq` (acknowledged); returns its metadata.
    pub fn remove(&mut self, seq: u64) -> Option<Meta> {
        let m = self.entries.remove(&seq)?;
        self.bytes -= m.json_bytes + m.heatmap_bytes.unwrap_or(0);
        self.ids.remove(&m.id);
        Some(m)
    }
}

/// A pending entry's contents.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Inspection id.
    pub id: String,
    /// Result JSON.
    pub json: Vec<u8>,
    /// Heatmap JPEG.
    pub heatmap: Option<Vec<u8>>,
}

/// The outbox directory.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    index: Index,
    dropped: u64,
    dropped_heatmaps: u64,
    quarantined: u64,
}

/// Where entries that cannot be read are moved, to be looked at by a person.
pub const QUARANTINE: &str = "quarantine";

/// Inspection id stored in each JSON (read back at start-up).
#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

impl Outbox {
    /// Open (creating) `dir`, re-indexing what a previous run left.
    pub fn open(dir: &Path, max_entries: usize, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut index = Index::new(max_entries, max_bytes);
        let mut jpgs = Vec::new();
        let mut quarantined = 0;
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            if path.file_name().is_some_and(|n| n == QUARANTINE) {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let Ok(seq) = stem.parse::<u64>() else {
                // Temporary files of interrupted writes.
                if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            match path.extension().and_then(|x| x.to_str()) {
                Some("json") => {
                    let parsed = fs::read(&path).and_then(|bytes| {
                        let r: IdOnly = serde_json::from_slice(&bytes).map_err(io::Error::other)?;
                        Ok((r.id, bytes))
                    });
                    let (id, bytes) = match parsed {
                        Ok(p) => p,
                        Err(e) => {
                            log::error!(
                                "outbox: entry {} is unreadable ({e}): quarantined",
                                path.display()
                            );
                            quarantine(dir, &path);
                            quarantined += 1;
                            continue;
                        }
                    };
                    let jpg = path.with_extension("jpg");
                    let heatmap_bytes = fs::metadata(&jpg).ok().map(|m| m.len());
                    index.restore(
                        seq,
                        Meta {
                            id,
                            json_bytes: bytes.len() as u64,
                            heatmap_bytes,
                        },
                    );
                }
                Some("jpg") => jpgs.push((seq, path)),
                _ => {}
            }
        }
        for (seq, path) in jpgs {
            if index.get(seq).is_none() {
                let _ = fs::remove_file(path);
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            index,
            dropped: 0,
            dropped_heatmaps: 0,
            quarantined,
        })
    }

    /// Entries moved to `quarantine/` because they could not be read, since start.
    pub fn quarantined(&self) -> u64 {
        self.quarantined
    }

    /// Delete the heatmap of pending entry `seq` (it cannot be published);
    /// the result stays. Returns whether there was one.
    pub fn drop_heatmap(&mut self, seq: u64) -> io::Result<bool> {
        let Some(h) = self
            .index
            .entries
            .get_mut(&seq)
            .and_then(|m| m.heatmap_bytes.take())
        else {
            return Ok(false);
        };
        self.index.bytes -= h;
        self.dropped_heatmaps += 1;
        match fs::remove_file(self.jpg_path(seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(true),
        }
    }

    /// Move entry `seq`, which cannot be read, to `quarantine/` and forget it.
    pub fn quarantine(&mut self, seq: u64) {
        if self.index.remove(seq).is_some() {
            quarantine(&self.dir, &self.json_path(seq));
            quarantine(&self.dir, &self.jpg_path(seq));
            self.quarantined += 1;
        }
    }

    /// The bookkeeping.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Results dropped to stay within bounds since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Heatmaps dropped to stay within bounds since start (their results stay,
    /// and say so when published).
    pub fn dropped_heatmaps(&self) -> u64 {
        self.dropped_heatmaps
    }

    fn json_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.json"))
    }

    fn jpg_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.jpg"))
    }

    /// Store a result durably. Returns its seq, or `None` if a result with the
    /// same inspection id is already pending.
    pub fn push(&mut self, id: &str, json: &[u8], heatmap: Option<&[u8]>) -> io::Result<Option<u64>> {
        let meta = Meta {
            id: id.to_string(),
            json_bytes: json.len() as u64,
            heatmap_bytes: heatmap.map(|h| h.len() as u64),
        };
        let Some((seq, ev)) = self.index.admit(&meta) else {
            return Ok(None);
        };
        for s in &ev.heatmaps {
            let _ = fs::remove_file(self.jpg_path(*s));
            self.dropped_heatmaps += 1;
            log::warn!("outbox full: dropped the heatmap of pending result #{s}");
        }
        let heatmap = if ev.own_heatmap {
            self.dropped_heatmaps += 1;
            log::warn!("outbox full: result #{seq} is stored without its heatmap");
            None
        } else {
            heatmap
        };
        for s in &ev.entries {
            let _ = fs::remove_file(self.json_path(*s));
            let _ = fs::remove_file(self.jpg_path(*s));
            self.dropped += 1;
            log::error!("outbox full: dropped pending result #{s} (broker unreachable for too long?)");
        }
        let written = (|| {
            if let Some(h) = heatmap {
                write_atomic(&self.jpg_path(seq), h)?;
            }
            write_atomic(&self.json_path(seq), json)
        })();
        if let Err(e) = written {
            self.index.remove(seq);
            let _ = fs::remove_file(self.jpg_path(seq));
            return Err(e);
        }
        Ok(Some(seq))
    }

    /// Read entry `seq`.
    pub fn read(&self, seq: u64) -> io::Result<Option<Entry>> {
        let Some(meta) = self.index.get(seq) else {
            return Ok(None);
        };
        let json = fs::read(self.json_path(seq))?;
        let heatmap = if meta.heatmap_bytes.is_some() {
            fs::read(self.jpg_path(seq)).ok()
        } else {
            None
        };
        Ok(Some(Entry {
            seq,
            id: meta.id.clone(),
            json,
            heatmap,
        }))
    }

    /// Remove an acknowledged entry.
    pub fn remove(&mut self, seq: u64) -> io::Result<()> {
        if self.index.remove(seq).is_some() {
            fs::remove_file(self.json_path(seq))?;
            match fs::remove_file(self.jpg_path(seq)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Move `path` (a file, or whatever is in its place) into `<dir>/quarantine/`;
/// delete it when even that fails, so it cannot block the outbox again.
fn quarantine(dir: &Path, path: &Path) {
    let Some(name) = path.file_name() else { return };
    if fs::symlink_metadata(path).is_err() {
        return;
    }
    let q = dir.join(QUARANTINE);
    let moved = fs::create_dir_all(&q).and_then(|()| fs::rename(path, q.join(name)));
    if let Err(e) = moved {
        log::error!("outbox: cannot quarantine {} ({e}); removing it", path.display());
        let _ = fs::remove_file(path).or_else(|_| fs::remove_dir_all(path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, json: u64, heat: Option<u64>) -> Meta {
        Meta {
            id: id.into(),
            json_bytes: json,
            heatmap_bytes: heat,
        }
    }

    #[test]
    fn entries_get_increasing_seqs_and_duplicates_are_refused() {
        let mut ix = Index::new(10, 1000);
        assert_eq!(ix.admit(&meta("a", 10, None)).unwrap().0, 1);
        assert_eq!(ix.admit(&meta("b", 10, None)).unwrap().0, 2);
        assert!(ix.admit(&meta("a", 10, None)).is_none());
        assert_eq!(ix.after(0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(ix.after(1).collect::<Vec<_>>(), vec![2]);
        ix.remove(1);
        assert!(!ix.contains_id("a"));
        assert_eq!(
            ix.admit(&meta("a", 10, None)).unwrap().0,
            3,
            "after delivery the same id may come again"
        );
    }

    #[test]
    fn the_count_bound_drops_the_oldest_entry() {
        let mut ix = Index::new(2, 1000);
        ix.admit(&meta("a", 1, None));
        ix.admit(&meta("b", 1, None));
        let (seq, ev) = ix.admit(&meta("c", 1, None)).unwrap();
        assert_eq!(seq, 3);
        assert_eq!(ev.entries, vec![1]);
        assert_eq!(ix.len(), 2);
    }

    #[test]
    fn the_byte_bound_drops_heatmaps_before_results() {
        let mut ix = Index::new(100, 100);
        ix.admit(&meta("a", 10, Some(40)));
        ix.admit(&meta("b", 10, Some(30)));
        // 90 pending; 20 more needs 10 freed: a's heatmap goes, both results stay.
        let (_, ev) = ix.admit(&meta("c", 10, Some(10))).unwrap();
        assert_eq!(ev.heatmaps, vec![1]);
        assert!(ev.entries.is_empty());
        assert_eq!(ix.bytes(), 70);
        // Now a result that cannot fit without dropping results too.
        let (_, ev) = ix.admit(&meta("d", 60, None)).unwrap();
        assert_eq!(ev.heatmaps, vec![2]);
        assert!(ev.entries.is_empty());
        assert_eq!(ix.bytes(), 100);
        // Nothing small enough left to drop: whole results go, oldest first.
        let (_, ev) = ix.admit(&meta("e", 50, None)).unwrap();
        assert_eq!(ev.entries, vec![1, 2, 3, 4]);
        assert_eq!(ix.bytes(), 50);
    }

    /// Issue #16, finding 2: one large heatmap evicted 19 results.
    #[test]
    fn results_are_never_dropped_to_make_room_for_a_heatmap() {
        let mut ix = Index::new(100, 100);
        for id in ["a", "b", "c", "d"] {
            ix.admit(&meta(id, 20, None));
        }
        // 80 pending; a result of 10 with a heatmap of 50 does not fit with
        // its picture: the picture goes, every result stays.
        let (_, ev) = ix.admit(&meta("e", 10, Some(50))).unwrap();
        assert!(ev.own_heatmap);
        assert!(ev.entries.is_empty() && ev.heatmaps.is_empty(), "{ev:?}");
        assert_eq!(ix.len(), 5);
        assert_eq!(ix.bytes(), 90);
        // A heatmap larger than the whole outbox displaces nothing either.
        let mut ix = Index::new(100, 100);
        ix.admit(&meta("a", 10, Some(20)));
        let (_, ev) = ix.admit(&meta("b", 10, Some(500))).unwrap();
        assert!(ev.own_heatmap && ev.heatmaps.is_empty(), "{ev:?}");
        assert_eq!(ix.bytes(), 40);
    }

    #[test]
    fn a_heatmap_that_does_not_fit_is_not_written_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        let big = vec![0u8; 2 << 20];
        let seq = ob.push("id", br#"{"id":"id"}"#, Some(&big)).unwrap().unwrap();
        assert_eq!(ob.dropped_heatmaps(), 1);
        assert_eq!(ob.dropped(), 0);
        assert!(ob.read(seq).unwrap().unwrap().heatmap.is_none());
        assert!(!dir.path().join(format!("{seq:016}.jpg")).exists());
    }

    #[test]
    fn the_outbox_survives_a_restart_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        for i in 0..3 {
            let json = format!(r#"{{"id":"id{i}"}}"#);
            ob.push(&format!("id{i}"), json.as_bytes(), Some(b"jpegbytes"))
                .unwrap()
                .unwrap();
        }
        ob.remove(1).unwrap();
        // A crash between the heatmap and the JSON leaves an orphan heatmap.
        fs::write(dir.path().join(format!("{:016}.jpg", 9)), b"orphan").unwrap();
        drop(ob);
        let ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!(ob.index().after(0).collect::<Vec<_>>(), vec![2, 3]);
        assert!(ob.index().contains_id("id2"));
        assert_eq!(ob.index().next_seq(), 4);
        let e = ob.read(3).unwrap().unwrap();
        assert_eq!(e.heatmap.as_deref(), Some(&b"jpegbytes"[..]));
        assert!(!dir.path().join(format!("{:016}.jpg", 9)).exists());
    }

    #[test]
    fn unreadable_entries_are_quarantined_at_start_and_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        for i in 0..3 {
            ob.push(&format!("id{i}"), format!(r#"{{"id":"id{i}"}}"#).as_bytes(), None)
                .unwrap();
        }
        drop(ob);
        // #1 is garbage; #2 became a directory (root can read any file, not a directory).
        fs::write(dir.path().join(format!("{:016}.json", 1)), b"{not json").unwrap();
        let two = dir.path().join(format!("{:016}.json", 2));
        fs::remove_file(&two).unwrap();
        fs::create_dir(&two).unwrap();
        let mut ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        assert_eq!(ob.index().after(0).collect::<Vec<_>>(), vec![3]);
        assert_eq!(ob.quarantined(), 2);
        assert!(dir
            .path()
            .join("quarantine")
            .join(format!("{:016}.json", 2))
            .is_dir());
        // An entry that turns unreadable while pending.
        let three = dir.path().join(format!("{:016}.json", 3));
        fs::remove_file(&three).unwrap();
        fs::create_dir(&three).unwrap();
        assert!(ob.read(3).is_err());
        ob.quarantine(3);
        assert!(ob.index().is_empty());
        assert_eq!(ob.quarantined(), 3);
        drop(ob);
        let ob = Outbox::open(dir.path(), 100, 1 << 20).unwrap();
        assert!(ob.index().is_empty(), "the quarantine is not read as entries");
    }
}
