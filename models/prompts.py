"""WinCLIP's compositional prompt ensemble (Python side, for references only).

The Rust crate has its own copy in src/winclip/prompts.rs; the parity tests
check that both produce the same prompt lists.
"""

NORMAL_STATES = [
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
]

ANOMALOUS_STATES = [
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
]

# The paper's set: CLIP's generic templates plus task-specific ones, 22 in all.
PAPER_TEMPLATES = [
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
]

# anomalib's list: 21 entries, without "a cropped photo of a {}." and
# "a jpeg corrupted photo of a {}.", with "a jpeg corrupted photo of the {}." twice.
ANOMALIB_TEMPLATES = [
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
]

TEMPLATE_SETS = {"paper": PAPER_TEMPLATES, "anomalib": ANOMALIB_TEMPLATES}


def user_state(state: str) -> str:
    """'{} with bad soldering' stays; 'bad soldering' becomes '{} with bad soldering'."""
    state = state.strip()
    return state if "{}" in state else "{} with " + state


def ensemble(obj: str, templates=PAPER_TEMPLATES, extra_anomalous=()):
    """(normal prompts, anomalous prompts): every state filled with the object,
    then every template filled with the state; states outer, templates inner."""
    normal = [t.format(s.format(obj)) for s in NORMAL_STATES for t in templates]
    anomalous_states = list(ANOMALOUS_STATES) + [user_state(s) for s in extra_anomalous]
    anomalous = [t.format(s.format(obj)) for s in anomalous_states for t in templates]
    return normal, anomalous
