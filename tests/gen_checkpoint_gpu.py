#!/usr/bin/env python3
"""gen_checkpoint_gpu.py DIR [--layers N] [--phi3 | --gemma2 | --gemma2-9b | --qwen2 |
--qwen2-7b | --qwen2-0.5b] [--fp32 | --fp16]
- a Llama-3.1-8B-shaped checkpoint (with --phi3: Phi-3-mini-4k-shaped, fused
qkv_proj and gate_up_proj; with --gemma2: Gemma-2-2B-shaped, sandwich norms,
soft-caps, tied embeddings; with --gemma2-9b: the same, Gemma-2-9B-shaped; with --qwen2: Qwen2-1.5B-shaped, q/k/v biases,
tied embeddings; with --qwen2-7b: Qwen2-7B-shaped, 4 KV heads, an untied
lm_head; with --qwen2-0.5b: Qwen2-0.5B-shaped, 2 KV heads of 64) with random
bf16 weights (normal, std 0.02; norms 1; --fp32: float32, as the Gemma 2
checkpoints are published; --fp16: float16), made on the GPU with torch for `make
bench-gpu` (tests/gen_checkpoint makes the Llama shapes on the CPU, but takes
minutes for 16 GB).  Writes DIR/config.json and
DIR/model.safetensors (one file; safetensors' own writer)."""
import json
import os
import sys

import torch
from safetensors.torch import save_file


def main():
    out = sys.argv[1]
    phi3, q7 = "--phi3" in sys.argv, "--qwen2-7b" in sys.argv
    g9 = "--gemma2-9b" in sys.argv
    gemma2 = g9 or "--gemma2" in sys.argv
    q05 = "--qwen2-0.5b" in sys.argv
    qwen2 = q7 or q05 or "--qwen2" in sys.argv
    # vocabulary, hidden, intermediate, heads, KV heads, head size, layers
    V, D, I, H, KV, hd, layers = (
        (32064, 3072, 8192, 32, 32, 96, 32) if phi3 else
        (256000, 3584, 14336, 16, 8, 256, 42) if g9 else
        (256000, 2304, 9216, 8, 4, 256, 26) if gemma2 else
        (152064, 3584, 18944, 28, 4, 128, 28) if q7 else
        (151936, 896, 4864, 14, 2, 64, 24) if q05 else
        (151936, 1536, 8960, 12, 2, 128, 28) if qwen2 else
        (128256, 4096, 14336, 32, 8, 128, 32))
    if "--layers" in sys.argv:
        layers = int(sys.argv[sys.argv.index("--layers") + 1])
    os.makedirs(out, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
        "hidden_size": D, "intermediate_size": I, "num_hidden_layers": layers,
        "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": hd,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "rope_theta": 500000.0,
    }
    if phi3:
        cfg = {
            "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": V,
            "hidden_size": D, "intermediate_size": I, "num_hidden_layers": layers,
            "num_attention_heads": H, "num_key_value_heads": KV, "max_position_embeddings": 4096,
            "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "bos_token_id": 1, "eos_token_id": 32000, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "rope_theta": 10000.0, "rope_scaling": None,
            "sliding_window": 2047,
        }
    if gemma2:
        cfg = {
            "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": V,
            "hidden_size": D, "intermediate_size": I, "num_hidden_layers": layers,
            "num_attention_heads": H, "num_key_value_heads": KV, "head_dim": hd,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": hd,
            "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
            "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
            "bos_token_id": 2, "eos_token_id": 1, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "rope_theta": 10000.0,
        }
    if qwen2:
        cfg = {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": V,
            "hidden_size": D, "intermediate_size": I, "num_hidden_layers": layers,
            "num_attention_heads": H, "num_key_value_heads": KV, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643,
            "tie_word_embeddings": not q7, "torch_dtype": "bfloat16", "rope_theta": 1000000.0,
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": layers,
        }
    dt = torch.float32 if "--fp32" in sys.argv else torch.float16 if "--fp16" in sys.argv else torch.bfloat16
    cfg["torch_dtype"] = str(dt).split(".")[1]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    g = torch.Generator(device="cuda").manual_seed(1)

    def w(*shape):
        return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * 0.02).to(dt).cpu()

    t = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": torch.ones(D, dtype=dt)}
    if q7 or not (gemma2 or qwen2):
        t["lm_head.weight"] = w(V, D)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = torch.ones(D, dtype=dt)
        t[p + "post_attention_layernorm.weight"] = torch.ones(D, dtype=dt)
        if gemma2:
            t[p + "pre_feedforward_layernorm.weight"] = torch.ones(D, dtype=dt)
            t[p + "post_feedforward_layernorm.weight"] = torch.ones(D, dtype=dt)
        if phi3:
            t[p + "self_attn.qkv_proj.weight"] = w((H + 2 * KV) * hd, D)
            t[p + "mlp.gate_up_proj.weight"] = w(2 * I, D)
        else:
            t[p + "self_attn.q_proj.weight"] = w(H * hd, D)
            t[p + "self_attn.k_proj.weight"] = w(KV * hd, D)
            t[p + "self_attn.v_proj.weight"] = w(KV * hd, D)
            t[p + "mlp.gate_proj.weight"] = w(I, D)
            t[p + "mlp.up_proj.weight"] = w(I, D)
        if qwen2:
            t[p + "self_attn.q_proj.bias"] = w(H * hd)
            t[p + "self_attn.k_proj.bias"] = w(KV * hd)
            t[p + "self_attn.v_proj.bias"] = w(KV * hd)
        t[p + "self_attn.o_proj.weight"] = w(D, H * hd)
        t[p + "mlp.down_proj.weight"] = w(D, I)
    save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
