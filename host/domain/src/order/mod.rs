//! The `Order` aggregate and the state machines of its three status dimensions.

mod aggregate;
mod events;
mod status;

pub use aggregate::{
    MAX_LINES, NewOrder, Order, OrderParts, PaymentAction, PaymentMethod, Version,
};
pub use events::{OrderEvent, OrderEventKind};
pub use status::{
    OrderStatus, OrderTransition, PaymentStatus, PaymentTransition, ReservationStatus,
    ReservationTransition,
};
