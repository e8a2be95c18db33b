//! Load from many processes: this process's segment of a fleet's open-loop
//! arrivals, and the fleet's shared start time.
//!
//! The model is k6's execution segments, for equal parts: `--segment i/n`
//! gives this process every n-th arrival of the whole timetable, starting
//! with arrival `i - 1` (0-based). The n segments' timetables interleave into
//! exactly the whole one, so their shares add up to the rate (no rounding
//! lost, whatever the rate or the op bound), and each process's arrivals are
//! evenly spread over the phase. With `--start-at <unix-ms>` every process
//! anchors its first open-loop phase's timetable at that wall-clock instant.
//! Nothing else is coordinated: no messages between processes, no
//! coordinator; `--merge` combines their reports afterwards.
//!
//! Closed-loop and burst phases are not split: each process runs them whole.

use std::{fmt, str::FromStr, time::SystemTime};

use parking_lot::Mutex;

/// One of `count` equal parts of a fleet's open-loop load, `index` in
/// `1..=count` (as nextest's `--partition count:i/n`). [`Segment::WHOLE`]
/// (`1/1`) is a process running the whole load alone.
///
/// ```
/// use poolstress_harness::load::Segment;
/// let s: Segment = "2/3".parse().unwrap();
/// assert_eq!((s.global(0), s.global(1)), (1, 4)); // arrivals 1, 4, 7, ...
/// // The three segments' shares of any number of arrivals add up to it.
/// let parts: u64 = (1..=3).map(|i| Segment::new(i, 3).unwrap().share_of(10)).sum();
/// assert_eq!(parts, 10);
/// assert!("4/3".parse::<Segment>().unwrap_err().contains("1/3, 2/3 or 3/3"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    index: u32,
    count: u32,
}

impl Default for Segment {
    fn default() -> Self {
        Segment::WHOLE
    }
}

impl Segment {
    /// The whole load (`1/1`).
    pub const WHOLE: Segment = Segment { index: 1, count: 1 };

    /// Segment `index` of `count` (`1 <= index <= count`); the error says
    /// what would be valid.
    pub fn new(index: u32, count: u32) -> Result<Segment, String> {
        if count == 0 {
            return Err("a segment count must be at least 1 (e.g. `--segment 1/3`)".into());
        }
        if index == 0 || index > count {
            let valid = if count <= 4 {
                let v: Vec<String> = (1..=count).map(|i| format!("{i}/{count}")).collect();
                match v.len() {
                    1 => v[0].clone(),
                    _ => format!("{} or {}", v[..v.len() - 1].join(", "), v[v.len() - 1]),
                }
            } else {
                format!("1/{count} .. {count}/{count}")
            };
            return Err(format!(
                "segment {index}/{count} does not exist: segments are numbered from 1 to the count ({valid})"
            ));
        }
        Ok(Segment { index, count })
    }

    /// This segment's number, from 1.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// How many segments the load is split into.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether this is the whole load (`1/1`).
    pub fn is_whole(&self) -> bool {
        self.count == 1
    }

    /// Its share of the load, `1 / count`.
    pub fn fraction(&self) -> f64 {
        1.0 / self.count as f64
    }

    /// The whole timetable's index (0-based) of this segment's `m`-th arrival.
    #[inline]
    pub fn global(&self, m: u64) -> u64 {
        m.saturating_mul(self.count as u64).saturating_add((self.index - 1) as u64)
    }

    /// How many of the whole timetable's first `n` arrivals are this segment's.
    /// The shares of `1/n .. n/n` add up to `n` exactly.
    pub fn share_of(&self, n: u64) -> u64 {
        let c = self.count as u64;
        n / c + u64::from(n % c > (self.index - 1) as u64)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Segment {
    type Err = String;

    fn from_str(s: &str) -> Result<Segment, String> {
        let bad = || {
            format!(
                "segment \"{s}\" is not i/n: write this process's part of n equal parts, numbered from 1 \
                 (e.g. `--segment 2/3` on the second of three hosts)"
            )
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(bad)?;
        let i: u32 = i.trim().parse().map_err(|_| bad())?;
        let n: u32 = n.trim().parse().map_err(|_| bad())?;
        Segment::new(i, n)
    }
}

struct Fleet {
    segment: Segment,
    start_at: Option<SystemTime>,
}

static FLEET: Mutex<Fleet> = Mutex::new(Fleet { segment: Segment::WHOLE, start_at: None });

/// Sets this process's segment and shared start time (the runner does,
/// from `--segment` and `--start-at`). Open-loop phases built afterwards take
/// the segment; the first open-loop phase that runs takes the start time.
pub fn set(segment: Segment, start_at: Option<SystemTime>) {
    let mut f = FLEET.lock();
    f.segment = segment;
    f.start_at = start_at;
}

/// This process's segment ([`Segment::WHOLE`] unless `--segment` was given).
pub fn segment() -> Segment {
    FLEET.lock().segment
}

/// Takes the shared start time: only the first open-loop phase of the
/// process waits for it.
pub(crate) fn take_start_at() -> Option<SystemTime> {
    FLEET.lock().start_at.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_interleave_into_the_whole_timetable() {
        for n in 1..=7u32 {
            let segs: Vec<Segment> = (1..=n).map(|i| Segment::new(i, n).unwrap()).collect();
            for total in [0u64, 1, 2, 5, 999, 1000, 1001, 10_007] {
                let shares: Vec<u64> = segs.iter().map(|s| s.share_of(total)).collect();
                assert_eq!(shares.iter().sum::<u64>(), total, "{n} segments of {total}");
                // Each share is the floor or the ceiling of total / n.
                assert!(shares.iter().all(|&x| x == total / n as u64 || x == total.div_ceil(n as u64)));
                // Every arrival below `total` belongs to exactly one segment.
                let mut seen = vec![0u32; total as usize];
                for (s, share) in segs.iter().zip(&shares) {
                    for m in 0..*share {
                        seen[s.global(m) as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "{n} segments of {total}");
            }
        }
    }

    #[test]
    fn bad_segments_say_what_to_write() {
        for (s, needle) in [
            ("4/3", "1/3, 2/3 or 3/3"),
            ("0/3", "numbered from 1"),
            ("1/0", "at least 1"),
            ("3", "is not i/n"),
            ("a/b", "is not i/n"),
            ("9/8", "1/8 .. 8/8"),
        ] {
            let e = s.parse::<Segment>().unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
        assert_eq!("2/3".parse::<Segment>().unwrap().to_string(), "2/3");
        assert!(" 1 / 1 ".parse::<Segment>().unwrap().is_whole());
    }
}
