//! One daemon per state directory. Two daemons on one outbox would deliver
//! each other's results and fight over the same files, so the first holds an
//! exclusive `flock` on `<state_dir>/lock` for its whole life (the kernel
//! drops it when the process ends, however it ends) and a second one stops
//! at start with a message naming the holder.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the lock could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds it.
    #[error(
        "another winclip-edge (pid {holder}) already runs on state directory {}: two daemons must not \
         share one (stop the other, or give this one its own station.state_dir)",
        dir.display()
    )]
    Held {
        /// The state directory.
        dir: PathBuf,
        /// The pid the holder wrote, or "unknown".
        holder: String,
    },
    /// The lock file could not be opened.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The held lock; released when dropped.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Take the lock of `dir` (created if missing) and write our pid into it.
    pub fn acquire(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("lock");
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown".to_string(),
                    pid => pid.to_string(),
                };
                return Err(Error::Held {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        let pid = std::process::id().to_string();
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| lock.write_all(pid.as_bytes()))
            .map_err(io)?;
        Ok(Self { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        let err = StateLock::acquire(&state).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("station.state_dir"),
            "{err}"
        );
        drop(first);
        StateLock::acquire(&state).unwrap();
    }
}
