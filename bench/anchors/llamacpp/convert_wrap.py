"""Run llama.cpp's convert_hf_to_gguf.py with one tokenizer workaround.

The random checkpoints carry a tiny byte-level BPE (tokenizers ByteLevel, i.e. GPT-2 style) with
~600 entries, no tokenizer.model. Stock LlamaModel.set_vocab tries sentencepiece first, then the
GPT-2 path, whose pre-tokenizer hash check rejects an unknown tokenizer. Here set_vocab goes
straight to the GPT-2 BPE path and the pre-tokenizer is declared "gpt-2" (same regex as
ByteLevel). get_vocab_base pads ids 600..31999 with [PADi] tokens so the vocab matches the
32000-row embedding. Weights are untouched. llama-bench does not use the text.
"""
import runpy, sys
from pathlib import Path
src = Path.cwd() / "src"  # measure.sh runs this from its work folder
sys.path.insert(0, str(src))
from conversion import base, llama
llama.LlamaModel.set_vocab = base.TextModel._set_vocab_gpt2
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv[0] = str(src / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
