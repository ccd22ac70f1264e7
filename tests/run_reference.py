#!/usr/bin/env python3
# run_reference.py - reference data for the CPU runtime from transformers.
#
# Copyright (c) the libquant authors.  MIT license.
#
#   run_reference.py make ARCH OUTDIR [--dtype bf16|fp32]
#       build a small random model of ARCH (llama, llama-bias, mistral, qwen2,
#       phi3, gemma2 and the VARIANTS below; configs in
#       tests/fixtures/run/ARCH.config.json, weights from a fixed seed) and
#       save_pretrained it into OUTDIR
#   run_reference.py logits CKPT IDS OUT.npy [--dequant DIR]
#       float32 logits [n, vocab] of transformers for the comma-separated ids,
#       the checkpoint loaded with dtype=float32; with --dequant, every
#       Linear weight NAME is replaced by DIR/NAME.npy first (our dequantized
#       weights, what bitsandbytes computes with at fp32 compute dtype)
#   run_reference.py greedy CKPT IDS N [--dequant DIR]
#       N greedy new ids (generate(do_sample=False)), comma-separated
#   run_reference.py check BINDIR WORKDIR [ARCH...]
#       the whole comparison in one process: for each ARCH make the bf16
#       checkpoint (llama also fp32 and fp16), quantize it (none, nf4 with
#       double quant, int8 with double quant, fp4 block 32 without double
#       quant; llama also int8 without double quant, nf4 block 128 with
#       lm_head quantized, fp4 with double quant), run our logits
#       and greedy ids, compare with transformers (unquantized: the
#       checkpoint; quantized: the checkpoint with our dequantized weights
#       from inspect --dequant; the VARIANTS and MEDIUM none and nf4 only),
#       with ARCH left out all of them.  Prints "ok ..." / "FAIL ..." lines.
#   run_reference.py compare A.npy B.npy TOL
#       relative L2 error |a-b|/|b| (whole array and worst row); exit 1 above TOL
import json
import os
import sys


def load_cfg(arch):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "fixtures", "run", arch + ".config.json")) as f:
        return json.load(f)


def make(arch, outdir, dtype):
    import torch
    import transformers
    cfgd = load_cfg(arch)
    cfg = transformers.AutoConfig.for_model(**cfgd)
    torch.manual_seed(1234)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g) if "gemma" not in arch
                        else 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / (p.shape[-1] ** 0.5))
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    elif dtype == "fp16":
        model = model.to(torch.float16)
    model.config.dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, "float32")
    model.save_pretrained(outdir)


def load(ckpt, dequant):
    import numpy as np
    import torch
    import transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    if dequant:
        with torch.no_grad():
            for name, mod in model.named_modules():
                if isinstance(mod, torch.nn.Linear):
                    path = os.path.join(dequant, name + ".weight.npy")
                    if os.path.exists(path):
                        w = torch.from_numpy(np.load(path)).to(torch.float32)
                        mod.weight = torch.nn.Parameter(w.reshape(mod.weight.shape).clone())
    return model


IDS = [1, 5, 17, 33, 40, 2, 9, 60, 71, 3, 88, 12, 45, 6, 19, 27, 50, 8, 91, 30, 14, 66, 23, 4]
ARCHS = ["llama", "llama-bias", "mistral", "qwen2", "phi3", "gemma2"]
# variants of the same families, unquantized and NF4 only: the config.json of
# the published models (rope_scaling and rope_theta at the top, as Llama 3.1
# writes them), tied embeddings with an explicit head_dim and one KV head
# (Llama 3.2-like), Phi-3's sliding window, Mistral v0.3 and Qwen2 without
# one (Qwen2 untied, as the 7B), Qwen2 without grouping, Gemma 2 without
# soft-caps and query_pre_attn_scalar = head_dim
VARIANTS = ["llama-oldrope", "llama-tied-mqa", "phi3-window", "mistral-nowindow", "qwen2-nowindow",
            "qwen2-mha", "gemma2-nocap"]
# hidden size 1280 (rows past the CPU matmul's stack buffer; head
# sizes 96 and 128; 10 heads of 2 KV heads) with a prompt of LONG_IDS: past
# the windows of 40, across the prefill's chunks, past Phi-3's original 64
# positions (longrope's long factors)
MEDIUM = ["llama-1280", "mistral-1280", "qwen2-1280", "phi3-1280", "gemma2-1280"]
LONG_IDS = [(i * 7919 + 13) % 509 + 3 for i in range(150)]
QUANTS = [("none", ["-t", "none"]), ("nf4", ["-t", "nf4"]), ("int8", ["-t", "int8"]),
          ("fp4", ["-t", "fp4", "-b", "32", "--no-double-quant"])]
# more storage variants, on the Llama model only
QUANTS_LLAMA = [("int8-nodq", ["-t", "int8", "--no-double-quant"]),
                ("nf4-b128-head", ["-t", "nf4", "-b", "128", "--quantize-head"]),
                ("fp4-dq", ["-t", "fp4"])]


def rel_rows(x, y):
    import numpy as np
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    return float((np.linalg.norm(x - y, axis=-1) / np.maximum(np.linalg.norm(y, axis=-1), 1e-30)).max())


def check(bindir, work, archs, tol=1e-4, ngen=8):
    import subprocess
    import numpy as np
    import torch
    from safetensors import safe_open
    fails = 0

    def sh(*cmd):
        r = subprocess.run(list(cmd), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("%s: exit %d: %s" % (cmd[0], r.returncode, r.stderr.strip()))
        return r.stdout

    def report(ok, what):
        nonlocal fails
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        fails += 0 if ok else 1

    for arch in archs:
        ids = LONG_IDS if arch in MEDIUM else IDS
        ids_s = ",".join(str(i) for i in ids)
        ids_t = torch.tensor([ids])
        for dtype in (["bf16", "fp32", "fp16"] if arch == "llama" else ["bf16"]):
            ck = os.path.join(work, "%s-%s" % (arch, dtype))
            make(arch, ck, dtype)
            with safe_open(os.path.join(ck, "model.safetensors"), "np") as f:
                names = [k for k in f.keys() if len(f.get_slice(k).get_shape()) == 2]
            quants = (QUANTS if arch in ARCHS else QUANTS[:2]) + (
                QUANTS_LLAMA if arch == "llama" and dtype == "bf16" else [])
            for q, qargs in quants:
                if dtype != "bf16" and q not in ("none", "nf4"):
                    continue
                tag = "%s %s %s" % (arch, dtype, q)
                try:
                    lq = ck + "." + q + ".lq"
                    sh(os.path.join(bindir, "quantize"), "-q", "-f", "-o", lq, *qargs, ck)
                    dq = None
                    if q != "none":
                        dq = ck + "." + q + ".dq"
                        os.makedirs(dq, exist_ok=True)
                        for n in names:
                            sh(os.path.join(bindir, "inspect"), "--dequant", n, "-f", "-o",
                               os.path.join(dq, n + ".npy"), lq)
                    model = load(ck, dq)
                    with torch.no_grad():
                        ref = model(ids_t, use_cache=False).logits[0].to(torch.float32).numpy()
                        gen = model.generate(ids_t, attention_mask=torch.ones_like(ids_t),
                                             max_new_tokens=ngen, min_new_tokens=ngen,
                                             do_sample=False, eos_token_id=None, pad_token_id=0)
                    ref_gen = [int(x) for x in gen[0, len(ids):]]
                    out = lq + ".logits.npy"
                    sh(os.path.join(bindir, "run"), "-j", "2", "--ids", ids_s, "--logits", out, "-f", lq)
                    ours = np.load(out)
                    err = rel_rows(ours, ref) if ours.shape == ref.shape else float("inf")
                    report(err <= tol, "%s logits: worst row rel L2 %.2e (tol %g)" % (tag, err, tol))
                    # transformers generates past EOS here (eos_token_id=None), so run must too
                    got = sh(os.path.join(bindir, "run"), "-j", "2", "--ids", ids_s, "--output-ids",
                             "--temp", "0", "--ignore-eos", "-n", str(ngen), lq).split()
                    got = [int(x) for x in got]
                    report(got == ref_gen, "%s greedy %d tokens: %s%s" % (
                        tag, ngen, got, "" if got == ref_gen else " != transformers %s" % ref_gen))
                except Exception as e:  # noqa: BLE001
                    report(False, "%s: %s" % (tag, e))
    return fails


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__ or "usage")
    cmd = a[0]
    dq = None
    if "--dequant" in a:
        i = a.index("--dequant")
        dq = a[i + 1]
        del a[i:i + 2]
    if cmd == "make":
        dtype = "bf16"
        if "--dtype" in a:
            i = a.index("--dtype")
            dtype = a[i + 1]
            del a[i:i + 2]
        make(a[1], a[2], dtype)
    elif cmd == "logits":
        import numpy as np
        import torch
        model = load(a[1], dq)
        ids = torch.tensor([[int(x) for x in a[2].split(",")]])
        with torch.no_grad():
            out = model(ids, use_cache=False).logits[0].to(torch.float32).numpy()
        np.save(a[3], out.astype(np.float32))
    elif cmd == "greedy":
        import torch
        model = load(a[1], dq)
        ids = torch.tensor([[int(x) for x in a[2].split(",")]])
        n = int(a[3])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        print(",".join(str(int(x)) for x in out[0, ids.shape[1]:]))
    elif cmd == "check":
        sys.exit(1 if check(a[1], a[2], a[3:] or ARCHS + VARIANTS + MEDIUM) else 0)
    elif cmd == "compare":
        import numpy as np
        x = np.load(a[1]).astype(np.float64)
        y = np.load(a[2]).astype(np.float64)
        tol = float(a[3])
        if x.shape != y.shape:
            print("shape %s != %s" % (x.shape, y.shape))
            sys.exit(1)
        rel = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)
        rows = np.linalg.norm(x - y, axis=-1) / np.maximum(np.linalg.norm(y, axis=-1), 1e-30)
        am = (x.argmax(-1) == y.argmax(-1)).all()
        print("rel_l2 %.3g worst_row %.3g argmax_equal %s" % (rel, rows.max(), am))
        sys.exit(0 if rows.max() <= tol else 1)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
