//! Model events and who may see them. Each event names its audience here,
//! next to its topic and data, so adding an event is one small change.
//! (`sockets.changed` is the registry's own: it knows when its list changes.)

use serde_json::{json, Value};
use tether_protocol::{topic, Role, Room, ServerFrame, User};

use crate::registry::{Audience, Registry};

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

    fn audience(&self) -> Audience<'static> {
        match self {
            ModelEvent::RoomCreated(_) => Audience::All,
            ModelEvent::UserRegistered(_) => Audience::Role(Role::Admin),
        }
    }

    fn data(&self) -> Value {
        match self {
            ModelEvent::RoomCreated(room) => json!(room),
            ModelEvent::UserRegistered(user) => json!(user),
        }
    }
}

pub fn publish(registry: &Registry, event: ModelEvent) -> usize {
    registry.emit(event.audience(), &ServerFrame::Event { topic: event.topic().into(), data: event.data() })
}
