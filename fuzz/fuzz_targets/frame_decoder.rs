//! The client frame decoder: `ClientEnvelope::parse` and `reference_of` on
//! any text a client can send in a WebSocket text frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tether_protocol::{ClientEnvelope, ClientFrame};

fuzz_target!(|data: &[u8]| {
    // Text frames are UTF-8 (the socket layer refuses others with 1007).
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = ClientEnvelope::parse(text);
    let reference = ClientEnvelope::reference_of(text);
    let value = serde_json::from_str::<Value>(text).ok();

    // `parse` answers exactly for JSON objects.
    assert_eq!(parsed.is_some(), matches!(value, Some(Value::Object(_))), "parse vs JSON object: {text:?}");

    if let Some(envelope) = &parsed {
        // A refused frame is answered with the same `ref` as an admitted one.
        assert_eq!(reference, envelope.reference, "reference_of vs parse: {text:?}");
        let fields = match &value {
            Some(Value::Object(fields)) => fields,
            _ => unreachable!(),
        };
        assert_eq!(envelope.reference, fields.get("ref").and_then(Value::as_i64), "ref: {text:?}");
        if let Ok(frame) = &envelope.frame {
            // A decoded frame re-encodes to one that decodes the same.
            let again = ClientEnvelope::parse(&ClientEnvelope::encode(frame, 1)).expect("an encoded frame is an object");
            assert_eq!(again.reference, Some(1));
            assert_eq!(again.frame.as_ref(), Ok(frame), "round trip: {text:?}");
            let _: &ClientFrame = frame;
        }
    } else if value.is_some() {
        // JSON that is not an object (an array, a number...) has no `ref`.
        assert_eq!(reference, None, "reference_of of a non-object: {text:?}");
    }
});
