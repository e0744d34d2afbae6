//! What operators see: a span per statement after OpenTelemetry's database conventions inside
//! the session's span; the pool's metrics through the `metrics` facade; `pool.holders()`, every
//! session holding a connection with what the server says of it.

use std::time::Duration;

use actor_orm::testing::MetricsRecorder;

use crate::models::User;

// A span per statement, after OpenTelemetry's database conventions, inside the session's span.

#[test]
fn each_statement_has_a_span_inside_its_sessions() {
    let (captured, _guard) = crate::capture::capture();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (_db, pool) = crate::pool_with_schema("spans", |b| b).await;
        // A thread's own subscriber competes with the other tests' threads for tracing's cache
        // of which call sites are wanted: the work is done again (up to three times) if a race
        // there lost its spans.
        for attempt in 0..3 {
            let s = pool.named_session("checkout").await.expect("session");
            s.insert(User::new("ann", 30 + attempt))
                .await
                .expect("insert");
            assert_eq!(s.count(User::query()).await.expect("count"), 1);
            s.rollback().await.expect("rollback");
            s.close().await.expect("close");
            if captured
                .spans("db.statement")
                .iter()
                .any(|s| s.fields.contains("db.operation=SELECT"))
            {
                break;
            }
        }
    });
    let spans = captured.spans("db.statement");
    let select = spans
        .iter()
        .find(|s| s.fields.contains("db.operation=SELECT"))
        .unwrap_or_else(|| panic!("a SELECT's span: {spans:?}"));
    assert!(select.fields.contains("db.system=postgresql"), "{select:?}");
    assert!(select.fields.contains("otel.kind=client"), "{select:?}");
    assert!(
        select.fields.contains("db.statement=SELECT COUNT(*) FROM"),
        "{select:?}"
    );
    assert!(select.fields.contains("db.rows=1"), "{select:?}");
    assert!(
        select.parent.contains("checkout"),
        "inside the session's span: {select:?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.fields.contains("db.operation=INSERT")),
        "{spans:?}"
    );
    // Values are never in a span.
    assert!(spans.iter().all(|s| !s.fields.contains("ann")), "{spans:?}");
}

// The pool's metrics reach the application's recorder: gauges of its connections, counters of
// checkouts, timeouts and reclaims, histograms of acquire waits and lease times.

#[tokio::test]
async fn the_pools_metrics_count_what_it_does() {
    let Some(metrics) = MetricsRecorder::install() else {
        eprintln!("skipped: another metrics recorder is installed");
        return;
    };
    // Handles are made when the pool starts: the recorder is in place first.
    let (db, pool) = crate::pool_with_schema("metrics", |b| {
        b.max_size(1).acquire_timeout(Duration::from_millis(200))
    })
    .await;
    let series = |name: &str| format!("{name}{{pool=\"{}\"}}", db.name());
    for _ in 0..5 {
        crate::count_users(&pool).await.expect("count");
    }
    let holder = pool.session().await.expect("session");
    holder.acquire().await.expect("hold");
    let late = pool.session().await.expect("session");
    let err = late.count(User::query()).await.expect_err("times out");
    assert!(matches!(err, actor_orm::Error::PoolTimeout(_)), "{err:?}");
    let killed = pool.session().await.expect("session");
    drop(holder);
    killed.acquire().await.expect("acquire");
    killed.kill();
    crate::settled(&pool).await;
    assert!(metrics.value(&series("actor_orm_pool_checkouts_total")) >= Some(7.0));
    assert_eq!(
        metrics.value(&series("actor_orm_pool_timeouts_total")),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(&series("actor_orm_pool_reclaims_total")),
        Some(1.0)
    );
    assert!(metrics.value(&series("actor_orm_pool_acquire_seconds")) >= Some(7.0));
    assert!(metrics.value(&series("actor_orm_pool_lease_seconds")) >= Some(7.0));
    let open = format!(
        "actor_orm_pool_connections{{pool=\"{}\",state=\"open\"}}",
        db.name()
    );
    assert_eq!(metrics.value(&open), Some(1.0), "{}", metrics.render());
    let text = metrics.render();
    assert!(
        text.contains("actor_orm_pool_acquire_seconds_count{pool="),
        "{text}"
    );
}

// `pool.holders()`: every session holding a connection, with what the server says of it.

#[tokio::test]
async fn holders_name_each_session_its_statement_and_its_open_transaction() {
    let (db, pool) = crate::pool_with_schema("holders", |b| b.max_size(3)).await;
    if crate::direct_only(
        &db,
        "reads backends by pid, which behind a pooler are PgBouncer's",
    ) {
        return;
    }
    let billing = pool.named_session("billing").await.expect("session");
    billing.insert(User::new("ann", 30)).await.expect("insert");
    let sleeper = pool.named_session("report").await.expect("session");
    let running = tokio::spawn(async move {
        let r = sleeper.raw_rows("SELECT pg_sleep(1)", vec![]).await;
        drop(sleeper);
        r
    });
    // Until the report's statement is running.
    let mut holders = Vec::new();
    for _ in 0..100 {
        holders = pool.holders().await.expect("holders");
        if holders.iter().any(|h| h.state.as_deref() == Some("active")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(holders.len(), 2, "{holders:?}");
    let b = holders
        .iter()
        .find(|h| h.session.contains("billing"))
        .expect("billing listed");
    assert_eq!(b.state.as_deref(), Some("idle in transaction"), "{b:?}");
    assert!(
        b.statement.as_deref().is_some_and(|s| s.contains("INSERT")),
        "{b:?}"
    );
    assert!(b.transaction.is_some() && b.backend_pid.is_some(), "{b:?}");
    assert!(
        b.session.contains("observability.rs"),
        "where it was created: {b:?}"
    );
    let r = holders
        .iter()
        .find(|h| h.session.contains("report"))
        .expect("report listed");
    assert!(
        r.statement
            .as_deref()
            .is_some_and(|s| s.contains("pg_sleep")),
        "{r:?}"
    );
    running.await.expect("join").expect("slept");
    billing.rollback().await.expect("rollback");
    billing.close().await.expect("close");
    assert!(
        crate::eventually(Duration::from_secs(3), || async {
            pool.holders().await.is_ok_and(|h| h.is_empty())
        })
        .await
    );
}
