#!/usr/bin/env python3
# run_reference.py - reference data for the CPU runtime from transformers.
#
# Copyright (c) the libquant authors.  MIT license.
#
#   run_reference.py make ARCH OUTDIR [--dtype bf16|fp32]
#       build a small random model of ARCH (llama, llama-bias, mistral, qwen2,
#       phi3, gemma2; configs in tests/fixtures/run/ARCH.config.json, weights
#       from a fixed seed) and save_pretrained it into OUTDIR
#   run_reference.py logits CKPT IDS OUT.npy [--dequant DIR]
#       float32 logits [n, vocab] of transformers for the comma-separated ids,
#       the checkpoint loaded with dtype=float32; with --dequant, every
#       Linear weight NAME is replaced by DIR/NAME.npy first (our dequantized
#       weights, what bitsandbytes computes with at fp32 compute dtype)
#   run_reference.py greedy CKPT IDS N [--dequant DIR]
#       N greedy new ids (generate(do_sample=False)), comma-separated
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
    model.config.dtype = "bfloat16" if dtype == "bf16" else "float32"
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
