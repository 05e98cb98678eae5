"""`tierflow export`: random-init GPT-2 and Llama (grouped-query attention) from configs, exported to
tierflow's ONNX LM form and driven by CausalLM, compared token for token with PyTorch."""

from __future__ import annotations

import inspect
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from tierflow.cli import app, main  # noqa: E402
from tierflow.compiler import export_hf as ex  # noqa: E402
from tierflow.errors import ExportError, ModelNotFoundError  # noqa: E402
from tierflow.model import metadata as md  # noqa: E402
from tierflow.runtime.lm import CausalLM, SamplingConfig  # noqa: E402
from tierflow.runtime.session import SessionOptions  # noqa: E402
from tierflow.types import ModelKind  # noqa: E402

pytestmark = pytest.mark.export

torch.set_num_threads(2)
THREADS = SessionOptions(intra_op_threads=2)
PROMPT = "Return the JSON object as"
NEW_TOKENS = 20


def _train_tokenizer(folder: Path) -> int:
    """A byte-level BPE trained on a few KB of stdlib docstrings, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = "\n".join(inspect.getdoc(m) or "" for m in (json, os, inspect, textwrap, Path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    return int(tok.get_vocab_size())


def _save(folder: Path, kind: str) -> Path:
    folder.mkdir(parents=True)
    vocab = _train_tokenizer(folder)
    torch.manual_seed(0)
    # no special tokens: generate() never stops early, like CausalLM without stop ids
    no_special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if kind == "gpt2":
        config = transformers.GPT2Config(
            n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=128,
            initializer_range=0.2,  # wide enough weights that greedy decoding does not loop on one token
            **no_special,
        )
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, **no_special,
        )
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """GPT-2 exported with the CLI (in process): (model dir, .onnx, CLI output)."""
    root = tmp_path_factory.mktemp("gpt2")
    folder, out = _save(root / "hf", "gpt2"), root / "gpt2.onnx"
    result = CliRunner().invoke(
        app, ["export", str(folder), "-o", str(out), "--max-seq-len", "100", "--threads", "2"]
    )
    assert result.exit_code == 0, result.output
    return folder, out, result.output


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ex.ExportResult]:
    """Llama with 2 KV heads for 4 query heads, exported with the API, weights in external data."""
    root = tmp_path_factory.mktemp("llama")
    folder, out = _save(root / "hf", "llama"), root / "llama.onnx"
    result = ex.export_hf(folder, out, ex.ExportOptions(external_data=True, threads=2))
    return folder, out, result


@pytest.fixture(params=["gpt2", "llama"])
def exported(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    folder, out, _ = request.getfixturevalue(request.param)
    return folder, out


def _torch_model(folder: Path) -> torch.nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def test_exported_file_satisfies_the_contract(exported: tuple[Path, Path]) -> None:
    folder, out = exported
    lm = CausalLM.open(out, THREADS)
    config = json.loads((folder / "config.json").read_text())
    heads = config.get("num_key_value_heads") or config.get("n_head")
    sig = lm.signature
    assert (sig.num_layers, sig.kv_heads, sig.head_dim, sig.kv_dtype) == (2, heads, 16, "float32")
    assert sig.has_attention_mask and sig.has_position_ids
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta[md.KIND] == ModelKind.CAUSAL_LM
    assert meta[md.NUM_LAYERS] == "2"
    assert meta[md.SOURCE] == str(folder.resolve())
    assert meta[md.MODEL_TYPE] == config["model_type"]
    assert meta[md.TOKENIZER] == (folder / "tokenizer.json").read_text()


def test_max_seq_len_is_the_config_value_or_the_override(gpt2: tuple, llama: tuple) -> None:
    assert CausalLM.open(gpt2[1], THREADS).max_seq_len == 100  # --max-seq-len 100
    assert CausalLM.open(llama[1], THREADS).max_seq_len == 256  # max_position_embeddings
    assert llama[2].max_seq_len == 256


def test_greedy_generation_matches_pytorch_token_for_token(exported: tuple[Path, Path]) -> None:
    folder, out = exported
    lm = CausalLM.open(out, THREADS)
    prompt_ids = lm.require_tokenizer().encode(PROMPT)
    ours = lm.generate_ids(prompt_ids, SamplingConfig.greedy(max_new_tokens=NEW_TOKENS)).new_ids
    with torch.no_grad():
        ref = _torch_model(folder).generate(
            torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False
        )[0, len(prompt_ids):].tolist()
    assert len(ours) == NEW_TOKENS
    assert len(set(ref)) > 3  # not one token repeated: the comparison means something
    assert ours == ref


def test_prefill_and_cached_decode_logits_match_pytorch(exported: tuple[Path, Path]) -> None:
    folder, out = exported
    lm = CausalLM.open(out, THREADS)
    ids = lm.require_tokenizer().encode(PROMPT)
    logits, cache = lm.forward(np.asarray([ids], np.int64), lm.empty_cache())
    nxt = int(np.argmax(logits[0, -1]))
    step, _ = lm.forward(np.asarray([[nxt]], np.int64), cache)  # one token on the KV cache
    with torch.no_grad():
        ref = _torch_model(folder)(torch.tensor([ids + [nxt]])).logits[0].numpy()  # full recompute
    assert np.max(np.abs(logits[0] - ref[:-1])) < 1e-4
    assert np.max(np.abs(step[0, -1] - ref[-1])) < 1e-4


def test_cli_reports_path_size_layers_and_verification(gpt2: tuple[Path, Path, str]) -> None:
    _, out, text = gpt2
    assert out.is_file()
    assert str(out) in text and "MB" in text
    assert "2 layers" in text and "4 KV heads" in text
    assert "verified" in text and "max |logits diff|" in text
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_external_data_sits_next_to_the_model(llama: tuple[Path, Path, ex.ExportResult]) -> None:
    _, out, result = llama
    assert result.data_path == out.with_name("llama.onnx.data") and result.data_path.is_file()
    assert result.size_bytes == out.stat().st_size + result.data_path.stat().st_size
    assert out.stat().st_size < result.data_path.stat().st_size
    assert result.kv_heads == 2 and result.max_abs_diff < 1e-4


def test_tierflow_run_prints_text(gpt2: tuple[Path, Path, str]) -> None:
    args = ["run", str(gpt2[1]), "--prompt", PROMPT, "-n", "12", "--threads", "2", "--greedy"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lm = CausalLM.open(gpt2[1], THREADS)
    expected = lm.generate(PROMPT, SamplingConfig.greedy(max_new_tokens=12)).text
    assert expected and expected.strip()
    assert "".join(result.stdout.split()).startswith("".join((PROMPT + expected).split()))


def test_a_hub_id_is_read_from_the_local_cache_only(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--acme--tiny-lm" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--acme--tiny-lm" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-lm" / "refs" / "main").write_text("0123abcd")
    assert ex.resolve_source("acme/tiny-lm", cache_dir=tmp_path) == snapshot
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache") as info:
        ex.resolve_source("acme/not-cached", cache_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_a_disagreeing_export_is_refused_and_nothing_is_written(
    gpt2: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ex._torch_run

    def off_by_a_bit(*args: object) -> list[np.ndarray]:  # the reference drifts: ORT no longer matches it
        outs = real(*args)  # type: ignore[arg-type]
        return [outs[0] + 0.05, *outs[1:]]

    monkeypatch.setattr(ex, "_torch_run", off_by_a_bit)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        ex.export_hf(gpt2[0], out, ex.ExportOptions(threads=2, tolerance=1e-3, optimize=False))
    assert list(tmp_path.iterdir()) == []


def _bert_dir(folder: Path) -> Path:
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def _headless_llama_dir(folder: Path) -> Path:
    folder.mkdir()
    config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2)
    config.architectures = ["LlamaModel"]  # a base model: no language-model head
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "no such model directory"),
        (lambda d: (d / "plain").mkdir() or d / "plain", "has no config.json"),
        (lambda d: _bert_dir(d / "bert"), "not a causal language model"),
        (lambda d: _headless_llama_dir(d / "base"), "not a causal language model"),
    ],
    ids=["missing-path", "no-config", "bert", "no-lm-head"],
)
def test_bad_sources_give_one_line_errors_and_exit_2(
    make, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make(tmp_path)
    capsys.readouterr()  # drop what building the source printed
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["tierflow", "export", str(source), "-o", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert err.startswith("error:") and message in err and "\n" not in err, err
    assert list(out.parent.iterdir()) == []


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    from tierflow.errors import MissingExtraError

    hint = r"pip install torch==2\.13\.0 && pip install 'tierflow\[export\]'"
    with pytest.raises(MissingExtraError, match=hint):
        ex._require_extra()
