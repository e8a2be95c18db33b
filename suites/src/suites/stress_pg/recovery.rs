//! Recovery: connections killed server side, validation, idle connections,
//! retries, and a real server restart under the same pool object.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context};
use parking_lot::Mutex;
use poolstress_fixtures::{
    fault::{analyse, kill_pg_backends, FaultWindow, Sample, ServerFaults, Victims},
    pool::{Adapter, Knob, Op, Pool, PoolConfig, PoolError, Postgres, Validation},
    service,
};
use poolstress_harness::{
    load::{Limit, OpTimer, Phase},
    metrics::check_at_most,
    Classify, ErrorClass, Metric, TestCtx,
};
use rand::Rng;

use super::{
    check_server_peak, hold, latency_budget, ms, quantile, setup, ungated, wait_until, with_acquire_timeout, Fx,
};
use crate::util::{retry, Retry};

/// Catalogue #6: 30 % of the pool's backends terminated server side (pg_terminate_backend)
/// under load: the failed connections are dropped (each costs at most a
/// couple of failed ops), the pool refills, later ops succeed.
pub async fn recovers_after_connection_failures(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(10, 20);
    let dur = ctx.profile().pick(Duration::from_millis(1500), Duration::from_secs(5));
    let kill_at = dur / 3;
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(max), Duration::from_secs(5))).await?;
    let name = fx.name.clone();
    let mon = fx.monitor(&ctx);

    ctx.step(format!("warming the pool to {max} connections"));
    drop(hold(&fx.pool, max, Duration::from_secs(10)).await?);

    let killer = {
        let (admin, app, c) = (fx.server.admin_target(), fx.app().to_string(), ctx.clone());
        let mut rng = ctx.rng();
        tokio::spawn(async move {
            tokio::time::sleep(kill_at).await; // when the fault starts, not synchronisation
            c.event("fault: terminating 30 % of the pool's backends");
            let fault_at = Instant::now();
            let report = kill_pg_backends(&admin, &app, Victims::Fraction(0.3), &mut rng).await?;
            let heal_at = Instant::now();
            c.event(format!("fault: terminated {} of {} backends", report.killed.len(), report.seen));
            anyhow::Ok((fault_at, heal_at, report))
        })
    };
    ctx.step(format!("{max} workers for {dur:?}, 30 % of the backends killed after {kill_at:?}"));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let (pool, s) = (fx.pool.clone(), samples.clone());
    let stats = Phase::closed("load", max, Limit::new(10_000_000, dur))
        .grace(Duration::from_secs(5))
        .timeline_bucket(Duration::from_millis(250))
        .run(&ctx, move |mut t: OpTimer| {
            let (pool, s) = (pool.clone(), s.clone());
            async move {
                let r = async {
                    let mut c = pool.acquire().await?;
                    t.acquired();
                    c.run(&Op::Slow(Duration::from_millis(5))).await?;
                    Ok::<_, PoolError>(t)
                }
                .await;
                s.lock().push(Sample::new(Instant::now(), r.is_ok()));
                r
            }
        })
        .await?;
    let load_end = Instant::now();
    stats.record_into(&ctx, "load");
    ctx.note(stats.summary());
    let (fault_at, heal_at, report) = killer.await.context("the killer task panicked")??;
    let killed = report.killed.len() as u64;
    ctx.note(format!("killed {killed} of {} backends: {:?}", report.seen, report.killed));
    ctx.record(Metric::lower("backends_killed", killed as f64));
    ensure!(
        killed > 0,
        "{name}: the fault killed none of the {} backends it saw: the scenario did not apply",
        report.seen
    );

    ensure!(stats.cancelled == 0, "{name}: {} ops hung past the grace period after the kill", stats.cancelled);
    stats.check_accounted(None)?;
    let samples = samples.lock().clone();
    let r = analyse(&samples, &FaultWindow::new(fault_at, heal_at).until(load_end).bucket(Duration::from_millis(100)));
    r.record(&ctx, "kill_");
    let errors = stats.errors.total();
    let first = stats.error_samples.first().map(|e| format!("; first: {}", e.message)).unwrap_or_default();
    ensure!(
        errors <= 3 * killed,
        "{name}: {errors} ops failed after {killed} backends were killed server side ({}): more than 3 per killed connection — \
         killed connections were handed out again instead of being dropped{first}",
        stats.errors
    );
    stats.check_only(&[ErrorClass::ConnectionBroken])?;
    ensure!(
        r.first_success_after_heal.is_some(),
        "{name}: nothing succeeded after {killed} backends were killed: {r:?}"
    );
    let recovered = r.error_rate_recovered_after.ok_or_else(|| {
        anyhow!(
            "{name}: the error rate never went back under 1 % after {killed} backends were killed ({} ops failed after the kill): \
             killed connections kept being handed out{first}",
            r.errors_after_heal
        )
    })?;
    check_at_most(
        "recovery",
        ms(recovered),
        3000.0,
        "ms",
        "from the kill to an error rate under 1 % (100 ms buckets)",
    )?;
    let tail_from = load_end - dur / 4;
    let late_failures = samples.iter().filter(|s| s.at >= tail_from && !s.ok).count();
    ensure!(
        late_failures == 0,
        "{name}: {late_failures} ops failed in the last quarter of the run, long after the kill{first}"
    );

    ctx.step("the pool refills: every connection works");
    let held = hold(&fx.pool, max, Duration::from_secs(10))
        .await
        .with_context(|| format!("{name}: the pool could not serve {max} working connections after the kill"))?;
    let n = fx.count().await?;
    ensure!(
        n == max as u64,
        "{name}: {max} checkouts held after the kill but the server sees {n} of the test's connections"
    );
    drop(held);
    check_server_peak(&ctx, &fx, &mon, max as u64, "during the kills and the refill").await
}

/// Times `n` acquisitions of the pool's idle connection (max_size 1), a
/// ping on each; returns the acquire times, ms.
async fn acquire_times(pool: &Pool, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut c = pool.acquire().await?;
        v.push(ms(t.elapsed()));
        c.run(&Op::Ping).await?;
    }
    Ok(v)
}

/// Catalogue #7: 50 acquisitions with validation (a round trip per checkout): the
/// overhead against no validation is measured (budget 50 ms p95), and the
/// validation really catches a connection killed while idle.
pub async fn validation_on_acquire(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let n = 50;
    let fx = setup(&ctx, &a, PoolConfig::new(1).validation(Validation::Ping)).await?;
    let name = fx.name.clone();
    fx.pool.run(&Op::Ping).await?; // the connection exists: every timed acquire validates it

    ctx.step(format!("{n} acquisitions with validation=ping"));
    let mut with = acquire_times(&fx.pool, n).await?;
    let p95 = quantile(&mut with, 0.95);
    ctx.record(Metric::lower("validated_acquire_p50_ms", quantile(&mut with, 0.5)));
    ctx.record(Metric::lower("validated_acquire_max_ms", quantile(&mut with, 1.0)));
    if fx.caps.supports(Knob::ValidateNever) {
        ctx.step(format!("{n} acquisitions without validation"));
        let plain = a.build(&PoolConfig::new(1).validation(Validation::Never), &fx.target).await?;
        plain.run(&Op::Ping).await?;
        let mut without = acquire_times(&plain, n).await?;
        let p95_without = quantile(&mut without, 0.95);
        ctx.record(Metric::lower("unvalidated_acquire_p95_ms", p95_without));
        ctx.record(Metric::lower("validation_overhead_p95_ms", p95 - p95_without));
        ctx.note(format!("acquire p95 {p95:.3} ms with validation, {p95_without:.3} ms without"));
    }
    latency_budget(&ctx, "validated_acquire_p95_ms", p95, 50.0, ungated(&fx), &format!("over {n} acquisitions"))?;

    ctx.step("validation catches a connection killed while idle");
    let pid = fx.pool.run(&Op::WhoAmI).await?.id().context("who_am_i returned no id")?;
    if fx.caps.supports(Knob::StatusIdle) {
        wait_until(&format!("{name}: the connection to be idle"), Duration::from_secs(5), || async {
            Ok(fx.pool.status().and_then(|s| s.idle) == Some(1))
        })
        .await?;
    }
    (fx.kill)(pid).await.with_context(|| format!("killing backend {pid}"))?;
    ctx.event(format!("killed idle backend {pid}"));
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = fx.pool.acquire().await?;
        c.run(&Op::WhoAmI).await
    })
    .await;
    match after {
        Err(_) => bail!("{name}: with validation=ping, acquiring after idle backend {pid} was killed hung for 10 s"),
        Ok(Err(e)) => {
            bail!("{name}: with validation=ping the pool handed out backend {pid}, killed server side while idle: {e}")
        }
        Ok(Ok(out)) => ensure!(out.id() != Some(pid), "{name}: backend {pid} still answers after it was killed"),
    }
    Ok(())
}

/// Catalogue #8: Connections idle for a while (2 s) are still usable, and one killed
/// server side while idle is replaced transparently: the first operation on
/// every later checkout works.
pub async fn stale_connection_after_idle(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let idle = ctx.profile().pick(Duration::from_millis(400), Duration::from_secs(2));
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(2), Duration::from_secs(5))).await?;
    let name = fx.name.clone();

    ctx.step("two connections, used and released");
    let mut held = hold(&fx.pool, 2, Duration::from_secs(10)).await?;
    let mut pids = Vec::new();
    for c in &mut held {
        pids.push(c.run(&Op::WhoAmI).await?.id().context("who_am_i returned no id")?);
    }
    drop(held);
    if fx.caps.supports(Knob::StatusIdle) {
        wait_until(&format!("{name}: both connections idle"), Duration::from_secs(5), || async {
            Ok(fx.pool.status().and_then(|s| s.idle) == Some(2))
        })
        .await?;
    }
    ctx.step(format!("idle for {idle:?}"));
    tokio::time::sleep(idle).await; // the idle time is what is tested
    let (kept, killed) = (pids[0], pids[1]);
    ctx.step(format!("killing idle backend {killed}"));
    (fx.kill)(killed).await.with_context(|| format!("killing backend {killed}"))?;
    ctx.event(format!("killed idle backend {killed} after {idle:?} idle"));

    ctx.step("two checkouts after the idle time and the kill");
    let got = futures::future::join_all((0..2).map(|_| async {
        let mut c = fx.pool.acquire().await?;
        c.run(&Op::Ping).await?;
        let id = c.run(&Op::WhoAmI).await?.id();
        Ok::<_, PoolError>((c, id))
    }));
    let got = tokio::time::timeout(Duration::from_secs(10), got)
        .await
        .map_err(|_| anyhow!("{name}: two checkouts after {idle:?} idle hung for 10 s"))?;
    let mut ids = Vec::new();
    let mut checkouts = Vec::new();
    for r in got {
        match r {
            Ok((c, id)) => {
                ids.push(id);
                checkouts.push(c);
            }
            Err(e) => bail!(
                "{name}: after {idle:?} idle, a checkout failed on its first operation ({}; backend {killed} had been killed \
                 server side while idle): {e} — the pool handed out the killed connection",
                e.class()
            ),
        }
    }
    ensure!(
        !ids.contains(&Some(killed)),
        "{name}: backend {killed} still answers after it was killed: the kill did not take"
    );
    let reused = ids.contains(&Some(kept));
    ctx.record(Metric::higher("idle_connection_reused", if reused { 1.0 } else { 0.0 }));
    ctx.note(format!(
        "after {idle:?} idle: backend {kept} {}; killed backend {killed} replaced by {:?}",
        if reused { "reused" } else { "replaced" },
        ids.iter().flatten().filter(|i| **i != kept).collect::<Vec<_>>()
    ));
    Ok(())
}

/// What the retried operations saw.
#[derive(Default)]
struct RetryStats {
    attempts: AtomicUsize,
    kills: AtomicUsize,
    /// Attempts whose connection was dead before this attempt killed anything.
    dead_on_arrival: AtomicUsize,
    /// A kill that failed or did not interrupt the operation (the fault did not apply).
    fault_failures: Mutex<Vec<String>>,
}

/// One attempt: acquire, learn the backend, maybe kill it mid-query (the
/// schedule says), then the operation.
async fn attempt(pool: &Pool, fx_kill: &super::Killer, schedule: &[bool], st: &RetryStats) -> Result<(), PoolError> {
    let k = st.attempts.fetch_add(1, Ordering::SeqCst);
    let mut c = pool.acquire().await?;
    let pid = match c.run(&Op::WhoAmI).await {
        Ok(out) => out.id().unwrap_or_default(),
        Err(e) => {
            st.dead_on_arrival.fetch_add(1, Ordering::SeqCst);
            return Err(e);
        }
    };
    if schedule.get(k).copied().unwrap_or(false) {
        st.kills.fetch_add(1, Ordering::SeqCst);
        let slow = Op::Slow(Duration::from_secs(5));
        let (op, killed) = tokio::join!(c.run(&slow), fx_kill(pid));
        match (op, killed) {
            (Err(e), Ok(())) => return Err(e),
            (_, Err(e)) => st.fault_failures.lock().push(format!("killing backend {pid}: {e:#}")),
            (Ok(_), Ok(())) => {
                st.fault_failures.lock().push(format!("backend {pid} was killed but its query completed"))
            }
        }
    }
    c.run(&Op::Ping).await?;
    Ok(())
}

/// Catalogue #9: With transient connection failures (a third of the attempts have
/// their backend terminated mid-query), an operation with up to 3 tries
/// ([`crate::util::retry`]) succeeds: at least 25 of 30.
pub async fn reconnects_with_retries(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let ops = 30;
    let p_kill = 0.3;
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(2), Duration::from_secs(2))).await?;
    let name = fx.name.clone();
    let mut rng = ctx.rng();
    let schedule: Vec<bool> = (0..ops * 3).map(|_| rng.random_bool(p_kill)).collect();
    let st = RetryStats::default();
    let policy = Retry::transient(3);

    ctx.step(format!("{ops} operations with up to 3 tries, backends killed mid-query"));
    let (mut ok, mut retried_ok) = (0, 0);
    let mut failures: BTreeMap<ErrorClass, (u64, String)> = BTreeMap::new();
    for _ in 0..ops {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            retry(&policy, || attempt(&fx.pool, &fx.kill, &schedule, &st)),
        )
        .await
        .map_err(|_| anyhow!("{name}: an operation with 3 tries hung for 30 s"))?;
        match out.result {
            Ok(()) => {
                ok += 1;
                retried_ok += usize::from(out.tries > 1);
            }
            Err(e) => {
                let f = failures.entry(e.class()).or_insert((0, e.to_string()));
                f.0 += 1;
            }
        }
    }
    let faults = st.fault_failures.lock().clone();
    ensure!(faults.is_empty(), "{name}: the fault did not apply: {}", faults.join("; "));
    let (attempts, kills, doa) = (
        st.attempts.load(Ordering::SeqCst),
        st.kills.load(Ordering::SeqCst),
        st.dead_on_arrival.load(Ordering::SeqCst),
    );
    let failed: u64 = failures.values().map(|f| f.0).sum();
    ctx.record(Metric::higher("ops_ok", ok as f64));
    ctx.record(Metric::higher("ops_ok_after_retry", retried_ok as f64));
    ctx.record(Metric::lower("attempts", attempts as f64));
    ctx.record(Metric::lower("dead_on_arrival", doa as f64));
    ctx.note(format!(
        "{ok} of {ops} ops succeeded ({retried_ok} after a retry); {attempts} attempts, {kills} backends killed mid-query, \
         {doa} attempts got a connection that was already dead"
    ));
    ensure!(ok + failed as usize == ops, "{name}: {ok} ok + {failed} failed != {ops} operations");
    ensure!(kills > 0, "{name}: no backend was killed in {attempts} attempts: the fault did not apply");
    let first =
        failures.iter().next().map(|(c, (n, m))| format!("; {n} ended with [{c}], e.g. {m}")).unwrap_or_default();
    ensure!(
        ok >= 25,
        "{name}: only {ok} of {ops} operations succeeded with up to 3 tries while {kills} backends were killed mid-query; \
         {doa} attempts were handed a connection that was already dead (killed earlier and handed out again){first}"
    );
    if let Some((c, (n, m))) = failures.iter().find(|(c, _)| **c != ErrorClass::ConnectionBroken) {
        bail!("{name}: {n} operations ended with [{c}], not connection_broken, after backends were killed: {m}");
    }
    Ok(())
}

/// The postmaster's start time (changes with every real restart).
async fn postmaster_started(fx: &Fx) -> anyhow::Result<String> {
    let (client, conn) = service::pg_target_config(&fx.server.admin_target()).connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let row = client.query_one("SELECT pg_postmaster_start_time()::text", &[]).await?;
    drop(client);
    let _ = task.await;
    Ok(row.get(0))
}

/// The longest the pool may take to serve again after the restart returned.
const RESTART_RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// The catalogue's recovery-time budget (checked with slack).
const RESTART_RECOVERY_BUDGET_MS: f64 = 2000.0;

/// Catalogue #10: The real server is restarted under load; the SAME pool object (never
/// rebuilt) serves again within the recovery-time budget, with only the
/// errors a restart explains.
pub async fn recovers_after_server_restart(ctx: TestCtx, a: Adapter<Postgres>) -> anyhow::Result<()> {
    let max = ctx.profile().pick(4, 8);
    let workers = 4;
    let observe = ctx.profile().pick(Duration::from_millis(500), Duration::from_secs(2));
    let fx = setup(&ctx, &a, with_acquire_timeout(&a, PoolConfig::new(max), Duration::from_secs(2))).await?;
    let name = fx.name.clone();
    let pid_before = fx.pool.run(&Op::WhoAmI).await?.id().context("who_am_i returned no id")?;
    let started_before = postmaster_started(&fx).await?;

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let classes: Arc<Mutex<BTreeMap<ErrorClass, (u64, String)>>> = Arc::default();
    let hangs = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (pool, samples, classes, hangs, stop) =
            (fx.pool.clone(), samples.clone(), classes.clone(), hangs.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = tokio::time::timeout(Duration::from_secs(3), pool.run(&Op::Ping)).await;
                samples.lock().push(Sample::new(Instant::now(), matches!(r, Ok(Ok(_)))));
                match r {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        classes.lock().entry(e.class()).or_insert((0, e.to_string())).0 += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await; // a client's backoff
                    }
                    Err(_) => {
                        hangs.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    ctx.step("load before the restart");
    wait_until("20 operations before the restart", Duration::from_secs(10), || async {
        Ok(samples.lock().iter().filter(|s| s.ok).count() >= 20)
    })
    .await?;

    ctx.step("restarting the real server under load");
    let fault_at = Instant::now();
    ServerFaults::for_test(&ctx, fx.server.clone()).restart().await.map_err(|e| e.into_test_error(&ctx))?;
    let heal_at = Instant::now();
    ctx.record(Metric::lower("restart_took_ms", ms(heal_at - fault_at)));

    ctx.step("waiting for the same pool to serve again");
    let recovered = wait_until("a success after the restart", RESTART_RECOVERY_LIMIT, || async {
        Ok(samples.lock().iter().any(|s| s.ok && s.at >= heal_at))
    })
    .await;
    if recovered.is_ok() {
        tokio::time::sleep(observe).await; // the observation window after recovery
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.context("a load worker panicked")?;
    }
    let until = Instant::now();
    let samples = samples.lock().clone();
    let classes = classes.lock().clone();
    let r = analyse(&samples, &FaultWindow::new(fault_at, heal_at).until(until).bucket(Duration::from_millis(100)));
    r.record(&ctx, "restart_");
    let errors: u64 = classes.values().map(|c| c.0).sum();
    let first = classes.iter().next().map(|(c, (_, m))| format!("; first [{c}]: {m}")).unwrap_or_default();
    ctx.note(format!(
        "{} ops, {errors} failed ({:?}), {} hung; {r:?}",
        samples.len(),
        classes.iter().map(|(c, (n, _))| format!("{c} {n}")).collect::<Vec<_>>(),
        hangs.load(Ordering::SeqCst)
    ));

    let before = samples.iter().filter(|s| s.at < fault_at && !s.ok).count();
    ensure!(before == 0, "{name}: {before} operations failed before the restart{first}");
    recovered.map_err(|_| {
        anyhow!("{name}: the same pool served nothing within {RESTART_RECOVERY_LIMIT:?} of the server's restart{first}")
    })?;
    let hung = hangs.load(Ordering::SeqCst);
    ensure!(hung == 0, "{name}: {hung} operations hung for 3 s around the restart");
    let allowed = [ErrorClass::ConnectionBroken, ErrorClass::ConnectRefused, ErrorClass::AcquireTimeout];
    if let Some((c, (n, m))) = classes.iter().find(|(c, _)| !allowed.contains(c)) {
        bail!("{name}: {n} operations failed with [{c}] around the restart (a restart explains connection_broken, connect_refused, acquire_timeout): {m}");
    }
    let rec = r.error_rate_recovered_after.ok_or_else(|| {
        anyhow!(
            "{name}: the error rate never went back under 1 % after the restart ({} failed after it){first}",
            r.errors_after_heal
        )
    })?;
    latency_budget(
        &ctx,
        "restart_recovery_budget_ms",
        ms(rec),
        RESTART_RECOVERY_BUDGET_MS,
        None,
        "from the restart's end to an error rate under 1 % (100 ms buckets)",
    )?;

    ctx.step("every connection of the same pool works after the restart");
    let mut held = hold(&fx.pool, max, Duration::from_secs(10)).await.with_context(|| {
        format!("{name}: after the restart the same pool could not hand out {max} working connections")
    })?;
    let pid_after = held[0].run(&Op::WhoAmI).await?.id();
    drop(held);
    let started_after = postmaster_started(&fx).await?;
    ensure!(
        started_after != started_before,
        "postgres' start time did not change ({started_before}): no restart happened"
    );
    ensure!(pid_after != Some(pid_before), "{name}: backend {pid_before} answered after a restart");
    ctx.note(format!("postmaster {started_before} -> {started_after}; backend {pid_before} -> {pid_after:?}; one pool object throughout"));
    Ok(())
}
