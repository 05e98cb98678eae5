"""The bundled ``demo-lm``: contract, KV cache, sampling, readability, early-exit cut, tokenizer."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import onnx
import onnx.utils
import pytest

from tierflow.model import lm_contract as lc
from tierflow.model import metadata as md
from tierflow.model.demo import corpus
from tierflow.model.registry import resolve_model
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions, metadata, open_session
from tierflow.types import ModelKind

OPTIONS = SessionOptions(intra_op_threads=1, providers=("CPUExecutionProvider",))
PROMPT = "The for statement"


@pytest.fixture(scope="module")
def proto() -> onnx.ModelProto:
    return onnx.load(str(resolve_model("demo-lm")))


@pytest.fixture(scope="module")
def lm() -> CausalLM:
    return CausalLM.open(resolve_model("demo-lm"), OPTIONS)


@lru_cache(maxsize=1)
def corpus_words() -> frozenset[str]:
    return frozenset(w.lower() for w in re.findall(r"[A-Za-z]+", corpus.training_text()))


def corpus_word_share(text: str) -> tuple[float, int]:
    """(share of the words in ``text`` that occur in the training corpus, number of distinct words)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
    if not words:
        return 0.0, 0
    return sum(w in corpus_words() for w in words) / len(words), len(set(words))


GREEDY = SamplingConfig.greedy(max_new_tokens=40)
SAMPLED = SamplingConfig(max_new_tokens=60, seed=1)  # the default decoding, seeded


def readable(model: CausalLM, config: SamplingConfig, min_distinct: int) -> tuple[bool, str]:
    """Mostly (>= 80 %) words of the training corpus, and not one or two words on repeat.

    Small models loop under greedy decoding ('the "if" statement is executed in the "if"
    statement ...'), hence a lower bar on distinct words for greedy than for sampled text.
    """
    text = model.generate(PROMPT, config).text
    assert text is not None
    share, distinct = corpus_word_share(text)
    return share >= 0.8 and distinct >= min_distinct, text


def test_bundled_file_satisfies_the_lm_contract(lm: CausalLM) -> None:
    sig = lm.signature
    assert sig.num_layers >= 6
    assert sig.has_position_ids and not sig.has_attention_mask
    assert sig.kv_dtype == "float32"
    assert lc.EXIT_LOGITS in sig.output_names
    meta = metadata(lm.session)
    assert meta[md.KIND] == ModelKind.CAUSAL_LM
    assert int(meta[md.NUM_LAYERS]) == sig.num_layers
    assert int(meta["tierflow.exit_layer"]) == 3
    assert lm.max_seq_len == 256
    assert meta["tierflow.corpus"].startswith("pydoc_data.topics")
    assert lm.tokenizer is not None and lm.tokenizer.vocab_size == 2048
    assert resolve_model("demo-lm").stat().st_size <= 13_000_000


def test_kv_cache_gives_the_same_logits_as_recomputing(lm: CausalLM) -> None:
    tok = lm.require_tokenizer()
    ids = np.asarray([tok.encode("The for statement is used to iterate over the elements of a sequence")])
    full, _ = lm.forward(ids, lm.empty_cache())
    past = lm.empty_cache()
    prefill = 5
    logits, past = lm.forward(ids[:, :prefill], past)
    steps = [logits]
    for t in range(prefill, ids.shape[1]):
        logits, past = lm.forward(ids[:, t : t + 1], past)
        steps.append(logits)
    cached = np.concatenate(steps, axis=1)
    assert cached.shape == full.shape
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)
    assert past[0][0].shape[2] == ids.shape[1]


def test_seeded_sampling_is_reproducible(lm: CausalLM) -> None:
    config = SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=40, seed=7)
    first = lm.generate(PROMPT, config).new_ids
    assert lm.generate(PROMPT, config).new_ids == first
    other = lm.generate(PROMPT, SamplingConfig(max_new_tokens=30, temperature=0.8, top_k=40, seed=8)).new_ids
    assert other != first


def test_output_is_mostly_corpus_words(lm: CausalLM) -> None:
    ok, text = readable(lm, GREEDY, min_distinct=5)
    assert ok, text
    ok, text = readable(lm, SAMPLED, min_distinct=15)
    assert ok, text


def test_default_decoding_does_not_loop(lm: CausalLM) -> None:
    # greedy decoding repeats one phrase ('a "None" if *iterable* is a "None" if *iterable* ...');
    # the default (llama.cpp's: top-k 40, top-p 0.95, temperature 0.8, repeat penalty 1.1) must not
    prompt = "Once upon a time"
    greedy = lm.generate(prompt, SamplingConfig.greedy(max_new_tokens=48)).new_ids
    assert len(set(greedy)) < len(greedy) / 2  # the loop this guards against
    for seed in range(3):
        ids = lm.generate(prompt, SamplingConfig(max_new_tokens=48, seed=seed)).new_ids
        grams = [tuple(ids[i : i + 4]) for i in range(len(ids) - 3)]
        assert len(set(grams)) >= 0.9 * len(grams), lm.require_tokenizer().decode(ids)


def randomly_initialised(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph and tokenizer with weights drawn like a fresh, untrained model."""
    rng = np.random.default_rng(0)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        if arr.dtype != np.float32:
            continue
        if arr.ndim == 1:  # LayerNorm scale 1, every bias 0
            is_scale = init.name.split(".")[-2].startswith("ln") and init.name.endswith(".weight")
            fresh = np.ones_like(arr) if is_scale else np.zeros_like(arr)
        else:
            fresh = rng.normal(0.0, 0.02, arr.shape).astype(np.float32)
        init.CopyFrom(onnx.numpy_helper.from_array(fresh, init.name))
    return copy


def test_readability_check_fails_for_an_untrained_model(proto: onnx.ModelProto) -> None:
    untrained = CausalLM.open(randomly_initialised(proto).SerializeToString(), OPTIONS)
    ok, text = readable(untrained, GREEDY, min_distinct=5)
    assert not ok, text
    ok, text = readable(untrained, SAMPLED, min_distinct=15)
    assert not ok, text


def test_exit_logits_equal_the_extracted_phone_subgraph(proto: onnx.ModelProto, lm: CausalLM) -> None:
    exit_layer = int(metadata(lm.session)["tierflow.exit_layer"])
    kv = [(i, kind) for i in range(exit_layer) for kind in ("key", "value")]
    inputs = [lc.INPUT_IDS, lc.POSITION_IDS] + [lc.past_name(i, k) for i, k in kv]
    outputs = [lc.EXIT_LOGITS] + [lc.present_name(i, k) for i, k in kv]
    phone = onnx.utils.Extractor(proto).extract_model(inputs, outputs)
    # The cut holds only the first layers and the exit head: nothing of the later layers or the final head.
    assert not any(f"/blocks.{i}/" in n.name for n in phone.graph.node for i in range(exit_layer, 6))
    assert not any(n.name.startswith(("/ln_f/", "/lm_head/")) for n in phone.graph.node)
    small = open_session(phone.SerializeToString(), OPTIONS)  # no 'logits' output: a plain session
    tok = lm.require_tokenizer()
    past_len = 4
    ids = np.asarray([tok.encode("Names in the target list are not deleted")], dtype=np.int64)
    rng = np.random.default_rng(1)
    sig = lm.signature
    past = [rng.normal(size=(1, sig.kv_heads, past_len, sig.head_dim)).astype(np.float32)
            for _ in range(2 * sig.num_layers)]
    feeds = {lc.INPUT_IDS: ids, lc.POSITION_IDS: np.arange(past_len, past_len + ids.shape[1])[None]}
    full_feeds = dict(feeds)
    for i in range(sig.num_layers):
        full_feeds[lc.past_name(i, "key")] = past[2 * i]
        full_feeds[lc.past_name(i, "value")] = past[2 * i + 1]
    names = [o.name for o in lm.session.get_outputs()]
    full = dict(zip(names, lm.session.run(None, full_feeds), strict=True))
    cut = small.run(outputs, {name: full_feeds[name] for name in inputs})
    for name, value in zip(outputs, cut, strict=True):
        np.testing.assert_allclose(value, full[name], atol=1e-5, rtol=0)


def test_tokenizer_round_trips_text(lm: CausalLM) -> None:
    tok = lm.require_tokenizer()
    sample = corpus.heldout_text()[:3000]
    assert tok.decode(tok.encode(sample)) == sample
    odd = "naïve café -- ∑ x² \t\n  indented\n"  # bytes outside the corpus still round-trip
    assert tok.decode(tok.encode(odd)) == odd
    assert len(tok.encode("The for statement")) == 3  # frequent words are single tokens


def test_corpus_split_is_deterministic_and_disjoint() -> None:
    train, held = corpus.training_text(), corpus.heldout_text()
    share = len(held) / (len(train) + len(held))
    assert 0.03 <= share <= 0.07
    train_paragraphs = set(train.split("\n\n"))
    assert not any(p in train_paragraphs for p in held.split("\n\n"))
    assert corpus.heldout_text() == held


# --- the torch side (needs the optional torch extra) --------------------------


def tiny_torch_model():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    from tierflow.model.demo.lm_torch import DemoLM, LMConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=64, max_seq_len=16, d_model=32, n_heads=2, n_layers=3, d_ff=64, exit_layer=2,
                   dropout=0.0)
    return torch, DemoLM(cfg)


@pytest.mark.export
def test_training_and_inference_attention_paths_agree() -> None:
    torch, model = tiny_torch_model()
    ids = torch.randint(0, 64, (2, 9))
    model.train()  # fused causal kernel
    train_main, train_exit = model.losses(ids)
    model.eval()  # explicit mask over past + new keys
    eval_main, eval_exit = model.losses(ids)
    assert abs(train_main.item() - eval_main.item()) < 1e-5
    assert abs(train_exit.item() - eval_exit.item()) < 1e-5


@pytest.mark.export
def test_torch_kv_cache_matches_full_pass() -> None:
    torch, model = tiny_torch_model()
    model.eval()
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        full = model(ids, torch.arange(10).unsqueeze(0), *model.empty_past())[0]
        out = model(ids[:, :6], torch.arange(6).unsqueeze(0), *model.empty_past())
        rest = model(ids[:, 6:], torch.arange(6, 10).unsqueeze(0), *out[1:-1])
    torch.testing.assert_close(torch.cat([out[0], rest[0]], dim=1), full, atol=1e-5, rtol=0)


@pytest.mark.export
def test_export_follows_the_contract_and_matches_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, model = tiny_torch_model()
    from tierflow.model.demo.lm_torch import export_onnx, max_export_error

    path = tmp_path / "tiny.onnx"
    export_onnx(model, str(path), {md.KIND: ModelKind.CAUSAL_LM, md.EXIT_LAYER: "2"})
    assert max_export_error(model, str(path), threads=1) < 1e-4
    lm = CausalLM.open(path, OPTIONS)
    assert lm.signature.num_layers == 3 and lm.signature.kv_heads == 2 and lm.signature.head_dim == 16
    assert lc.EXIT_LOGITS in lm.signature.output_names
    names = {n.name for n in onnx.load(str(path)).graph.node}
    assert {"/lm_head/MatMul", "/exit_head/MatMul"} <= names
