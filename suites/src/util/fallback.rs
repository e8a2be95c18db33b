use std::future::Future;

/// Where a cache-or-compute value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The cache answered with a value.
    Hit,
    /// The cache answered "not there"; the value was computed (and offered to the cache).
    Miss,
    /// The cache failed (down, timed out); the value was computed without it.
    CacheDown,
}

/// Reads through a cache, computing the value when the cache misses or is
/// unavailable. A cache error never fails the call; the write-back's
/// error is ignored (the cache is an optimisation).
pub async fn cache_or_compute<T, E, G, GF, C, CF, S, SF>(get: G, compute: C, set: S) -> (T, Fallback)
where
    T: Clone,
    G: FnOnce() -> GF,
    GF: Future<Output = Result<Option<T>, E>>,
    C: FnOnce() -> CF,
    CF: Future<Output = T>,
    S: FnOnce(T) -> SF,
    SF: Future<Output = Result<(), E>>,
{
    match get().await {
        Ok(Some(v)) => (v, Fallback::Hit),
        Ok(None) => {
            let v = compute().await;
            let _ = set(v.clone()).await;
            (v, Fallback::Miss)
        }
        Err(_) => (compute().await, Fallback::CacheDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hit_miss_and_down() {
        let (v, f) = cache_or_compute(|| async { Ok::<_, ()>(Some(1)) }, || async { 2 }, |_| async { Ok(()) }).await;
        assert_eq!((v, f), (1, Fallback::Hit));
        let (v, f) = cache_or_compute(|| async { Ok::<_, ()>(None) }, || async { 2 }, |_| async { Ok(()) }).await;
        assert_eq!((v, f), (2, Fallback::Miss));
        let (v, f) =
            cache_or_compute(|| async { Err::<Option<i32>, _>("down") }, || async { 3 }, |_| async { Err("down") })
                .await;
        assert_eq!((v, f), (3, Fallback::CacheDown));
    }
}
