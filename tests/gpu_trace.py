#!/usr/bin/env python3
"""gpu_trace.py TC_TRACE_FILE [KT_TRACE_FILE] - the decode step's timeline
from a diagnostic build (make GPU_TRACE=1 BUILD=build-trace tests, then
LQ_TC_TRACE=tc.bin LQ_KT_TRACE=kt.bin build-trace/tests/bench_gpu_run FILE.lq).

TC file: %globaltimer per block of every tensor-core GEMV launch (entry,
before / after the wait for the previous kernel, x staged, exit; the last
graph replay of each launch).  KT file: the same for k_rope and k_attn,
keyed by the layer's K cache.  Prints, for the last decode step, each GEMV's
times relative to the end of the GEMV before it, the mean per position in
the layer (q/k/v, o, gate/up, down for the Llama shapes), and RoPE /
attention relative to the end of the q/k/v GEMV.  Needs numpy.
Copyright (c) the libquant authors.  MIT license.
"""
import sys

import numpy as np


def gemv_run(path):
    d = open(path, 'rb').read()
    seq, blk, ev, nseq = (int(v) for v in np.frombuffer(d[:16], dtype=np.uint32))
    a = np.frombuffer(d[16:], dtype=np.uint64).reshape(seq, blk, ev).astype(np.float64)
    rows = []
    for s in range(min(nseq, seq)):
        b = a[s][a[s][:, 0] > 0]
        if len(b):
            rows.append((b[:, 0].min(), s, b))
    rows.sort(key=lambda r: r[0])
    i = len(rows) - 1  # the last run of launches less than 200 us apart
    while i > 0 and rows[i][0] - rows[i - 1][0] < 200e3:
        i -= 1
    return [r[2] for r in rows[i:]]


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: gpu_trace.py TC_TRACE_FILE [KT_TRACE_FILE]")
    run = gemv_run(sys.argv[1])
    if not run:
        sys.exit("gpu_trace.py: %s: no GEMV launches recorded" % sys.argv[1])
    print("%d GEMV launches, %.1f us from the first entry to the last exit" %
          (len(run), (max(b[:, 4].max() for b in run) - run[0][:, 0].min()) / 1e3))
    print("us relative to the previous GEMV's last exit (x staged and exits relative to the first release):")
    print("%4s %8s %8s %8s %8s %8s %8s %8s" % ("i", "entry0", "entryMed", "release", "xstaged", "exitMed", "exitMax", "period"))
    prev, agg = None, {}
    for k, b in enumerate(run):
        rel = b[:, 2].min()
        pe = prev if prev is not None else b[:, 0].min()
        v = ((b[:, 0].min() - pe), (np.median(b[:, 0]) - pe), (rel - pe), (np.median(b[:, 3]) - rel),
             (np.median(b[:, 4]) - rel), (b[:, 4].max() - rel), (b[:, 4].max() - pe))
        v = tuple(x / 1e3 for x in v)
        if k < 8:
            print("%4d " % k + " ".join("%8.2f" % x for x in v))
        if prev is not None:
            agg.setdefault(k % 4, []).append(v)
        prev = b[:, 4].max()
    for m, v in sorted(agg.items()):
        print("pos %d mean" % m + " ".join("%8.2f" % x for x in np.array(v).mean(0)))
    if len(sys.argv) < 3:
        return
    k = open(sys.argv[2], 'rb').read()
    n = int(np.frombuffer(k[:4], dtype=np.uint32)[0])
    e = np.frombuffer(k[4:], dtype=np.uint64).reshape(-1, 8)[:n].astype(np.float64)
    t0, t1 = run[0][:, 0].min(), max(b[:, 4].max() for b in run)
    e = e[(e[:, 2] >= t0) & (e[:, 2] <= t1)]
    res = []
    for key in sorted(set(e[:, 0])):
        r = e[(e[:, 0] == key) & (e[:, 7] == 1)]
        at = e[(e[:, 0] == key) & (e[:, 7] == 2)]
        if not len(r) or not len(at):
            continue
        qkv_end = max((b[:, 4].max() for b in run if b[:, 4].max() <= r[:, 3].min() + 1), default=np.nan)
        o_rel = min((b[:, 2].min() for b in run if b[:, 2].min() > at[:, 2].min()), default=np.nan)
        last = at[at[:, 6] > 0]
        v = [r[:, 2].min(), r[:, 3].min(), r[:, 4].max(), at[:, 2].min(), at[:, 3].min(), at[:, 3].max(),
             np.median(at[:, 4]), at[:, 4].max(), at[:, 5].max(), last[:, 6].max() if len(last) else np.nan, o_rel]
        res.append((np.array(v) - qkv_end) / 1e3)
    if not res:
        print("no RoPE / attention launches in the run")
        return
    res = np.array(res)
    names = ["rope entry", "rope release", "rope exit", "attn entry", "attn release (first)",
             "attn release (last)", "attn keys done (median)", "attn keys done (last)", "attn counted (last)",
             "attn merged (last)", "o GEMV release"]
    print("RoPE and decode attention, us after the q/k/v GEMV's last exit, mean over %d layers (min, max):" % len(res))
    for j, nm in enumerate(names):
        print("  %-26s %7.2f  (%6.2f %6.2f)" % (nm, np.nanmean(res[:, j]), np.nanmin(res[:, j]), np.nanmax(res[:, j])))


if __name__ == '__main__':
    main()
