//! The zoo caught: each defective zoo pool ([`crate::zoo`]) run through the
//! scenario that must catch its defect, against the real servers
//! (`zoo::<service>::<defect>[zoo-<service>+<defect>]`). The test passes only
//! if the scenario fails and its message names the defect. The correct zoo
//! pools are registered with every suite like any other pool.

use std::sync::Arc;

use anyhow::{bail, ensure};
use futures::future::BoxFuture;
use poolstress_harness::{tag, Registry, TestCtx};

use crate::{
    kit::{NetService, Rig},
    suites::{
        chaos::{cancel::cancel_holding, leak::gradual_exhaustion},
        combo::{self, Combo, Fault, Load, State},
        fairness, hygiene,
    },
    zoo::{Defect, ZooAdapter, ZooDriver},
};

type Body = fn(TestCtx, Rig) -> BoxFuture<'static, anyhow::Result<()>>;

/// Scenarios run on a rig are given one; the fairness scenario takes the adapter.
type Run = Arc<dyn Fn(TestCtx) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

fn combo_body(c: Combo) -> impl Fn(TestCtx, Rig) -> BoxFuture<'static, anyhow::Result<()>> {
    move |ctx, rig| Box::pin(async move { combo::run(&ctx, &rig, c).await.map(|_| ()) })
}

/// The scenario that must catch `defect`, and what its message must say.
fn catcher(defect: Defect) -> (&'static str, Body, &'static str) {
    match defect {
        Defect::LeakOnCancel => ("chaos cancel_holding", |c, r| Box::pin(cancel_holding(c, r)), "lost capacity"),
        Defect::DesyncOnCancel => (
            "combo cut_short while busy",
            |c, r| combo_body(Combo { fault: Fault::CutShort, state: State::Busy, load: Load::At })(c, r),
            "reply desync",
        ),
        Defect::PastMaxAfterFailures => (
            "combo kill while queued, load above",
            |c, r| combo_body(Combo { fault: Fault::Kill, state: State::Queued, load: Load::Above })(c, r),
            "above max_size",
        ),
        Defect::StarvesAfterKills => (
            "combo kill while busy",
            |c, r| combo_body(Combo { fault: Fault::Kill, state: State::Busy, load: Load::At })(c, r),
            "lost capacity",
        ),
        Defect::IgnoresAcquireTimeout => {
            ("chaos gradual_exhaustion", |c, r| Box::pin(gradual_exhaustion(c, r)), "acquire timeout ignored")
        }
        Defect::LifoWaiters | Defect::SlowAcquire => unreachable!("registered with its adapter"),
        Defect::ValidationIgnoresTimeout => (
            "combo silent while idle",
            |c, r| combo_body(Combo { fault: Fault::Silent, state: State::Idle, load: Load::At })(c, r),
            "unbounded acquire",
        ),
        Defect::IdleInTransactionOnCancel => (
            "hygiene cancel_mid_transaction",
            |c, r| Box::pin(hygiene::cancel_mid_transaction(c, r)),
            "idle in transaction",
        ),
        Defect::NoValidation => (
            "hygiene kill_idle_validated",
            |c, r| Box::pin(hygiene::kill_idle_validated(c, r)),
            "dead idle connection handed out",
        ),
        Defect::CreateRacePastMax => {
            ("hygiene cold_burst", |c, r| Box::pin(hygiene::cold_burst(c, r)), "above max_size")
        }
        Defect::NeverReconnects => {
            ("hygiene kill_all_reconnects", |c, r| Box::pin(hygiene::kill_all_reconnects(c, r)), "never reconnected")
        }
        Defect::DropsWithoutClose => {
            ("hygiene discards_close", |c, r| Box::pin(hygiene::discards_close(c, r)), "server connections left open")
        }
    }
}

#[cfg(any(feature = "postgres", feature = "redis"))]
fn register_service<S: ZooDriver + NetService>(r: &mut Registry) {
    for defect in Defect::ALL {
        let adapter = ZooAdapter::<S>::with(defect);
        let name = format!("zoo::{}::{}[{}]", S::NAME, defect.name(), adapter.name());
        let (scenario, run, must): (&str, Run, &str) = if defect == Defect::LifoWaiters {
            let a = adapter.clone();
            let run: Run = Arc::new(move |ctx| Box::pin(fairness::waiters_in_order::<S>(ctx, a.clone())));
            ("fairness waiters_in_order", run, "out of arrival order")
        } else if defect == Defect::SlowAcquire {
            let a = adapter.clone();
            let run: Run =
                Arc::new(move |ctx| Box::pin(hygiene::acquire_paired::<S>(ctx, a.clone(), ZooAdapter::<S>::correct())));
            ("hygiene acquire_paired against the correct zoo pool", run, "slow acquire")
        } else {
            let (scenario, body, must) = catcher(defect);
            let rig = Rig::real(adapter.clone());
            let run: Run = Arc::new(move |ctx| body(ctx, rig.clone()));
            (scenario, run, must)
        };
        // Every catcher acts on its own proxy and its own connections (by
        // name), never on the shared server: it runs beside other tests.
        r.test(name, &[tag::CHAOS, tag::LAYER_3, S::NAME], move |ctx| {
            let (run, adapter) = (run.clone(), adapter.name().to_string());
            async move { must_fail(ctx, &adapter, scenario, run, must).await.map(|_| ()) }
        })
        .exclusive(false);
    }
    // A right diagnosis (issue #14 item 5): a pool whose slots are gone after
    // the kill also stops serving, but it did reconnect; the reconnect
    // scenario must fail without calling that "never reconnected".
    let starves = ZooAdapter::<S>::with(Defect::StarvesAfterKills);
    let rig = Rig::real(starves.clone());
    let adapter = starves.name().to_string();
    r.test(
        format!("zoo::{}::diagnosis::kill_all_reconnects[{adapter}]", S::NAME),
        &[tag::CHAOS, tag::LAYER_3, S::NAME],
        move |ctx| {
            let (rig, adapter) = (rig.clone(), adapter.clone());
            async move {
                let run: Run = Arc::new(move |ctx| Box::pin(hygiene::kill_all_reconnects(ctx, rig.clone())));
                let scenario = "hygiene kill_all_reconnects";
                let said = must_fail(ctx, &adapter, scenario, run, "does not serve again").await?;
                ensure!(
                    !said.contains("never reconnected"),
                    "{scenario} called {adapter}, which reconnects but loses its slots, \"never reconnected\": {said}"
                );
                Ok(())
            }
        },
    )
    .exclusive(false);
}

/// Registers `zoo::<service>::<defect>[...]` for both services.
pub fn register(r: &mut Registry) {
    #[cfg(feature = "postgres")]
    register_service::<poolstress_fixtures::pool::Postgres>(r);
    #[cfg(feature = "redis")]
    register_service::<poolstress_fixtures::pool::Redis>(r);
    let _ = r;
}

/// Runs the scenario: it must fail naming `must`; returns its message.
async fn must_fail(ctx: TestCtx, adapter: &str, scenario: &str, run: Run, must: &str) -> anyhow::Result<String> {
    match ctx.with_violations(run(ctx.clone()).await) {
        Ok(()) => bail!("{scenario} passed against {adapter}, a pool with a deliberate defect: it does not catch it"),
        Err(e) => {
            let msg = format!("{e:#}");
            ctx.note(format!("caught as expected by {scenario}: {msg}"));
            ensure!(
                msg.contains(must),
                "{scenario} failed against {adapter}, but its message does not name \"{must}\": {msg}"
            );
            Ok(msg)
        }
    }
}
