"""Build tiny Llama checkpoints with a locally trained tokenizer.

Tests and the demo must never download anything, so this module writes a
complete Hugging Face checkpoint directory (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) from
nothing: a byte-level BPE tokenizer trained on a small built-in corpus and a
Llama model with seeded random weights.

The weights are random but structured so the model is useful for testing
speculative decoding:

* the output head is the input embedding read through a fixed permutation
  ``next`` made of short cycles (3-12 tokens), so that the residual stream's
  token identity ``t`` votes for ``next[t]``: generations mostly walk those
  cycles, which gives retrieval proposers repeats to accept;
* attention and MLP outputs are scaled down (``attn_scale``, ``mlp_scale``)
  but not removed, so the context still changes the argmax at some steps:
  drafts get rejected there, and a bug in KV cache or position handling during
  verification changes the output;
* top-1 / top-2 logit gaps stay far above float32 rounding noise (> 1e-2 on
  the default seed), so "identical greedy output" tests correctness, not
  rounding luck, even though verification runs in a different batch shape
  than plain decoding.
"""

from __future__ import annotations

import json
from pathlib import Path

#: A small corpus, written for this module, used to train the tokenizer.
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i, i * i)\n",
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts several tokens and verifies them in one forward pass.",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    main(sys.argv[1:])\n",
    "with open(path) as f:\n    for line in f:\n        yield line.strip()\n",
    "A suffix tree stores every suffix of a sequence so that repeated patterns are found quickly.",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = None\n",
]


def successor_permutation(vocab_size: int, seed: int):
    """A permutation of ``range(vocab_size)`` made of cycles of 3 to 12 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(vocab_size)
    nxt = np.empty(vocab_size, dtype=np.int64)
    i = 0
    while i < vocab_size:
        cycle = order[i : i + int(rng.integers(3, 13))]
        nxt[cycle] = np.roll(cycle, -1)
        i += len(cycle)
    return nxt


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512, texts=None,
                    model_max_length: int = 4096) -> int:
    """Train a byte-level BPE tokenizer on ``texts`` (default :data:`CORPUS`);
    write ``tokenizer.json`` + ``tokenizer_config.json``; return its vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts if texts is not None else CORPUS * 4, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "model_max_length": model_max_length,
                "add_bos_token": False,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    return tok.get_vocab_size()


def build_tiny_llama(
    out_dir: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 2,
    head_dim: int = 64,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    init_std: float = 0.25,
    attn_scale: float = 0.05,
    mlp_scale: float = 0.005,
) -> Path:
    """Write a tiny seeded Llama checkpoint plus tokenizer to ``out_dir``.

    ``head_dim`` defaults to 64 because the vLLM CPU attention backend refuses
    head dims below 32. Calling it twice with the same arguments writes
    bit-identical weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    vocab = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        initializer_range=init_std,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.to(torch.float32)
    nxt = successor_permutation(vocab, seed)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        head = torch.empty_like(emb)
        head[torch.as_tensor(nxt)] = emb  # row next[t] of the head == embedding of t
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(attn_scale)
            layer.mlp.down_proj.weight.mul_(mlp_scale)
        # Never stop early on EOS in tests: generation length is then fixed.
        model.lm_head.weight[config.eos_token_id].fill_(0.0)
    model.save_pretrained(out, safe_serialization=True)
    return out


def tiny_vocab_llama(vocab_size: int = 6, *, seed: int = 0, hidden_size: int = 64,
                     num_layers: int = 2, init_std: float = 0.15):
    """An in-memory Llama over a tiny vocabulary (no tokenizer), for exact
    distribution tests: all ``vocab_size ** k`` continuations can be
    enumerated."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                         max_position_embeddings=256, initializer_range=init_std,
                         bos_token_id=0, eos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(torch.float32).eval()


def random_prompts(seed: int, n: int, *, repeat_every: int = 2, min_len: int = 2,
                   max_len: int = 25, vocab: tuple[int, int] = (3, 500)) -> list[list[int]]:
    """``n`` random token-id prompts; every ``repeat_every``-th one is a random
    span repeated three times, so retrieval drafts get accepted on it."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = rng.integers(*vocab, size=int(rng.integers(min_len, max_len))).tolist()
        out.append(p * 3 if i % repeat_every == 0 else p)
    return out
