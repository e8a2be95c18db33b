//! Registration: one declaration per test, next to its body.

use std::{collections::BTreeSet, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{ctx::TestCtx, tag};

/// What a test body returns. Fail with an error (or a panic); skip with
/// [`TestCtx::skip`].
pub type TestResult = anyhow::Result<()>;

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = TestResult> + Send>>;
pub(crate) type Body = Arc<dyn Fn(TestCtx) -> BoxFuture + Send + Sync>;

/// One registered test instance.
pub struct TestDef {
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) exclusive: Option<bool>,
    pub(crate) ignored: Option<String>,
    pub(crate) skip: Option<String>,
    pub(crate) body: Body,
}

impl TestDef {
    /// Overrides the deadline (default: per tag, see [`crate::runner::default_deadline`]).
    pub fn deadline(&mut self, d: Duration) -> &mut Self {
        self.deadline = Some(d);
        self
    }

    /// Marks the test exclusive (never overlaps another test) or not. Default:
    /// exclusive when tagged `chaos` or `benchmark`.
    pub fn exclusive(&mut self, yes: bool) -> &mut Self {
        self.exclusive = Some(yes);
        self
    }

    /// Marks the test ignored (runs only with `--ignored` / `--include-ignored`):
    /// a known finding in a real pool, kept failing. The reason shows in `--list`
    /// and in reports.
    pub fn ignore(&mut self, reason: impl Into<String>) -> &mut Self {
        self.ignored = Some(reason.into());
        self
    }

    /// Skips the test with a reason without running it (a capability the
    /// pool under test lacks). Shown as ignored with the reason.
    pub fn skip(&mut self, reason: impl Into<String>) -> &mut Self {
        self.skip = Some(reason.into());
        self
    }

    /// The instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive.unwrap_or_else(|| self.tags.iter().any(|t| tag::EXCLUSIVE_BY_DEFAULT.contains(&t.as_str())))
    }
}

/// All tests of a run. Suites add to it; [`crate::run`] runs it.
///
/// ```
/// use poolstress_harness::{Registry, tag};
/// let mut r = Registry::new();
/// r.test("demo::adds", &[tag::LAYER_1], |_ctx| async { assert_eq!(1 + 1, 2); Ok(()) });
/// assert_eq!(r.len(), 1);
/// ```
#[derive(Default)]
pub struct Registry {
    pub(crate) tests: Vec<TestDef>,
    pub(crate) declared_tags: BTreeSet<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an async test: name (`::` hierarchy, instance in brackets),
    /// tags, body. The body runs on its own tokio runtime.
    pub fn test<F, Fut>(&mut self, name: impl Into<String>, tags: &[&str], body: F) -> &mut TestDef
    where
        F: Fn(TestCtx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TestResult> + Send + 'static,
    {
        let name = name.into();
        assert!(
            !self.tests.iter().any(|t| t.name == name),
            "poolstress: test \"{name}\" is registered twice; instance names must be unique"
        );
        self.tests.push(TestDef {
            name,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            deadline: None,
            exclusive: None,
            ignored: None,
            skip: None,
            body: Arc::new(move |ctx| Box::pin(body(ctx))),
        });
        self.tests.last_mut().expect("just pushed")
    }

    /// Registers a test once per instance: `name[instance]` for each item of
    /// `instances`, the body receiving the instance (a pool adapter, a service).
    pub fn per_instance<I, F, Fut>(&mut self, name: &str, tags: &[&str], instances: Vec<I>, body: F)
    where
        I: Clone + InstanceName + Send + Sync + 'static,
        F: Fn(TestCtx, I) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = TestResult> + Send + 'static,
    {
        for inst in instances {
            let n = format!("{name}[{}]", inst.instance_name());
            let body = body.clone();
            self.test(n, tags, move |ctx| body(ctx, inst.clone()));
        }
    }

    /// Declares a free-form tag so `--include-tag` accepts it even when no test has it yet.
    pub fn declare_tag(&mut self, tag: impl Into<String>) -> &mut Self {
        self.declared_tags.insert(tag.into());
        self
    }

    /// Every tag `--include-tag` accepts: the built-in ones, the declared ones and every tag a test has.
    pub fn known_tags(&self) -> BTreeSet<String> {
        let mut k: BTreeSet<String> = tag::BUILTIN.iter().map(|s| s.to_string()).collect();
        k.extend(self.declared_tags.iter().cloned());
        for t in &self.tests {
            k.extend(t.tags.iter().cloned());
        }
        k
    }

    /// Number of registered tests.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The registered tests.
    pub fn tests(&self) -> &[TestDef] {
        &self.tests
    }

    /// The registered test named `name`, to adjust it (deadline, ignore, skip).
    pub fn get_mut(&mut self, name: &str) -> Option<&mut TestDef> {
        self.tests.iter_mut().find(|t| t.name == name)
    }
}

/// The bracketed part of an instance name: `deadpool-postgres`, `layer_2`.
pub trait InstanceName {
    /// The name shown in brackets after the scenario name.
    fn instance_name(&self) -> String;
}

impl InstanceName for &'static str {
    fn instance_name(&self) -> String {
        self.to_string()
    }
}

impl InstanceName for String {
    fn instance_name(&self) -> String {
        self.clone()
    }
}
