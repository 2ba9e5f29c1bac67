"""Recipe of the embedded default pair: tokenizer, target and draft, from scratch.

    python -m specpack.models.train --out specpack/models/default  # ~25 min on 2 CPU cores

1. Corpus: the ``.py`` files at the top level of this Python's standard
   library (``sysconfig.get_paths()["stdlib"]``), sorted by name, every 10th
   file held out for evaluation.
2. Tokenizer: byte-level BPE, 4,096 tokens, trained on the training files.
3. Models (Llama architecture, head_dim 64, tied embeddings, RoPE):
   target 4 layers x 256 hidden (4 heads); draft 1 layer x 128 (2 heads).
4. Training: AdamW (lr 3e-3 target / 5e-3 draft, cosine to 10%, 20 warm-up
   steps), batches of 16 windows x 256 tokens sampled with a fixed seed, fp32
   on CPU; weights saved in fp16 safetensors.

Prints train loss every 25 steps and held-out cross-entropy at the end.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sysconfig
import time
from pathlib import Path

import numpy as np


def corpus_files() -> tuple[list[str], list[str]]:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    train = [f for i, f in enumerate(files) if i % 10 != 0]
    held = [f for i, f in enumerate(files) if i % 10 == 0]
    return train, held


def read(files: list[str]) -> list[str]:
    out = []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            out.append(fh.read())
    return out


def encode(tok, texts: list[str]) -> np.ndarray:
    ids: list[int] = []
    for t in texts:
        ids.extend(tok.encode(t).ids)
    return np.asarray(ids, np.int32)


def train_model(config, data: np.ndarray, steps: int, lr: float, seed: int, log_prefix: str):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(seed)
    seq, bs, warm = 256, 16, 20
    t0 = time.time()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = lr * scale
        starts = rng.integers(0, data.size - seq - 1, size=bs)
        batch = torch.as_tensor(np.stack([data[s:s + seq + 1] for s in starts]), dtype=torch.long)
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        # labels are shifted inside the model; use explicit next-token targets instead
        logits = out.logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"{log_prefix} step {step:4d} loss {loss.item():.3f} ({time.time() - t0:.0f}s)",
                  flush=True)
    return model.eval()


def held_out_ce(model, data: np.ndarray, n: int = 16, seq: int = 256) -> float:
    import torch

    rng = np.random.default_rng(123)
    starts = rng.integers(0, data.size - seq - 1, size=n)
    batch = torch.as_tensor(np.stack([data[s:s + seq + 1] for s in starts]), dtype=torch.long)
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1]).logits
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                       batch[:, 1:].reshape(-1)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "default"))
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--target-steps", type=int, default=1200)
    ap.add_argument("--draft-steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig

    from specpack.testing.tiny_models import build_tokenizer

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    train_files, held_files = corpus_files()
    train_texts, held_texts = read(train_files), read(held_files)
    tok_dir = out / "tokenizer"
    vocab = build_tokenizer(tok_dir, vocab_size=a.vocab, texts=train_texts, model_max_length=16384)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    train_ids, held_ids = encode(tok, train_texts), encode(tok, held_texts)
    print(f"corpus: {len(train_files)} train files ({train_ids.size} tokens), "
          f"{len(held_files)} held-out files ({held_ids.size} tokens), vocab {vocab}")

    def cfg(layers, hidden, heads):
        return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, head_dim=64, max_position_embeddings=16384,
                           tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
                           pad_token_id=2, rope_theta=10000.0)

    report = {"vocab": vocab, "train_tokens": int(train_ids.size), "held_tokens": int(held_ids.size)}
    for name, (layers, hidden, heads, steps, lr, seed) in {
        "target": (4, 256, 4, a.target_steps, 3e-3, 0),
        "draft": (1, 128, 2, a.draft_steps, 5e-3, 1),
    }.items():
        model = train_model(cfg(layers, hidden, heads), train_ids, steps, lr, seed, name)
        ce = held_out_ce(model, held_ids)
        print(f"{name}: held-out cross-entropy {ce:.3f} nats/token")
        report[name] = {"layers": layers, "hidden": hidden, "heads": heads, "steps": steps,
                        "params": sum(p.numel() for p in model.parameters()),
                        "held_out_ce": round(ce, 4)}
        d = out / name
        model.half().save_pretrained(d, safe_serialization=True)
        for f in ("tokenizer.json", "tokenizer_config.json"):
            (d / f).write_bytes((tok_dir / f).read_bytes())
    (out / "recipe.json").write_text(json.dumps(report, indent=2))
    for f in tok_dir.iterdir():  # the tokenizer now lives next to each model
        f.unlink()
    tok_dir.rmdir()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
