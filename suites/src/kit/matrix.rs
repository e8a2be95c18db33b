//! One scenario type and one matrix registration for every suite: a table
//! of scenarios registered once per pool as `<prefix>::<scenario>[<pool>]`,
//! skipped with the pool's reason where it lacks a knob, marked ignored
//! where a real finding is kept.

use futures::future::BoxFuture;
use poolstress_fixtures::pool::{Adapter, Capabilities, Knob, Service};
use poolstress_harness::{Registry, TestCtx, TestDef};

/// A scenario body, generic over the service.
pub type Body<S> = fn(TestCtx, Adapter<S>) -> BoxFuture<'static, anyhow::Result<()>>;

/// A skip decided from the adapter (the reason names it), or `None` to run.
pub type SkipIf<S> = fn(&Adapter<S>) -> Option<String>;

/// A known finding in a real pool: `(scenario, pool, reason with the pool's
/// version)`. The test stays registered, fails when run, and is marked
/// ignored with the reason (`--include-ignored` runs it). Listed in
/// docs/findings.md.
pub type Finding = (&'static str, &'static str, &'static str);

/// What a scenario needs of a pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs {
    /// Every one of these knobs.
    pub all: &'static [Knob],
    /// At least one of these knobs (empty: no such need).
    pub one_of: &'static [Knob],
}

impl Needs {
    /// Needs every knob of `all`.
    pub const fn all(all: &'static [Knob]) -> Self {
        Needs { all, one_of: &[] }
    }

    /// Why `pool` (with `caps`) cannot run the scenario, or `None`.
    pub fn missing(&self, pool: &str, caps: &Capabilities) -> Option<String> {
        if let Some((knob, why)) = caps.missing(self.all) {
            return Some(format!("{pool} lacks {knob}: {why}"));
        }
        if !self.one_of.is_empty() && self.one_of.iter().all(|k| !caps.supports(*k)) {
            let names: Vec<&str> = self.one_of.iter().map(|k| k.name()).collect();
            return Some(format!("{pool} has none of {}", names.join(", ")));
        }
        None
    }
}

/// Marks a registered test: skipped where the pool cannot run it (`skip`),
/// else ignored where `findings` keep a finding for `(scenario, pool)`.
pub fn mark(def: &mut TestDef, scenario: &str, pool: &str, skip: Option<String>, findings: &[Finding]) {
    if let Some(why) = skip {
        def.skip(why);
    } else if let Some((_, _, reason)) = findings.iter().find(|(s, p, _)| *s == scenario && *p == pool) {
        def.ignore(*reason);
    }
}

/// One scenario of a table: registered once per adapter.
pub struct Scenario<S: Service> {
    /// `<group>::<name>` or `<name>`: the part between the suite prefix and `[adapter]`.
    pub name: &'static str,
    /// Knobs the scenario needs; an adapter lacking one is registered skipped with its reason.
    pub needs: Needs,
    /// Tags on top of the suite's (`benchmark`).
    pub extra_tags: &'static [&'static str],
    /// Never overlaps another test (it restarts a shared server or measures this process's fds and RSS).
    pub exclusive: bool,
    /// A skip decided from more than a missing knob (the reason names the adapter).
    pub skip_if: Option<SkipIf<S>>,
    /// The body.
    pub body: Body<S>,
}

impl<S: Service> Scenario<S> {
    /// A scenario needing every knob of `needs`.
    pub fn new(name: &'static str, needs: &'static [Knob], body: Body<S>) -> Self {
        Scenario { name, needs: Needs::all(needs), extra_tags: &[], exclusive: false, skip_if: None, body }
    }

    /// Also needs one of `knobs`.
    pub fn needs_one_of(mut self, knobs: &'static [Knob]) -> Self {
        self.needs.one_of = knobs;
        self
    }

    /// Tags on top of the suite's.
    pub fn tags(mut self, t: &'static [&'static str]) -> Self {
        self.extra_tags = t;
        self
    }

    /// Registered exclusive.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Exclusive when `yes`.
    pub fn exclusive_if(mut self, yes: bool) -> Self {
        self.exclusive = yes;
        self
    }

    /// Skipped for the adapters `f` names a reason for.
    pub fn skip_if(mut self, f: SkipIf<S>) -> Self {
        self.skip_if = Some(f);
        self
    }
}

/// Registers `<prefix>::<scenario>[<adapter>]` with `tags` (plus each
/// scenario's own) for every scenario of `table` and every adapter.
pub fn register_matrix<S: Service>(
    r: &mut Registry,
    prefix: &str,
    tags: &[&'static str],
    table: Vec<Scenario<S>>,
    adapters: &[Adapter<S>],
    findings: &[Finding],
) {
    for sc in table {
        let mut t: Vec<&str> = tags.to_vec();
        t.extend(sc.extra_tags);
        for a in adapters {
            let name = format!("{prefix}::{}[{}]", sc.name, a.name());
            let (adapter, body) = (a.clone(), sc.body);
            let def = r.test(name, &t, move |ctx| body(ctx, adapter.clone()));
            if sc.exclusive {
                def.exclusive(true);
            }
            let skip = sc.needs.missing(a.name(), &a.capabilities()).or_else(|| sc.skip_if.and_then(|f| f(a)));
            mark(def, sc.name, a.name(), skip, findings);
        }
    }
}
