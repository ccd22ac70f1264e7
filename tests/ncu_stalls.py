#!/usr/bin/env python3
"""ncu_stalls.py CSV [--top N] - where a kernel's warps wait, from Nsight
Compute's per-instruction source table.

Make the table on the GPU machine, e.g. for the second tensor-core GEMV
launch of bench_gemv (NF4, 4096 x 14336, float activations):

  ncu --clock-control none -k regex:k_gemv_tc --launch-skip 1 --launch-count 1 \\
      --section WarpStateStats --section SourceCounters -o prof \\
      BUILD/gpu/bench_gemv --once --x32
  ncu -i prof.ncu-rep --page source --csv --print-source sass > src.csv

Prints, for each kernel in the file: its stall samples by reason (the
stall_* columns of all samples; their "(Not Issued)" subsets are not added
again), by opcode (with the
instructions executed, so that a costly rare instruction stands out), and
the N instructions (default 20) with the most samples and their three
largest reasons.  Reads the CSV with the standard library only.
Copyright (c) the libquant authors.  MIT license.
"""
import collections
import csv
import re
import sys


def usage():
    sys.exit("usage: ncu_stalls.py CSV [--top N]")


def kernels(rows):
    """(kernel name, header, data rows) for each 'Kernel Name' block."""
    out, i = [], 0
    while i < len(rows):
        r = rows[i]
        if r and r[0] == "Kernel Name" and i + 1 < len(rows):
            name = r[1] if len(r) > 1 else "?"
            hdr = rows[i + 1]
            j = i + 2
            while j < len(rows) and not (rows[j] and rows[j][0] == "Kernel Name"):
                j += 1
            out.append((name, hdr, rows[i + 2:j]))
            i = j
        else:
            i += 1
    return out


def num(s):
    try:
        return int(s.replace(",", ""))
    except ValueError:
        return 0


def opcode(src):
    """The opcode of a SASS line, without its predicate."""
    s = re.sub(r"^@!?U?P[T0-9]+\s+", "", src.strip())
    return s.split(" ")[0] if s else "?"


def report(name, hdr, data, top):
    ix = {h: i for i, h in enumerate(hdr)}
    need = ("Source", "Warp Stall Sampling (All Samples)", "Instructions Executed")
    missing = [h for h in need if h not in ix]
    if missing:
        print("%s: the table lacks %s" % (name, ", ".join(missing)))
        return False
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    by_reason, by_op, ex_op = collections.Counter(), collections.Counter(), collections.Counter()
    rows, samples, executed = [], 0, 0
    for r in data:
        if len(r) < len(hdr):
            continue
        s = num(r[ix["Warp Stall Sampling (All Samples)"]])
        e = num(r[ix["Instructions Executed"]])
        src = r[ix["Source"]].strip()
        op = opcode(src)
        samples += s
        executed += e
        by_op[op] += s
        ex_op[op] += e
        rs = {h[6:]: v for h in reasons if (v := num(r[ix[h]]))}
        for k, v in rs.items():
            by_reason[k] += v
        addr = r[ix["Address"]] if "Address" in ix else ""
        rows.append((s, addr, src, rs))
    print("kernel: %s" % name)
    print("stall samples %d, instructions executed %d" % (samples, executed))
    if not samples:
        print("no stall samples (was SourceCounters collected?)")
        return True
    print("by reason:")
    for k, v in by_reason.most_common():
        print("  %-22s %7d %5.1f%%" % (k, v, 100.0 * v / samples))
    print("by opcode (samples, share, executed):")
    for k, v in by_op.most_common(top):
        print("  %-28s %7d %5.1f%% %12d" % (k, v, 100.0 * v / samples, ex_op[k]))
    print("top instructions (samples, address, source, reasons):")
    rows.sort(key=lambda t: -t[0])
    for s, addr, src, rs in rows[:top]:
        if not s:
            break
        why = ", ".join("%s %d" % kv for kv in sorted(rs.items(), key=lambda kv: -kv[1])[:3])
        print("  %6d %s  %s  [%s]" % (s, addr[-6:], src[:60], why))
    return True


def main():
    args, top = sys.argv[1:], 20
    if "--top" in args:
        i = args.index("--top")
        if i + 1 >= len(args) or not args[i + 1].isdigit() or int(args[i + 1]) < 1:
            usage()
        top = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 1 or args[0].startswith("-"):
        usage()
    path = args[0]
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        sys.exit("ncu_stalls.py: %s: cannot read (%s)" % (path, e.strerror))
    ks = kernels(rows)
    if not ks:
        sys.exit("ncu_stalls.py: %s: no source table (make it with ncu -i REPORT --page source --csv "
                 "--print-source sass)" % path)
    ok = True
    for n, (name, hdr, data) in enumerate(ks):
        if n:
            print()
        ok = report(name, hdr, data, top) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
