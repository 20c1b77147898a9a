//! Commands over MQTT (`[commands] enabled`): what a message on
//! `<prefix>/<station>/cmd` asks, and the answer on `…/cmd/reply`. Pure: the
//! daemon applies a [`Request`] and answers with [`reply`].
//!
//! A command is a JSON object: `{"command": "threshold", "value": 0.31,
//! "request_id": "plc-42"}`. The `request_id` (any JSON value) comes back in
//! the reply, so a client matches answers to questions (MQTT 3.1.1 has no
//! correlation data). Anything that cannot be read as one of the commands
//! below gets an error reply and changes nothing. `{"command": "recipe",
//! "name": "bottle-b", "source": "cam1"}` switches a source's recipe;
//! `{"command": "teach", "id": "<inspection id>", "as": "calibration"}`
//! adds a kept picture to its recipe and rebuilds the bank in the background;
//! `{"command": "rollback", "recipe": "bottle-b"}` returns to the version before.

use serde_json::{json, Value};

/// A command as it arrives, from the broker or the page, and where its reply goes.
#[derive(Debug)]
pub struct Incoming {
    /// The command's JSON.
    pub payload: Vec<u8>,
    /// The HTTP request waiting for the reply; `None`: publish it on `…/cmd/reply`.
    pub reply: Option<tokio::sync::oneshot::Sender<Vec<u8>>>,
}

/// The largest command accepted, bytes (a command is a few dozen).
pub const MAX_BYTES: usize = 4096;

/// What a command asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Answer with the state.
    Status,
    /// Stop taking pictures: files wait, triggers get `error` results.
    Pause,
    /// Take pictures again.
    Resume,
    /// Override a recipe's threshold (`value` `None`: back to the
    /// configuration's or the bank's; `recipe` `None`: the one every source uses).
    Threshold {
        /// The recipe.
        recipe: Option<String>,
        /// The threshold.
        value: Option<f32>,
    },
    /// Switch a source to a recipe (`source` `None`: every source; `name`
    /// `None`: back to the source's configured recipe).
    Recipe {
        /// The source.
        source: Option<String>,
        /// The recipe.
        name: Option<String>,
    },
    /// Add the picture of inspection `id` (or of `source`'s last kept
    /// result) to a recipe's shots or calibration set and rebuild its bank
    /// (`recipe` `None`: the one it was inspected with).
    Teach {
        /// The inspection.
        id: Option<String>,
        /// Or the source whose last kept picture it is (a teach button).
        source: Option<String>,
        /// Which set.
        set: crate::recipe_dir::Set,
        /// The recipe.
        recipe: Option<String>,
    },
    /// Return a recipe to the bank version before the current one (`recipe`
    /// `None`: the one every source uses).
    Rollback {
        /// The recipe.
        recipe: Option<String>,
    },
}

/// Every command's name, as the error for an unknown one lists them.
pub const NAMES: [&str; 7] = [
    "status",
    "pause",
    "resume",
    "threshold",
    "recipe",
    "teach",
    "rollback",
];

/// One command and its requester's id.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the reply.
    pub request_id: Value,
    /// What to do.
    pub command: Command,
}

/// A command that cannot be carried out as sent, with the id to answer to.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The request's id, where it could be read.
    pub request_id: Value,
    /// Why, in words for the person who sent it.
    pub error: String,
}

/// Read a command from `payload`.
pub fn parse(payload: &[u8]) -> Result<Request, Refused> {
    let refuse = |request_id: &Value, error: String| Refused {
        request_id: request_id.clone(),
        error,
    };
    if payload.len() > MAX_BYTES {
        return Err(refuse(
            &Value::Null,
            format!("a command is at most {MAX_BYTES} bytes"),
        ));
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| {
        refuse(
            &Value::Null,
            format!("not JSON ({e}): send {{\"command\": \"status\"}}"),
        )
    })?;
    let Some(o) = v.as_object() else {
        return Err(refuse(&Value::Null, "a command is a JSON object".into()));
    };
    let id = o.get("request_id").cloned().unwrap_or(Value::Null);
    let name = o
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(&id, format!("no \"command\": one of {}", NAMES.join(", "))))?;
    let allowed: &[&str] = match name {
        "threshold" => &["command", "request_id", "value", "recipe"],
        "recipe" => &["command", "request_id", "name", "source"],
        "teach" => &["command", "request_id", "id", "source", "as", "recipe"],
        "rollback" => &["command", "request_id", "recipe"],
        _ => &["command", "request_id"],
    };
    if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(refuse(&id, format!("{name}: unknown field {k:?}")));
    }
    // An optional name: absent, null or a string.
    let text = |key: &str| -> Result<Option<String>, Refused> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(refuse(&id, format!("{name}: \"{key}\" is {other}, not a name"))),
        }
    };
    let command = match name {
        "status" => Command::Status,
        "recipe" => {
            if !o.contains_key("name") {
                return Err(refuse(
                    &id,
                    "recipe: give \"name\": the recipe, or null to go back to the configured one".into(),
                ));
            }
            Command::Recipe {
                source: text("source")?,
                name: text("name")?,
            }
        }
        "teach" => {
            let (inspection, source) = (text("id")?, text("source")?);
            if inspection.is_some() == source.is_some() {
                return Err(refuse(
                    &id,
                    "teach: give \"id\" (the inspection id of a kept result) or \"source\" (its last one)"
                        .into(),
                ));
            }
            let set = match text("as")?.as_deref() {
                Some("shot") => crate::recipe_dir::Set::Shot,
                Some("calibration") => crate::recipe_dir::Set::Calibration,
                _ => {
                    return Err(refuse(
                        &id,
                        "teach: give \"as\": \"shot\" (a reference picture) or \"calibration\" (a good part the threshold must pass)".into(),
                    ))
                }
            };
            Command::Teach {
                id: inspection,
                source,
                set,
                recipe: text("recipe")?,
            }
        }
        "rollback" => Command::Rollback {
            recipe: text("recipe")?,
        },
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "threshold" => match o.get("value") {
            None => {
                return Err(refuse(
                    &id,
                    "threshold: give \"value\": a number, or null to go back to the configured threshold"
                        .into(),
                ))
            }
            Some(Value::Null) => Command::Threshold {
                recipe: text("recipe")?,
                value: None,
            },
            Some(Value::Number(n)) => match n.as_f64().map(|x| x as f32) {
                Some(t) if t.is_finite() => Command::Threshold {
                    recipe: text("recipe")?,
                    value: Some(t),
                },
                _ => return Err(refuse(&id, format!("threshold: {n} is not a usable number"))),
            },
            Some(other) => return Err(refuse(&id, format!("threshold: {other} is not a number or null"))),
        },
        other => {
            return Err(refuse(
                &id,
                format!("unknown command {other:?}: one of {}", NAMES.join(", ")),
            ))
        }
    };
    Ok(Request {
        request_id: id,
        command,
    })
}

/// The reply: `ok`, the request's id, the error if any, the state after it.
pub fn reply(request_id: &Value, outcome: Result<(), String>, state: &Value) -> Vec<u8> {
    let (ok, error) = match outcome {
        Ok(()) => (true, Value::Null),
        Err(e) => (false, Value::from(e)),
    };
    json!({ "request_id": request_id, "ok": ok, "error": error, "state": state })
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<Request, Refused> {
        parse(s.as_bytes())
    }

    #[test]
    fn reads_each_command_and_keeps_the_request_id() {
        assert_eq!(cmd(r#"{"command":"status"}"#).unwrap().command, Command::Status);
        assert_eq!(
            cmd(r#"{"command":"pause","request_id":7}"#).unwrap().request_id,
            json!(7)
        );
        assert_eq!(cmd(r#"{"command":"resume"}"#).unwrap().command, Command::Resume);
        assert_eq!(
            cmd(r#"{"command":"threshold","value":0.31,"request_id":"a"}"#).unwrap(),
            Request {
                request_id: json!("a"),
                command: Command::Threshold {
                    recipe: None,
                    value: Some(0.31)
                }
            }
        );
        assert_eq!(
            cmd(r#"{"command":"threshold","value":null,"recipe":"b"}"#)
                .unwrap()
                .command,
            Command::Threshold {
                recipe: Some("b".into()),
                value: None
            }
        );
        assert_eq!(
            cmd(r#"{"command":"recipe","name":"b","source":"cam1"}"#)
                .unwrap()
                .command,
            Command::Recipe {
                source: Some("cam1".into()),
                name: Some("b".into())
            }
        );
        assert_eq!(
            cmd(r#"{"command":"recipe","name":null}"#).unwrap().command,
            Command::Recipe {
                source: None,
                name: None
            }
        );
        assert_eq!(
            cmd(r#"{"command":"teach","id":"cam1-7","as":"calibration"}"#)
                .unwrap()
                .command,
            Command::Teach {
                id: Some("cam1-7".into()),
                source: None,
                set: crate::recipe_dir::Set::Calibration,
                recipe: None
            }
        );
        assert_eq!(
            cmd(r#"{"command":"teach","source":"cam1","as":"shot"}"#)
                .unwrap()
                .command,
            Command::Teach {
                id: None,
                source: Some("cam1".into()),
                set: crate::recipe_dir::Set::Shot,
                recipe: None
            }
        );
        assert_eq!(
            cmd(r#"{"command":"rollback","recipe":"b"}"#).unwrap().command,
            Command::Rollback {
                recipe: Some("b".into())
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_read_naming_the_request() {
        for (text, needle) in [
            ("not json", "not JSON"),
            ("[1]", "JSON object"),
            (r#"{"request_id":"r"}"#, "no \"command\""),
            (r#"{"command":"reboot","request_id":"r"}"#, "unknown command"),
            (r#"{"command":"threshold","request_id":"r"}"#, "give \"value\""),
            (
                r#"{"command":"threshold","value":"high","request_id":"r"}"#,
                "not a number",
            ),
            (
                r#"{"command":"threshold","value":1e99,"request_id":"r"}"#,
                "not a usable number",
            ),
            (
                r#"{"command":"pause","value":1,"request_id":"r"}"#,
                "unknown field",
            ),
            (r#"{"command":"recipe","request_id":"r"}"#, "give \"name\""),
            (r#"{"command":"recipe","name":3,"request_id":"r"}"#, "not a name"),
            (
                r#"{"command":"teach","as":"shot","request_id":"r"}"#,
                "give \"id\"",
            ),
            (
                r#"{"command":"teach","id":"a","source":"cam1","as":"shot","request_id":"r"}"#,
                "or \"source\"",
            ),
            (
                r#"{"command":"teach","id":"x","as":"good","request_id":"r"}"#,
                "give \"as\"",
            ),
            (
                r#"{"command":"rollback","to":3,"request_id":"r"}"#,
                "unknown field",
            ),
        ] {
            let e = cmd(text).unwrap_err();
            assert!(e.error.contains(needle), "{text}: {}", e.error);
            if text.contains("request_id") {
                assert_eq!(e.request_id, json!("r"), "{text}");
            }
        }
        assert!(parse(&vec![b' '; MAX_BYTES + 1]).is_err());
    }

    #[test]
    fn a_reply_names_its_request() {
        let r: Value =
            serde_json::from_slice(&reply(&json!("x"), Err("no".into()), &json!({"paused": true}))).unwrap();
        assert_eq!(
            r,
            json!({"request_id": "x", "ok": false, "error": "no", "state": {"paused": true}})
        );
    }
}
