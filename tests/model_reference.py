#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
"""Regenerate the module-tree and footprint fixtures of libquant/model.c.

Builds every config of tests/fixtures/model/*.config.json (small models with the
real structure) and tests/fixtures/configs/*.json (published configs of real
models, written from memory) with transformers 5.x on the `meta` device, and
writes into tests/fixtures/model/:

  NAME.bf16.txt    print(model) with dtype=bfloat16
  NAME.nf4.txt     print(model) after replacing every nn.Linear except lm_head
                   by a stub `Linear4bit` (bitsandbytes is not needed: its
                   Linear4bit subclasses nn.Linear and keeps nn.Linear's repr)
  NAME.int8.txt    same with a stub `Linear8bitLt`
  llama-small.nf4-keep.txt  NF4 with model.layers.0.mlp.* kept (mixed layers)
  NAME.tensors.txt one line per parameter as a checkpoint holds it (tied
                   weights once): "name dtype dim0 dim1 ..."
  reference.json   per config: get_memory_footprint() for bf16 / nf4 / int8,
                   parameter count, buffers (name, dtype, shape)
  rope.json        RoPE inverse frequencies and attention scaling computed by
                   transformers' rotary modules / ROPE_INIT_FUNCTIONS for the
                   configs above and some extra rope variants (linear,
                   dynamic, yarn, partial longrope), at load time and for a
                   long context

The stubs reproduce what bitsandbytes stores: a Params4bit holds the packed
uint8 tensor of ceil(N*K/2) bytes, an Int8Params the int8 [N, K] tensor;
get_memory_footprint() counts exactly those (not the quantization state).

Usage: python3 tests/model_reference.py [OUTDIR]   (needs torch and transformers 5.x)
OUTDIR (default tests/fixtures/model) receives the outputs; the configs are
always read from the fixtures.  tests/cli_model.sh runs this into a temporary
directory when torch and the recorded transformers version are installed.
"""
import json
import os
import sys

import torch
import torch.nn as nn
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = os.path.join(HERE, "fixtures", "model")
OUT = sys.argv[1] if len(sys.argv) > 1 else CFG
REAL = os.path.join(HERE, "fixtures", "configs")


class Linear4bit(nn.Linear):
    """Stand-in for bitsandbytes.nn.Linear4bit (same class name and repr)."""


class Linear8bitLt(nn.Linear):
    """Stand-in for bitsandbytes.nn.Linear8bitLt (same class name and repr)."""


def build(cfg_path):
    cfg = AutoConfig.from_pretrained(cfg_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model


def quantize_stub(model, kind, keep=None):
    """Replace nn.Linear (exact type) except lm_head, as transformers' bnb
    integration does with its default skip list; `keep`: a module-name
    prefix also left unquantized (as quantize --keep does)."""
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if type(child) is not nn.Linear or full == "lm_head":
                continue
            if keep and full.startswith(keep):
                continue
            cls = Linear4bit if kind == "nf4" else Linear8bitLt
            with torch.device("meta"):
                q = cls(child.in_features, child.out_features, bias=child.bias is not None,
                        dtype=torch.bfloat16)
            n = child.in_features * child.out_features
            if kind == "nf4":
                q.weight = nn.Parameter(torch.empty((n + 1) // 2, 1, dtype=torch.uint8, device="meta"),
                                        requires_grad=False)
            else:
                q.weight = nn.Parameter(torch.empty(child.out_features, child.in_features,
                                                    dtype=torch.int8, device="meta"),
                                        requires_grad=False)
            setattr(mod, cname, q)
    return model


ROPE_EXTRA = {
    "llama-linear": {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                     "num_hidden_layers": 1, "max_position_embeddings": 512,
                     "rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 10000.0},
    "llama-dynamic": {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                      "num_hidden_layers": 1, "max_position_embeddings": 512,
                      "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
    "qwen2-yarn": {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 131072,
                   "rope_theta": 1000000.0,
                   "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
    "qwen2-yarn-mscale": {"model_type": "qwen2", "hidden_size": 128, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 163840,
                          "rope_theta": 10000.0,
                          "rope_scaling": {"type": "yarn", "factor": 40.0, "mscale": 0.707,
                                           "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1,
                                           "original_max_position_embeddings": 4096}},
    "phi3-partial": {"model_type": "phi3", "hidden_size": 64, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 100, "pad_token_id": 0,
                     "max_position_embeddings": 8192, "original_max_position_embeddings": 1024,
                     "partial_rotary_factor": 0.5,
                     "rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5],
                                      "long_factor": [2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0, 19.0]},
                     "rope_theta": 10000.0},
}


def rope_cases(cases):
    """inv_freq as transformers computes it, at load time and for a long context."""
    import importlib
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    out = []
    allcfg = [(n, json.load(open(p))) for n, p in cases] + list(ROPE_EXTRA.items())
    for name, d in allcfg:
        cfg = AutoConfig.for_model(**d)
        mt = cfg.model_type
        mod = importlib.import_module(f"transformers.models.{mt}.modeling_{mt}")
        cls = [getattr(mod, c) for c in dir(mod) if c.endswith("RotaryEmbedding") and c[0].isupper()][0]
        with torch.device("cpu"):
            rot = cls(cfg)
        rt = cfg.rope_parameters["rope_type"]
        entry = {"name": name, "config": d, "rope_type": rt, "values": [
            {"seq_len": 0, "inv_freq": [float(x) for x in rot.inv_freq],
             "attention_scaling": float(rot.attention_scaling)}]}
        if rt in ("longrope", "dynamic"):
            long = cfg.max_position_embeddings * 2 if rt == "dynamic" else \
                cfg.rope_parameters["original_max_position_embeddings"] + 1
            inv, sc = ROPE_INIT_FUNCTIONS[rt](cfg, "cpu", seq_len=long)
            entry["values"].append({"seq_len": long, "inv_freq": [float(x) for x in inv],
                                    "attention_scaling": float(sc)})
        out.append(entry)
    return out


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", file=sys.stderr)
    cases = []
    for f in sorted(os.listdir(CFG)):
        if f.endswith(".config.json"):
            cases.append((f[: -len(".config.json")], os.path.join(CFG, f)))
    for f in sorted(os.listdir(REAL)):
        if f.endswith(".json"):
            cases.append((f[: -len(".json")], os.path.join(REAL, f)))
    ref = {"transformers": transformers.__version__, "torch": torch.__version__, "models": {}}
    for name, path in cases:
        entry = {}
        model = build(path)
        entry["num_parameters"] = model.num_parameters()
        entry["buffers"] = [[n, str(b.dtype).replace("torch.", ""), list(b.shape)]
                            for n, b in model.named_buffers()]
        entry["bf16"] = model.get_memory_footprint()
        with open(os.path.join(OUT, name + ".bf16.txt"), "w") as fh:
            fh.write(repr(model) + "\n")
        with open(os.path.join(OUT, name + ".tensors.txt"), "w") as fh:
            for n, p in model.named_parameters():
                dt = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[p.dtype]
                fh.write(" ".join([n, dt] + [str(d) for d in p.shape]) + "\n")
        for kind in ("nf4", "int8"):
            m = quantize_stub(build(path), kind)
            entry[kind] = m.get_memory_footprint()
            with open(os.path.join(OUT, f"{name}.{kind}.txt"), "w") as fh:
                fh.write(repr(m) + "\n")
        if name == "llama-small":
            # layer 0's MLP kept unquantized: the layer list no longer collapses as one run
            m = quantize_stub(build(path), "nf4", keep="model.layers.0.mlp.")
            entry["nf4_keep_l0_mlp"] = m.get_memory_footprint()
            with open(os.path.join(OUT, f"{name}.nf4-keep.txt"), "w") as fh:
                fh.write(repr(m) + "\n")
        ref["models"][name] = entry
        print(name, entry["num_parameters"], entry["bf16"], entry["nf4"], entry["int8"], file=sys.stderr)
    with open(os.path.join(OUT, "rope.json"), "w") as fh:
        json.dump(rope_cases(cases), fh, indent=1)
        fh.write("\n")
    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
