"""Random-init Hugging Face causal LMs built here (no download), for tests and benchmarks.

A byte-level BPE tokenizer is trained on a few KB of stdlib docstrings so that the exported model
takes text. Needs the ``export`` extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

import inspect
import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.compiler import export_hf as ex
from tierflow.model.registry import tierflow_home


@dataclass(frozen=True)
class LlamaShape:
    """A Llama-architecture model's size (grouped-query attention when ``kv_heads < heads``)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int = 32000
    max_positions: int = 512

    @property
    def name(self) -> str:
        return f"llama-{self.layers}x{self.hidden}"


def train_tokenizer(folder: Path, vocab_size: int = 600) -> int:
    """A byte-level BPE trained on stdlib docstrings, saved as a fast tokenizer; its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n".join(inspect.getdoc(m) or "" for m in (json, os, inspect, textwrap, Path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")  # type: ignore[no-untyped-call]
    fast.save_pretrained(folder)
    return int(tok.get_vocab_size())


# no special tokens: generation never stops early, like CausalLM without stop ids
NO_SPECIAL: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


def save_random_llama(folder: Path, shape: LlamaShape, seed: int = 0) -> Path:
    """A random-init Llama of ``shape`` with the docstring tokenizer, saved in ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    train_tokenizer(folder)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        num_hidden_layers=shape.layers,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        max_position_embeddings=shape.max_positions,
        **NO_SPECIAL,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def ensure_random_llama(shape: LlamaShape, threads: int = 2) -> Path:
    """``shape`` exported to tierflow's ONNX LM form, cached in the tierflow home (built once)."""
    root = tierflow_home() / "bench"
    out = root / f"{shape.name}-i{shape.intermediate}-h{shape.heads}-kv{shape.kv_heads}.onnx"
    if out.is_file():
        return out
    staging = root / f".{out.stem}-hf-{os.getpid()}"
    try:
        ex.export_hf(save_random_llama(staging, shape), out, ex.ExportOptions(threads=threads))
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return out
