//! What a Shared Signals receiver may ask of a stream (SSF 1.0 §8.1.1):
//! the receiver-supplied members of a stream configuration, parsed once.
//! Transmitter-supplied members (`iss`, `events_supported`,
//! `events_delivered`, …) are ignored when sent, as the spec allows.

use serde_json::Value;

use super::Invalid;

/// RFC 8935 push, RFC 8936 poll: the delivery methods' URNs.
pub const PUSH_METHOD: &str = "urn:ietf:rfc:8935";
pub const POLL_METHOD: &str = "urn:ietf:rfc:8936";

const MAX_EVENTS_REQUESTED: usize = 32;
const MAX_EVENT_URI: usize = 256;
const MAX_AUDIENCE: usize = 512;
const MAX_DESCRIPTION: usize = 1024;
const MAX_AUTHORIZATION: usize = 4096;
const MAX_URL: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Push {
        endpoint_url: String,
        /// The `Authorization` header value authd sends with each SET.
        authorization: Option<String>,
    },
    Poll,
}

impl Delivery {
    pub fn method(&self) -> &'static str {
        match self {
            Self::Push { .. } => "push",
            Self::Poll => "poll",
        }
    }
}

/// A stream's receiver-supplied configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// `None`: authd picks (the owner's name).
    pub audience: Option<String>,
    pub events_requested: Vec<String>,
    pub delivery: Delivery,
    pub description: Option<String>,
}

/// A field that is wrong, and how.
pub type FieldError = (&'static str, Invalid);

impl StreamConfig {
    /// Parses a whole configuration (create, replace). `delivery` absent is
    /// poll, as SSF 1.0 lets the transmitter choose.
    pub fn parse(body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![("body", Invalid::format("must be a JSON object"))]);
        };
        let mut errors = Vec::new();
        let audience = match object.get("aud") {
            None | Some(Value::Null) => None,
            Some(v) => match audience(v) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(("aud", e));
                    None
                }
            },
        };
        let events_requested = match object.get("events_requested") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => events(v).unwrap_or_else(|e| {
                errors.push(("events_requested", e));
                Vec::new()
            }),
        };
        let delivery = match object.get("delivery") {
            None | Some(Value::Null) => Some(Delivery::Poll),
            Some(v) => delivery(v).map_err(|e| errors.push(e)).ok(),
        };
        let description = match object.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= MAX_DESCRIPTION => Some(s.clone()),
            Some(Value::String(_)) => {
                errors.push((
                    "description",
                    Invalid::too_long(format!("must be at most {MAX_DESCRIPTION} characters")),
                ));
                None
            }
            Some(_) => {
                errors.push(("description", Invalid::format("must be a string")));
                None
            }
        };
        match (errors.is_empty(), delivery) {
            (true, Some(delivery)) => Ok(Self {
                audience,
                events_requested,
                delivery,
                description,
            }),
            _ => Err(errors),
        }
    }

    /// Applies a PATCH (SSF 1.0 §8.1.1.3): members present replace the
    /// current ones, members absent stay.
    pub fn patched(&self, body: &Value) -> Result<Self, Vec<FieldError>> {
        let Some(object) = body.as_object() else {
            return Err(vec![("body", Invalid::format("must be a JSON object"))]);
        };
        let mut merged = serde_json::Map::new();
        if let Some(a) = &self.audience {
            merged.insert("aud".into(), Value::from(a.as_str()));
        }
        merged.insert(
            "events_requested".into(),
            Value::from(self.events_requested.clone()),
        );
        merged.insert("delivery".into(), self.delivery_json());
        if let Some(d) = &self.description {
            merged.insert("description".into(), Value::from(d.as_str()));
        }
        for key in ["aud", "events_requested", "delivery", "description"] {
            if let Some(v) = object.get(key) {
                merged.insert(key.into(), v.clone());
            }
        }
        Self::parse(&Value::Object(merged))
    }

    fn delivery_json(&self) -> Value {
        match &self.delivery {
            Delivery::Push {
                endpoint_url,
                authorization,
            } => {
                let mut d = serde_json::json!({"method": PUSH_METHOD, "endpoint_url": endpoint_url});
                if let Some(a) = authorization {
                    d["authorization_header"] = Value::from(a.as_str());
                }
                d
            }
            Delivery::Poll => serde_json::json!({"method": POLL_METHOD}),
        }
    }
}

fn audience(v: &Value) -> Result<String, Invalid> {
    // SSF allows an array; a stream has one audience here.
    let s = match v {
        Value::String(s) => s.as_str(),
        Value::Array(items) if items.len() == 1 => items[0]
            .as_str()
            .ok_or_else(|| Invalid::format("must be a string"))?,
        _ => return Err(Invalid::format("must be a string (or an array of one)")),
    };
    if s.is_empty() || s.len() > MAX_AUDIENCE || s.chars().any(char::is_control) {
        return Err(Invalid::format(format!(
            "must be 1 to {MAX_AUDIENCE} bytes with no control characters"
        )));
    }
    Ok(s.to_owned())
}

fn events(v: &Value) -> Result<Vec<String>, Invalid> {
    let Value::Array(items) = v else {
        return Err(Invalid::format("must be an array of event type URIs"));
    };
    if items.len() > MAX_EVENTS_REQUESTED {
        return Err(Invalid::too_long(format!(
            "must name at most {MAX_EVENTS_REQUESTED} event types"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Some(uri) = item.as_str() else {
            return Err(Invalid::format("must be an array of strings"));
        };
        if uri.is_empty() || uri.len() > MAX_EVENT_URI || uri.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Invalid::format(format!(
                "event type URIs are 1 to {MAX_EVENT_URI} bytes with no spaces"
            )));
        }
        if !out.iter().any(|u| u == uri) {
            out.push(uri.to_owned());
        }
    }
    Ok(out)
}

fn delivery(v: &Value) -> Result<Delivery, FieldError> {
    let Some(object) = v.as_object() else {
        return Err(("delivery", Invalid::format("must be an object")));
    };
    let method = object.get("method").and_then(Value::as_str).unwrap_or("");
    match method {
        POLL_METHOD => {
            // The poll URL is the transmitter's to give.
            Ok(Delivery::Poll)
        }
        PUSH_METHOD => {
            let url = match object.get("endpoint_url") {
                Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_URL => s.clone(),
                Some(Value::String(s)) if s.len() > MAX_URL => {
                    return Err((
                        "delivery.endpoint_url",
                        Invalid::too_long(format!("must be at most {MAX_URL} bytes")),
                    ));
                }
                _ => {
                    return Err((
                        "delivery.endpoint_url",
                        Invalid::new(
                            super::FieldReason::Required,
                            "push delivery needs the receiver's URL",
                        ),
                    ));
                }
            };
            let authorization = match object.get("authorization_header") {
                None | Some(Value::Null) => None,
                Some(Value::String(s))
                    if !s.is_empty()
                        && s.len() <= MAX_AUTHORIZATION
                        && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) =>
                {
                    Some(s.clone())
                }
                Some(_) => {
                    return Err((
                        "delivery.authorization_header",
                        Invalid::format(format!(
                            "must be 1 to {MAX_AUTHORIZATION} visible ASCII characters"
                        )),
                    ));
                }
            };
            Ok(Delivery::Push {
                endpoint_url: url,
                authorization,
            })
        }
        _ => Err((
            "delivery.method",
            Invalid::format(format!("must be {PUSH_METHOD} or {POLL_METHOD}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_push_stream_parses_and_a_patch_keeps_what_it_does_not_name() {
        let config = StreamConfig::parse(&json!({
            "aud": "https://receiver.example",
            "events_requested": ["a", "b", "a"],
            "delivery": {"method": PUSH_METHOD, "endpoint_url": "https://r.example/ev",
                         "authorization_header": "Bearer x"},
            "iss": "ignored"
        }))
        .unwrap();
        assert_eq!(config.events_requested, ["a", "b"]);
        assert_eq!(
            config.delivery,
            Delivery::Push {
                endpoint_url: "https://r.example/ev".into(),
                authorization: Some("Bearer x".into())
            }
        );
        let patched = config.patched(&json!({"events_requested": ["c"]})).unwrap();
        assert_eq!(patched.events_requested, ["c"]);
        assert_eq!(patched.delivery, config.delivery);
        assert_eq!(patched.audience.as_deref(), Some("https://receiver.example"));
    }

    #[test]
    fn bad_members_are_named() {
        let errors = StreamConfig::parse(&json!({
            "aud": 5,
            "events_requested": "x",
            "delivery": {"method": PUSH_METHOD},
            "description": "d".repeat(2000)
        }))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            ["aud", "events_requested", "delivery.endpoint_url", "description"]
        );
        assert!(StreamConfig::parse(&json!([])).is_err());
        assert!(StreamConfig::parse(&json!({"delivery": {"method": "smtp"}})).is_err());
        assert!(
            StreamConfig::parse(&json!({"delivery": {"method": PUSH_METHOD,
                "endpoint_url": "https://r", "authorization_header": "a\nb"}}))
            .is_err()
        );
        assert_eq!(StreamConfig::parse(&json!({})).unwrap().delivery, Delivery::Poll);
    }
}
