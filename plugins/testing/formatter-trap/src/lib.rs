//! Test plugin `formatter-trap`: a notification formatter that panics on every event. The
//! notification consumer must dead-letter the event and go on with the next one.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "notification-formatter",
    });

    use super::FormatterTrap;
    export!(FormatterTrap with_types_in self);
}

use bindings::exports::oms::plugins::formatter::{Event, FormatError, Guest, Message};

struct FormatterTrap;

impl Guest for FormatterTrap {
    fn format(event: Event) -> Result<Vec<Message>, FormatError> {
        panic!(
            "formatter-trap: deliberate panic formatting {}",
            event.event_id
        )
    }
}
