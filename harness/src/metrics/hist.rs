//! HdrHistogram's portable form in reports: the V2 compressed (DEFLATE)
//! serialization, base64 (standard alphabet, padded). Any HdrHistogram
//! implementation (Java, Go, Python, Rust) reads it, and histograms decoded
//! from several reports add up exactly ([`hdrhistogram::Histogram::add`]).

use std::{collections::BTreeMap, fmt};

use base64::Engine as _;
use hdrhistogram::{
    serialization::{Deserializer, Serializer as _, V2DeflateSerializer},
    Histogram,
};
use serde::{ser::SerializeMap, Serialize, Serializer};

/// Encodes `h` as base64 of its V2 compressed serialization.
pub fn encode(h: &Histogram<u64>) -> Result<String, String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut buf).map_err(|e| format!("{e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// Decodes what [`encode`] wrote. The histogram it returns resizes itself,
/// so others with larger values can be added to it.
pub fn decode(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64 ({e}): expected HdrHistogram's V2 compressed form, base64"))?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an HdrHistogram V2 serialization ({e:?})"))?;
    let mut out = Histogram::new(h.sigfig()).map_err(|e| format!("{e:?}"))?;
    out.add(&h).map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

/// A phase's latency histograms by name, in nanoseconds: `latency`
/// (successes, from the intended start) and where measured
/// `error_latency`, `service`, `send_lag`, `acquire`, `op_time` — the same
/// names as the [`crate::metrics::Latency`] summaries of a
/// [`crate::metrics::PhaseStats`]. Serialises as `{"latency": "<base64>", ...}`
/// (see [`encode`]).
#[derive(Clone, Default)]
pub struct PhaseHistograms(pub BTreeMap<String, Histogram<u64>>);

impl PhaseHistograms {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The histogram named `name`.
    pub fn get(&self, name: &str) -> Option<&Histogram<u64>> {
        self.0.get(name)
    }
}

impl fmt::Debug for PhaseHistograms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, h)| (k, h.len()))).finish()
    }
}

impl Serialize for PhaseHistograms {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, h) in &self.0 {
            m.serialize_entry(k, &encode(h).map_err(serde::ser::Error::custom)?)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_every_count() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for v in [1u64, 999, 1_000, 123_456, 5_000_000_000] {
            h.record_n(v, v % 7 + 1).unwrap();
        }
        let s = encode(&h).unwrap();
        let back = decode(&s).unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        assert_eq!(back.max(), h.max());
        // It grows when a larger value is added.
        let mut back = back;
        back.record(50_000_000_000).unwrap();
    }

    #[test]
    fn garbage_says_what_was_expected() {
        assert!(decode("%%%").unwrap_err().contains("base64"));
        let not_hist = base64::engine::general_purpose::STANDARD.encode(b"hello world");
        assert!(decode(&not_hist).unwrap_err().contains("HdrHistogram"));
    }
}
