//! File helpers for results that must survive crashes and power loss.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Write `bytes` to `path` atomically: a temporary file in the same directory,
/// fsync, rename over `path`, fsync the directory. Readers see the old file or
/// the new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Image file extensions the inspector reads.
pub const IMAGE_EXTENSIONS: [&str; 11] = [
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "pnm", "ppm", "pgm", "pbm", "pam",
];

/// Whether `path` has an image extension and is not a hidden or temporary
/// file. Works on the name's bytes: a name that is not UTF-8 is still a name.
pub fn is_image_name(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = path.file_name().map(OsStrExt::as_bytes) else {
        return false;
    };
    if name.starts_with(b".") || name.ends_with(b"~") {
        return false;
    }
    let Some(dot) = name.iter().rposition(|&b| b == b'.') else {
        return false;
    };
    let ext = name[dot + 1..].to_ascii_lowercase();
    IMAGE_EXTENSIONS.iter().any(|e| e.as_bytes() == ext.as_slice())
}

/// A file name as text that says exactly which bytes it has: valid UTF-8 as
/// it is, every other byte and every control character as `\xNN`. Equal to
/// the lossy form for ordinary names.
pub fn escape_name(name: &std::ffi::OsStr) -> String {
    use std::fmt::Write as _;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                for b in c.to_string().bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

/// Move `file` into directory `dir` under its own name, or `<name>.<n>` for
/// the first free `n` (a name too long for a suffix is shortened to fit):
/// nothing already in `dir` is overwritten. Across file systems (EXDEV) the
/// file is copied to a temporary name, fsynced, renamed into place and only
/// then removed. Returns where it went.
pub fn move_into(file: &Path, dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let name = file
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .as_bytes();
    fs::create_dir_all(dir)?;
    for n in 0u32.. {
        let suffix = if n == 0 { String::new() } else { format!(".{n}") };
        let keep = name.len().min(NAME_MAX - suffix.len());
        let mut candidate = name[..keep].to_vec();
        candidate.extend_from_slice(suffix.as_bytes());
        let dest = dir.join(std::ffi::OsString::from_vec(candidate));
        if fs::symlink_metadata(&dest).is_ok() {
            continue;
        }
        return match fs::rename(file, &dest) {
            Ok(()) => Ok(dest),
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                copy_into_place(file, &dest)?;
                fs::remove_file(file)?;
                Ok(dest)
            }
            Err(e) => Err(e),
        };
    }
    unreachable!("u32 names run out")
}

/// Copy `from` to `dest` on another file system so that `dest` appears whole
/// or not at all.
fn copy_into_place(from: &Path, dest: &Path) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".winclip-move.{}.tmp", std::process::id()));
    let result = (|| {
        let mut src = File::open(from)?;
        let mut out = File::create(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.sync_all()?;
        fs::rename(&tmp, dest)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What [`find_images`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Pictures to inspect: the files given, and the pictures under the
    /// directories given (searched recursively), in order.
    pub files: Vec<PathBuf>,
    /// Files under the directories that are not pictures this build reads
    /// (hidden files and directories are passed over without a word).
    pub skipped: Vec<PathBuf>,
}

/// Expand files and directories into pictures: a file given is taken as it
/// is; a directory is searched recursively for every format the decoder
/// reads ([`IMAGE_EXTENSIONS`]), sorted, symbolic links to directories not
/// followed (no loops).
pub fn find_images(inputs: &[PathBuf]) -> io::Result<Found> {
    let mut found = Found::default();
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut found)?;
        } else {
            found.files.push(p.clone());
        }
    }
    Ok(found)
}

fn walk(dir: &Path, found: &mut Found) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut entries: Vec<fs::DirEntry> = fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        if e.file_name().as_bytes().starts_with(b".") {
            continue;
        }
        let kind = e.file_type()?;
        if kind.is_dir() {
            walk(&path, found)?;
        } else if is_image_name(&path) {
            found.files.push(path);
        } else if kind.is_file() || kind.is_symlink() {
            found.skipped.push(path);
        }
    }
    Ok(())
}

/// Expand files and directories into a sorted list of image files (see
/// [`find_images`]; what is not a picture is left out).
pub fn image_files(inputs: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    Ok(find_images(inputs)?.files)
}

/// Output paths for `files` that can never collide: each file's path below
/// the deepest directory all of them share, without its extension (`good/000`
/// and `bad/000` for `good/000.png` and `bad/000.png`; `000` for one directory).
pub fn output_stems(files: &[PathBuf]) -> Vec<PathBuf> {
    let absolute: Vec<PathBuf> = files
        .iter()
        .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let mut common: Option<PathBuf> = None;
    for f in &absolute {
        let parent = f.parent().unwrap_or(Path::new("/")).to_path_buf();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .components()
                .zip(parent.components())
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    let common = common.unwrap_or_default();
    absolute
        .iter()
        .map(|f| f.strip_prefix(&common).unwrap_or(f).with_extension(""))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn hidden_and_temp_files_are_not_images() {
        assert!(is_image_name(Path::new("a/b.PNG")));
        assert!(!is_image_name(Path::new("a/.b.png")));
        assert!(!is_image_name(Path::new("a/b.png~")));
        assert!(!is_image_name(Path::new("a/b.txt")));
        assert!(!is_image_name(Path::new("a/png")));
    }

    /// Issue #16, finding 8: a name that is not UTF-8 got no result.
    #[test]
    fn names_that_are_not_utf8_are_images_and_escape_exactly() {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"caf\xe9-\x01.png");
        assert!(is_image_name(Path::new(raw)));
        assert_eq!(escape_name(raw), "caf\\xe9-\\x01.png");
        assert_eq!(escape_name(std::ffi::OsStr::new("plain é.png")), "plain é.png");
        assert_ne!(
            escape_name(std::ffi::OsStr::from_bytes(b"a\xff.png")),
            escape_name(std::ffi::OsStr::from_bytes(b"a\xfe.png"))
        );
    }

    /// Issue #16, finding 7: names collided in done/, long names could not take a suffix.
    #[test]
    fn moves_never_overwrite_and_long_names_are_shortened_to_fit() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        let long = format!("{}.png", "x".repeat(251));
        let mut dests = Vec::new();
        for content in [b"1", b"2", b"3"] {
            let f = dir.path().join(&long);
            fs::write(&f, content).unwrap();
            dests.push(move_into(&f, &done).unwrap());
        }
        assert_eq!(fs::read_dir(&done).unwrap().count(), 3);
        for (d, content) in dests.iter().zip([b"1", b"2", b"3"]) {
            assert_eq!(&fs::read(d).unwrap(), content);
            assert!(d.file_name().unwrap().len() <= 255);
        }
        assert!(dests[2].to_string_lossy().ends_with(".2"));
    }

    #[test]
    fn a_copy_across_file_systems_appears_whole() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a.png");
        fs::write(&from, b"picture").unwrap();
        let dest = dir.path().join("b.png");
        copy_into_place(&from, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"picture");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
        // Where /dev/shm is another file system, the real thing.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let other = tempfile::tempdir_in(shm).unwrap();
            let moved = move_into(&from, other.path()).unwrap();
            assert_eq!(fs::read(moved).unwrap(), b"picture");
            assert!(!from.exists());
        }
    }

    #[test]
    fn directories_are_searched_recursively_and_what_is_skipped_is_said() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        for n in [
            "b.png",
            "a.pgm",
            "sub/c.jpg",
            "sub/deeper/d.tif",
            "notes.txt",
            "e.webp",
            ".x.png",
            ".hidden/f.png",
        ] {
            fs::write(dir.path().join(n), b"").unwrap();
        }
        let found = find_images(&[dir.path().to_owned()]).unwrap();
        let rel = |v: &[PathBuf]| -> Vec<String> {
            v.iter()
                .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(
            rel(&found.files),
            ["a.pgm", "b.png", "sub/c.jpg", "sub/deeper/d.tif"]
        );
        assert_eq!(rel(&found.skipped), ["e.webp", "notes.txt"]);
    }

    /// Issue #21: `bad/000.png` overwrote `good/000.png`'s outputs.
    #[test]
    fn output_stems_keep_the_relative_paths_and_never_collide() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            output_stems(&[p("/d/good/000.png"), p("/d/bad/000.png")]),
            [p("good/000"), p("bad/000")]
        );
        assert_eq!(
            output_stems(&[p("/d/good/000.png"), p("/d/good/001.png")]),
            [p("000"), p("001")]
        );
        assert_eq!(output_stems(&[p("/x/a.b.png")]), [p("a.b")]);
    }

    #[test]
    fn directories_expand_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["b.png", "a.jpg", ".c.png", "d.txt"] {
            fs::write(dir.path().join(n), b"").unwrap();
        }
        let files = image_files(&[dir.path().to_owned()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.jpg", "b.png"]);
    }
}
