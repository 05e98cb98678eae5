"""Random-init Hugging Face causal LMs (GPT-2, Llama with grouped-query attention), exported to
tierflow's ONNX LM form: no download, a tokenizer trained here on stdlib docstrings. Needs the
``export`` extra (torch, transformers)."""

from __future__ import annotations

from pathlib import Path

from tierflow.compiler.random_hf import NO_SPECIAL, train_tokenizer


def save_hf(folder: Path, kind: str, layers: int = 2) -> Path:
    """A random-init ``gpt2`` or ``llama`` (GQA: 2 KV heads for 4) with ``layers`` layers in ``folder``."""
    import torch
    import transformers

    folder.mkdir(parents=True)
    vocab = train_tokenizer(folder)
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=layers,
            n_embd=64,
            n_head=4,
            vocab_size=vocab,
            n_positions=128,
            initializer_range=0.2,  # wide enough weights that greedy decoding does not loop on one token
            **NO_SPECIAL,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=layers,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab,
            max_position_embeddings=256,
            **NO_SPECIAL,
        )
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def exported(root: Path, kind: str, layers: int = 3) -> Path:
    """``kind`` with ``layers`` layers, exported by tierflow's exporter to ``root/<kind>.onnx``."""
    from tierflow.compiler import export_hf as ex

    out = root / f"{kind}.onnx"
    ex.export_hf(save_hf(root / f"{kind}-hf", kind, layers), out, ex.ExportOptions(threads=2))
    return out
