//! The harness's own Kafka-protocol broker: a tansu process that advertises the address of a
//! [`FaultProxy`] in front of it, so every client, after bootstrapping, talks to the broker
//! through the proxy and a network outage is one `cut`.
//!
//! Its storage is a SQLite file (tansu's `libsql` feature, which `.ci/run` installs), so the
//! harness can also SIGKILL the broker process and start it again with everything it had
//! acknowledged. A tansu built without that feature falls back to memory storage (after a
//! loud message); that broker is never restarted, since it would lose what it acknowledged,
//! which no real cluster does and which would make "every event on the broker" uncheckable.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
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
    /// The running process (none between a kill and its restart).
    child: Option<Child>,
    direct: SocketAddr,
    /// The storage engine URL: a SQLite file when the process may be restarted.
    storage: String,
    log: PathBuf,
    /// The broker's working directory, where its SQLite storage lives.
    dir: tempfile::TempDir,
    /// Whether the process may be killed and restarted (its storage is durable).
    pub restartable: bool,
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
        let mut dir = tempfile::tempdir().expect("temporary directory");
        // CHAOS_TANSU_LOG=<filter> runs tansu with that RUST_LOG and keeps its directory
        // (storage and log) after the run, for reading what the broker did.
        if let Ok(filter) = std::env::var("CHAOS_TANSU_LOG") {
            dir.disable_cleanup(true);
            eprintln!(
                "chaos: tansu log {} (RUST_LOG={filter}), kept after the run",
                dir.path().join("tansu.log").display()
            );
        }
        let mut broker = Broker {
            child: None,
            direct,
            // tansu reads a SQLite URL's path relative to its working directory (the
            // temporary one, below).
            storage: "sqlite://tansu.db".to_owned(),
            log: dir.path().join("tansu.log"),
            restartable: true,
            proxy,
            dir,
        };
        if !broker.launch().await {
            eprintln!(
                "\n!!!!! chaos: this tansu has no SQLite storage (cargo install tansu \
                 --features dynostore,libsql): memory storage, the broker is never restarted, \
                 only cut off !!!!!\n"
            );
            broker.storage = "memory://tansu/".to_owned();
            broker.restartable = false;
            assert!(
                broker.launch().await,
                "tansu did not start (log {})",
                broker.log.display()
            );
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

    /// Starts the broker process on its storage; false if it exited before listening.
    async fn launch(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log file");
        let child = self.child.insert(
            Command::new("tansu")
                .arg("broker")
                .args(["--listener-url", &format!("tcp://{}", self.direct)])
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://{}", self.proxy.addr()),
                ])
                .args(["--storage-engine", &self.storage])
                .envs(std::env::var("CHAOS_TANSU_LOG").map(|f| ("RUST_LOG", f)))
                .current_dir(self.dir.path())
                // tansu's tracing goes to stdout: into the log when asked for.
                .stdout(match std::env::var("CHAOS_TANSU_LOG") {
                    Ok(_) => Stdio::from(log.try_clone().expect("tansu log file")),
                    Err(_) => Stdio::null(),
                })
                .stderr(log)
                .spawn()
                .expect("spawn tansu"),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.direct).await.is_err() {
            if child.try_wait().ok().flatten().is_some() {
                self.child = None;
                return false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tansu did not listen within 20 s (log {})",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// SIGKILLs the broker process; [`Self::restart`] brings it back on the same storage.
    pub fn kill(&mut self) {
        assert!(self.restartable, "a memory-storage broker is never killed");
        self.stop();
    }

    pub async fn restart(&mut self) {
        assert!(
            self.launch().await,
            "tansu did not restart on its storage (log {})",
            self.log.display()
        );
    }

    /// How the broker process ended, if it ended without being killed here (a broker crash
    /// no fault excuses, which would look like an endless outage to every client). Its
    /// directory, log included, is then kept for reading.
    pub fn exited_by_itself(&mut self) -> Option<String> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.dir.disable_cleanup(true);
        Some(format!("{status} (log {})", self.log.display()))
    }

    /// Whether the broker process and the proxy in front of it each accept a connection
    /// now: tells a broker that stopped serving from a proxy that stopped forwarding.
    pub async fn reachable(&self) -> String {
        let accepts = |addr: SocketAddr| async move {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(_)) => "accepts",
                Ok(Err(_)) => "refuses",
                Err(_) => "does not answer",
            }
        };
        format!(
            "the broker {} connections directly, its proxy {}",
            accepts(self.direct).await,
            accepts(self.proxy.addr()).await
        )
    }

    /// The bootstrap address clients use (the proxy's).
    pub fn address(&self) -> String {
        self.proxy.addr().to_string()
    }
}

impl Broker {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
