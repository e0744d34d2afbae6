//! The pool's metrics in Prometheus's text format, served over HTTP. The pool reports through
//! the `metrics` facade to whatever recorder the program installs; here the in-memory one of
//! `actor_orm::testing` (a service would install `metrics-exporter-prometheus` or its own).
//!
//! `cargo run --example metrics`: runs some sessions (one of which times out), prints what a
//! scrape of `/metrics` returns, and with `SERVE=1` keeps serving it on `127.0.0.1:9187`.
//! On `DATABASE_URL` when set, else a throwaway PostgreSQL.

use std::time::Duration;

use actor_orm::prelude::*;
use actor_orm::testing::{Cluster, MetricsRecorder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // First: the pool makes its metric handles when it starts.
    let metrics = MetricsRecorder::install().ok_or("another metrics recorder is installed")?;
    let cluster = tokio::task::spawn_blocking(Cluster::from_env).await??;
    let db = cluster.create_database("metrics_example").await?;
    let pool = Pool::builder(db.config())
        .application_name("shop")
        .max_size(2)
        .acquire_timeout(Duration::from_millis(100))
        .build()
        .await?;
    for _ in 0..20 {
        let s = pool.session().await?;
        s.raw_rows("SELECT 1", vec![]).await?;
        s.close().await?;
    }
    // Both connections held: the third session times out (and is counted).
    let (a, b) = (pool.session().await?, pool.session().await?);
    a.acquire().await?;
    b.acquire().await?;
    let late = pool.session().await?;
    let timed_out = late.acquire().await.is_err();
    drop((a, b, late));
    tokio::time::sleep(Duration::from_millis(50)).await; // the dropped sessions give theirs back
    pool.stats().await?; // sets the gauges now (the pool does every tick)
    println!(
        "a third session timed out: {timed_out}\n\nGET /metrics\n{}",
        metrics.render()
    );

    if std::env::var_os("SERVE").is_some() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:9187").await?;
        println!("serving http://127.0.0.1:9187/metrics (Ctrl-C to stop)");
        loop {
            let (mut socket, _) = listener.accept().await?;
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await?;
            let _ = pool.stats().await;
            let body = metrics.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await?;
        }
    }
    Ok(())
}
