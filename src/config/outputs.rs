//! A GPIO source's PLC side: the recipe code lines read at each trigger and
//! the output lines of the handshake (`[source.outputs]`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::raw::{RawOutputLine, RawOutputs};
use super::{resolve, Report};

/// How long `result_valid` is held at most when the trigger does not drop.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(1000);

/// The most recipe code lines (256 recipes).
pub const MAX_CODE_LINES: usize = 8;

/// One output of the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// The station accepts triggers: the source runs and the station is not paused.
    Ready,
    /// A trigger was accepted and its result is not set yet.
    Busy,
    /// The result is a pass.
    Pass,
    /// The result is a fail (a defect: reject the part).
    Fail,
    /// No verdict (capture failed, unreadable picture, unknown recipe code, paused).
    Error,
    /// The result lines are set and may be read.
    ResultValid,
}

impl Signal {
    /// Every signal, in the order of the TOML keys.
    pub const ALL: [Signal; 6] = [
        Signal::Pass,
        Signal::Fail,
        Signal::Error,
        Signal::Busy,
        Signal::Ready,
        Signal::ResultValid,
    ];

    /// Its key in `[source.outputs]`.
    pub fn key(self) -> &'static str {
        match self {
            Signal::Ready => "ready",
            Signal::Busy => "busy",
            Signal::Pass => "pass",
            Signal::Fail => "fail",
            Signal::Error => "error",
            Signal::ResultValid => "result_valid",
        }
    }

    /// Whether it may be a pulse (the others are levels by their meaning).
    pub fn may_pulse(self) -> bool {
        !matches!(self, Signal::Ready | Signal::Busy)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One output line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutputLine {
    /// Line offset on the outputs' chip.
    pub line: u32,
    /// Driven low when active.
    pub active_low: bool,
    /// Zero: a level (held as the handshake says); else a pulse this long.
    pub pulse: Duration,
}

/// A GPIO source's output lines and the handshake's timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outputs {
    /// `/dev/gpiochipN` of the outputs (the source's chip unless given).
    pub chip: PathBuf,
    /// `result_valid` (and the level result lines) are held until the trigger
    /// drops, at most this long.
    pub hold: Duration,
    /// The signals wired, each to its line.
    pub lines: BTreeMap<Signal, OutputLine>,
}

impl Outputs {
    /// The line of `signal`, where it is wired.
    pub fn line(&self, signal: Signal) -> Option<&OutputLine> {
        self.lines.get(&signal)
    }
}

/// Check `[source.outputs]` of the gpio source `key`. `trigger_chip` and
/// `taken` (the trigger and code lines) are what the outputs may not reuse.
pub(super) fn check(
    raw: RawOutputs,
    key: &str,
    base: &Path,
    trigger_chip: &Path,
    taken: &[u32],
    r: &mut Report,
) -> Outputs {
    let chip = raw
        .chip
        .clone()
        .map_or_else(|| trigger_chip.to_owned(), |c| resolve(base, c));
    let hold_ms = raw.hold_ms.unwrap_or(DEFAULT_HOLD.as_millis() as u64);
    r.range(&format!("{key}.outputs.hold_ms"), hold_ms, 10, 60_000);
    let mut lines = BTreeMap::new();
    for signal in Signal::ALL {
        let Some(l) = raw_line(&raw, signal) else {
            continue;
        };
        let at = format!("{key}.outputs.{signal}");
        let Some(line) = l.line else {
            r.problem(format!("{at}.line is missing: the line offset it drives"));
            continue;
        };
        let pulse_ms = l.pulse_ms.unwrap_or(0);
        if pulse_ms > 0 && !signal.may_pulse() {
            r.problem(format!(
                "{at}.pulse_ms: {signal} is a level by its meaning; pulses are for pass, fail, error and result_valid"
            ));
        }
        r.range(&format!("{at}.pulse_ms"), pulse_ms, 0, 10_000);
        if let Some((other, _)) = lines
            .iter()
            .find(|(_, o): &(&Signal, &OutputLine)| o.line == line)
        {
            r.problem(format!("{at}.line = {line} is also {key}.outputs.{other}"));
        } else if chip == trigger_chip && taken.contains(&line) {
            r.problem(format!(
                "{at}.line = {line} is an input of this source (its trigger or recipe code line)"
            ));
        }
        lines.insert(
            signal,
            OutputLine {
                line,
                active_low: l.active_low.unwrap_or(false),
                pulse: Duration::from_millis(pulse_ms),
            },
        );
    }
    if lines.is_empty() {
        r.problem(format!(
            "{key}.outputs wires no line: give at least one of pass, fail, error, busy, ready, result_valid"
        ));
    }
    if !lines.contains_key(&Signal::Fail) && !lines.contains_key(&Signal::Pass) && !lines.is_empty() {
        r.warning(format!(
            "{key}.outputs has neither pass nor fail: the PLC cannot tell a bad part from a good one by these lines"
        ));
    }
    Outputs {
        chip,
        hold: Duration::from_millis(hold_ms),
        lines,
    }
}

fn raw_line(raw: &RawOutputs, signal: Signal) -> Option<&RawOutputLine> {
    match signal {
        Signal::Pass => raw.pass.as_ref(),
        Signal::Fail => raw.fail.as_ref(),
        Signal::Error => raw.error.as_ref(),
        Signal::Busy => raw.busy.as_ref(),
        Signal::Ready => raw.ready.as_ref(),
        Signal::ResultValid => raw.result_valid.as_ref(),
    }
}

impl From<&Outputs> for RawOutputs {
    fn from(o: &Outputs) -> Self {
        let get = |s: Signal| {
            o.line(s).map(|l| RawOutputLine {
                line: Some(l.line),
                active_low: Some(l.active_low),
                pulse_ms: Some(l.pulse.as_millis() as u64),
            })
        };
        RawOutputs {
            chip: Some(o.chip.clone()),
            hold_ms: Some(o.hold.as_millis() as u64),
            pass: get(Signal::Pass),
            fail: get(Signal::Fail),
            error: get(Signal::Error),
            busy: get(Signal::Busy),
            ready: get(Signal::Ready),
            result_valid: get(Signal::ResultValid),
        }
    }
}

/// Check the recipe code lines of the gpio source `key`: between 1 and
/// [`MAX_CODE_LINES`] distinct lines, none the trigger, and one recipe per
/// code at most (the names are checked against the recipes later).
pub(super) fn check_codes(lines: &[u32], codes: &[String], trigger: u32, key: &str, r: &mut Report) {
    if lines.is_empty() && codes.is_empty() {
        return;
    }
    if lines.is_empty() {
        r.problem(format!(
            "{key}.recipe_codes needs recipe_lines: the input lines that carry the code"
        ));
        return;
    }
    if codes.is_empty() {
        r.problem(format!(
            "{key}.recipe_lines needs recipe_codes: the recipe of code 0, 1, 2, …"
        ));
    }
    if lines.len() > MAX_CODE_LINES {
        r.problem(format!(
            "{key}.recipe_lines has {} lines: at most {MAX_CODE_LINES}",
            lines.len()
        ));
        return;
    }
    for (i, l) in lines.iter().enumerate() {
        if *l == trigger {
            r.problem(format!("{key}.recipe_lines: {l} is the trigger line"));
        }
        if lines[..i].contains(l) {
            r.problem(format!("{key}.recipe_lines: {l} is listed twice"));
        }
    }
    let room = 1usize << lines.len();
    if codes.len() > room {
        r.problem(format!(
            "{key}.recipe_codes has {} recipes, but {} lines carry codes 0 to {} only",
            codes.len(),
            lines.len(),
            room - 1
        ));
    }
}
