//! `pool.holders()`: every session holding a connection, with what the server says of it.

use std::time::Duration;

use crate::models::User;

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
        b.session.contains("holders.rs"),
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
