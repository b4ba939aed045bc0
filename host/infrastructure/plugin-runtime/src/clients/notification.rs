//! Client of the `notification-formatter` world (`oms:plugins/formatter`).

use std::sync::Arc;

use super::{Called, instantiate, kind_mismatch, refused, split};
use crate::call::{self, Verdict};
use crate::error::PluginError;
use crate::manifest::PluginKind;
use crate::plugin::Exports;
use crate::runtime::Inner;

pub use crate::bindings::notification::exports::oms::plugins::formatter::{
    Address, Channel, Customer, Event, FormatError, Item, Message, OrderSnapshot,
};

/// Result of a format call.
pub type FormatResult = Result<Called<Vec<Message>>, PluginError<FormatError>>;

/// Calls the notification formatter of one name.
#[derive(Clone)]
pub struct NotificationFormatter {
    pub(crate) rt: Arc<Inner>,
    pub(crate) name: Arc<str>,
}

fn judge(r: &Result<Vec<Message>, FormatError>) -> Verdict {
    match r {
        Ok(_) => Verdict::OK,
        Err(FormatError::Invalid(_)) => refused("invalid"),
    }
}

impl NotificationFormatter {
    /// Plugin name this handle calls.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The messages to send for `event` (possibly none). Pure: safe to call twice.
    pub async fn format(&self, event: Event) -> FormatResult {
        let (r, info) = call::run(
            &self.rt,
            &self.name,
            &crate::registry::Route::Current,
            PluginKind::NotificationFormatter,
            judge,
            call::KvMode::Direct,
            move |store, plugin| {
                Box::pin(async move {
                    let Exports::Notification(pre) = &plugin.exports else {
                        return Err(kind_mismatch());
                    };
                    let instance = instantiate(pre.instantiate_async(&mut *store)).await?;
                    instance
                        .oms_plugins_formatter()
                        .call_format(&mut *store, &event)
                        .await
                })
            },
        )
        .await?;
        split(r, info)
    }
}
