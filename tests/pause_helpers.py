"""Tiny models, tokenizers and data for the pause-token tests (shared by test_control_tokens / test_sft)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

PAUSE = "<|pause|>"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2_BPE = SHARED / "gpt2_bpe"
GSM8K = SHARED / "gsm8k"
TINY_ARCH = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512}


def tiny_tokenizer():
    """Byte-level tokenizer without merges: 256 byte symbols + <|endoftext|> (vocab 257)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2TokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    return GPT2TokenizerFast(vocab=vocab, merges=[], eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                             unk_token="<|endoftext|>")


def tiny_base(seed: int = 0, vocab_size: int = 257):
    """A 2-layer GPT-2 with tied embeddings and no dropout (deterministic)."""
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=256, eos_token_id=256, **TINY_ARCH)
    return AutoModelForCausalLM.from_config(config)


def tiny_model(seed: int = 0, control_tokens=(PAUSE,), detach_head: bool = True):
    from unfreeze.models.control.tokens import ControlTokenLM

    return ControlTokenLM.from_base(tiny_base(seed), tiny_tokenizer(), list(control_tokens), detach_head)


def save_tiny_tokenizer(folder: Path) -> Path:
    tiny_tokenizer().save_pretrained(folder)
    return folder


def toy_rows(n: int, seed: int = 0, pauses: bool = True) -> list[dict]:
    """Arithmetic word problems in GSM8K form; with pauses between words when `pauses`."""
    rng, pause_rng = random.Random(seed), random.Random(seed + 1)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        answer = f"She has {a}+{b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"
        if pauses:
            words = answer.split(" ")
            for _ in range(pause_rng.randint(1, 3)):
                i = pause_rng.randint(1, len(words) - 1)
                words[i] = PAUSE + words[i]
            answer = " ".join(words)
        rows.append({"question": f"Ann has {a} apples and gets {b} more. How many now?", "answer": answer})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def insert_pauses_between_tokens(tokenizer, answer: str, rng: random.Random, pause_id: int,
                                 max_pauses: int = 10) -> str:
    """What `inject-pauses` does with a tokenizer: insert pause ids between token ids, then decode."""
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    for _ in range(rng.randint(1, max_pauses)):
        ids.insert(rng.randint(0, len(ids)), pause_id)
    return tokenizer.decode(ids)
