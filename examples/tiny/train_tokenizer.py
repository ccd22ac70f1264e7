#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Copyright (c) the libquant authors
"""Train the tiny model's tokenizer: a byte-level BPE in the shape of Llama 3's.

Usage: python3 examples/tiny/train_tokenizer.py [TRAIN_TXT] [OUTDIR]
  TRAIN_TXT  the training text of prepare.sh (default .device/tiny/train.txt)
  OUTDIR     where tokenizer.json and tokenizer_config.json go
             (default examples/tiny/model)

Needs the HF `tokenizers` library.  Deterministic: the same text gives the
same tokenizer.json.  The structure is Llama 3's: Llama 3's split regex,
ByteLevel bytes-to-unicode, BPE with ignore_merges, a post-processor that puts
<|begin_of_text|> in front, and the special tokens after the BPE vocabulary
(8192 tokens in all), with a Llama-3-style chat template in
tokenizer_config.json.
"""
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 8192
# the same order as Llama 3.1's first special tokens (128000...)
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
]
# Llama 3's pre-tokenizer pattern
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
         r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# One turn: header, two newlines, trimmed content, <|eot_id|>; BOS once in
# front; an open assistant header with add_generation_prompt.
CHAT_TEMPLATE = (
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}\n"
    "{{- message['content'] | trim }}\n"
    "{{- '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n"
)


def train(text_path):
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIALS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([text_path], trainer)
    if tok.get_vocab_size() != VOCAB_SIZE - len(SPECIALS):
        sys.exit("train_tokenizer: the text gives only %d BPE tokens" % tok.get_vocab_size())
    tok.add_special_tokens(SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
            special_tokens=[("<|begin_of_text|>", bos)],
        ),
    ])
    return tok


def config(tok):
    added = {}
    for t in SPECIALS:
        added[str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True,
        }
    return {
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 512,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def main():
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    text = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".device", "tiny", "train.txt")
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "examples", "tiny", "model")
    tok = train(text)
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config(tok), f, indent=2)
        f.write("\n")
    print("train_tokenizer: %d tokens -> %s" % (tok.get_vocab_size(), out))


if __name__ == "__main__":
    main()
