//! A fake connector for the books' unit tests, as deadpool tests its pool with fake managers:
//! each connection is an in-memory pipe to a task that speaks just enough of PostgreSQL's
//! protocol for the pool's own traffic (startup, and simple queries such as `ROLLBACK`,
//! `SELECT 1` and `SHOW default_transaction_isolation`). No server, no network.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use actor_orm_core::{ConnectFuture, Connector, Driver};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
use tokio_postgres::{CancelToken, Client, Config, NoTls};

/// Opens fake connections and counts them.
#[derive(Debug, Default)]
pub(crate) struct FakeConnector {
    pub(crate) opened: AtomicUsize,
    next_pid: AtomicI32,
}

impl FakeConnector {
    pub(crate) fn new() -> Arc<FakeConnector> {
        Arc::new(FakeConnector::default())
    }
}

impl Connector for FakeConnector {
    fn connect<'a>(&'a self, config: &'a Config) -> ConnectFuture<'a, (Client, Driver)> {
        Box::pin(async move {
            self.opened.fetch_add(1, Ordering::SeqCst);
            let pid = self.next_pid.fetch_add(1, Ordering::SeqCst) + 1;
            let (client_end, server_end) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve(server_end, pid));
            let (client, connection) = config.connect_raw(client_end, NoTls).await?;
            let driver: Driver = Box::pin(connection);
            Ok((client, driver))
        })
    }

    fn cancel(&self, _token: CancelToken) -> ConnectFuture<'static, ()> {
        // Nothing runs long on a fake connection: there is nothing to cancel.
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend(
        i32::try_from(body.len() + 4)
            .unwrap_or(i32::MAX)
            .to_be_bytes(),
    );
    out.extend(body);
}

/// One fake backend: startup, then simple queries until the client says goodbye.
async fn serve(mut io: DuplexStream, pid: i32) -> std::io::Result<()> {
    let len = io.read_i32().await?;
    let mut startup = vec![0; usize::try_from(len - 4).unwrap_or(0)];
    io.read_exact(&mut startup).await?;
    let mut out = Vec::new();
    message(&mut out, b'R', &0_i32.to_be_bytes());
    message(
        &mut out,
        b'K',
        &[pid.to_be_bytes(), 7_i32.to_be_bytes()].concat(),
    );
    message(&mut out, b'Z', b"I");
    io.write_all(&out).await?;
    loop {
        let Ok(tag) = io.read_u8().await else {
            return Ok(());
        };
        let len = io.read_i32().await?;
        let mut body = vec![0; usize::try_from(len - 4).unwrap_or(0)];
        io.read_exact(&mut body).await?;
        let mut out = Vec::new();
        match tag {
            b'X' => return Ok(()),
            b'Q' => {
                let sql = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body));
                if sql.starts_with("SHOW") {
                    let mut field = b"setting\0".to_vec();
                    field.extend(0_i32.to_be_bytes()); // table
                    field.extend(0_i16.to_be_bytes()); // column
                    field.extend(25_i32.to_be_bytes()); // text
                    field.extend((-1_i16).to_be_bytes());
                    field.extend((-1_i32).to_be_bytes());
                    field.extend(0_i16.to_be_bytes());
                    message(&mut out, b'T', &[&1_i16.to_be_bytes()[..], &field].concat());
                    let value = b"read committed";
                    let mut row = 1_i16.to_be_bytes().to_vec();
                    row.extend(i32::try_from(value.len()).unwrap_or(0).to_be_bytes());
                    row.extend(value);
                    message(&mut out, b'D', &row);
                }
                let command = sql.split_whitespace().next().unwrap_or("").to_uppercase();
                message(&mut out, b'C', format!("{command}\0").as_bytes());
                message(&mut out, b'Z', b"I");
            }
            // The extended protocol is not spoken here: refuse it at the next Sync.
            b'S' => {
                message(
                    &mut out,
                    b'E',
                    b"SERROR\0C0A000\0Mthe fake server answers simple queries only\0\0",
                );
                message(&mut out, b'Z', b"I");
            }
            _ => {}
        }
        io.write_all(&out).await?;
    }
}
