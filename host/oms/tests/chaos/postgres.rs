//! The harness's own PostgreSQL server: a cluster `initdb` makes in a temporary directory,
//! on a free port, so the harness can crash it (`pg_ctl stop -m immediate`: every server
//! process quits at once without a checkpoint, and the next start replays the WAL, as after a
//! power cut that the disk survived) and start it again without touching the machine's
//! shared server, which other tests use at the same time.
//!
//! PostgreSQL refuses to run as root: under root (as in CI) the cluster belongs to the
//! `postgres` user and every command runs through `runuser`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use tokio::process::Command;

pub struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// `Some(user)` when every command must run as that user (the harness runs as root).
    user: Option<&'static str>,
}

/// Where the server's programs are: `pg_config --bindir`, else the newest Debian layout.
fn bindir() -> Option<PathBuf> {
    let from_pg_config = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok().map(|d| d.path().join("bin")))
                .max_by_key(|p| {
                    p.parent()
                        .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                        .unwrap_or(0)
                })
        });
    [from_pg_config, debian]
        .into_iter()
        .flatten()
        .find(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
}

/// The uid and gid of `user`, from `id`.
fn ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, user])
            .output()
            .expect("id runs");
        assert!(out.status.success(), "no user {user} to run PostgreSQL as");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

impl Cluster {
    /// Makes and starts the cluster with an empty database `oms`; `None` (after a loud
    /// message) where no PostgreSQL server programs are installed.
    pub async fn start() -> Option<Cluster> {
        let Some(bin) = bindir() else {
            eprintln!(
                "\n!!!!! chaos: no initdb/pg_ctl found (pg_config --bindir, /usr/lib/postgresql): \
                 PostgreSQL outages are network cuts only, no server crash !!!!!\n"
            );
            return None;
        };
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let user = root.then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("oms-chaos-pg-")
            .tempdir()
            .expect("temporary directory");
        if let Some(user) = user {
            let (uid, gid) = ids(user);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let cluster = Cluster {
            bin,
            dir,
            port,
            user,
        };
        let data = cluster.data();
        cluster
            .run(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    // The cluster is thrown away after the run; its crash safety comes from
                    // the WAL the server writes, not from initdb's own fsyncs.
                    "--no-sync",
                ],
            )
            .await;
        cluster.up().await;
        let admin = format!("postgres://postgres@{}/postgres", cluster.addr());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("connect to the harness's PostgreSQL");
        sqlx::query("CREATE DATABASE oms")
            .execute(&mut conn)
            .await
            .expect("create database oms");
        Some(cluster)
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The database the hosts use, reached directly.
    pub fn url(&self) -> String {
        format!("postgres://postgres@{}/oms", self.addr())
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the server and waits until it accepts connections (after crash recovery).
    pub async fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=200 -c synchronous_commit=on -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.log().display().to_string();
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "120",
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
            ],
        )
        .await;
    }

    /// Crashes the server: every process quits at once, nothing is checkpointed or flushed
    /// beyond what committed transactions already forced to the WAL.
    pub async fn crash(&self) {
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-w",
                "-t",
                "60",
                "-m",
                "immediate",
                "-D",
                &self.data(),
            ],
        )
        .await;
    }

    /// `program` of the server's, run as the cluster's user.
    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        match self.user {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => std::process::Command::new(path),
        }
    }

    async fn run(&self, program: &str, args: &[&str]) {
        let out = Command::from(self.command(program))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .await
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{} (server log {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log().display()
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Synchronous: drop may run outside the runtime. The directory goes with `dir`.
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-w", "-m", "immediate", "-D", data.as_str()])
            .output();
    }
}
