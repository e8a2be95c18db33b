//! Server-side checks a scenario can end with, once its pool is idle:
//!
//! - [`no_idle_in_transaction`]: none of the test's sessions is left inside
//!   a transaction (Postgres `pg_stat_activity.state` `idle in transaction`,
//!   Redis `CLIENT LIST` `multi` other than -1);
//! - [`discarded_closed`]: the server sees no more of the test's
//!   connections than the pool says it has open (a connection the pool
//!   threw away was closed, not forgotten).
//!
//! Both look at the server (layer_3); at layers 1 and 2 they have nothing to
//! ask and pass.

use std::time::Duration;

use anyhow::ensure;
use parking_lot::Mutex;

use super::{
    bed::{Bed, Killer},
    service::wait_until,
    support::fd_listing,
};

/// The test's sessions the server shows inside a transaction now, one line each.
async fn in_transaction(bed: &Bed) -> anyhow::Result<Vec<String>> {
    Ok(match bed.killer() {
        #[cfg(feature = "postgres")]
        Killer::Pg(admin, name) => {
            use poolstress_fixtures::pool::pg::driver::NoTls;
            let (client, conn) = poolstress_fixtures::service::pg_target_config(admin).connect(NoTls).await?;
            let task = tokio::spawn(conn);
            let rows = client
                .query(
                    "SELECT pid, state, coalesce(left(query, 80), '') FROM pg_stat_activity \
                     WHERE application_name = $1 AND state LIKE 'idle in transaction%' ORDER BY pid",
                    &[name],
                )
                .await?;
            drop(client);
            let _ = task.await;
            rows.iter()
                .map(|r| {
                    format!(
                        "backend {} {} (last statement: {})",
                        r.get::<_, i32>(0),
                        r.get::<_, String>(1),
                        r.get::<_, String>(2)
                    )
                })
                .collect()
        }
        #[cfg(feature = "redis")]
        Killer::Redis(admin, name) => {
            use poolstress_fixtures::pool::redis::driver as redis_rs;
            let mut c = redis_rs::Client::open(admin.url())?.get_multiplexed_async_connection().await?;
            let list: String =
                redis_rs::cmd("CLIENT").arg("LIST").arg("TYPE").arg("normal").query_async(&mut c).await?;
            in_multi(&list, name)
        }
        _ => Vec::new(),
    })
}

/// `CLIENT LIST` lines of clients named `name` that are inside `MULTI`.
#[cfg(feature = "redis")]
fn in_multi(list: &str, name: &str) -> Vec<String> {
    list.lines()
        .filter(|l| {
            let f = |k: &str| l.split(' ').find_map(|x| x.strip_prefix(k));
            f("name=") == Some(name) && f("multi=").is_some_and(|m| m != "-1")
        })
        .map(|l| {
            let f = |k: &str| l.split(' ').find_map(|x| x.strip_prefix(k)).unwrap_or("?");
            format!("client {} in MULTI with {} commands queued (last command {})", f("id="), f("multi="), f("cmd="))
        })
        .collect()
}

/// Hard, with the pool idle (nothing checked out): none of the test's
/// sessions stays inside a transaction for `within` (a session whose client
/// just went away may show one for a moment). Fails naming "idle in
/// transaction", with the sessions the server shows.
pub async fn no_idle_in_transaction(bed: &Bed, within: Duration) -> anyhow::Result<()> {
    let last = Mutex::new(Vec::new());
    let settled = wait_until("no session of the test left inside a transaction", within, || async {
        let now = in_transaction(bed).await?;
        let done = now.is_empty();
        *last.lock() = now;
        Ok(done)
    })
    .await;
    let left = last.into_inner();
    let status = bed.pool.status().map(|s| s.to_string()).unwrap_or_else(|| "not reported".into());
    ensure!(
        settled.is_ok(),
        "{}: idle in transaction: {} of the test's server sessions still inside a transaction {within:?} after \
         the last checkout came back (pool status {status}): {} — a connection went back to the pool without a \
         ROLLBACK / DISCARD, and its next user runs inside someone else's transaction",
        bed.what(),
        left.len(),
        left.join("; ")
    );
    Ok(())
}

/// This process's established TCP connections to `addr` (`127.0.0.1:port`).
pub fn sockets_to(addr: &str) -> usize {
    let tail = format!("-> {addr} (ESTABLISHED)");
    fd_listing().iter().filter(|l| l.ends_with(&tail)).count()
}

/// Hard, with the pool idle: within `within`, the server's count of the
/// test's connections comes down to what the pool reports open (its
/// `status().size`; max_size where it reports none). More means the pool
/// threw connections away without closing them: fails naming "server
/// connections left open", with this process's sockets to the server.
pub async fn discarded_closed(bed: &Bed, discarded: usize, within: Duration) -> anyhow::Result<()> {
    let last = Mutex::new((0u64, 0usize));
    let settled =
        wait_until("the server's count of the test's connections down to the pool's size", within, || async {
            let n = bed.server_count().await?;
            let size = bed.pool.status().and_then(|s| s.size).unwrap_or(bed.cfg.max_size);
            *last.lock() = (n, size);
            Ok(n <= size as u64)
        })
        .await;
    let (n, size) = *last.lock();
    let sockets = match &bed.proxy {
        Some(p) => format!(
            "; this process still holds {} established sockets to the server",
            sockets_to(&p.addr().to_string())
        ),
        None => String::new(),
    };
    ensure!(
        settled.is_ok(),
        "{}: server connections left open: the server still sees {n} of the test's connections {within:?} after the \
         pool discarded {discarded}, while the pool reports {size} open (max_size {}){sockets}: discarded \
         connections were dropped without being closed",
        bed.what(),
        bed.cfg.max_size
    );
    Ok(())
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn clients_in_multi_are_found_by_name() {
        let list = "id=3 addr=x name=t_1 multi=-1 cmd=ping\n\
                    id=4 addr=x name=t_1 multi=1 cmd=incr\n\
                    id=5 addr=x name=t_10 multi=2 cmd=incr\n";
        let found = in_multi(list, "t_1");
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("client 4"), "{found:?}");
    }
}
