#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
"""NF4 on tensors whose size the block does not divide, against bitsandbytes.

  bnb_reference.py check BINDIR WORKDIR

Makes a small Llama checkpoint (tests/run_reference.py make, hidden size 50,
intermediate 700: every Linear ends in a partial block at block sizes 64, 128
and 256, and the MLP's scales fill more than one run of 256), quantizes it
with BINDIR/quantize to NF4 with and without double quant, reads each Linear
back with `inspect --dequant` and compares bit for bit with:
  - without double quant: bitsandbytes' own quantize_4bit / dequantize_4bit
    (its CPU path; its NF4 codes and fp32 absmax equal its CUDA path's on the
    committed fixture tests/fixtures/bnb_4bit_ref.safetensors);
  - with double quant: the same 4-bit codes and absmax, the absmax quantized
    as bitsandbytes' CUDA kernel does it (the 7-step binary search over the
    signed dynamic map, blocks of 256 scales, offset = the float32 mean as
    torch computes it on CUDA; ../shared/docs/bnb-format.md 2.3).  The CPU
    path of bitsandbytes chooses those 8-bit codes differently (a lookup
    table), so it is not the reference there.
FP4 is left out: bitsandbytes' CPU FP4 codes differ from its CUDA ones on the
committed fixture.  Prints "ok ..." / "FAIL ..." lines; needs torch,
transformers, safetensors, numpy and bitsandbytes.
"""
import copy
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_reference as rr  # noqa: E402

f32 = np.float32


def q8(code, s):
    """bitsandbytes' CUDA dQuantize<0>: the code of s (already scaled)."""
    pivot, lo_p, hi_p, lo, hi = 127, 0, 255, f32(-1), f32(1)
    val = code[127]
    for step in (64, 32, 16, 8, 4, 2, 1):
        if s > val:
            lo_p, lo, pivot = pivot, val, pivot + step
        else:
            hi_p, hi, pivot = pivot, val, pivot - step
        val = code[pivot]
    if hi_p == 255:
        hi = code[255]
    if lo_p == 0:
        lo = code[0]
    if s > val:
        return hi_p if s > f32(f32(hi + val) * f32(0.5)) else pivot
    return lo_p if s < f32(f32(lo + val) * f32(0.5)) else pivot


def dq_absmax(absmax, code):
    """absmax as double quant stores and rebuilds it (two float32 roundings)."""
    nb = len(absmax)
    offset = f32(f32(np.sum(absmax.astype(np.float64))) * f32(f32(1) / f32(nb)))
    a = (absmax - offset).astype(np.float32)
    out = np.empty(nb, np.float32)
    for b0 in range(0, nb, 256):
        blk = a[b0:b0 + 256]
        am2 = f32(np.max(np.abs(blk)))
        inv = f32(1) / am2
        for i, v in enumerate(blk):
            out[b0 + i] = f32(f32(code[q8(code, f32(v * inv))] * am2) + offset)
    return out


def check(bindir, work):
    import torch  # noqa: F401
    import bitsandbytes.functional as F
    from safetensors.torch import load_file
    cfg = copy.deepcopy(rr.load_cfg("llama"))
    cfg.update(hidden_size=50, intermediate_size=700, num_attention_heads=5, num_key_value_heads=5)
    rr.load_cfg = lambda arch: cfg
    ck = os.path.join(work, "odd")
    rr.make("llama", ck, "bf16")
    sd = load_file(os.path.join(ck, "model.safetensors"))
    names = [n for n, t in sd.items() if t.dim() == 2 and "embed" not in n and "lm_head" not in n]
    code = F.create_dynamic_map(signed=True).numpy().astype(np.float32)
    tab = F.get_4bit_type("nf4", device="cpu").numpy().astype(np.float32)
    fails = 0
    for bs, dq in ((64, True), (128, True), (256, True), (64, False), (256, False)):
        lq = os.path.join(work, "odd.%d.%d.lq" % (bs, dq))
        subprocess.run([os.path.join(bindir, "quantize"), "-q", "-f", "-o", lq, "-t", "nf4", "-b", str(bs)] +
                       ([] if dq else ["--no-double-quant"]) + [ck], check=True)
        worst = 0
        for n in names:
            out = os.path.join(work, "w.npy")
            subprocess.run([os.path.join(bindir, "inspect"), "--dequant", n, "-f", "-o", out, lq],
                           check=True, capture_output=True)
            ours = np.load(out).reshape(-1).astype(np.float32)
            x = sd[n].float()
            q, st = F.quantize_4bit(x, blocksize=bs, quant_type="nf4", compress_statistics=False)
            if dq:
                qb = q.numpy().reshape(-1)
                codes = np.empty(qb.size * 2, np.uint8)
                codes[0::2], codes[1::2] = qb >> 4, qb & 15
                absmax = dq_absmax(st.absmax.numpy().astype(np.float32), code)
                ref = (tab[codes[:x.numel()]] * np.repeat(absmax, bs)[:x.numel()]).astype(np.float32)
            else:
                ref = F.dequantize_4bit(q, st).numpy().reshape(-1).astype(np.float32)
            worst = max(worst, int(np.count_nonzero(ours != ref)))
        print(("ok   " if worst == 0 else "FAIL ") + "nf4 block %d%s, %d Linears of %s elements: %d values differ"
              % (bs, " + double quant" if dq else "", len(names),
                 "/".join(sorted({str(sd[n].numel()) for n in names})), worst), flush=True)
        fails += worst != 0
    return fails


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "check":
        sys.exit(__doc__)
    sys.exit(1 if check(sys.argv[2], sys.argv[3]) else 0)
