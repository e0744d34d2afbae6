//! A span per statement, after OpenTelemetry's database conventions, inside the session's span.

use crate::models::User;

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
