#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
"""Write the expected module trees of the tiny model for tests/cli_tiny.sh.

Usage: python3 examples/tiny/tree_reference.py [MODEL_DIR] [OUTDIR]
  MODEL_DIR  default examples/tiny/model (only its config.json is read)
  OUTDIR     default tests/fixtures

Writes, from transformers 5.x on the `meta` device (no weights are read):
  tiny.bf16.txt   print(model) as transformers loads the model
  tiny.nf4.txt    print(model) with every nn.Linear except lm_head replaced by
                  a stand-in `Linear4bit` (bitsandbytes' class name and repr;
                  bitsandbytes itself is not needed), as quantize -t nf4 makes
  tiny.int8.txt   the same with `Linear8bitLt` (quantize -t int8)
  tiny.reference.json  parameter count and get_memory_footprint() of the three
"""
import json
import os
import sys

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class Linear4bit(nn.Linear):
    """Stand-in for bitsandbytes.nn.Linear4bit (same class name and repr)."""


class Linear8bitLt(nn.Linear):
    """Stand-in for bitsandbytes.nn.Linear8bitLt (same class name and repr)."""


def build(cfg):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)


def stub(model, kind):
    """bitsandbytes' storage: NF4 packs N*K/2 bytes, INT8 keeps [N, K] int8."""
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if type(child) is not nn.Linear or full == "lm_head":
                continue
            cls = Linear4bit if kind == "nf4" else Linear8bitLt
            with torch.device("meta"):
                q = cls(child.in_features, child.out_features, bias=child.bias is not None, dtype=torch.bfloat16)
            n = child.in_features * child.out_features
            shape = ((n + 1) // 2, 1) if kind == "nf4" else (child.out_features, child.in_features)
            dt = torch.uint8 if kind == "nf4" else torch.int8
            q.weight = nn.Parameter(torch.empty(shape, dtype=dt, device="meta"), requires_grad=False)
            setattr(mod, cname, q)
    return model


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "examples", "tiny", "model")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "tests", "fixtures")
    cfg = AutoConfig.from_pretrained(model_dir)
    ref = {"transformers": transformers.__version__}
    m = build(cfg)
    ref["num_parameters"] = m.num_parameters()
    ref["bf16"] = m.get_memory_footprint()
    with open(os.path.join(out, "tiny.bf16.txt"), "w") as f:
        f.write(repr(m) + "\n")
    for kind in ("nf4", "int8"):
        m = stub(build(cfg), kind)
        ref[kind] = m.get_memory_footprint()
        with open(os.path.join(out, "tiny.%s.txt" % kind), "w") as f:
            f.write(repr(m) + "\n")
    with open(os.path.join(out, "tiny.reference.json"), "w") as f:
        json.dump(ref, f, indent=1, sort_keys=True)
        f.write("\n")
    print("tree_reference: %s" % json.dumps(ref), file=sys.stderr)


if __name__ == "__main__":
    main()
