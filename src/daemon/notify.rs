//! systemd's notify protocol behind a small trait, so tests and plain runs use a no-op.

use std::time::Duration;

/// Messages to the service manager.
pub trait Notifier: Send + Sync {
    /// Start-up done (`READY=1`).
    fn ready(&self);
    /// Reloading (`RELOADING=1` + `MONOTONIC_USEC`).
    fn reloading(&self);
    /// Shutting down (`STOPPING=1`).
    fn stopping(&self);
    /// Free-form status for `systemctl status`.
    fn status(&self, text: &str);
    /// Liveness ping (`WATCHDOG=1`).
    fn watchdog(&self);
    /// How often [`Notifier::watchdog`] must be called, if the watchdog is on.
    fn watchdog_interval(&self) -> Option<Duration>;
}

/// Talks to systemd through `$NOTIFY_SOCKET`.
#[derive(Debug, Default)]
pub struct Systemd {
    interval: Option<Duration>,
}

impl Systemd {
    /// A notifier when running under systemd with `Type=notify`, else `None`.
    pub fn from_env() -> Option<Self> {
        std::env::var_os("NOTIFY_SOCKET")?;
        let interval = sd_notify::watchdog_enabled().map(|d| d / 2);
        Some(Self { interval })
    }

    fn send(&self, states: &[sd_notify::NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            log::warn!("sd_notify: {e}");
        }
    }
}

impl Notifier for Systemd {
    fn ready(&self) {
        self.send(&[sd_notify::NotifyState::Ready]);
    }
    fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => self.send(&[sd_notify::NotifyState::Reloading]),
        }
    }
    fn stopping(&self) {
        self.send(&[sd_notify::NotifyState::Stopping]);
    }
    fn status(&self, text: &str) {
        self.send(&[sd_notify::NotifyState::Status(text)]);
    }
    fn watchdog(&self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }
    fn watchdog_interval(&self) -> Option<Duration> {
        self.interval
    }
}

/// Does nothing (not under systemd).
#[derive(Debug, Default)]
pub struct Noop;

impl Notifier for Noop {
    fn ready(&self) {}
    fn reloading(&self) {}
    fn stopping(&self) {}
    fn status(&self, _: &str) {}
    fn watchdog(&self) {}
    fn watchdog_interval(&self) -> Option<Duration> {
        None
    }
}
