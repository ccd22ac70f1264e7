#!/usr/bin/env python3
"""gpu_trace.py TC_TRACE_FILE [KT_TRACE_FILE] - the decode step's timeline
from a diagnostic build (make GPU_TRACE=1 BUILD=build-trace tests, then
LQ_TC_TRACE=tc.bin LQ_KT_TRACE=kt.bin build-trace/tests/bench_gpu_run FILE.lq).

TC file: %globaltimer per block of every tensor-core GEMV launch (entry,
the first half of the first weight loads issued, table built and the other
half issued, after the wait for the previous kernel, x staged, exit; the
last graph replay of each launch; files from before the "issued" stamp have
the other five), then the block's multiprocessor (%smid; older files do
not have it).  KT file: the same for k_rope and k_attn, keyed by the
layer's K cache, the block's %smid in the high half of its number.  Prints,
for the last decode step, each GEMV's times relative to the end of the GEMV
before it, the mean per position in the layer (q/k/v, o, gate/up, down for
the Llama shapes), RoPE / attention relative to the end of the q/k/v GEMV,
and (with %smid) how many SMs the attention blocks ran on and how long after
the last attention block on its SM each of the o GEMV's blocks entered.
"counted": a split's partial written and counted (the global merge) or
stored into the cluster's gather (the cluster merge); "merged": the merge
done.
Needs numpy.
Copyright (c) the libquant authors.  MIT license.
"""
import sys
import warnings

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
    run = [r[2] for r in rows[i:]]
    if ev == 5:  # no "issued" stamp: a column of NaN in its place
        run = [np.insert(b, 1, np.nan, axis=1) for b in run]
    if ev < 7:  # no %smid column (older builds): NaN
        run = [np.insert(b, 6, np.nan, axis=1) for b in run]
    return run, ev >= 7


def placement(at, ob):
    """One layer: the SMs its attention blocks ran on, the most on one SM,
    and for the o GEMV's blocks on those SMs how long after the last
    attention block there ended (its last stamp) each entered (us)."""
    sm = (at[:, 1] // 2 ** 32).astype(np.int64)
    end = at[:, 2:7].max(axis=1)
    used, count = np.unique(sm, return_counts=True)
    last = dict(zip(used, [end[sm == u].max() for u in used]))
    gaps = [(b[0] - last[int(b[6])]) / 1e3 for b in ob if int(b[6]) in last]
    return (len(used), count.max(), len(gaps), np.median(gaps) if gaps else np.nan,
            max(gaps) if gaps else np.nan)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: gpu_trace.py TC_TRACE_FILE [KT_TRACE_FILE]")
    run, has_sm = gemv_run(sys.argv[1])
    if not run:
        sys.exit("gpu_trace.py: %s: no GEMV launches recorded" % sys.argv[1])
    # stamps: 0 entry, 1 loads issued, 2 table built, 3 released, 4 x staged, 5 exit
    print("%d GEMV launches, %.1f us from the first entry to the last exit" %
          (len(run), (max(b[:, 5].max() for b in run) - run[0][:, 0].min()) / 1e3))
    print("us relative to the previous GEMV's last exit (x staged and exits relative to the first release);")
    print("issued / prolog: a block's entry to its first loads issued / its table built (median);")
    print("built: the last block's table built")
    print("%4s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s" % ("i", "entry0", "entryMed", "issued", "prolog", "built",
                                                        "release", "xstaged", "exitMed", "exitMax", "period"))
    prev, agg = None, {}
    for k, b in enumerate(run):
        rel = b[:, 3].min()
        pe = prev if prev is not None else b[:, 0].min()
        v = ((b[:, 0].min() - pe), (np.median(b[:, 0]) - pe), np.median(b[:, 1] - b[:, 0]),
             np.median(b[:, 2] - b[:, 0]), (b[:, 2].max() - pe), (rel - pe), (np.median(b[:, 4]) - rel),
             (np.median(b[:, 5]) - rel), (b[:, 5].max() - rel), (b[:, 5].max() - pe))
        v = tuple(x / 1e3 for x in v)
        if k < 8:
            print("%4d " % k + " ".join("%8.2f" % x for x in v))
        if prev is not None:
            agg.setdefault(k % 4, []).append(v)
        prev = b[:, 5].max()
    with warnings.catch_warnings():  # the NaN column of five-stamp files
        warnings.simplefilter("ignore", RuntimeWarning)
        for m, v in sorted(agg.items()):
            print("pos %d mean" % m + " ".join("%8.2f" % x for x in np.nanmean(np.array(v), 0)))
    if len(sys.argv) < 3:
        return
    k = open(sys.argv[2], 'rb').read()
    n = int(np.frombuffer(k[:4], dtype=np.uint32)[0])
    e = np.frombuffer(k[4:], dtype=np.uint64).reshape(-1, 8)[:n].astype(np.float64)
    t0, t1 = run[0][:, 0].min(), max(b[:, 5].max() for b in run)
    e = e[(e[:, 2] >= t0) & (e[:, 2] <= t1)]
    res, place = [], []
    for key in sorted(set(e[:, 0])):
        r = e[(e[:, 0] == key) & (e[:, 7] == 1)]
        at = e[(e[:, 0] == key) & (e[:, 7] == 2)]
        if not len(at):
            continue
        # the first release after the q/k/v GEMV: RoPE's, or attention's where it does RoPE itself
        first = r[:, 3].min() if len(r) else at[:, 3].min()
        if not len(r):
            r = np.full((1, 8), np.nan)
        qkv_end = max((b[:, 5].max() for b in run if b[:, 5].max() <= first + 1), default=np.nan)
        later = [b for b in run if b[:, 3].min() > at[:, 2].min()]
        ob = min(later, key=lambda b: b[:, 3].min()) if later else None
        o_rel = ob[:, 3].min() if ob is not None else np.nan
        if has_sm and ob is not None:
            place.append(placement(at, ob))
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
    with warnings.catch_warnings():  # the RoPE columns are NaN when k_attn does RoPE
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, nm in enumerate(names):
            print("  %-26s %7.2f  (%6.2f %6.2f)" % (nm, np.nanmean(res[:, j]), np.nanmin(res[:, j]),
                                                    np.nanmax(res[:, j])))
    if not place:
        return
    place = np.array(place)
    names = ["SMs with attention blocks", "attention blocks on the busiest SM",
             "o GEMV blocks on SMs with attention", "o entry - last attention end there, median us",
             "o entry - last attention end there, max us"]
    print("Where the attention blocks ran and when the o GEMV's blocks entered their SMs, mean over %d layers "
          "(min, max):" % len(place))
    with warnings.catch_warnings():  # layers where no o block shared an SM with attention: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, nm in enumerate(names):
            print("  %-46s %7.2f  (%6.2f %6.2f)" % (nm, np.nanmean(place[:, j]), np.nanmin(place[:, j]),
                                                    np.nanmax(place[:, j])))


if __name__ == '__main__':
    main()
