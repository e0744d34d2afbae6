//! TLS against a real server: a throwaway cluster started with `ssl=on`, its CA and server
//! certificate (for 127.0.0.1 and localhost) made at run time with rcgen, never written
//! anywhere but the cluster's own directory. Plaintext cases run against the shared cluster,
//! which has TLS off.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actor_orm::testing::{self, Cluster, ServerTls};
use actor_orm::{Error, Pool, PoolBuilder, SslMode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::models::{User, create_schema};

/// The TLS cluster of this test binary, and the CA files a client may trust.
struct TlsServer {
    cluster: Cluster,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
}

fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// Starts (once) a cluster with TLS on. `None` when `DATABASE_URL` names the server and this
/// machine has no PostgreSQL binaries to start a TLS one with.
fn tls_server() -> Option<&'static TlsServer> {
    static SERVER: OnceLock<Option<TlsServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let ca = certificate_authority("actor-orm test CA");
            let other = certificate_authority("some other CA");
            let key = KeyPair::generate().expect("server key");
            let mut params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .expect("server params");
            params
                .distinguished_name
                .push(DnType::CommonName, "actor-orm test server");
            let cert = params.signed_by(&key, &ca).expect("server certificate");
            let tls = ServerTls {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            };
            let started = {
                let _no_sweep_under_a_watching_test = crate::cluster_starts();
                Cluster::start_with_tls(&tls)
            };
            let cluster = match started {
                Ok(c) => c,
                Err(e) if std::env::var("DATABASE_URL").is_ok() => {
                    eprintln!("TLS tests skipped: no local PostgreSQL to start with TLS ({e})");
                    return None;
                }
                Err(e) => panic!("start a TLS cluster: {e}"),
            };
            let dir = cluster.dir().expect("a throwaway cluster").to_path_buf();
            let (ca_path, other_path) = (dir.join("client-ca.pem"), dir.join("other-ca.pem"));
            std::fs::write(&ca_path, ca.pem()).expect("write the CA");
            std::fs::write(&other_path, other.pem()).expect("write the other CA");
            Some(TlsServer {
                cluster,
                ca: ca_path,
                other_ca: other_path,
            })
        })
        .as_ref()
}

/// A database of its own on the TLS cluster and its URL (without TLS settings).
async fn tls_database(hint: &str) -> Option<(&'static TlsServer, testing::TestDatabase, String)> {
    let server = tokio::task::spawn_blocking(tls_server)
        .await
        .expect("start")?;
    let db = server
        .cluster
        .create_database(hint)
        .await
        .expect("database");
    let url = server.cluster.url_for(db.name()).expect("url");
    Some((server, db, url))
}

async fn tls_pool(url: &str, configure: impl FnOnce(PoolBuilder) -> PoolBuilder) -> Pool {
    configure(
        Pool::builder(url)
            .max_size(2)
            .acquire_timeout(Duration::from_secs(5)),
    )
    .build()
    .await
    .expect("pool")
}

/// Whether the session's backend is encrypted, as the server sees it.
async fn encrypted(pool: &Pool) -> actor_orm::Result<bool> {
    let s = pool.session().await?;
    let rows = s
        .raw_rows(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            vec![],
        )
        .await?;
    s.close().await?;
    Ok(rows[0].get(0))
}

#[tokio::test]
async fn verify_full_encrypts_and_checks_the_certificate_and_host() {
    let Some((server, _db, url)) = tls_database("tls_full").await else {
        return;
    };
    let ca = server.ca.display();
    let pool = tls_pool(
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        |b| b,
    )
    .await;
    assert!(encrypted(&pool).await.expect("verify-full"));
    assert!(format!("{:?}", pool.config()).contains("verify-full"));

    // The same through the builder.
    let pool = tls_pool(&url, |b| {
        b.ssl_mode(SslMode::VerifyFull).ssl_root_cert(&server.ca)
    })
    .await;
    assert!(encrypted(&pool).await.expect("builder"));
}

#[tokio::test]
async fn an_untrusted_certificate_or_a_wrong_host_is_a_typed_error_at_once() {
    let Some((server, _db, url)) = tls_database("tls_wrong").await else {
        return;
    };
    // A CA that did not sign the server's certificate.
    let other = server.other_ca.display();
    let pool = tls_pool(
        &format!("{url}?sslmode=verify-full&sslrootcert={other}"),
        |b| b,
    )
    .await;
    let started = Instant::now();
    let err = encrypted(&pool).await.expect_err("untrusted");
    let Error::Connect { reason, .. } = &err else {
        panic!("expected a connect error, got {err:?}");
    };
    assert!(
        reason.contains("TLS handshake") && reason.contains("UnknownIssuer"),
        "{reason}"
    );
    // The chain goes down to rustls's own error.
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    assert!(
        chain.iter().any(|s| s.contains("UnknownIssuer")),
        "{chain:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for acquire_timeout"
    );
    assert_eq!(pool.stats().await.expect("stats").total, 0);

    // The right CA, but a certificate for 127.0.0.1 and localhost reached as `wrong.example`.
    let ca = server.ca.display();
    let wrong_host = url.replacen("127.0.0.1", "wrong.example", 1);
    let hostaddr = format!("{wrong_host}?hostaddr=127.0.0.1&sslrootcert={ca}");
    let pool = tls_pool(&format!("{hostaddr}&sslmode=verify-full"), |b| b).await;
    let err = encrypted(&pool).await.expect_err("wrong host name");
    assert!(
        matches!(&err, Error::Connect { reason, .. } if reason.contains("not valid for name \"wrong.example\"")),
        "{err:?}"
    );
    // verify-ca checks the CA only: the same connection is accepted.
    let pool = tls_pool(&format!("{hostaddr}&sslmode=verify-ca"), |b| b).await;
    assert!(encrypted(&pool).await.expect("verify-ca"));
}

#[tokio::test]
async fn require_never_falls_back_and_prefer_does() {
    // The shared cluster has TLS off.
    let db = testing::test_database("tls_plain").await.expect("database");
    let url = testing::shared_cluster()
        .expect("cluster")
        .url_for(db.name());
    let Some(url) = url else {
        return; // DATABASE_URL: its TLS settings are not ours to know.
    };
    let pool = tls_pool(&format!("{url}?sslmode=require"), |b| b).await;
    let err = encrypted(&pool).await.expect_err("no TLS on the server");
    assert!(
        matches!(&err, Error::Connect { reason, .. } if reason.contains("does not support TLS")),
        "{err:?}"
    );
    let pool = tls_pool(&format!("{url}?sslmode=prefer"), |b| b).await;
    assert!(!encrypted(&pool).await.expect("prefer falls back"));
    let pool = tls_pool(&url, |b| b.ssl_mode(SslMode::Disable)).await;
    assert!(!encrypted(&pool).await.expect("disable"));

    // prefer and require against a server that offers TLS: encrypted.
    let Some((_server, _db, url)) = tls_database("tls_prefer").await else {
        return;
    };
    for mode in ["prefer", "require"] {
        let pool = tls_pool(&format!("{url}?sslmode={mode}"), |b| b).await;
        assert!(encrypted(&pool).await.expect(mode), "{mode}");
    }
}

#[tokio::test]
async fn a_dropped_statement_is_cancelled_over_tls() {
    let Some((server, db, url)) = tls_database("tls_cancel").await else {
        return;
    };
    let ca = server.ca.display();
    let pool = tls_pool(
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        |b| b.application_name("tls_cancel"),
    )
    .await;
    let s = pool.session().await.expect("session");
    let slow = tokio::time::timeout(
        Duration::from_millis(300),
        s.raw_rows("SELECT pg_sleep(5)", vec![]),
    )
    .await;
    assert!(slow.is_err(), "pg_sleep(5) finished within 300 ms");
    // The cancel went over TLS (the server takes no plaintext cancel on a TLS-only pool's
    // behalf: the pool never opens a plaintext socket): the backend stops sleeping at once.
    let monitor = db.connect().await.expect("monitor");
    let stopped = crate::eventually(Duration::from_secs(3), || async {
        monitor
            .query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'tls_cancel' AND query LIKE '%pg_sleep%' AND state = 'active'",
                &[],
            )
            .await
            .expect("activity")
            .is_empty()
    })
    .await;
    assert!(stopped, "pg_sleep was not cancelled");
    s.rollback().await.expect("rollback");
    let started = Instant::now();
    assert_eq!(
        s.raw_rows("SELECT 1", vec![]).await.expect("next")[0].get::<_, i32>(0),
        1
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_session_that_panics_is_reclaimed_and_reset_over_tls() {
    crate::quiet_expected_panics();
    let Some((server, db, url)) = tls_database("tls_reclaim").await else {
        return;
    };
    let conn = actor_orm::Connection::new(
        db.connect().await.expect("connect"),
        actor_orm::StatementMode::Prepared,
    );
    create_schema(&conn).await;
    let ca = server.ca.display();
    let pool = tls_pool(
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        |b| b.max_size(1),
    )
    .await;
    let s = pool.session().await.expect("session");
    s.insert(User::new("uncommitted", 1)).await.expect("insert");
    let panicked: actor_orm::Result<()> = s
        .run(|_, _| {
            Box::pin(async { panic!("{} a session panics over TLS", crate::EXPECTED_PANIC) })
        })
        .await;
    assert!(panicked.is_err());
    let stats = crate::settled(&pool).await;
    assert_eq!((stats.reclaims, stats.discards), (1, 0), "{stats:?}");
    // The same (only) connection, reset over TLS: still encrypted, the insert rolled back.
    assert!(encrypted(&pool).await.expect("encrypted"));
    assert_eq!(crate::count_users(&pool).await.expect("count"), 0);
}
