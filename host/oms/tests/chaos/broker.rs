//! The harness's own Kafka-protocol broker: a tansu process (memory storage) that advertises
//! the address of a [`FaultProxy`] in front of it, so every client, after bootstrapping, talks
//! to the broker through the proxy and a broker outage is one `cut`. The process itself is
//! never stopped: its memory storage would lose what it had acknowledged, which no real
//! cluster does and which would make "every event on the broker" uncheckable.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::proxy::FaultProxy;

/// The topics the hosts use (the defaults of `oms serve`).
pub const TOPICS: [&str; 4] = [
    "oms.order-events.v1",
    "oms.plugin-changes.v1",
    "oms.order-events.dlq.v1",
    "oms.notifications.dlq.v1",
];
pub const EVENTS: &str = TOPICS[0];

pub struct Broker {
    child: Child,
    pub proxy: FaultProxy,
}

impl Broker {
    /// `None` (after a loud message) where no `tansu` is on PATH, unless the run requires a
    /// broker (`OMS_REQUIRE_KAFKA=1`, as `.ci/run` sets): CI must not pass by skipping.
    pub async fn start() -> Option<Broker> {
        let found = Command::new("tansu")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var("OMS_REQUIRE_KAFKA").map_or(true, |v| v != "1"),
                "OMS_REQUIRE_KAFKA=1 but no tansu on PATH"
            );
            eprintln!("\n!!!!! SKIPPED chaos: no tansu binary on PATH !!!!!\n");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let direct: SocketAddr = ([127, 0, 0, 1], port).into();
        let proxy = FaultProxy::start(direct).await;
        let log = std::env::temp_dir().join(format!("oms-chaos-tansu-{port}.log"));
        let child = Command::new("tansu")
            .arg("broker")
            .args(["--listener-url", &format!("tcp://{direct}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://{}", proxy.addr()),
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("tansu log file"))
            .spawn()
            .expect("spawn tansu");
        let broker = Broker { child, proxy };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(direct).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen within 20 s (log {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for topic in TOPICS {
            let status = Command::new("tansu")
                .args(["topic", "create", topic, "--partitions", "3"])
                .args(["--broker", &format!("tcp://{direct}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("tansu topic create");
            assert!(status.success(), "creating topic {topic}");
        }
        Some(broker)
    }

    /// The bootstrap address clients use (the proxy's).
    pub fn address(&self) -> String {
        self.proxy.addr().to_string()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
