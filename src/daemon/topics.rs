//! Every MQTT topic the station publishes on, named in one place.

/// Topics of one station under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Topics {
    /// Topics for `station` under `prefix`: `<prefix>/<station>/…`.
    pub fn new(prefix: &str, station: &str) -> Self {
        Self {
            base: format!("{prefix}/{station}"),
        }
    }

    /// `<prefix>/<station>`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `…/status`: retained `online` / `offline` (the Last Will).
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// `…/result`: one JSON per inspection.
    pub fn result(&self) -> String {
        format!("{}/result", self.base)
    }

    /// `…/heatmap/<id>`: the JPEG of inspection `id`.
    pub fn heatmap(&self, id: &str) -> String {
        format!("{}/heatmap/{id}", self.base)
    }

    /// `…/heatmap/latest`: the newest heatmap, retained (Home Assistant's
    /// image entity; published with discovery on).
    pub fn heatmap_latest(&self) -> String {
        format!("{}/heatmap/latest", self.base)
    }

    /// `…/latest`: the newest result in short, retained (Home Assistant's
    /// entities; published with discovery on).
    pub fn latest(&self) -> String {
        format!("{}/latest", self.base)
    }

    /// `…/cmd`: commands the station takes (with `[commands] enabled`).
    pub fn cmd(&self) -> String {
        format!("{}/cmd", self.base)
    }

    /// `…/cmd/reply`: one answer per command, naming its `request_id`.
    pub fn cmd_reply(&self) -> String {
        format!("{}/cmd/reply", self.base)
    }

    /// `…/state`: the station's live state (paused, threshold, bank), retained.
    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }

    /// `…/stats`: periodic counters.
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_sit_under_prefix_and_station() {
        let t = Topics::new("plant/a", "line1");
        assert_eq!(t.status(), "plant/a/line1/status");
        assert_eq!(t.result(), "plant/a/line1/result");
        assert_eq!(t.heatmap("abc"), "plant/a/line1/heatmap/abc");
        assert_eq!(t.stats(), "plant/a/line1/stats");
    }
}
