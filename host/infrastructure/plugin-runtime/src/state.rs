//! The data of one call's store, and the one linker every plugin is checked against.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::caps::oms::plugins as caps;
use crate::capabilities::PluginContext;
use crate::capabilities::http::HttpHooks;
use crate::capabilities::stdio::{GuestOutput, Stream};
use crate::kv::KvTransaction;
use crate::limits::{Limits, MemoryCap};

/// What a plugin's store holds during one call. Built fresh per call and dropped after it, so
/// no state (and no damage from a trap) carries over between calls.
pub struct HostState {
    pub(crate) ctx: Arc<PluginContext>,
    pub(crate) limiter: MemoryCap,
    /// Built on first use: a strict component never touches WASI, and most wasip2 plugins
    /// never call it either, so most calls skip building it.
    wasi: Option<WasiCtx>,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    table: ResourceTable,
    /// Set for a call made by a saga step: the plugin's key-value writes are buffered here
    /// and handed back with the result, for the step to commit with its outcome.
    pub(crate) kv_txn: Option<KvTransaction>,
}

impl HostState {
    /// A store state for one call of the plugin described by `ctx`.
    pub fn new(ctx: Arc<PluginContext>, limits: &Limits) -> Self {
        let hooks = HttpHooks {
            plugin: ctx.name.clone(),
            grant: ctx.http.clone(),
        };
        Self {
            limiter: MemoryCap::new(limits),
            ctx,
            wasi: None,
            http: WasiHttpCtx::new(),
            hooks,
            table: ResourceTable::new(),
            kv_txn: None,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // The WASI context grants nothing: no preopened directories, no environment, no args,
        // no sockets, no stdin. A wasm32-wasip2 guest imports these interfaces anyway; they
        // link, and every call through them finds nothing to reach. What the guest prints
        // reaches the host log as the plugin's records, within its log policy.
        let ctx = &self.ctx;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| {
                WasiCtx::builder()
                    .stdout(GuestOutput::new(ctx.clone(), Stream::Stdout))
                    .stderr(GuestOutput::new(ctx.clone(), Stream::Stderr))
                    .build()
            }),
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Links WASI (empty context), `wasi:http` (behind the allowlist hooks) and the OMS
/// capabilities. Everything is always linked, so a plugin never fails to load merely for
/// importing an interface; the grant is checked when it is used.
pub fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    caps::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    caps::config::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    caps::clock::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    caps::kv::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}
