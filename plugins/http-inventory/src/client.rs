//! A minimal blocking JSON-over-HTTP client on `wasi:http/outgoing-handler`.

use crate::bindings::exports::oms::plugins::inventory::InventoryError;
use crate::bindings::oms::plugins::config;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// `blocking-write-and-flush` accepts at most 4096 bytes per call.
const WRITE_CHUNK: usize = 4096;
/// A stock service's answer is a few hundred bytes; anything far larger is a fault we refuse
/// to buffer inside a memory-capped instance.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

struct BaseUrl {
    scheme: Scheme,
    authority: String,
    path: String,
}

fn invalid(message: impl Into<String>) -> InventoryError {
    InventoryError::Invalid(message.into())
}

fn transient(message: impl Into<String>) -> InventoryError {
    InventoryError::Transient(message.into())
}

fn base_url() -> Result<BaseUrl, InventoryError> {
    let url = config::get("base-url").ok_or_else(|| invalid("[config] base-url is not set"))?;
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid(format!("base-url {url:?} has no scheme")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(invalid(format!("base-url scheme {other:?} is not http(s)"))),
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(invalid(format!("base-url {url:?} has no host")));
    }
    Ok(BaseUrl {
        scheme,
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

fn headers(idempotency_key: &str) -> Result<Fields, InventoryError> {
    let mut entries = vec![
        ("content-type".to_owned(), b"application/json".to_vec()),
        ("accept".to_owned(), b"application/json".to_vec()),
        (
            "idempotency-key".to_owned(),
            idempotency_key.as_bytes().to_vec(),
        ),
    ];
    if let Some(token) = config::get_secret("api-token") {
        entries.push((
            "authorization".to_owned(),
            format!("Bearer {token}").into_bytes(),
        ));
    }
    Fields::from_list(&entries).map_err(|e| invalid(format!("bad request header: {e:?}")))
}

/// POSTs `body` to `{base-url}{path}` and reads the whole answer. Failures the host's policy
/// causes (a destination outside `http.allow`) are permanent; network failures are transient.
pub fn post_json(
    path: &str,
    body: &[u8],
    idempotency_key: &str,
) -> Result<Response, InventoryError> {
    let base = base_url()?;
    let request = OutgoingRequest::new(headers(idempotency_key)?);
    let target = format!("{}{path}", base.path);
    request
        .set_method(&Method::Post)
        .and_then(|()| request.set_scheme(Some(&base.scheme)))
        .and_then(|()| request.set_authority(Some(&base.authority)))
        .and_then(|()| request.set_path_with_query(Some(&target)))
        .map_err(|()| invalid(format!("cannot address {}{target}", base.authority)))?;
    let outgoing = request
        .body()
        .map_err(|()| transient("request body already taken"))?;

    // Send first, then stream the body: the host may only drain the body once the request
    // is in flight.
    let future = outgoing_handler::handle(request, None).map_err(transport)?;
    write_body(outgoing, body)?;

    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(transport(code)),
        Some(Err(())) | None => return Err(transient("response already consumed")),
    };
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| transient("response body already taken"))?;
    let body = read_body(incoming)?;
    Ok(Response { status, body })
}

fn write_body(outgoing: OutgoingBody, body: &[u8]) -> Result<(), InventoryError> {
    {
        let stream = outgoing
            .write()
            .map_err(|()| transient("request stream already taken"))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| transient(format!("writing request: {e:?}")))?;
        }
        // The stream must be dropped before the body is finished.
    }
    OutgoingBody::finish(outgoing, None).map_err(transport)
}

fn read_body(incoming: IncomingBody) -> Result<Vec<u8>, InventoryError> {
    let mut body = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| transient("response stream already taken"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_RESPONSE_BYTES {
                        return Err(transient("stock service response exceeds 1 MiB"));
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(transient(format!(
                        "reading response: {}",
                        e.to_debug_string()
                    )));
                }
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(body)
}

fn transport(code: ErrorCode) -> InventoryError {
    match code {
        ErrorCode::HttpRequestDenied => {
            invalid("the host refused the request: base-url is not in [capabilities] http.allow")
        }
        ErrorCode::HttpRequestUriInvalid => invalid(format!("invalid request uri: {code:?}")),
        other => transient(format!("stock service unreachable: {other:?}")),
    }
}
