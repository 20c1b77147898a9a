//! WinCLIP's compositional prompt ensemble (paper §3.2).
//!
//! A state ("flawless {}") is filled with the object name, then a template
//! ("a photo of the {}.") with the state. The normal and anomalous text
//! prototypes are the means of the un-normalised text embeddings of all
//! prompts of each kind (computed in `bank`, which owns the text encoder).

use std::fmt;
use std::str::FromStr;

/// Normal states (7).
pub const NORMAL_STATES: [&str; 7] = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
];

/// Anomalous states (4).
pub const ANOMALOUS_STATES: [&str; 4] = ["damaged {}", "{} with flaw", "{} with defect", "{} with damage"];

/// The paper's 22 templates: CLIP's generic ones plus task-specific ones.
pub const PAPER_TEMPLATES: [&str; 22] = [
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
];

/// anomalib's 21 templates: without "a cropped photo of a {}." and
/// "a jpeg corrupted photo of a {}.", with "a jpeg corrupted photo of the {}." twice.
/// Offered for parity checks against anomalib's numbers.
pub const ANOMALIB_TEMPLATES: [&str; 21] = [
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
];

/// Which template list to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateSet {
    /// The paper's 22 templates (default).
    #[default]
    Paper,
    /// anomalib's 21-entry list.
    Anomalib,
}

impl TemplateSet {
    /// The templates, each with one `{}`.
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Self::Paper => &PAPER_TEMPLATES,
            Self::Anomalib => &ANOMALIB_TEMPLATES,
        }
    }

    /// Stable name, as stored in banks.
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Anomalib => "anomalib",
        }
    }
}

impl fmt::Display for TemplateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TemplateSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(Self::Paper),
            "anomalib" => Ok(Self::Anomalib),
            other => Err(format!(
                "unknown prompt set {other:?} (expected \"paper\" or \"anomalib\")"
            )),
        }
    }
}

/// The normal and anomalous prompts for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensemble {
    /// Normal prompts: states outer, templates inner.
    pub normal: Vec<String>,
    /// Anomalous prompts, including user-supplied states.
    pub anomalous: Vec<String>,
}

/// Turn a user-supplied anomalous state into a state template: kept as is when
/// it contains `{}` ("{} with bad soldering"), else read as a defect noun
/// phrase: "bad soldering" → "{} with bad soldering".
pub fn user_state(state: &str) -> String {
    let state = state.trim();
    if state.contains("{}") {
        state.to_string()
    } else {
        format!("{{}} with {state}")
    }
}

/// Build the ensemble for `object` with the given templates and extra anomalous states.
pub fn ensemble(object: &str, set: TemplateSet, extra_anomalous: &[String]) -> Ensemble {
    let fill = |template: &str, state: &str| template.replacen("{}", &state.replacen("{}", object, 1), 1);
    let expand = |states: &mut dyn Iterator<Item = String>| -> Vec<String> {
        states
            .flat_map(|s| set.templates().iter().map(move |t| fill(t, &s)))
            .collect()
    };
    let normal = expand(&mut NORMAL_STATES.iter().map(|s| s.to_string()));
    let anomalous = expand(
        &mut ANOMALOUS_STATES
            .iter()
            .map(|s| s.to_string())
            .chain(extra_anomalous.iter().map(|s| user_state(s))),
    );
    Ensemble { normal, anomalous }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_ensemble_has_154_normal_and_88_anomalous_prompts() {
        let e = ensemble("bottle", TemplateSet::Paper, &[]);
        assert_eq!(e.normal.len(), 7 * 22);
        assert_eq!(e.anomalous.len(), 4 * 22);
        assert_eq!(e.normal[0], "a cropped photo of the bottle.");
        assert_eq!(e.normal[22 + 1], "a cropped photo of a flawless bottle.");
        assert_eq!(
            e.anomalous[22 * 3 + 21],
            "a photo of a bottle with damage for anomaly detection."
        );
    }

    #[test]
    fn the_anomalib_set_has_21_templates_with_one_duplicate() {
        let t = TemplateSet::Anomalib.templates();
        assert_eq!(t.len(), 21);
        assert_eq!(
            t.iter()
                .filter(|s| **s == "a jpeg corrupted photo of the {}.")
                .count(),
            2
        );
        assert!(!t.contains(&"a cropped photo of a {}."));
    }

    #[test]
    fn user_states_are_added_to_the_anomalous_side() {
        let extra = vec!["bad soldering".to_string(), "cracked {}".to_string()];
        let e = ensemble("pcb", TemplateSet::Paper, &extra);
        assert_eq!(e.anomalous.len(), 6 * 22);
        assert!(e
            .anomalous
            .contains(&"a photo of a pcb with bad soldering.".to_string()));
        assert!(e.anomalous.contains(&"a photo of the cracked pcb.".to_string()));
    }

    #[test]
    fn prompt_set_names_round_trip() {
        for s in [TemplateSet::Paper, TemplateSet::Anomalib] {
            assert_eq!(s.name().parse::<TemplateSet>().unwrap(), s);
        }
        assert!("clip".parse::<TemplateSet>().is_err());
    }
}
