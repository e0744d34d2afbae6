//! Streaming standbys of a throwaway cluster, for failover and replica tests: started from a
//! base backup (`pg_basebackup -R`, ~2 s), promoted, crashed, paused.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Cluster, OwnedCluster, TestingError, cluster_error, signal};

impl Cluster {
    /// Starts a hot standby of this throwaway cluster on a port of its own: a base backup taken
    /// over streaming replication (`pg_basebackup -R`), so it follows this server's WAL from
    /// then on. It is a [`Cluster`] like any other: removed on drop and by its watchdog.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), actor_orm::testing::TestingError> {
    /// let primary = actor_orm::testing::Cluster::start()?;
    /// let standby = primary.start_standby()?;
    /// assert_ne!(primary.port(), standby.port());
    /// # Ok(()) }
    /// ```
    pub fn start_standby(&self) -> Result<Cluster, TestingError> {
        let Some(primary) = &self.owned else {
            return Err(cluster_error(
                "start a standby",
                "only a throwaway cluster's standby can be started here",
            ));
        };
        let dir = super::claim_dir("c")?;
        let started = start_standby_in(primary, &dir);
        if started.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        started
    }

    /// The port the server listens on (`127.0.0.1`), when this process owns it.
    pub fn port(&self) -> Option<u16> {
        self.owned.as_ref().map(|o| o.port)
    }

    /// Kills the server at once, as a crash or a lost machine would (`pg_ctl stop -m
    /// immediate`): no shutdown checkpoint, connections cut. Its data stays until the cluster is
    /// dropped.
    pub fn crash_server(&mut self) -> Result<(), TestingError> {
        let owned = self.owned.as_mut().ok_or_else(|| {
            cluster_error(
                "crash the server",
                "only a throwaway cluster can be crashed",
            )
        })?;
        if let Some(mut watchdog) = owned.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // SIGQUIT is PostgreSQL's immediate shutdown.
        signal(owned.postmaster.id(), libc::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if owned.postmaster.try_wait().ok().flatten().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = owned.postmaster.kill();
        let _ = owned.postmaster.wait();
        Ok(())
    }
}

fn start_standby_in(
    primary: &OwnedCluster,
    dir: &std::path::Path,
) -> Result<Cluster, TestingError> {
    let runner = &primary.runner;
    runner.give(dir)?;
    let data = dir.join("data");
    let basebackup = primary
        .bin
        .postgres
        .parent()
        .map(|b| b.join("pg_basebackup"))
        .filter(|p| p.is_file())
        .ok_or_else(|| cluster_error("find pg_basebackup", "not beside the postgres binary"))?;
    let out = runner
        .command(&basebackup, dir)
        .arg("-D")
        .arg(&data)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
        ])
        // -R writes primary_conninfo and standby.signal; a fast checkpoint starts it at once.
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| cluster_error(format!("run {}", basebackup.display()), e))?;
    if !out.status.success() {
        return Err(cluster_error(
            "take a base backup with pg_basebackup",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    super::serve(dir, &primary.bin, runner, primary.tls)
}
