//! A TCP proxy the harness puts between the hosts and a server (PostgreSQL, the broker) to
//! take the server away from them: `cut` closes every open connection at once and refuses
//! new ones (accepted and closed, as a server that just died would), `restore` lets them in
//! again. To the hosts this is the server going down and coming back: in-flight queries and
//! commits fail with their outcome unknown, pools and producers must reconnect. The server
//! itself keeps its data, so the checks afterwards read what really committed.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    addr: SocketAddr,
    up: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, _) = watch::channel(true);
        let state = up.clone();
        let accept = tokio::spawn(async move {
            loop {
                let inbound = match listener.accept().await {
                    Ok((inbound, _)) => inbound,
                    // Said, not swallowed: a proxy that stops accepting looks like an
                    // endless outage of what it fronts. Paced, so a lasting error (out of
                    // file descriptors) neither spins nor floods.
                    Err(e) => {
                        eprintln!("chaos: fault proxy for {upstream} could not accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !*state.borrow() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, upstream, state.subscribe()));
            }
        });
        FaultProxy { addr, up, accept }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server goes away: open connections are closed, new ones refused.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// The server is back.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn forward(mut inbound: TcpStream, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = up.wait_for(|up| !*up) => {}
    }
}
