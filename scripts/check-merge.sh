#!/usr/bin/env bash
# Checks a merged report.json (written by `--merge`), independently of the
# Rust code that merged it.
#
#   check-merge.sh partitions MERGED_REPORT EXPECTED_LIST
#       EXPECTED_LIST: the test names of an unpartitioned run of the same
#       selection, one per line. The merged report must hold exactly these
#       tests, each once.
#
#   check-merge.sh segments MERGED_REPORT ATTACHMENT TOLERANCE_PCT SEGMENT_REPORT...
#       ATTACHMENT: the load phase's stats attachment (e.g. throughput.stats).
#       The merged phase's achieved rate must be within TOLERANCE_PCT % of its
#       target, its counts the sums of the segments', and its p50/p99/p99.9
#       those of the union of the segments' histograms, decoded here from
#       HdrHistogram's V2 compressed form and added bucket by bucket.
set -euo pipefail
mode=${1:?usage: check-merge.sh partitions|segments ...}
shift
exec python3 - "$mode" "$@" <<'PY'
import base64, json, math, struct, sys, zlib

def fail(msg):
    print(f"check-merge: FAIL: {msg}")
    sys.exit(1)

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:
        fail(f"{path}: {e}")

# --- HdrHistogram V2 (compressed) decoding, after the format's definition ---
V2_COOKIE, V2_COMPRESSED_COOKIE = 0x1C849303, 0x1C849304

def varint(buf, pos):
    """HdrHistogram's LEB128 variant: up to 9 bytes, the 9th holds 8 bits."""
    value, shift = 0, 0
    for i in range(9):
        b = buf[pos]
        pos += 1
        if i == 8:
            value |= b << 56
            break
        value |= (b & 0x7F) << shift
        shift += 7
        if b & 0x80 == 0:
            break
    return value, pos

def decode(b64):
    raw = base64.b64decode(b64)
    cookie, length = struct.unpack(">ii", raw[:8])
    if cookie & ~0xF0 != V2_COMPRESSED_COOKIE & ~0xF0:
        fail(f"not a V2 compressed histogram (cookie {cookie:#x})")
    body = zlib.decompress(raw[8:8 + length])
    cookie, payload, offset, sigfig, lowest, highest, _ratio = struct.unpack(">iiiiqqd", body[:40])
    if cookie & ~0xF0 != V2_COOKIE & ~0xF0 or offset != 0:
        fail(f"unexpected V2 header (cookie {cookie:#x}, offset {offset})")
    counts, pos, end = [], 40, 40 + payload
    while pos < end:
        z, pos = varint(body, pos)
        v = (z >> 1) ^ -(z & 1)
        if v < 0:
            counts.extend([0] * -v)
        else:
            counts.append(v)
    return {"sigfig": sigfig, "lowest": lowest, "counts": counts}

def layout(h):
    largest_single = 2 * 10 ** h["sigfig"]
    sub_count_mag = math.ceil(math.log2(largest_single))
    half_mag = max(sub_count_mag, 1) - 1
    unit_mag = int(math.floor(math.log2(h["lowest"])))
    return half_mag, unit_mag

def add(hs):
    keys = {(h["sigfig"], h["lowest"]) for h in hs}
    if len(keys) != 1:
        fail(f"histograms of different resolutions: {keys}")
    n = max(len(h["counts"]) for h in hs)
    out = dict(hs[0], counts=[0] * n)
    for h in hs:
        for i, c in enumerate(h["counts"]):
            out["counts"][i] += c
    return out

def value_at_quantile(h, q):
    """HdrHistogram's value_at_quantile: the highest value equivalent to the
    bucket where the cumulative count first reaches ceil(q * total)."""
    half_mag, unit_mag = layout(h)
    half = 1 << half_mag
    total = sum(h["counts"])
    target = max(1, math.ceil(q * total))
    acc = 0
    for i, c in enumerate(h["counts"]):
        acc += c
        if acc >= target:
            bucket = (i >> half_mag) - 1
            sub = (i & (half - 1)) + half
            if bucket < 0:
                sub -= half
                bucket = 0
            lowest_equiv = sub << (bucket + unit_mag)
            return lowest_equiv + (1 << (unit_mag + bucket)) - 1
    fail("empty histogram")

def tests_by_name(report):
    names = [t["name"] for t in report["tests"]]
    return names

mode, args = sys.argv[1], sys.argv[2:]
if mode == "partitions":
    merged, expected_file = args
    names = tests_by_name(load(merged))
    with open(expected_file) as f:
        expected = [l.strip() for l in f if l.strip()]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        fail(f"tests more than once in the merged report: {dup[:10]}")
    missing = sorted(set(expected) - set(names))
    extra = sorted(set(names) - set(expected))
    if missing or extra:
        fail(f"{len(missing)} missing (e.g. {missing[:5]}), {len(extra)} not in the unpartitioned list (e.g. {extra[:5]})")
    print(f"check-merge: ok: the merged report holds exactly the {len(expected)} tests of the unpartitioned run, each once")
elif mode == "segments":
    merged_path, key, tol = args[0], args[1], float(args[2])
    seg_paths = args[3:]
    merged = load(merged_path)
    if len(merged["tests"]) != 1:
        fail(f"expected one merged test, got {len(merged['tests'])}")
    mt = merged["tests"][0]
    m = mt["attachments"].get(key) or fail(f"merged test has no attachment {key}")
    segs = []
    for p in seg_paths:
        r = load(p)
        t = [t for t in r["tests"] if t["name"] == mt["name"]]
        if len(t) != 1:
            fail(f"{p}: test {mt['name']} not found once")
        segs.append((r["run"].get("segment"), t[0]["attachments"][key]))
    want = {f"{i}/{len(segs)}" for i in range(1, len(segs) + 1)}
    if {s for s, _ in segs} != want:
        fail(f"segments {[s for s, _ in segs]}, expected {sorted(want)}")
    for k in ("started", "ok", "missed", "cancelled"):
        if m[k] != sum(s[k] for _, s in segs):
            fail(f"{k}: merged {m[k]} != sum of segments {[s[k] for _, s in segs]}")
    target, achieved = m["target_rate_ops_s"], m["throughput_ops_s"]
    starts = [s["started_unix_ms"] for _, s in segs]
    print(f"check-merge: segments {sorted(s for s, _ in segs)}: starts spread {max(starts) - min(starts):.3f} ms; "
          f"ok {m['ok']} of {m['started']} started; target {target:.1f} ops/s, achieved {achieved:.1f} ops/s "
          f"({(achieved / target - 1) * 100:+.2f} %)")
    if abs(achieved / target - 1) * 100 > tol:
        fail(f"achieved rate {achieved:.1f} ops/s is not within {tol} % of the target {target:.1f} ops/s")
    union = add([decode(s["histograms"]["latency"]) for _, s in segs])
    mine = decode(m["histograms"]["latency"])
    if sum(union["counts"]) != m["ok"] or sum(mine["counts"]) != m["ok"]:
        fail(f"histogram counts {sum(union['counts'])} (union) / {sum(mine['counts'])} (merged) != ok {m['ok']}")
    for q, f in ((0.5, "p50_ms"), (0.99, "p99_ms"), (0.999, "p999_ms")):
        u = value_at_quantile(union, q) / 1e6
        if m["latency"][f] != u:
            fail(f"merged {f} {m['latency'][f]} != {u} of the union of the segments' histograms")
        if value_at_quantile(mine, q) / 1e6 != u:
            fail(f"the merged histogram's {f} differs from the union's")
    metric = [x for x in mt.get("metrics", []) if x["name"] == key.replace(".stats", ".p99_ms")]
    if metric and metric[0]["value"] != value_at_quantile(union, 0.99) / 1e6:
        fail(f"metric {metric[0]['name']} {metric[0]['value']} != the union's p99")
    print(f"check-merge: ok: merged p99 {m['latency']['p99_ms']} ms == p99 of the union of the {len(segs)} histograms "
          f"(p50 {m['latency']['p50_ms']} ms, p99.9 {m['latency']['p999_ms']} ms likewise)")
else:
    fail(f"unknown mode {mode} (partitions or segments)")
PY
