//! Test plugin `ungranted-http`: an inventory adapter that sends `GET [config] url` (default: the
//! cloud metadata address `http://169.254.169.254/latest/meta-data/`) on `reserve`, whatever
//! its manifest's `http.allow` says. The host must refuse the request (or refuse to load the
//! plugin). The answer names what happened so a test can assert on it:
//! - `invalid("http refused: ErrorCode::HttpRequestDenied")` (or another code) when refused,
//! - `ok("reached: <status>")` when the request got through, which is a sandbox failure.

#[allow(unsafe_code)] // wit-bindgen's generated ABI glue is the only unsafe code here.
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "http-inventory-adapter",
        generate_all,
    });

    use super::UngrantedHttp;
    export!(UngrantedHttp with_types_in self);
}

use bindings::exports::oms::plugins::inventory::{Guest, InventoryError, Line};
use bindings::oms::plugins::config;
use bindings::wasi::http::outgoing_handler;
use bindings::wasi::http::types::{ErrorCode, Fields, OutgoingRequest, Scheme};

const DEFAULT_URL: &str = "http://169.254.169.254/latest/meta-data/";

struct UngrantedHttp;

fn refused(code: ErrorCode) -> InventoryError {
    InventoryError::Invalid(format!("http refused: {code:?}"))
}

fn probe() -> Result<String, InventoryError> {
    let url = config::get("url").unwrap_or_else(|| DEFAULT_URL.into());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| InventoryError::Invalid(format!("url {url:?} is not http://")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };

    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .and_then(|()| request.set_authority(Some(authority)))
        .and_then(|()| request.set_path_with_query(Some(path)))
        .map_err(|()| InventoryError::Invalid(format!("cannot address {url}")))?;
    let future = outgoing_handler::handle(request, None).map_err(refused)?;
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => Ok(format!("reached: {}", response.status())),
        Some(Ok(Err(code))) => Err(refused(code)),
        Some(Err(())) | None => Err(InventoryError::Transient("no response".into())),
    }
}

impl Guest for UngrantedHttp {
    fn reserve(_: String, _: Vec<Line>, _: String) -> Result<String, InventoryError> {
        probe()
    }

    fn release(_: String, _: String) -> Result<(), InventoryError> {
        probe().map(drop)
    }

    fn commit(_: String, _: String) -> Result<(), InventoryError> {
        probe().map(drop)
    }
}
