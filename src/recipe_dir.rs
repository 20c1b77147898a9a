//! A recipe directory: a bank with everything a rebuild on the device needs,
//! kept in versions so that teaching is atomic and reversible.
//!
//! ```text
//! DIR/current -> versions/0003        the version in use (a symlink)
//! DIR/versions/0003/bank.safetensors  the bank
//! DIR/versions/0003/shots/            the reference pictures (WinCLIP+), as read
//! DIR/versions/0003/calibration/      the good pictures the threshold is fitted to
//! ```
//!
//! A new version is staged in `versions/.0004.tmp`, every file and directory
//! fsynced, renamed to `versions/0004`, and only then is `current` switched:
//! a symlink made beside it and renamed over it, the directory fsynced. A
//! crash at any moment leaves `current` on a complete version; what staging
//! left behind is removed by [`RecipeDir::clean`]. Versions are kept (a
//! rollback returns to the one before), the oldest removed past [`KEEP`].

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The bank's file name in a version.
pub const BANK_FILE: &str = "bank.safetensors";
/// Versions kept; older ones are removed after a new one is made (never the current one).
pub const KEEP: usize = 10;

const CURRENT: &str = "current";
const VERSIONS: &str = "versions";

/// A picture set of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Set {
    /// The few-shot reference pictures.
    Shot,
    /// The good pictures the threshold is calibrated on.
    Calibration,
}

impl Set {
    /// As commands name it: `shot` or `calibration`.
    pub fn name(self) -> &'static str {
        match self {
            Set::Shot => "shot",
            Set::Calibration => "calibration",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Set::Shot => "shots",
            Set::Calibration => "calibration",
        }
    }
}

/// What went wrong, with the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `current` is missing or does not point at a version.
    #[error("{0}: not a recipe directory (no current -> versions/NNNN); `winclip-edge bank --recipe-dir` makes one")]
    NotRecipeDir(PathBuf),
    /// Rollback with nothing before the current version.
    #[error("{dir}: version {current} is the oldest kept: there is nothing to roll back to")]
    NoPrevious {
        /// The recipe directory.
        dir: PathBuf,
        /// The current version.
        current: u32,
    },
    /// The directory to create already holds something.
    #[error("{0}: exists and is not empty; a recipe directory is made in a new or empty directory")]
    NotEmpty(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// A picture: its file name and bytes as read.
pub type Picture = (String, Vec<u8>);

/// A recipe directory.
#[derive(Debug, Clone)]
pub struct RecipeDir {
    root: PathBuf,
}

/// The bank file `path` names: itself, or a recipe directory's current bank.
pub fn bank_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CURRENT).join(BANK_FILE)
    } else {
        path.to_owned()
    }
}

fn version_name(n: u32) -> String {
    format!("{n:04}")
}

fn fsync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_at(dir))
}

/// Write a new file (never through an existing one: it may be a hard link) and fsync it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_at(path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_at(path))
}

impl RecipeDir {
    /// Whether `path` is a recipe directory (a directory with `current`).
    pub fn is_recipe_dir(path: &Path) -> bool {
        path.is_dir() && path.join(CURRENT).symlink_metadata().is_ok()
    }

    /// Open the recipe directory `root`.
    pub fn open(root: &Path) -> Result<Self, Error> {
        let dir = Self {
            root: root.to_owned(),
        };
        dir.current()?;
        Ok(dir)
    }

    /// Make version 1 in `root` (new or empty) from a bank and its pictures.
    pub fn create(
        root: &Path,
        bank: &[u8],
        shots: &[Picture],
        calibration: &[Picture],
    ) -> Result<Self, Error> {
        if root.exists() && fs::read_dir(root).map_err(io_at(root))?.next().is_some() {
            return Err(Error::NotEmpty(root.to_owned()));
        }
        fs::create_dir_all(root.join(VERSIONS)).map_err(io_at(root))?;
        let dir = Self {
            root: root.to_owned(),
        };
        let mut staged = dir.stage_new(1)?;
        for (set, pictures) in [(Set::Shot, shots), (Set::Calibration, calibration)] {
            for (name, bytes) in pictures {
                staged.add(set, name, bytes)?;
            }
        }
        let v = staged.commit(bank)?;
        dir.switch(v)?;
        fsync_dir(
            root.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        Ok(dir)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version in use.
    pub fn current(&self) -> Result<u32, Error> {
        let link = self.root.join(CURRENT);
        let target = fs::read_link(&link).map_err(|_| Error::NotRecipeDir(self.root.clone()))?;
        let n = target
            .strip_prefix(VERSIONS)
            .ok()
            .and_then(|p| p.to_str())
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| Error::NotRecipeDir(self.root.clone()))?;
        if !self.version_dir(n).join(BANK_FILE).is_file() {
            return Err(Error::NotRecipeDir(self.root.clone()));
        }
        Ok(n)
    }

    /// The complete versions, oldest first.
    pub fn versions(&self) -> Result<Vec<u32>, Error> {
        let dir = self.root.join(VERSIONS);
        let mut out: Vec<u32> = fs::read_dir(&dir)
            .map_err(io_at(&dir))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    fn version_dir(&self, n: u32) -> PathBuf {
        self.root.join(VERSIONS).join(version_name(n))
    }

    /// The bank file of version `n`.
    pub fn bank_path(&self, n: u32) -> PathBuf {
        self.version_dir(n).join(BANK_FILE)
    }

    /// The pictures of `set` in version `n`, by name.
    pub fn pictures(&self, n: u32, set: Set) -> Result<Vec<Picture>, Error> {
        read_pictures(&self.version_dir(n).join(set.dir()))
    }

    /// The set and name of a picture of version `n` with exactly `bytes`
    /// (only files of the same size are read).
    pub fn find(&self, n: u32, bytes: &[u8]) -> Result<Option<(Set, String)>, Error> {
        for set in [Set::Shot, Set::Calibration] {
            let dir = self.version_dir(n).join(set.dir());
            for e in fs::read_dir(&dir).map_err(io_at(&dir))? {
                let e = e.map_err(io_at(&dir))?;
                if e.metadata().map_err(io_at(&e.path()))?.len() != bytes.len() as u64 {
                    continue;
                }
                if fs::read(e.path()).map_err(io_at(&e.path()))? == bytes {
                    return Ok(Some((set, e.file_name().to_string_lossy().into_owned())));
                }
            }
        }
        Ok(None)
    }

    /// Remove what an interrupted staging left (`versions/.NNNN.tmp`, a
    /// half-made `current` link). Only the one process that writes the
    /// directory (the daemon, at start) may call it.
    pub fn clean(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        let versions = self.root.join(VERSIONS);
        for e in fs::read_dir(&versions).map_err(io_at(&versions))? {
            let e = e.map_err(io_at(&versions))?;
            let name = e.file_name();
            if name.to_string_lossy().ends_with(".tmp") {
                fs::remove_dir_all(e.path()).map_err(io_at(&e.path()))?;
                removed.push(e.path());
            }
        }
        let link = self.root.join(".current.tmp");
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).map_err(io_at(&link))?;
            removed.push(link);
        }
        Ok(removed)
    }

    /// Stage the next version: version `base`'s pictures, plus what is added.
    pub fn stage_from(&self, base: u32) -> Result<Staged, Error> {
        let next = self.versions()?.last().copied().unwrap_or(0).max(base) + 1;
        let staged = self.stage_new(next)?;
        for set in [Set::Shot, Set::Calibration] {
            let from = self.version_dir(base).join(set.dir());
            for (name, _) in read_pictures(&from)? {
                let (src, dst) = (from.join(&name), staged.dir.join(set.dir()).join(&name));
                // The same bytes: a hard link where the file system allows.
                if fs::hard_link(&src, &dst).is_err() {
                    fs::copy(&src, &dst).map_err(io_at(&dst))?;
                    File::open(&dst).and_then(|f| f.sync_all()).map_err(io_at(&dst))?;
                }
            }
        }
        Ok(staged)
    }

    fn stage_new(&self, n: u32) -> Result<Staged, Error> {
        let dir = self.root.join(VERSIONS).join(format!(".{}.tmp", version_name(n)));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
        }
        for set in [Set::Shot, Set::Calibration] {
            let d = dir.join(set.dir());
            fs::create_dir_all(&d).map_err(io_at(&d))?;
        }
        Ok(Staged {
            dir,
            number: n,
            done: false,
        })
    }

    /// Make version `n` the current one (atomically).
    pub fn switch(&self, n: u32) -> Result<(), Error> {
        if !self.bank_path(n).is_file() {
            return Err(Error::Io {
                path: self.bank_path(n),
                source: io::Error::new(io::ErrorKind::NotFound, "no such version"),
            });
        }
        let tmp = self.root.join(".current.tmp");
        let _ = fs::remove_file(&tmp);
        let target = Path::new(VERSIONS).join(version_name(n));
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_at(&tmp))?;
        let link = self.root.join(CURRENT);
        fs::rename(&tmp, &link).map_err(io_at(&link))?;
        fsync_dir(&self.root)
    }

    /// The version a rollback returns to: the newest one before the current.
    pub fn previous(&self) -> Result<u32, Error> {
        let current = self.current()?;
        self.versions()?
            .into_iter()
            .filter(|&v| v < current)
            .max()
            .ok_or_else(|| Error::NoPrevious {
                dir: self.root.clone(),
                current,
            })
    }

    /// Remove the oldest versions past [`KEEP`] (never the current one).
    pub fn prune(&self) -> Result<(), Error> {
        let current = self.current()?;
        let versions = self.versions()?;
        let excess = versions.len().saturating_sub(KEEP);
        for v in versions.into_iter().filter(|&v| v != current).take(excess) {
            let d = self.version_dir(v);
            fs::remove_dir_all(&d).map_err(io_at(&d))?;
        }
        Ok(())
    }
}

fn read_pictures(dir: &Path) -> Result<Vec<Picture>, Error> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| crate::fsutil::is_image_name(Path::new(n)))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            fs::read(&p).map(|b| (n, b)).map_err(io_at(&p))
        })
        .collect()
}

/// A version being made in `versions/.NNNN.tmp`; removed again when dropped
/// before [`Staged::commit`].
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    number: u32,
    done: bool,
}

impl Staged {
    /// The version it will be.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Add a picture to `set` (written and fsynced). A name the set has
    /// already is refused: it may be a hard link to the version's own file.
    pub fn add(&mut self, set: Set, name: &str, bytes: &[u8]) -> Result<(), Error> {
        write_synced(&self.dir.join(set.dir()).join(name), bytes)
    }

    /// The pictures of `set` as staged, by name.
    pub fn pictures(&self, set: Set) -> Result<Vec<Picture>, Error> {
        read_pictures(&self.dir.join(set.dir()))
    }

    /// Write the bank, fsync everything and rename the version into place;
    /// `current` is not changed (see [`RecipeDir::switch`]).
    pub fn commit(mut self, bank: &[u8]) -> Result<u32, Error> {
        write_synced(&self.dir.join(BANK_FILE), bank)?;
        for set in [Set::Shot, Set::Calibration] {
            fsync_dir(&self.dir.join(set.dir()))?;
        }
        fsync_dir(&self.dir)?;
        let versions = self.dir.parent().map(Path::to_owned).unwrap_or_default();
        let to = versions.join(version_name(self.number));
        fs::rename(&self.dir, &to).map_err(io_at(&to))?;
        fsync_dir(&versions)?;
        self.done = true;
        Ok(self.number)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic(name: &str, b: u8) -> Picture {
        (name.to_string(), vec![b; 8])
    }

    #[test]
    fn versions_are_staged_committed_switched_and_rolled_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("bottle");
        let dir = RecipeDir::create(&root, b"bank-1", &[pic("a.png", 1)], &[pic("c1.png", 2)]).unwrap();
        assert!(RecipeDir::is_recipe_dir(&root));
        assert_eq!(dir.current().unwrap(), 1);
        assert_eq!(fs::read(bank_file(&root)).unwrap(), b"bank-1");
        assert!(matches!(
            dir.previous(),
            Err(Error::NoPrevious { current: 1, .. })
        ));

        let mut s = dir.stage_from(1).unwrap();
        s.add(Set::Calibration, "c2.png", &[3; 8]).unwrap();
        // A name already there (a hard link to version 1's file) is never written through.
        assert!(s.add(Set::Shot, "a.png", &[9; 8]).is_err());
        assert_eq!(dir.pictures(1, Set::Shot).unwrap(), vec![pic("a.png", 1)]);
        assert_eq!(s.pictures(Set::Calibration).unwrap().len(), 2);
        assert_eq!(s.pictures(Set::Shot).unwrap(), vec![pic("a.png", 1)]);
        // Not current until switched.
        let v = s.commit(b"bank-2").unwrap();
        assert_eq!((v, dir.current().unwrap()), (2, 1));
        dir.switch(v).unwrap();
        assert_eq!(fs::read(bank_file(&root)).unwrap(), b"bank-2");
        assert_eq!(dir.pictures(2, Set::Calibration).unwrap().len(), 2);
        assert_eq!(
            dir.find(2, &[3; 8]).unwrap(),
            Some((Set::Calibration, "c2.png".into()))
        );
        assert_eq!(dir.find(1, &[3; 8]).unwrap(), None);
        assert_eq!(dir.find(2, &[1; 8]).unwrap(), Some((Set::Shot, "a.png".into())));
        assert_eq!(dir.previous().unwrap(), 1);
        dir.switch(1).unwrap();
        assert_eq!(fs::read(bank_file(&root)).unwrap(), b"bank-1");
        // A version staged from 1 after a rollback is 3, not a second 2.
        assert_eq!(dir.stage_from(1).unwrap().number(), 3);
        assert!(matches!(
            RecipeDir::create(&root, b"x", &[], &[]),
            Err(Error::NotEmpty(_))
        ));
    }

    #[test]
    fn an_abandoned_staging_is_removed_and_never_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecipeDir::create(tmp.path(), b"bank-1", &[], &[pic("c.png", 1)]).unwrap();
        drop(dir.stage_from(1).unwrap());
        assert_eq!(dir.versions().unwrap(), [1]);
        // As a crash leaves it: a staging directory and a half-made link.
        let s = dir.stage_from(1).unwrap();
        std::mem::forget(s);
        std::os::unix::fs::symlink("versions/0002", tmp.path().join(".current.tmp")).unwrap();
        assert_eq!(dir.current().unwrap(), 1);
        assert_eq!(dir.clean().unwrap().len(), 2);
        assert_eq!(dir.versions().unwrap(), [1]);
        assert!(!tmp.path().join("versions/.0002.tmp").exists());
    }

    #[test]
    fn old_versions_are_pruned_but_never_the_current_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = RecipeDir::create(tmp.path(), b"1", &[], &[]).unwrap();
        for i in 2..=(KEEP as u32 + 3) {
            let v = dir
                .stage_from(i - 1)
                .unwrap()
                .commit(i.to_string().as_bytes())
                .unwrap();
            dir.switch(v).unwrap();
        }
        dir.prune().unwrap();
        let kept = dir.versions().unwrap();
        assert_eq!(kept.len(), KEEP);
        assert_eq!(kept.last().copied(), Some(KEEP as u32 + 3));
        assert_eq!(dir.current().unwrap(), KEEP as u32 + 3);
    }

    #[test]
    fn a_plain_file_is_its_own_bank_and_a_broken_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("b.safetensors");
        fs::write(&f, b"x").unwrap();
        assert_eq!(bank_file(&f), f);
        assert!(!RecipeDir::is_recipe_dir(&f));
        let d = tmp.path().join("r");
        fs::create_dir_all(d.join(VERSIONS)).unwrap();
        std::os::unix::fs::symlink("versions/0007", d.join(CURRENT)).unwrap();
        assert!(matches!(RecipeDir::open(&d), Err(Error::NotRecipeDir(_))));
    }
}
