//! The throwaway cluster: clean-up after a killed owner, and isolation between tests.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actor_orm::testing::{self, Cluster, process_alive};

/// Set in the environment of a child copy of this test binary that must start a cluster, report
/// it and wait to be killed.
const VICTIM: &str = "ACTOR_ORM_CLUSTER_VICTIM";

/// Not a test of its own: the body a child process runs when `VICTIM` is set.
#[test]
fn cluster_victim_process() {
    if std::env::var_os(VICTIM).is_none() {
        return;
    }
    let cluster = Cluster::start().expect("victim starts a cluster");
    println!(
        "READY {} {} {}",
        cluster.dir().expect("owned").display(),
        cluster.postmaster_pid().expect("owned"),
        cluster.watchdog_pid().unwrap_or(0),
    );
    std::thread::sleep(Duration::from_secs(120));
}

struct Victim {
    dir: PathBuf,
    postmaster: u32,
    watchdog: u32,
    child: std::process::Child,
}

fn start_victim() -> Victim {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "cluster::cluster_victim_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(VICTIM, "1")
        .env_remove(testing::DATABASE_URL)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn victim");
    let stdout = child.stdout.take().expect("piped");
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("READY ").map(|(_, rest)| rest.to_owned()))
        .expect("victim reports its cluster");
    let parts: Vec<&str> = line.split_whitespace().collect();
    Victim {
        dir: PathBuf::from(parts[0]),
        postmaster: parts[1].parse().expect("pid"),
        watchdog: parts[2].parse().expect("pid"),
        child,
    }
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -KILL {pid}");
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn postgres_binaries_present() -> bool {
    testing::find_server_binaries(&testing::SearchPaths::from_machine()).is_ok()
}

/// Every cluster start sweeps dead owners' clusters. The victim tests start the shared cluster
/// first and hold [`crate::cluster_starts`] (as every other cluster start in this binary does),
/// so that no other sweep runs while they look at an orphan.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    testing::shared_cluster().expect("shared cluster");
    crate::cluster_starts()
}

/// The owner is SIGKILLed: its watchdog stops the server and removes the directory.
#[test]
fn sigkilled_owner_is_cleaned_up_by_its_watchdog() {
    if !postgres_binaries_present() {
        // Under DATABASE_URL on a machine without server binaries there is no cluster to clean.
        eprintln!("skipped: no PostgreSQL server binaries on this machine");
        return;
    }
    let _guard = exclusive();
    let mut victim = start_victim();
    assert!(
        process_alive(victim.postmaster),
        "server runs before the kill"
    );
    assert!(victim.dir.exists());
    sigkill(victim.child.id());
    let _ = victim.child.wait();
    assert!(
        wait_until(Duration::from_secs(20), || !process_alive(
            victim.postmaster
        ) && !victim.dir.exists()),
        "server {} or directory {} outlived its killed owner",
        victim.postmaster,
        victim.dir.display()
    );
}

/// Owner and watchdog are both SIGKILLed (as when a whole process group is killed): the server is
/// orphaned, and the next run's sweep stops it and removes its directory.
#[test]
fn next_run_removes_a_cluster_whose_owner_and_watchdog_were_killed() {
    if !postgres_binaries_present() {
        eprintln!("skipped: no PostgreSQL server binaries on this machine");
        return;
    }
    let _guard = exclusive();
    let mut victim = start_victim();
    assert_ne!(victim.watchdog, 0, "the victim has a watchdog");
    sigkill(victim.watchdog);
    sigkill(victim.child.id());
    let _ = victim.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        process_alive(victim.postmaster),
        "the orphaned server still runs: the case is real"
    );
    assert!(victim.dir.exists());

    // What every new cluster does before it starts.
    let removed = testing::sweep_stale_clusters();
    assert!(removed.contains(&victim.dir), "sweep removed {removed:?}");
    assert!(
        wait_until(Duration::from_secs(10), || !process_alive(
            victim.postmaster
        )),
        "server {} still runs after the sweep",
        victim.postmaster
    );
    assert!(!victim.dir.exists());
}

/// Two tests create a table of the same name at the same time: each has its own database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_table_name_in_parallel_tests_does_not_collide() {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let run = |tag: &'static str, barrier: std::sync::Arc<tokio::sync::Barrier>| async move {
        let db = testing::test_database("isolation").await.expect("database");
        let client = db.connect().await.expect("connect");
        barrier.wait().await;
        client
            .batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, who text NOT NULL)")
            .await
            .expect("create in own database");
        client
            .execute("INSERT INTO users VALUES (1, $1)", &[&tag])
            .await
            .expect("insert");
        barrier.wait().await;
        let rows = client
            .query("SELECT who FROM users", &[])
            .await
            .expect("select");
        let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            seen,
            vec![tag.to_owned()],
            "each database sees only its own row"
        );
        db
    };
    let (a, b) = tokio::join!(
        tokio::spawn(run("a", barrier.clone())),
        tokio::spawn(run("b", barrier.clone()))
    );
    let (a, b) = (a.expect("task a"), b.expect("task b"));
    assert_ne!(a.name(), b.name());
}

#[tokio::test]
async fn shared_cluster_answers_and_reports_its_server() {
    let db = testing::test_database("smoke").await.expect("database");
    let client = db.connect().await.expect("connect");
    let row = client
        .query_one("SELECT current_database(), 40 + $1::int", &[&2i32])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), db.name());
    assert_eq!(row.get::<_, i32>(1), 42);
}

/// Set in the environment of a child copy of this test binary that must start a cluster of its
/// own, use it and exit.
const UNPRIVILEGED: &str = "ACTOR_ORM_CLUSTER_UNPRIVILEGED";

/// Not a test of its own: the body a child process runs when `UNPRIVILEGED` is set.
#[tokio::test]
async fn cluster_unprivileged_process() {
    if std::env::var_os(UNPRIVILEGED).is_none() {
        return;
    }
    let cluster = Cluster::start().expect("an unprivileged user starts a cluster");
    let client = cluster.connect_to(None).await.expect("connect");
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("query");
    println!("SERVED-BY {}", row.get::<_, String>(0));
    drop(client);
    let dir = cluster.dir().expect("owned").to_path_buf();
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(&dir).expect("cluster dir").uid();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        owner,
        unsafe { libc::geteuid() },
        "the cluster belongs to the unprivileged user"
    );
    cluster.stop();
    assert!(!dir.exists(), "stop removes the directory");
}

/// As root the server runs as the `postgres` OS user; as anyone else, as that user. When the suite
/// runs as root, this runs the cluster code again as `nobody` to show the second case.
#[test]
fn an_unprivileged_user_gets_a_cluster_too() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !postgres_binaries_present() {
        eprintln!("skipped: needs root to switch to an unprivileged user, and server binaries");
        return;
    }
    use std::os::unix::process::CommandExt as _;
    const NOBODY: u32 = 65534;
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(&exe)
        .args([
            "--exact",
            "cluster::cluster_unprivileged_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED, "1")
        .env_remove(testing::DATABASE_URL)
        .env("HOME", "/tmp")
        .current_dir("/tmp")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test binary as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stdout.is_empty() {
        // The binary itself could not be executed by nobody (a checkout under a private home).
        eprintln!(
            "skipped: nobody cannot run {}: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "as nobody:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SERVED-BY postgres"), "{stdout}");
}
