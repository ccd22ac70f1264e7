#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
"""Train the tiny model: a 6.5M-parameter LlamaForCausalLM on the King James Bible.

Usage: python3 examples/tiny/train.py [options] --out DIR

Reads the training text of prepare.sh (--train, default .device/tiny/train.txt),
the held-out text (--heldout, default examples/tiny/heldout.txt) and the
tokenizer of train_tokenizer.py (--tokenizer, default examples/tiny/model), and
writes into DIR a Hugging Face model folder: config.json, model.safetensors
(bf16), generation_config.json, tokenizer.json, tokenizer_config.json, plus
samples.txt (generations of the saved model).  Needs torch, transformers 5.x and
tokenizers; a CUDA GPU (bf16 autocast) or, slowly, the CPU.

The training stream is the training text, chapter after chapter in book order,
with short chat conversations in the tokenizer's chat template inserted between
chapters (a user asks for a chapter, a verse, or verses about a word; the
assistant answers with verses of the training text), so that the model also
answers in the chat format.  A plain run of chapters starts with
<|begin_of_text|> and ends with <|end_of_text|>.  Several passes with different
conversations are concatenated; each step trains on random 512-token windows.
Dropout (train only: hooks on the embeddings, attention and MLP outputs; the
saved model is a plain Llama) and weight decay fight the small corpus' overfit;
the weights with the lowest held-out loss are kept.

Held-out loss: <|begin_of_text|> + heldout.txt tokenized as one sequence, cut
into consecutive windows of --ctx tokens, each window evaluated on its own (the
first token of a window is not predicted), mean over the predicted tokens.
The numbers in the log are from the fp32 master weights; the final line
("saved model: heldout loss") is from the saved bf16 weights computed in fp32.

Reproducible from --seed (up to the nondeterminism of GPU kernels).
"""
import argparse
import collections
import copy
import json
import math
import os
import random
import re
import shutil
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

SYSTEMS = [None, None, None, "You are a helpful assistant.",
           "You are a scribe who answers in the words of the King James Bible.",
           "Answer in the words of scripture.", "You are a wise teacher.",
           "You are a helpful assistant. Answer briefly."]
ASK_CHAPTER = ["Read me {b} {c}.", "{b} {c}", "Recite {b} chapter {c}.", "What is written in {b} {c}?",
               "Please read {b} {c}.", "Read {b} chapter {c} to me.", "How does {b} {c} begin?"]
ASK_VERSE = ["{b} {c}:{v}", "What does {b} {c}:{v} say?", "Quote {b} {c}:{v}.", "Read me {b} {c}:{v}."]
ASK_WORD = ["What does the scripture say about {w}?", "Tell me about {w}.", "Speak to me of {w}.",
            "What is {w}?", "Give me a verse about {w}.", "What does the Bible say about {w}?",
            "Tell me something about {w}.", "I want to hear about {w}."]
STOP = set("""that with which unto shall they them their have were there thee thou thy from this upon will
when then also into said came went because after before these those thine your what shalt hath even
unto over things more every were been made make should would could against among according""".split())


def log(f, *a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    if f:
        f.write(s + "\n")
        f.flush()


def read_chapters(path):
    """[(heading, [verse, ...])] from prepare.sh's format."""
    out = []
    with open(path, encoding="utf-8") as f:
        for block in f.read().split("\n\n"):
            lines = [x for x in block.split("\n") if x]
            if lines:
                out.append((lines[0], lines[1:]))
    return out


def split_heading(h):
    m = re.match(r"^(.*) (\d+)$", h)
    return m.group(1), int(m.group(2))


def topic_index(chapters):
    count = collections.Counter()
    where = collections.defaultdict(list)
    for ci, (_, verses) in enumerate(chapters):
        for vi, v in enumerate(verses):
            for w in set(re.findall(r"[a-z]+", v)):
                count[w] += 1
                where[w].append((ci, vi))
    words = sorted(w for w, n in count.items() if 20 <= n <= 1500 and len(w) >= 4 and w not in STOP)
    return words, where


def conversation(rng, tok, chapters, words, where):
    ci = rng.randrange(len(chapters))
    book, c = split_heading(chapters[ci][0])
    verses = chapters[ci][1]
    kind = rng.random()
    if kind < 0.35:
        user = rng.choice(ASK_CHAPTER).format(b=book, c=c)
        answer = "\n".join(verses[:rng.randint(2, 8)])
    elif kind < 0.6:
        vi = rng.randrange(len(verses))
        user = rng.choice(ASK_VERSE).format(b=book, c=c, v=vi + 1)
        answer = verses[vi]
    else:
        w = rng.choice(words)
        picks = rng.sample(where[w], min(len(where[w]), rng.randint(1, 3)))
        user = rng.choice(ASK_WORD).format(w=w)
        answer = "\n".join(chapters[a][1][b] for a, b in picks)
    msgs = []
    system = rng.choice(SYSTEMS)
    if system:
        msgs.append({"role": "system", "content": system})
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return tok.apply_chat_template(msgs, tokenize=False)


def build_stream(tok, chapters, passes, seed):
    """Token ids of the training stream (see the module doc)."""
    rng = random.Random(seed)
    words, where = topic_index(chapters)
    bos, eos = tok.bos_token, "<|end_of_text|>"
    texts = []
    for _ in range(passes):
        run = []
        for heading, verses in chapters:
            run.append(heading + "\n" + "\n".join(verses) + "\n\n")
            if rng.random() < 0.5:
                texts.append(bos + "".join(run) + eos)
                run = []
                for _ in range(rng.randint(1, 4)):
                    texts.append(conversation(rng, tok, chapters, words, where))
        if run:
            texts.append(bos + "".join(run) + eos)
    ids = []
    for enc in tok._tokenizer.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32), len(words)


def heldout_ids(tok, path):
    with open(path, encoding="utf-8") as f:
        return torch.tensor(tok(f.read()).input_ids, dtype=torch.long)


@torch.no_grad()
def evaluate(model, ids, ctx, device, autocast):
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(ids) - 1, ctx):
        x = ids[s:s + ctx].to(device)[None]
        if x.shape[1] < 2:
            break
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="sum")
        total += loss.item()
        n += x.shape[1] - 1
    model.train()
    return total / n


def add_dropout(model, p):
    def hook(mod, inp, out):
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, mod.training),) + tuple(out[1:])
        return F.dropout(out, p, mod.training)
    if p > 0:
        model.model.embed_tokens.register_forward_hook(hook)
        for layer in model.model.layers:
            layer.self_attn.register_forward_hook(hook)
            layer.mlp.register_forward_hook(hook)


def samples(model, tok, device, seed):
    prompts = [
        ("text", "Genesis 1\n"),
        ("text", "Psalms 23\n"),
        ("text", "And Jesus said unto them,"),
        ("chat", [{"role": "user", "content": "Read me Psalms 23."}]),
        ("chat", [{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What does the scripture say about love?"}]),
        ("chat", [{"role": "user", "content": "Tell me about wisdom."}]),
    ]
    out = []
    gen = GenerationConfig.from_model_config(model.config)
    for kind, p in prompts:
        if kind == "text":
            x = tok(p, return_tensors="pt").input_ids.to(device)
        else:
            x = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"].to(device)
        torch.manual_seed(seed)
        y = model.generate(x, do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=120,
                           eos_token_id=model.generation_config.eos_token_id, pad_token_id=tok.bos_token_id)
        out.append("### %s: %r\n%s\n" % (kind, p, tok.decode(y[0, x.shape[1]:], skip_special_tokens=False)))
    del gen
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", default=os.path.join(ROOT, ".device", "tiny", "train.txt"))
    ap.add_argument("--heldout", default=os.path.join(ROOT, "examples", "tiny", "heldout.txt"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "examples", "tiny", "model"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--passes", type=int, default=8, help="passes over the text in the stream")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop training after this long (0: no limit)")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train.log"), "w")
    log(logf, "args", json.dumps(vars(a), sort_keys=True))
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    chapters = read_chapters(a.train)
    t0 = time.time()
    stream, nwords = build_stream(tok, chapters, a.passes, a.seed)
    held = heldout_ids(tok, a.heldout)
    log(logf, "chapters %d, topic words %d, stream %d tokens (%d passes), heldout %d tokens, %.1fs"
        % (len(chapters), nwords, len(stream), a.passes, len(held), time.time() - t0))

    eos = [tok.convert_tokens_to_ids("<|end_of_text|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=a.hidden // a.heads, max_position_embeddings=a.ctx, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=eos,
    )
    model = LlamaForCausalLM(cfg).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    log(logf, "parameters %d (%.2fM), device %s" % (nparams, nparams / 1e6, device))
    add_dropout(model, a.dropout)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    stream_dev = stream.to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(a.seed)
    span = torch.arange(a.ctx + 1, device=device)
    best, best_step, best_state = float("inf"), -1, None
    model.train()
    t0 = time.time()
    step = 0
    for step in range(a.steps + 1):
        if step % a.eval_every == 0 or step == a.steps:
            v = evaluate(model, held, a.ctx, device, autocast)
            if v < best:
                best, best_step = v, step
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            log(logf, "step %5d  heldout loss %.4f  ppl %.2f  lr %.2e  %.1fs%s"
                % (step, v, math.exp(v), lr_at(step), time.time() - t0, "  *" if best_step == step else ""))
        if step == a.steps or (a.max_seconds and time.time() - t0 > a.max_seconds):
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        starts = torch.randint(0, len(stream_dev) - a.ctx - 1, (a.batch,), device=device, generator=gen)
        chunk = stream_dev[starts[:, None] + span].long()
        x, y = chunk[:, :-1], chunk[:, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            log(logf, "step %5d  train loss %.4f  %.1f ms/step" % (step, loss.item(), 1000 * (time.time() - t0) / (step + 1)))
    log(logf, "trained %d steps in %.1fs; best heldout loss %.4f (ppl %.2f) at step %d"
        % (step, time.time() - t0, best, math.exp(best), best_step))

    model.load_state_dict(best_state)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, do_sample=True,
        temperature=0.7, top_p=0.9, max_length=a.ctx)
    model.save_pretrained(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.tokenizer, f), os.path.join(a.out, f))

    # the saved folder, as a user loads it: bf16 weights, fp32 compute
    m2 = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32).to(device)
    v = evaluate(m2, held, a.ctx, device, False)
    log(logf, "saved model: heldout loss %.4f ppl %.2f (bf16 weights, fp32 compute, %d tokens, windows of %d)"
        % (v, math.exp(v), len(held) - 1, a.ctx))
    text = samples(m2, tok, device, a.seed)
    with open(os.path.join(a.out, "samples.txt"), "w") as f:
        f.write(text)
    log(logf, text)


if __name__ == "__main__":
    main()
