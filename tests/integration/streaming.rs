//! Streaming reads: every row once and in order with bounded memory, a stream dropped part-way
//! leaves nothing behind, a stream inside a transaction sees its writes, and a consumer that
//! panics mid-stream is reclaimed like any session death.

use std::time::Duration;

use actor_orm::sea_query::Expr;
use actor_orm::{Error, Filter, Model, StreamOptions, TxState};

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "item")]
struct Item {
    #[orm(primary_key)]
    id: i64,
    label: String,
    n: i64,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "tag")]
struct Tag {
    #[orm(primary_key)]
    id: i64,
    #[orm(references = Item)]
    item_id: i64,
    name: String,
}

/// The same table read with a field that is not an `Option`: row 150,000 holds a NULL there.
#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "item")]
struct NarrowItem {
    #[orm(primary_key)]
    id: i64,
    note: String,
}

const ROWS: i64 = 200_000;

async fn setup(
    hint: &str,
) -> (
    actor_orm::testing::TestDatabase,
    actor_orm::Pool,
    tokio_postgres::Client,
) {
    let db = actor_orm::testing::test_database(hint)
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client
        .batch_execute(&format!(
            "CREATE TABLE item (id bigint PRIMARY KEY, label text NOT NULL, n bigint NOT NULL, note text);
             INSERT INTO item SELECT i, 'item ' || i, i % 100, CASE WHEN i <> 150000 THEN 'x' END
               FROM generate_series(1, {ROWS}) i;
             CREATE TABLE tag (id bigint PRIMARY KEY, item_id bigint NOT NULL REFERENCES item, name text NOT NULL);
             INSERT INTO tag SELECT i, i, 'tag ' || i FROM generate_series(1, 3) i;"
        ))
        .await
        .expect("schema");
    let pool = crate::pool_on(&db, |b| b.max_size(2)).await;
    (db, pool, client)
}

/// Every backend of the test's pool is idle (no statement running, no transaction open).
async fn all_idle(monitor: &tokio_postgres::Client, app: &str) -> bool {
    let backends = crate::backends(monitor, app).await;
    !backends.is_empty() && backends.iter().all(|(_, state)| state == "idle")
}

#[tokio::test]
async fn two_hundred_thousand_rows_arrive_once_and_in_order() {
    let (_db, pool, _client) = setup("stream_all").await;
    let s = pool.session().await.expect("session");
    let mut rows = s
        .stream(Item::query().order_by(Item::ID.asc()))
        .await
        .expect("stream");
    let mut expected = 1;
    while let Some(item) = rows.next().await {
        let item = item.expect("row");
        assert_eq!(item.id, expected, "every row once, in order");
        assert_eq!(item.label, format!("item {expected}"));
        expected += 1;
    }
    assert_eq!(expected - 1, ROWS);
    assert!(rows.next().await.is_none(), "the end stays the end");
    drop(rows);
    // The read left no transaction open, and streamed rows did not enter the identity map.
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);
    let kept = s
        .run(|st, _| Box::pin(async move { Ok(st.identity_map().len()) }))
        .await
        .expect("identity map");
    assert_eq!(kept, 0);
}

#[tokio::test]
async fn a_stream_dropped_after_ten_rows_leaves_nothing_behind() {
    let (db, pool, monitor) = setup("stream_drop").await;
    let s = pool.session().await.expect("session");
    let mut rows = s
        .stream(Item::query().order_by(Item::ID.asc()))
        .await
        .expect("stream");
    for i in 1..=10 {
        assert_eq!(rows.next().await.expect("row").expect("ok").id, i);
    }
    drop(rows);
    // The session's next query answers at once (the bound is a hang detector, not a timing).
    let n = tokio::time::timeout(Duration::from_secs(10), s.count(Item::query()))
        .await
        .expect("the next query is not stuck behind the dropped stream")
        .expect("count");
    assert_eq!(n, ROWS);
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);
    assert!(
        all_idle(&monitor, db.name()).await,
        "the backend is idle: {:?}",
        crate::backends(&monitor, db.name()).await
    );

    // Inside a transaction, dropping a stream part-way leaves the transaction going on.
    s.insert(Tag {
        id: 10,
        item_id: 1,
        name: "kept".into(),
    })
    .await
    .expect("insert");
    let mut rows = s.stream(Item::query()).await.expect("stream");
    rows.next().await.expect("row").expect("ok");
    drop(rows);
    s.insert(Tag {
        id: 11,
        item_id: 2,
        name: "kept too".into(),
    })
    .await
    .expect("insert after the dropped stream");
    s.commit().await.expect("commit");
    let tags: i64 = monitor
        .query_one("SELECT count(*) FROM tag WHERE name LIKE 'kept%'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tags, 2);
    let busy: i64 = monitor
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'",
            &[&db.name()],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(busy, 0);
}

#[tokio::test]
async fn a_stream_inside_a_transaction_sees_its_uncommitted_rows() {
    let (_db, pool, monitor) = setup("stream_tx").await;
    let s = pool.session().await.expect("session");
    // Queued, not yet flushed: the stream flushes first.
    s.add_all((1..=5).map(|i| Tag {
        id: 100 + i,
        item_id: i,
        name: format!("new {i}"),
    }))
    .await
    .expect("add");
    let mut rows = s
        .stream(Tag::query().filter(Tag::ID.gt(100)).order_by(Tag::ID.asc()))
        .await
        .expect("stream");
    let mut names = Vec::new();
    while let Some(tag) = rows.next().await {
        names.push(tag.expect("row").name);
    }
    drop(rows);
    assert_eq!(names, ["new 1", "new 2", "new 3", "new 4", "new 5"]);
    let outside: i64 = monitor
        .query_one("SELECT count(*) FROM tag WHERE id > 100", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(outside, 0, "not committed: only the transaction sees them");
    assert_eq!(s.tx_state().await.expect("state"), TxState::Active);
    s.rollback().await.expect("rollback");
    assert_eq!(
        s.count(Tag::query().filter(Tag::ID.gt(100)))
            .await
            .expect("count"),
        0
    );
}

#[tokio::test]
async fn a_consumer_that_panics_mid_stream_is_reclaimed() {
    crate::quiet_expected_panics();
    let (db, pool, monitor) = setup("stream_panic").await;
    let consumer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let s = pool.session().await.expect("session");
            s.insert(Tag {
                id: 50,
                item_id: 1,
                name: "never committed".into(),
            })
            .await
            .expect("insert");
            let mut rows = s.stream(Item::query()).await.expect("stream");
            let mut seen = 0;
            while let Some(row) = rows.next().await {
                row.expect("row");
                seen += 1;
                if seen == 1_000 {
                    panic!("{} the consumer fails mid-stream", crate::EXPECTED_PANIC);
                }
            }
        })
    };
    assert!(consumer.await.is_err(), "the consumer panicked");
    let stats = crate::settled(&pool).await;
    assert_eq!(stats.in_use, 0, "the connection is back: {stats:?}");
    assert!(
        crate::eventually(Duration::from_secs(5), || all_idle(&monitor, db.name())).await,
        "the backend is idle: {:?}",
        crate::backends(&monitor, db.name()).await
    );
    let kept: i64 = monitor
        .query_one("SELECT count(*) FROM tag WHERE id = 50", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(kept, 0, "nothing uncommitted survived");

    // A session killed mid-stream: the pool reclaims its connection and cancels the statement,
    // and the consumer, which reads the statement's answer itself, gets the cancel's error
    // instead of waiting forever.
    let s = pool.session().await.expect("session");
    let mut rows = s.stream(Item::query()).await.expect("stream");
    rows.next().await.expect("row").expect("ok");
    s.kill();
    let mut ended = None;
    while let Some(row) = tokio::time::timeout(Duration::from_secs(10), rows.next())
        .await
        .expect("the stream ends")
    {
        if let Err(e) = row {
            ended = Some(e);
            break;
        }
    }
    let ended = ended.expect("an error, not the end of the rows");
    assert_eq!(
        ended.as_db_error().map(|d| d.code.as_str()),
        Some("57014"),
        "{ended}"
    );
    let stats = crate::settled(&pool).await;
    assert_eq!(stats.in_use, 0, "{stats:?}");
    let s = pool.session().await.expect("session");
    assert_eq!(s.count(Item::query()).await.expect("count"), ROWS);
}

#[tokio::test]
async fn projections_and_joins_stream_too() {
    let (_db, pool, _client) = setup("stream_shapes").await;
    let s = pool.session().await.expect("session");
    let mut pairs = s
        .stream(
            Item::query()
                .filter(Item::ID.le(1000))
                .order_by(Item::ID.asc())
                .select((Item::ID, Item::N)),
        )
        .await
        .expect("projection");
    let mut seen = 0;
    while let Some(pair) = pairs.next().await {
        let (id, n) = pair.expect("row");
        seen += 1;
        assert_eq!((id, n), (seen, seen % 100));
    }
    drop(pairs);
    assert_eq!(seen, 1000);
    let mut joined = s
        .stream(
            Item::query()
                .left_join::<Tag>(Tag::ITEM_ID.eq_col(Item::ID))
                .filter(Item::ID.le(5))
                .order_by(Item::ID.asc())
                .with::<Tag>(),
        )
        .await
        .expect("join");
    let mut shape = Vec::new();
    while let Some(pair) = joined.next().await {
        let (item, tag) = pair.expect("row");
        shape.push((item.id, tag.map(|t| t.name)));
    }
    assert_eq!(
        shape,
        [
            (1, Some("tag 1".to_owned())),
            (2, Some("tag 2".to_owned())),
            (3, Some("tag 3".to_owned())),
            (4, None),
            (5, None),
        ]
    );
}

/// How many rows arrive before the error that ends the stream, and the error.
async fn until_error<T>(mut rows: actor_orm::QueryStream<T>) -> (usize, Error) {
    let mut good = 0;
    loop {
        match rows.next().await.expect("an error before the end") {
            Ok(_) => good += 1,
            Err(e) => return (good, e),
        }
    }
}

#[tokio::test]
async fn errors_part_way_end_the_stream_with_a_typed_error() {
    let (_db, pool, _client) = setup("stream_errors").await;
    let s = pool.session().await.expect("session");
    // A value that does not decode: the rows before it arrive, then a typed error naming the
    // column. The read was a plain one: the session is idle and goes on.
    let rows = s
        .stream(NarrowItem::query().order_by(NarrowItem::ID.asc()))
        .await
        .expect("stream");
    let (good, err) = until_error(rows).await;
    assert_eq!(good, 149_999);
    assert!(err.to_string().contains("note"), "{err}");
    assert_eq!(s.tx_state().await.expect("state"), TxState::Idle);
    assert_eq!(s.count(Item::query()).await.expect("count"), ROWS);

    // A database error part-way (division by zero at row 150,000) aborts the transaction the
    // stream ran in, as any failed statement does.
    let rows = s
        .stream(
            Item::query()
                .filter(Filter::from_expr(Expr::cust(
                    "1 / (id - 150000) IS NOT NULL",
                )))
                .order_by(Item::ID.asc()),
        )
        .await
        .expect("stream");
    let (good, err) = until_error(rows).await;
    assert_eq!(good, 149_999, "the rows before the error arrive");
    assert_eq!(
        err.as_db_error().map(|d| d.code.as_str()),
        Some("22012"),
        "{err}"
    );
    assert!(matches!(s.commit().await, Err(Error::TransactionAborted)));
    assert_eq!(s.count(Item::query()).await.expect("count"), ROWS);
}

#[tokio::test]
async fn streamed_models_enter_the_identity_map_only_when_asked() {
    let (_db, pool, _client) = setup("stream_remember").await;
    let s = pool.session().await.expect("session");
    let mut rows = s
        .stream_with(
            Item::query().filter(Item::ID.le(50)),
            StreamOptions::new().remember(true),
        )
        .await
        .expect("stream");
    let mut n = 0;
    while let Some(row) = rows.next().await {
        row.expect("row");
        n += 1;
    }
    drop(rows);
    assert_eq!(n, 50);
    let kept = s
        .run(|st, _| Box::pin(async move { Ok(st.identity_map().len()) }))
        .await
        .expect("identity map");
    assert_eq!(kept, 50);
    // A stream of a closed session is a typed error.
    let other = pool.session().await.expect("session");
    let handle = other.clone();
    other.close().await.expect("close");
    assert!(matches!(
        handle.stream(Item::query()).await,
        Err(Error::SessionClosed)
    ));
}
