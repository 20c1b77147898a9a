//! Log output. On a terminal or into a file: env_logger's lines, with time and level. Into
//! systemd's journal (the service's stderr, which `$JOURNAL_STREAM` names): each line
//! starts with its syslog priority (`<3>` error … `<7>` debug) instead, so
//! `journalctl -p warning` selects by level, and carries no time stamp of its own (the
//! journal stamps every line).

use std::io::Write;

/// What is logged unless `RUST_LOG` says otherwise.
pub const DEFAULT_FILTER: &str = "info,rumqttd=off,tracing::span=off";

/// Install the logger for this process.
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER));
    if stderr_is_journal() {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "{}",
                journal_line(record.level(), record.target(), &record.args().to_string())
            )
        });
    }
    builder.init();
}

/// The syslog priority prefix journald reads off the start of a line.
pub fn journal_prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// One journal line: the priority and the message; a dependency's lines also name where
/// they come from (ours are known by their wording).
pub fn journal_line(level: log::Level, target: &str, message: &str) -> String {
    let prefix = journal_prefix(level);
    if target == "winclip_edge" || target.starts_with("winclip_edge::") {
        format!("{prefix}{message}")
    } else {
        format!("{prefix}{target}: {message}")
    }
}

/// Whether `JOURNAL_STREAM` (`<device>:<inode>`, set by systemd) names the file whose device
/// and inode are `dev` and `ino`.
pub fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Whether stderr is still the journal stream systemd connected (a shell started from the
/// service inherits the variable with another stderr).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    #[allow(clippy::useless_conversion)] // dev_t and ino_t are u64 on some targets only
    let (dev, ino) = (u64::from(st.st_dev), u64::from(st.st_ino));
    stream.to_str().is_some_and(|s| names_stream(s, dev, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_lines_carry_the_syslog_priority_and_no_time_stamp() {
        assert_eq!(
            journal_line(log::Level::Warn, "winclip_edge::daemon", "reload failed"),
            "<4>reload failed"
        );
        assert_eq!(journal_line(log::Level::Error, "winclip_edge", "x"), "<3>x");
        assert_eq!(
            journal_line(log::Level::Info, "winclip_edge::daemon::worker", "ok"),
            "<6>ok"
        );
        assert_eq!(journal_line(log::Level::Debug, "winclip_edge", "d"), "<7>d");
        assert_eq!(journal_line(log::Level::Trace, "winclip_edge", "t"), "<7>t");
        assert_eq!(
            journal_line(log::Level::Warn, "rumqttc::state", "connection reset"),
            "<4>rumqttc::state: connection reset",
            "a dependency's line says where it comes from"
        );
        assert_eq!(
            journal_line(log::Level::Info, "winclip_edgex", "m"),
            "<6>winclip_edgex: m",
            "only our own crate's target is left out"
        );
    }

    #[test]
    fn journal_stream_names_one_device_and_inode() {
        assert!(names_stream("8:123456", 8, 123456));
        assert!(!names_stream("8:123456", 8, 123457));
        assert!(!names_stream("9:123456", 8, 123456));
        for bad in ["", "8", "8:", ":1", "x:1", "8:1:2"] {
            assert!(!names_stream(bad, 8, 1), "{bad:?}");
        }
    }
}
