//! WebSocket frames: one JSON text frame each, tagged by `type`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ErrorBody, Member, Room, Sender, User};

/// A frame sent by a client. `ref` travels beside it (see [`ClientEnvelope`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Login { ticket: String },
    Logout,
    Whoami,
    /// `since`: the last `seq` the client has of this room (version 2, resume).
    Join {
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
    },
    /// Older messages: those with `seq` < `before`, oldest first (version 2).
    History {
        room: String,
        before: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
    Leave { room: String },
    Send { room: String, text: String },
    Ping,
}

impl ClientFrame {
    /// The frame's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Login { .. } => "login",
            ClientFrame::Logout => "logout",
            ClientFrame::Whoami => "whoami",
            ClientFrame::Join { .. } => "join",
            ClientFrame::History { .. } => "history",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Ping => "ping",
        }
    }
}

/// A client frame as parsed from the wire: the frame, or why it is not one,
/// and the `ref` to answer to when it carried a usable one.
#[derive(Debug)]
pub struct ClientEnvelope {
    pub reference: Option<i64>,
    pub frame: Result<ClientFrame, String>,
}

impl ClientEnvelope {
    /// Parses a text frame. `None` when the text is not a JSON object at all.
    pub fn parse(text: &str) -> Option<ClientEnvelope> {
        let Value::Object(mut fields) = serde_json::from_str::<Value>(text).ok()? else {
            return None;
        };
        let reference = fields.remove("ref").and_then(|r| r.as_i64());
        let frame = serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string());
        Some(ClientEnvelope { reference, frame })
    }

    /// Just the `ref` of a frame, if it has a usable one: every other field is
    /// skipped unparsed (for answering a frame that is refused unread). Agrees
    /// with [`ClientEnvelope::parse`] on every frame that parses: only a JSON
    /// object has a `ref`, and of duplicate `ref` keys the last counts.
    pub fn reference_of(text: &str) -> Option<i64> {
        serde_json::from_str::<RefOnly>(text).ok()?.0
    }

    /// Serializes a client frame with its `ref`, as a client sends it.
    pub fn encode(frame: &ClientFrame, reference: i64) -> String {
        let mut fields = crate::to_fields(frame);
        fields.insert("ref".into(), reference.into());
        Value::Object(fields).to_string()
    }
}

/// The `ref` of an object, read by [`ClientEnvelope::reference_of`]: a map
/// (never a sequence, which a derived struct would also accept), the last
/// `ref` key winning as in a parsed [`Value`] map.
struct RefOnly(Option<i64>);

impl<'de> Deserialize<'de> for RefOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = RefOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RefOnly, A::Error> {
                let mut reference = None;
                while let Some(IsRef(is_ref)) = map.next_key()? {
                    if is_ref {
                        reference = map.next_value::<RefValue>()?.0;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(RefOnly(reference))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// Whether a key is `ref` (read without allocating).
struct IsRef(bool);

impl<'de> Deserialize<'de> for IsRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Key;
        impl serde::de::Visitor<'_> for Key {
            type Value = IsRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<IsRef, E> {
                Ok(IsRef(key == "ref"))
            }
        }
        deserializer.deserialize_str(Key)
    }
}

/// A `ref` value: usable when it is an integer that fits an `i64` (as
/// [`Value::as_i64`]), anything else skipped without being kept.
struct RefValue(Option<i64>);

impl<'de> Deserialize<'de> for RefValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = RefValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RefValue, E> {
                Ok(RefValue(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RefValue, E> {
                Ok(RefValue(i64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RefValue, E> {
                Ok(RefValue(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RefValue, E> {
                Ok(RefValue(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<RefValue, E> {
                Ok(RefValue(None))
            }
            fn visit_unit<E>(self) -> Result<RefValue, E> {
                Ok(RefValue(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RefValue, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RefValue(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RefValue, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(RefValue(None))
            }
        }
        deserializer.deserialize_any(Any)
    }
}

/// A chat message as sent in `message` frames and join history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    pub id: String,
    /// The message's place in its room: 1, 2, 3... with no gaps (version 2).
    pub seq: i64,
    pub from: Sender,
    pub text: String,
    pub at: String,
}

/// Why the server took a socket's user away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnbindReason {
    Logout,
    Expired,
    Revoked,
}

impl UnbindReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnbindReason::Logout => "logout",
            UnbindReason::Expired => "expired",
            UnbindReason::Revoked => "revoked",
        }
    }
}

/// A frame sent by the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        socket_id: String,
        user: Option<User>,
        guest_name: Option<String>,
        expires_at: Option<i64>,
    },
    Ack {
        #[serde(rename = "ref")]
        reference: i64,
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
        /// The success fields of the answered frame (see the `*Ack` types).
        #[serde(flatten)]
        fields: Map<String, Value>,
    },
    Bound {
        user: User,
        expires_at: Option<i64>,
    },
    Unbound {
        reason: UnbindReason,
    },
    Message(ChatMessage),
    Event {
        topic: String,
        data: Value,
    },
    /// A room's full member list: to a socket when it joins.
    Presence {
        room: String,
        members: Vec<Member>,
    },
    /// A change of a room's member list, to its other sockets (version 2,
    /// Phoenix Presence's `presence_diff`). A key in both lists left and came back.
    PresenceDiff {
        room: String,
        joins: Vec<Member>,
        leaves: Vec<Member>,
    },
    Error(ErrorBody),
}

impl ServerFrame {
    pub fn ack_ok(reference: i64, fields: Map<String, Value>) -> ServerFrame {
        ServerFrame::Ack { reference, ok: true, error: None, fields }
    }

    pub fn ack_err(reference: i64, error: ErrorBody) -> ServerFrame {
        ServerFrame::Ack { reference, ok: false, error: Some(error), fields: Map::new() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// The frame's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::Bound { .. } => "bound",
            ServerFrame::Unbound { .. } => "unbound",
            ServerFrame::Message(_) => "message",
            ServerFrame::Event { .. } => "event",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::PresenceDiff { .. } => "presence_diff",
            ServerFrame::Error(_) => "error",
        }
    }
}

/// Success fields of the `login` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAck {
    pub user: User,
}

/// Success fields of the `whoami` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoamiAck {
    pub user: Option<User>,
    pub guest_name: Option<String>,
}

/// Success fields of the `join` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAck {
    pub room: Room,
    /// Oldest first: the last [`crate::HISTORY_LEN`] messages, or with `since`
    /// those after it (at most [`crate::MAX_RESUME_LEN`]).
    pub history: Vec<ChatMessage>,
    /// The room's full member list, as in the `presence` frame that follows.
    pub members: Vec<Member>,
    /// With `since`: more messages were missed than `history` holds (it has the newest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Success fields of the `history` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryAck {
    /// Oldest first.
    pub history: Vec<ChatMessage>,
}

/// Success fields of the `send` ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAck {
    pub id: String,
}

/// Event topics and their audiences are decided by the server; these are the names.
pub mod topic {
    pub const ROOM_CREATED: &str = "room.created";
    pub const USER_REGISTERED: &str = "user.registered";
    /// Extension: a socket connected, disconnected or was rebound (admins only).
    pub const SOCKETS_CHANGED: &str = "sockets.changed";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    #[test]
    fn client_frame_with_ref_round_trips() {
        let text = ClientEnvelope::encode(&ClientFrame::Login { ticket: "t1".into() }, 7);
        let parsed = ClientEnvelope::parse(&text).unwrap();
        assert_eq!(parsed.reference, Some(7));
        assert_eq!(parsed.frame.unwrap(), ClientFrame::Login { ticket: "t1".into() });
    }

    #[test]
    fn unknown_type_and_missing_fields_are_errors_that_keep_the_ref() {
        let unknown = ClientEnvelope::parse(r#"{"type":"fly","ref":3}"#).unwrap();
        assert_eq!(unknown.reference, Some(3));
        assert!(unknown.frame.is_err());
        let missing = ClientEnvelope::parse(r#"{"type":"join"}"#).unwrap();
        assert_eq!(missing.reference, None);
        assert!(missing.frame.is_err());
        assert!(ClientEnvelope::parse("[1,2]").is_none());
        assert!(ClientEnvelope::parse("not json").is_none());
    }

    #[test]
    fn reference_of_reads_only_the_ref() {
        assert_eq!(ClientEnvelope::reference_of(r#"{"type":"send","ref":9,"text":"x"}"#), Some(9));
        assert_eq!(ClientEnvelope::reference_of(r#"{"ref":"9"}"#), None);
        assert_eq!(ClientEnvelope::reference_of(r#"{"type":"ping"}"#), None);
        assert_eq!(ClientEnvelope::reference_of("not json"), None);
        assert_eq!(ClientEnvelope::reference_of(r#"{"ref":{"deep":[1,2,{"x":3}]},"type":"ping"}"#), None);
    }

    /// Found by the `frame_decoder` fuzz target: `[3372023]` gave a `ref` of
    /// 3372023 (a derived struct also reads a sequence), though `parse` says it
    /// is no frame; a duplicate `ref` gave none, though `parse` keeps the last.
    #[test]
    fn reference_of_agrees_with_parse() {
        assert_eq!(ClientEnvelope::reference_of("[3372023] "), None);
        assert_eq!(ClientEnvelope::reference_of("[3372023, 4]"), None);
        for text in [
            r#"{"type":"ping","ref":1,"ref":2}"#,
            r#"{"ref":1,"type":"ping","ref":"x"}"#,
            r#"{"ref":null}"#,
            r#"{"ref":9223372036854775808}"#,
            r#"{"ref":-9223372036854775808}"#,
            r#"{"ref":1.0}"#,
            r#"{"ref":-0}"#,
            r#"{"r\u0065f":5}"#,
            r#"{"ref":[1,{"a":[2]}],"x":{"ref":3}}"#,
        ] {
            let parsed = ClientEnvelope::parse(text).unwrap().reference;
            assert_eq!(ClientEnvelope::reference_of(text), parsed, "{text}");
        }
        assert_eq!(ClientEnvelope::reference_of(r#"{"type":"ping","ref":1,"ref":2}"#), Some(2));
        assert_eq!(ClientEnvelope::reference_of(r#"{"r\u0065f":5}"#), Some(5));
    }

    #[test]
    fn a_non_integer_ref_is_not_usable() {
        let parsed = ClientEnvelope::parse(r#"{"type":"ping","ref":"x"}"#).unwrap();
        assert_eq!(parsed.reference, None);
        assert_eq!(parsed.frame.unwrap(), ClientFrame::Ping);
    }

    #[test]
    fn server_frames_have_the_contract_shape() {
        let user = User { id: "u1".into(), name: "Ann".into(), email: "a@x.io".into(), role: Role::Admin };
        let ack = ServerFrame::ack_ok(4, crate::to_fields(&WhoamiAck { user: None, guest_name: Some("guest-1".into()) }));
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            serde_json::json!({"type":"ack","ref":4,"ok":true,"user":null,"guest_name":"guest-1"})
        );
        let failed = ServerFrame::ack_err(5, ErrorBody::new("invalid_ticket", "nope"));
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"type":"ack","ref":5,"ok":false,"error":{"code":"invalid_ticket","message":"nope"}})
        );
        let bound = ServerFrame::Bound { user, expires_at: Some(10) };
        assert_eq!(serde_json::to_value(&bound).unwrap()["user"]["role"], "admin");
        let unbound = ServerFrame::Unbound { reason: UnbindReason::Revoked };
        assert_eq!(unbound.to_json(), r#"{"type":"unbound","reason":"revoked"}"#);
        let error = ServerFrame::Error(ErrorBody::new("bad_frame", "x"));
        assert_eq!(error.to_json(), r#"{"type":"error","code":"bad_frame","message":"x"}"#);
        for frame in [&ack, &failed, &bound, &unbound, &error] {
            assert_eq!(serde_json::to_value(frame).unwrap()["type"], frame.kind());
        }
        let msg = ServerFrame::Message(ChatMessage {
            room: "r".into(),
            id: "1".into(),
            seq: 1,
            from: Sender { id: None, name: "guest-2".into() },
            text: "hi".into(),
            at: "2026-01-01T00:00:00Z".into(),
        });
        let back: ServerFrame = serde_json::from_str(&msg.to_json()).unwrap();
        assert_eq!(back, msg);
    }
}
