//! Home Assistant MQTT discovery (`[mqtt] homeassistant = true`): the
//! retained configuration messages that make one Home Assistant device per
//! station, as Home Assistant's MQTT integration documents them
//! (`<discovery prefix>/<component>/<node id>/<object id>/config`).
//!
//! Pure: the publisher sends what this returns. Every entity is available
//! while the station's `status` topic says `online`. Its state comes from
//! three topics: the retained `latest` (a short JSON of the last result),
//! the periodic `stats`, and the retained `heatmap/latest` JPEG.

use serde_json::{json, Value};

use super::topics::Topics;

/// One entity: its component and object id.
struct Entity {
    component: &'static str,
    object: &'static str,
    config: Value,
}

/// The node id of `station`: Home Assistant allows `[a-zA-Z0-9_-]` only.
pub fn node_id(station: &str) -> String {
    let slug: String = station
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("winclip_edge_{slug}")
}

fn entities(topics: &Topics) -> Vec<Entity> {
    let latest = topics.latest();
    let stats = topics.stats();
    let counter = |object: &'static str, name: &str, key: &str| Entity {
        component: "sensor",
        object,
        config: json!({
            "name": name,
            "state_topic": stats,
            "value_template": format!("{{{{ value_json.{key} }}}}"),
            "state_class": "total_increasing",
            "icon": "mdi:counter",
        }),
    };
    vec![
        Entity {
            component: "binary_sensor",
            object: "defect",
            config: json!({
                "name": "Last part defective",
                "state_topic": latest,
                "value_template": "{{ 'ON' if value_json.verdict == 'fail' else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "problem",
                "json_attributes_topic": latest,
            }),
        },
        Entity {
            component: "sensor",
            object: "verdict",
            config: json!({
                "name": "Last verdict",
                "state_topic": latest,
                "value_template": "{{ value_json.verdict }}",
                "device_class": "enum",
                "options": ["pass", "fail", "error"],
                "icon": "mdi:check-decagram",
            }),
        },
        Entity {
            component: "sensor",
            object: "score",
            config: json!({
                "name": "Last score",
                "state_topic": latest,
                // A null score (error results) renders "None": the state is unknown.
                "value_template": "{{ value_json.score }}",
                "state_class": "measurement",
                "suggested_display_precision": 3,
                "icon": "mdi:gauge",
            }),
        },
        counter("passed", "Passed", "pass"),
        counter("failed", "Failed", "fail"),
        counter("errors", "Errors", "errors"),
        Entity {
            component: "sensor",
            object: "queue_depth",
            config: json!({
                "name": "Queue depth",
                "state_topic": stats,
                "value_template": "{{ value_json.queue_depth }}",
                "state_class": "measurement",
                "icon": "mdi:tray-full",
            }),
        },
        Entity {
            component: "image",
            object: "heatmap",
            config: json!({
                "name": "Latest heatmap",
                "image_topic": topics.heatmap_latest(),
                "content_type": "image/jpeg",
            }),
        },
    ]
}

/// The discovery messages for `station` under `discovery_prefix`: (topic,
/// JSON), each to be published retained.
pub fn configs(discovery_prefix: &str, topics: &Topics, station: &str) -> Vec<(String, Vec<u8>)> {
    let node = node_id(station);
    let device = json!({
        "identifiers": [node],
        "name": format!("winclip-edge {station}"),
        "manufacturer": "winclip-edge",
        "model": "WinCLIP visual inspection station",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    entities(topics)
        .into_iter()
        .map(|e| {
            let mut config = e.config;
            config["unique_id"] = format!("{node}_{}", e.object).into();
            config["device"] = device.clone();
            config["availability_topic"] = topics.status().into();
            config["payload_available"] = "online".into();
            config["payload_not_available"] = "offline".into();
            config["origin"] = json!({
                "name": "winclip-edge",
                "sw_version": env!("CARGO_PKG_VERSION"),
            });
            let topic = config_topic(discovery_prefix, e.component, &node, e.object);
            (topic, config.to_string().into_bytes())
        })
        .collect()
}

/// The configuration topics [`configs`] publishes: an empty retained
/// message on each removes the entity (and, with the last, the device).
pub fn config_topics(discovery_prefix: &str, topics: &Topics, station: &str) -> Vec<String> {
    let node = node_id(station);
    entities(topics)
        .into_iter()
        .map(|e| config_topic(discovery_prefix, e.component, &node, e.object))
        .collect()
}

fn config_topic(prefix: &str, component: &str, node: &str, object: &str) -> String {
    format!("{prefix}/{component}/{node}/{object}/config")
}

/// The retained `latest` message of a published result: what the entities read.
pub fn latest(result: &Value) -> Vec<u8> {
    json!({
        "id": result["id"],
        "verdict": result["verdict"],
        "score": result["score"],
        "threshold": result["threshold"],
        "source": result["source"],
        "inspected_at": result["inspected_at"],
        "error": result["error"],
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_names_the_device_and_the_availability_topic() {
        let topics = Topics::new("winclip", "line 1");
        let configs = configs("homeassistant", &topics, "line 1");
        assert_eq!(configs.len(), 8);
        let mut ids = std::collections::BTreeSet::new();
        for (topic, payload) in &configs {
            let c: Value = serde_json::from_slice(payload).unwrap();
            assert!(topic.starts_with("homeassistant/"), "{topic}");
            assert!(topic.contains("/winclip_edge_line_1/"), "{topic}");
            assert!(topic.ends_with("/config"));
            assert_eq!(c["availability_topic"], "winclip/line 1/status");
            assert_eq!(c["device"]["identifiers"][0], "winclip_edge_line_1");
            assert!(ids.insert(c["unique_id"].as_str().unwrap().to_string()));
        }
        assert_eq!(
            config_topics("homeassistant", &topics, "line 1"),
            configs.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn latest_keeps_what_the_entities_read() {
        let r = json!({"id": "ab", "verdict": "fail", "score": 0.7, "threshold": 0.5, "regions": [1, 2]});
        let l: Value = serde_json::from_slice(&latest(&r)).unwrap();
        assert_eq!(l["verdict"], "fail");
        assert_eq!(l["score"], 0.7);
        assert!(l.get("regions").is_none());
    }
}
