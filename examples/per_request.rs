//! A small HTTP service with one session per request.
//!
//! `cargo run --example per_request` starts the service on a free port, sends it a burst of
//! concurrent requests (more than the pool has connections), prints what came back and the
//! pool's numbers, and exits. `cargo run --example per_request -- --serve` keeps serving:
//! `curl -d '{"name":"ann"}' -H 'content-type: application/json' localhost:PORT/users`.
//!
//! Uses `DATABASE_URL` when set, else a throwaway PostgreSQL of its own.

use std::time::Duration;

use actor_orm::prelude::*;
use actor_orm::testing::Cluster;
use actor_orm::{PoolStats, ddl};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Model, Clone, Debug, Serialize)]
#[orm(table_name = "per_request_users")]
struct User {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    visits: i32,
    /// Optimistic locking: of two requests updating the same row at once, one gets 409.
    #[orm(version)]
    version: i32,
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
}

/// An ORM error as an HTTP response.
struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Stale { .. } => StatusCode::CONFLICT,
            Error::PoolTimeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::InvalidInput(_) | Error::TypeMismatch { .. } => StatusCode::BAD_REQUEST,
            e if e.code() == Some("23505") => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, self.0.to_string()).into_response()
    }
}

/// POST /users: one session for this request, committed, then dropped (connection returned).
async fn create(
    State(pool): State<Pool>,
    Json(new): Json<NewUser>,
) -> Result<Json<User>, ApiError> {
    let session = pool.named_session("POST /users").await?;
    let user = session
        .insert(User {
            id: 0,
            name: new.name,
            visits: 0,
            version: 0,
        })
        .await?;
    session.commit().await?;
    Ok(Json(user))
}

/// GET /users/{id}: counts a visit. Nothing is shared with any other request.
async fn visit(State(pool): State<Pool>, Path(id): Path<i64>) -> Result<Json<User>, ApiError> {
    let session = pool.named_session(format!("GET /users/{id}")).await?;
    let mut user = session.get::<User>(id).await?.ok_or(Error::NotFound {
        table: "per_request_users".into(),
        key: id.to_string(),
    })?;
    user.visits += 1;
    session.save(user.clone()).await?;
    session.commit().await?;
    Ok(Json(user))
}

async fn stats(State(pool): State<Pool>) -> Result<String, ApiError> {
    Ok(format!("{:?}\n", pool.stats().await?))
}

/// A minimal HTTP/1.1 client, so the demo needs nothing else.
async fn request(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.lines().next().unwrap_or("").to_owned();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok(format!("{status} {body}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let cluster = Cluster::from_env()?;
    let pool = Pool::builder(cluster.config())
        .max_size(4)
        .application_name("per_request")
        .build()
        .await?;
    let setup = pool.session().await?;
    setup.raw_execute(ddl::drop_table::<User>(), vec![]).await?;
    setup
        .raw_execute(ddl::create_table::<User>(), vec![])
        .await?;
    setup.commit().await?;
    setup.close().await?;

    let app = Router::new()
        .route("/users", post(create))
        .route("/users/{id}", get(visit))
        .route("/stats", get(stats))
        .with_state(pool.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    println!("listening on http://127.0.0.1:{port}");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    if serve {
        server.await??;
        return Ok(());
    }

    println!(
        "{}",
        request(port, "POST", "/users", r#"{"name":"ann"}"#).await?
    );
    // 32 concurrent requests on a pool of 4: each gets its own session; all succeed.
    let mut burst = Vec::new();
    for _ in 0..32 {
        burst.push(tokio::spawn(request(port, "GET", "/users/1", "")));
    }
    let (mut ok, mut conflict) = (0, 0);
    for r in burst {
        let r = r.await??;
        if r.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else if r.starts_with("HTTP/1.1 409") {
            conflict += 1;
        }
    }
    println!(
        "32 concurrent GET /users/1: {ok} counted a visit, {conflict} lost an optimistic-lock race (409); none failed otherwise"
    );
    println!("{}", request(port, "GET", "/users/1", "").await?);
    println!("{}", request(port, "GET", "/users/2", "").await?);
    println!(
        "{}",
        request(port, "POST", "/users", r#"{"name":"nul\u0000"}"#).await?
    );

    // Sessions end as their handlers return; give the last checkins a moment.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s: PoolStats = pool.stats().await?;
    println!(
        "pool: {} open of max {}, {} in use; {} checkouts, {} checkins, {} reclaimed",
        s.total, s.max_size, s.in_use, s.checkouts, s.checkins, s.reclaims
    );
    server.abort();
    pool.close(Duration::from_secs(5)).await?;
    cluster.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actor_orm::test(models(User))]
    async fn a_created_user_counts_its_visits(pool: Pool) {
        let Json(ann) = create(State(pool.clone()), Json(NewUser { name: "ann".into() }))
            .await
            .map_err(|e| e.0)
            .expect("create");
        for _ in 0..2 {
            let _visited = visit(State(pool.clone()), Path(ann.id))
                .await
                .map_err(|e| e.0)
                .expect("visit");
        }
        let Json(seen) = visit(State(pool.clone()), Path(ann.id))
            .await
            .map_err(|e| e.0)
            .expect("visit");
        assert_eq!(seen.visits, 3);
        let missing = visit(State(pool), Path(ann.id + 1)).await;
        assert!(matches!(missing, Err(ApiError(Error::NotFound { .. }))));
    }
}
