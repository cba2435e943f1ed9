//! The JSON log messages a builder writes on its log (`NIX_LOG_FD`, stderr): lines
//! `@nix {…}` in the vocabulary of `--log-format internal-json`, which stdenv uses
//! to announce its phases (`@nix { "action": "setPhase", "phase": "buildPhase" }`).
//! Read as Nix reads them (`nix@2.26.3:src/libutil/logging.cc`, `parseJSONMessage`,
//! `handleJSONLogMessage`; `nix@2.8.0` alike): a handled line is not a log line of
//! the build; a line that is not JSON, or whose action is missing, is one.

use crate::stderr::{ActivityType, Field, ResultType, Verbosity};

/// The most fields a message may carry (each becomes a field of an activity or a
/// result sent to the client).
pub const MAX_JSON_LOG_FIELDS: usize = 64;

/// One `@nix` line of a builder, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonLogMessage {
    /// `start`: an activity of the builder's, with the builder's id for it.
    Start {
        /// The builder's id.
        id: u64,
        /// Its level.
        level: Verbosity,
        /// Its type (only a file transfer is relayed from an untrusted builder).
        kind: ActivityType,
        /// Its text.
        text: String,
        /// Its fields.
        fields: Vec<Field>,
    },
    /// `stop` of the builder's activity `id`.
    Stop {
        /// The builder's id.
        id: u64,
    },
    /// `result` of the builder's activity `id`.
    Result {
        /// The builder's id.
        id: u64,
        /// The result's type.
        kind: ResultType,
        /// Its fields.
        fields: Vec<Field>,
    },
    /// `setPhase`: the phase the build is in, a `setPhase` result (104) of the build.
    SetPhase(String),
    /// `msg`: a message at `level`.
    Msg {
        /// Its level.
        level: Verbosity,
        /// Its text.
        msg: String,
    },
    /// Any other action: handled by doing nothing, as Nix does.
    Ignored,
}

/// Why an `@nix` line was not understood; the line is then a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonLogError {
    /// Not JSON: Nix prints "bad JSON log message from the derivation builder: …".
    NotJson(String),
    /// JSON without what its action needs: Nix warns "Unable to handle a JSON
    /// message from the derivation builder: …", with nlohmann's words for it,
    /// which this holds (e.g. `[json.exception.type_error.302] type must be
    /// string, but is null`).
    Unhandled(String),
}

/// `line` read as a builder's JSON log message: `None` unless it begins with
/// `@nix `.
pub fn parse_json_log_line(line: &str) -> Option<Result<JsonLogMessage, JsonLogError>> {
    let json = line.strip_prefix("@nix ")?;
    let v: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return Some(Err(JsonLogError::NotJson(e.to_string()))),
    };
    Some(message(&v).map_err(JsonLogError::Unhandled))
}

/// The message, reading its keys in Nix's order, as for an untrusted builder: a
/// `start` of anything but a file transfer is ignored once its type is read.
fn message(v: &serde_json::Value) -> Result<JsonLogMessage, String> {
    if !v.is_object() && !v.is_null() {
        return Err(format!(
            "[json.exception.type_error.305] cannot use operator[] with a string argument with {}",
            type_name(Some(v))
        ));
    }
    let action = string(v, "action")?;
    Ok(match action.as_str() {
        "start" => {
            let kind = ActivityType(number(v, "type")?);
            if kind != ActivityType::FILE_TRANSFER {
                return Ok(JsonLogMessage::Ignored);
            }
            JsonLogMessage::Start {
                id: number(v, "id")?,
                level: Verbosity::from_wire(number(v, "level")?),
                kind,
                text: string(v, "text")?,
                fields: fields(v)?,
            }
        }
        "stop" => JsonLogMessage::Stop {
            id: number(v, "id")?,
        },
        "result" => JsonLogMessage::Result {
            id: number(v, "id")?,
            kind: ResultType(number(v, "type")?),
            fields: fields(v)?,
        },
        "setPhase" => JsonLogMessage::SetPhase(string(v, "phase")?),
        "msg" => {
            let msg = string(v, "msg")?;
            JsonLogMessage::Msg {
                level: Verbosity::from_wire(number(v, "level")?),
                msg,
            }
        }
        _ => JsonLogMessage::Ignored,
    })
}

/// nlohmann's name of a value's type (a missing key reads as null).
fn type_name(v: Option<&serde_json::Value>) -> &'static str {
    match v {
        None | Some(serde_json::Value::Null) => "null",
        Some(serde_json::Value::Object(_)) => "object",
        Some(serde_json::Value::Array(_)) => "array",
        Some(serde_json::Value::String(_)) => "string",
        Some(serde_json::Value::Bool(_)) => "boolean",
        Some(serde_json::Value::Number(_)) => "number",
    }
}

fn string(v: &serde_json::Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        other => Err(format!(
            "[json.exception.type_error.302] type must be string, but is {}",
            type_name(other)
        )),
    }
}

/// A number as nlohmann converts one to an integer type: a negative one wraps, a
/// fractional one is truncated.
fn number(v: &serde_json::Value, key: &str) -> Result<u64, String> {
    let n = v.get(key);
    let got = n.and_then(|n| {
        n.as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .or_else(|| n.as_f64().map(|f| f as u64))
    });
    got.ok_or_else(|| {
        format!(
            "[json.exception.type_error.302] type must be number, but is {}",
            type_name(n)
        )
    })
}

/// `fields`: unsigned numbers and strings (absent: none), as Nix's `getFields`.
fn fields(v: &serde_json::Value) -> Result<Vec<Field>, String> {
    let Some(list) = v.get("fields").filter(|f| !f.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("'fields' is not a list")?;
    if list.len() > MAX_JSON_LOG_FIELDS {
        return Err(format!("more than {MAX_JSON_LOG_FIELDS} fields"));
    }
    list.iter()
        .map(|f| match f {
            serde_json::Value::String(s) => Ok(Field::String(s.as_bytes().to_vec())),
            n => n
                .as_u64()
                .map(Field::Int)
                .ok_or_else(|| format!("unsupported JSON type of field {n}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdenv_phases_and_messages() {
        // What stdenv's setup.sh writes (with its spaces).
        assert_eq!(
            parse_json_log_line(r#"@nix { "action": "setPhase", "phase": "buildPhase" }"#),
            Some(Ok(JsonLogMessage::SetPhase("buildPhase".into())))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"msg","level":1,"msg":"careful"}"#),
            Some(Ok(JsonLogMessage::Msg {
                level: Verbosity::Warn,
                msg: "careful".into()
            }))
        );
        assert_eq!(
            parse_json_log_line(
                r#"@nix {"action":"start","id":7,"level":4,"type":101,"text":"downloading 'u'","fields":["u"]}"#
            ),
            Some(Ok(JsonLogMessage::Start {
                id: 7,
                level: Verbosity::Talkative,
                kind: ActivityType::FILE_TRANSFER,
                text: "downloading 'u'".into(),
                fields: vec![Field::String(b"u".to_vec())],
            }))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"result","id":7,"type":105,"fields":[1,2,0,0]}"#),
            Some(Ok(JsonLogMessage::Result {
                id: 7,
                kind: ResultType::PROGRESS,
                fields: vec![Field::Int(1), Field::Int(2), Field::Int(0), Field::Int(0)],
            }))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"stop","id":7}"#),
            Some(Ok(JsonLogMessage::Stop { id: 7 }))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"whatever"}"#),
            Some(Ok(JsonLogMessage::Ignored))
        );
    }

    #[test]
    fn other_lines_stay_log_lines() {
        assert_eq!(parse_json_log_line("building hello"), None);
        assert_eq!(parse_json_log_line("@nixos"), None);
        assert!(matches!(
            parse_json_log_line("@nix {oops"),
            Some(Err(JsonLogError::NotJson(_)))
        ));
        // nlohmann's words, which Nix's warning quotes.
        assert_eq!(
            parse_json_log_line(r#"@nix {"phase":"buildPhase"}"#),
            Some(Err(JsonLogError::Unhandled(
                "[json.exception.type_error.302] type must be string, but is null".into()
            )))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"setPhase","phase":3}"#),
            Some(Err(JsonLogError::Unhandled(
                "[json.exception.type_error.302] type must be string, but is number".into()
            )))
        );
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"stop"}"#),
            Some(Err(JsonLogError::Unhandled(
                "[json.exception.type_error.302] type must be number, but is null".into()
            )))
        );
        assert_eq!(
            parse_json_log_line("@nix 5"),
            Some(Err(JsonLogError::Unhandled(
                "[json.exception.type_error.305] cannot use operator[] with a string argument with number".into()
            )))
        );
        // An untrusted builder's activity other than a file transfer: ignored once
        // its type is read, whatever else it lacks.
        assert_eq!(
            parse_json_log_line(r#"@nix {"action":"start","type":105}"#),
            Some(Ok(JsonLogMessage::Ignored))
        );
        assert!(matches!(
            parse_json_log_line(r#"@nix {"action":"result","id":1,"type":105,"fields":[true]}"#),
            Some(Err(JsonLogError::Unhandled(_)))
        ));
        let many = format!(
            r#"@nix {{"action":"result","id":1,"type":105,"fields":[{}]}}"#,
            vec!["0"; MAX_JSON_LOG_FIELDS + 1].join(",")
        );
        assert!(matches!(
            parse_json_log_line(&many),
            Some(Err(JsonLogError::Unhandled(_)))
        ));
    }
}
