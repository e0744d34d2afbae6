//! The pool's metrics reach the application's recorder: gauges of its connections, counters of
//! checkouts, timeouts and reclaims, histograms of acquire waits and lease times.

use std::time::Duration;

use actor_orm::testing::MetricsRecorder;

use crate::models::User;

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
