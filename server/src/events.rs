//! Model events and who may see them. Each event names its audience here,
//! next to its topic and data, so adding an event is one small change.
//! (`sockets.changed` is the registry's own: it knows when its list changes.)

use serde_json::{json, Value};
use tether_protocol::{topic, Role, Room, ServerFrame, User};

use crate::bus::{Bus, Delivery, Target};

pub enum ModelEvent {
    RoomCreated(Room),
    UserRegistered(User),
}

impl ModelEvent {
    fn topic(&self) -> &'static str {
        match self {
            ModelEvent::RoomCreated(_) => topic::ROOM_CREATED,
            ModelEvent::UserRegistered(_) => topic::USER_REGISTERED,
        }
    }

    fn target(&self) -> Target {
        match self {
            ModelEvent::RoomCreated(_) => Target::All,
            ModelEvent::UserRegistered(_) => Target::Role(Role::Admin),
        }
    }

    fn data(&self) -> Value {
        match self {
            ModelEvent::RoomCreated(room) => json!(room),
            ModelEvent::UserRegistered(user) => json!(user),
        }
    }
}

/// Sends the event to its audience on every node. The model change is
/// already stored: a bus that cannot reach the other nodes is logged, not an error.
pub async fn publish(bus: &std::sync::Arc<dyn Bus>, event: ModelEvent) {
    let delivery = Delivery::Emit {
        target: event.target(),
        frame: ServerFrame::Event { topic: event.topic().into(), data: event.data() },
    };
    if let Err(e) = bus.publish(delivery).await {
        tracing::warn!(error = %e, topic = event.topic(), "event not sent to the other nodes");
    }
}
