"""Build the tiny random-weight Llama model that the real-vLLM conformance tier serves.

How this works
--------------
No model hub is reachable from CI, so the model is made on the spot: a byte-level BPE
tokenizer trained with ``tokenizers`` on a seeded synthetic corpus, with ChatML special tokens
(and hermes' ``<tool_call>`` tokens, which vLLM's hermes tool parser looks up in the vocabulary)
and a ChatML chat template, then a ``LlamaForCausalLM`` with seeded random weights saved as
safetensors. The shape fits vLLM's CPU attention, which accepts only some head sizes (32 here:
hidden 64 over 2 heads). The same seed gives the same files, and greedy decoding on them is
deterministic, so "the joined stream equals the non-streamed text" is a fair test.

This file is run by path with the *vLLM* environment's Python (torch, transformers and
tokenizers live there, not in llm-routes' own environment)::

    /path/to/vllm-venv/bin/python llm/testing/tiny_model.py OUT_DIR

It imports nothing from llm-routes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
VOCAB_SIZE = 2048
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Common English words: the tokenizer learns them whole, so English text comes to about four
# characters a token, as with real models' tokenizers (and as llm-routes' own estimate of a
# prompt's size assumes).
_WORDS = """the of and to a in is you that it he was for on are as with his they at be this
have from or one had by word but not what all were we when your can said there use an each
which she do how their if will up other about out many then them these so some her would make
like him into time has look two more write go see number no way could people my than first
water been call who oil its now find long down day did get come made may part hello world
answer question rule briefly politely please weather city paris london tokyo today tomorrow
user assistant system tool call function name value true false null list item key text json
model route server fast slow request response stream token cache prefix long short good bad
new old big small high low yes ok thanks help tell me about story once upon"""
WORDS = _WORDS.split()


def corpus(seed: int = 0, lines: int = 4000) -> list[str]:
    """Seeded text: mostly English words, some random letters and punctuation."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [26 - i for i in range(len(letters))]
    rare = ["".join(rng.choices(letters, weights, k=rng.randint(1, 6))) for _ in range(600)]
    marks = [".", ",", ":", "?", "!", "{", "}", '"', "[", "]", "0", "1", "2", "42", "-"]
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 20)):
            roll = rng.random()
            pool = WORDS if roll < 0.75 else rare if roll < 0.9 else marks
            words.append(rng.choice(pool))
        out.append(" ".join(words))
    return out


def build(out: Path, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(seed), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    (out / "llm-routes-tiny.json").write_text(json.dumps({"seed": seed, "vocab": len(tokenizer)}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_model.py OUT_DIR")
    build(Path(sys.argv[1]))
