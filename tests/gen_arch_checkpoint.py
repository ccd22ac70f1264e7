#!/usr/bin/env python3
"""gen_arch_checkpoint.py ARCH OUTDIR [HEAD_DIM [HEADS/KV_HEADS]] - a synthetic float32
checkpoint of one of the fixture architectures (tests/fixtures/run/ckpt-ARCH),
scaled up so that the GPU runtime's tensor-core paths apply (hidden 512,
intermediate 1408, 8 heads of 64, 2 KV heads, 2 layers, vocabulary 1000): the
fixture's config.json with those sizes, its tensor names, N(0, 0.02) weights
and biases, norms near their identity.  With HEAD_DIM (a multiple of 32: the
real models' 96, 128 or 256), 4 heads of that size and 2 KV heads; the hidden
size stays 512 where the config has a head_dim of its own, else it is 4 x
HEAD_DIM; HEADS/KV_HEADS (say 6/2) sets the two head counts instead of 4 and
2.  gpu/test_forward compares the GPU runtime with the CPU one on these
(the fixtures themselves are too small for the tile layout).

Needs numpy and safetensors (pip install numpy safetensors).
Copyright (c) the libquant authors.  MIT license.
"""
import json
import os
import re
import struct
import sys

import numpy as np
from safetensors.numpy import save_file

D, I, H, KV, HD, L, V = 512, 1408, 8, 2, 64, 2, 1000


def config(arch, fix):
    c = dict(fix)
    c.update(hidden_size=D, intermediate_size=I, num_attention_heads=H, num_key_value_heads=KV,
             num_hidden_layers=L, vocab_size=V, max_position_embeddings=4096)
    if "head_dim" in c:
        c["head_dim"] = HD
    if c.get("sliding_window"):
        c["sliding_window"] = 48  # the tests' 130-token prompts cross it
    if "layer_types" in c:
        c["layer_types"] = c["layer_types"][:L]
    if "query_pre_attn_scalar" in c:
        c["query_pre_attn_scalar"] = HD
    rp = c.get("rope_parameters")
    if isinstance(rp, dict) and rp.get("rope_type") == "longrope":
        rp = dict(rp)
        rp["short_factor"] = [1.0 + 0.01 * i for i in range(HD // 2)]
        rp["long_factor"] = [1.0 + 0.25 * i for i in range(HD // 2)]
        rp["original_max_position_embeddings"] = 64  # prompts and decoding cross it
        c["original_max_position_embeddings"] = 64
        c["rope_parameters"] = rp
    return c


def tensor_names(path):
    """The tensor names in a safetensors file's header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


def shape(name):
    """The shape of a tensor named as in the fixture, at the new sizes."""
    rules = [
        (r"embed_tokens\.weight$|lm_head\.weight$", (V, D)),
        (r"norm\.weight$", (D,)),
        (r"qkv_proj\.weight$", ((H + 2 * KV) * HD, D)),
        (r"q_proj\.weight$", (H * HD, D)),
        (r"[kv]_proj\.weight$", (KV * HD, D)),
        (r"q_proj\.bias$", (H * HD,)),
        (r"[kv]_proj\.bias$", (KV * HD,)),
        (r"o_proj\.weight$", (D, H * HD)),
        (r"o_proj\.bias$", (D,)),
        (r"gate_up_proj\.weight$", (2 * I, D)),
        (r"(gate|up)_proj\.weight$", (I, D)),
        (r"down_proj\.weight$", (D, I)),
    ]
    for pat, shp in rules:
        if re.search(pat, name):
            return shp
    raise SystemExit("gen_arch_checkpoint: no shape rule for tensor %s" % name)


def main():
    global D, H, KV, HD
    if len(sys.argv) not in (3, 4, 5):
        raise SystemExit("usage: gen_arch_checkpoint.py ARCH OUTDIR [HEAD_DIM [HEADS/KV_HEADS]]")
    arch, out = sys.argv[1], sys.argv[2]
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "run", "ckpt-" + arch)
    with open(os.path.join(src, "config.json")) as f:
        fix = json.load(f)
    if len(sys.argv) >= 4:
        if not sys.argv[3].isdigit() or int(sys.argv[3]) % 32 or not 32 <= int(sys.argv[3]) <= 256:
            raise SystemExit("gen_arch_checkpoint: HEAD_DIM must be a multiple of 32 from 32 to 256, not %s"
                             % sys.argv[3])
        H, HD = 4, int(sys.argv[3])
    if len(sys.argv) == 5:
        m = re.fullmatch(r"([1-9][0-9]?)/([1-9][0-9]?)", sys.argv[4])
        if not m or int(m.group(1)) % int(m.group(2)):
            raise SystemExit("gen_arch_checkpoint: HEADS/KV_HEADS must be two counts, the first a multiple of "
                             "the second, not %s" % sys.argv[4])
        H, KV = int(m.group(1)), int(m.group(2))
    if len(sys.argv) >= 4:
        if "head_dim" not in fix:
            D = H * HD  # the head size is hidden / heads
    c = config(arch, fix)
    names = set()
    for n in tensor_names(os.path.join(src, "model.safetensors")):
        names.add(re.sub(r"^model\.layers\.\d+\.", "model.layers.{}.", n))
    rng = np.random.default_rng(sum(map(ord, arch)))
    gemma = c.get("model_type", "").startswith("gemma")
    tensors = {}
    for pat in sorted(names):
        for layer in range(L) if "{}" in pat else [None]:
            name = pat.format(layer) if layer is not None else pat
            shp = shape(name)
            if name.endswith("norm.weight"):
                # Gemma stores w for a (1 + w) scale
                v = rng.normal(0.0 if gemma else 1.0, 0.1, shp)
            else:
                v = rng.normal(0.0, 0.02, shp)
            tensors[name] = v.astype(np.float32)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    c["dtype"] = "float32"
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)


if __name__ == "__main__":
    main()
