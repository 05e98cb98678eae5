"""The generation loop and the LM contract, on a tiny hand-built LM."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import onnx
import pytest

from tests.support.tiny_lm import build_tiny_lm
from tierflow.errors import InvalidInputError, TokenizerError, UnsupportedModelError
from tierflow.model import lm_contract as lc
from tierflow.runtime.lm import (
    CausalLM,
    SamplingConfig,
    SamplingOptions,
    apply_repeat_penalty,
    pick_token,
    sampling_config,
)
from tierflow.runtime.session import SessionOptions

ONE_THREAD = SessionOptions(intra_op_threads=1)


def open_tiny(**kwargs: object) -> CausalLM:
    return CausalLM.open(build_tiny_lm(**kwargs).SerializeToString(), ONE_THREAD)  # type: ignore[arg-type]


def test_signature_read_from_model() -> None:
    lm = open_tiny(layers=3)
    assert lm.signature.num_layers == 3
    assert (lm.signature.kv_heads, lm.signature.head_dim) == (2, 4)
    assert lm.signature.has_attention_mask and not lm.signature.has_position_ids


def test_kv_cache_steps_equal_full_recompute() -> None:
    # the tiny LM mixes every cached position into each step, so a stale or
    # misordered cache changes the logits
    lm = open_tiny()
    ids = [0, 2, 4, 5, 6, 1, 3]
    past = lm.empty_cache()
    logits, past = lm.forward(np.asarray([ids[:3]], np.int64), past)
    for n in range(3, len(ids)):
        recomputed, _ = lm.forward(np.asarray([ids[:n]], np.int64), lm.empty_cache())
        np.testing.assert_allclose(logits[0, -1], recomputed[0, -1], rtol=1e-5, atol=1e-5)
        logits, past = lm.forward(np.asarray([[ids[n]]], np.int64), past)
    assert past[0][0].shape[2] == len(ids)


def test_greedy_generation_uses_the_cache_consistently() -> None:
    lm = open_tiny()
    prompt = lm.require_tokenizer().encode("the cat sat on")
    result = lm.generate_ids(prompt, SamplingConfig.greedy(max_new_tokens=6))
    # recompute each step from scratch: the same greedy tokens must come out
    seq = list(prompt)
    for _ in range(6):
        logits, _ = lm.forward(np.asarray([seq], np.int64), lm.empty_cache())
        seq.append(int(np.argmax(logits[0, -1])))
    assert result.new_ids == seq[len(prompt) :]


def test_seeded_sampling_is_reproducible_and_seed_matters() -> None:
    lm = open_tiny()
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.5, seed=7)
    a = lm.generate("the dog", cfg)
    b = lm.generate("the dog", cfg)
    outs = {
        tuple(lm.generate("the dog", SamplingConfig(max_new_tokens=12, temperature=1.5, seed=s)).new_ids)
        for s in range(6)
    }
    assert a.new_ids == b.new_ids
    assert len(outs) > 1


def test_top_k_and_top_p_restrict_choices() -> None:
    rng = np.random.default_rng(0)
    logits = np.array([5.0, 4.0, 0.0, -1.0, -2.0])
    picks = {pick_token(logits, SamplingConfig(temperature=2.0, top_k=2, top_p=1.0), rng) for _ in range(200)}
    assert picks == {0, 1}
    picks = {pick_token(logits, SamplingConfig(temperature=1.0, top_k=0, top_p=0.5), rng) for _ in range(200)}
    assert picks == {0}
    # a top-k beyond the vocabulary keeps every token; a vanishing temperature is the argmax
    flat = SamplingConfig(temperature=50.0, top_k=1000, top_p=1.0)
    assert {pick_token(logits, flat, rng) for _ in range(300)} == {0, 1, 2, 3, 4}
    assert pick_token(logits, SamplingConfig(temperature=1e-320), rng) == 0


def test_default_decoding_samples_like_llama_cpp() -> None:
    config = SamplingConfig()
    assert not config.is_greedy
    assert (config.temperature, config.top_k, config.top_p) == (0.8, 40, 0.95)
    assert (config.repeat_penalty, config.repeat_last_n) == (1.1, 64)
    greedy = SamplingConfig.greedy(max_new_tokens=5)
    assert greedy.is_greedy and greedy.repeat_penalty == 1.0 and greedy.max_new_tokens == 5
    # generate(prompt, **options) takes exactly the config's fields
    assert set(SamplingOptions.__annotations__) == {f.name for f in fields(SamplingConfig)}
    assert sampling_config(None, {"top_k": 3}) == SamplingConfig(top_k=3)
    assert sampling_config(greedy, {"max_new_tokens": 9}) == SamplingConfig.greedy(max_new_tokens=9)
    with pytest.raises(InvalidInputError, match="unknown generation option 'colour'"):
        sampling_config(None, {"colour": "red"})


def test_repetition_penalty_lowers_the_probability_of_a_repeated_token() -> None:
    logits = np.array([3.0, 2.5, -1.0, 0.5])

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max())
        return e / e.sum()

    penalised = apply_repeat_penalty(logits, [0, 2, 0], 1.1)
    # llama.cpp's rule: a positive logit is divided by the penalty, a negative one multiplied
    np.testing.assert_allclose(penalised, [3.0 / 1.1, 2.5, -1.1, 0.5])
    before, after = softmax(logits), softmax(penalised)
    assert after[0] < before[0]  # the repeated token loses probability, the unseen ones gain it
    assert after[1] > before[1] and after[3] > before[3]
    assert after[2] / after[3] < before[2] / before[3]  # a seen negative logit loses against an unseen one
    np.testing.assert_array_equal(apply_repeat_penalty(logits, [0], 1.0), logits)  # 1 = off

    # in the sampler: only the last repeat_last_n tokens count, and greedy picks move off a repeat
    close = np.array([2.0, 1.9, 0.0])
    rng = np.random.default_rng(0)
    argmax = SamplingConfig(temperature=0.0)  # temperature 0 keeps the default penalty
    assert pick_token(close, argmax, rng) == 0
    assert pick_token(close, argmax, rng, recent=[0]) == 1
    assert pick_token(close, SamplingConfig(temperature=0.0, repeat_last_n=1), rng, recent=[0, 2]) == 0
    assert pick_token(close, SamplingConfig.greedy(), rng, recent=[0]) == 0  # greedy: no penalty


def test_sampled_frequencies_follow_the_penalty() -> None:
    logits = np.array([1.0, 1.0])
    rng = np.random.default_rng(3)
    config = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=2.0)
    picks = [pick_token(logits, config, rng, recent=[0]) for _ in range(2000)]
    share = picks.count(0) / len(picks)  # softmax([0.5, 1.0])[0] = 0.378
    assert 0.33 < share < 0.43


def test_context_limit_clamps_generation_and_rejects_long_prompts() -> None:
    lm = open_tiny()
    assert lm.max_seq_len == 32
    result = lm.generate_ids([1] * 30, SamplingConfig(max_new_tokens=10))
    assert len(result.new_ids) == 2
    with pytest.raises(InvalidInputError, match="context is 32"):
        lm.generate_ids([1] * 32, SamplingConfig(max_new_tokens=1))


def test_stop_tokens_end_generation() -> None:
    lm = open_tiny()
    first = lm.generate_ids([0, 2], SamplingConfig.greedy(max_new_tokens=1)).new_ids[0]
    result = lm.generate_ids([0, 2], SamplingConfig.greedy(max_new_tokens=10, stop_token_ids=(first,)))
    assert result.new_ids == [first]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": -1}, {"temperature": -0.1}, {"temperature": float("nan")}, {"top_k": -1},
        {"top_p": 0.0}, {"top_p": 1.5}, {"repeat_penalty": 0.0}, {"repeat_last_n": -1}, {"seed": -1},
    ],
)
def test_bad_sampling_config_is_a_user_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        SamplingConfig(**kwargs)  # type: ignore[arg-type]


def test_model_without_tokenizer_needs_token_ids() -> None:
    lm = open_tiny(tokenizer=False)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        lm.generate("the cat", SamplingConfig(max_new_tokens=1))
    assert len(lm.generate_ids([0, 1], SamplingConfig(max_new_tokens=3)).new_ids) == 3


def test_prompt_that_is_not_valid_unicode_is_rejected() -> None:
    lm = open_tiny()
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        lm.generate("the \udcff cat", SamplingConfig(max_new_tokens=1))


def _without(
    model: onnx.ModelProto, *, inputs: set[str] = frozenset(), outputs: set[str] = frozenset()
) -> bytes:
    keep_in = [i for i in model.graph.input if i.name not in inputs]
    keep_out = [o for o in model.graph.output if o.name not in outputs]
    del model.graph.input[:]
    model.graph.input.extend(keep_in)
    del model.graph.output[:]
    model.graph.output.extend(keep_out)
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (set(), {"present.1.value"}, "missing output present.1.value"),
        (set(), {"logits"}, "no 'logits' output"),
    ],
)
def test_models_breaking_the_contract_are_refused(inputs: set[str], outputs: set[str], message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        CausalLM.open(_without(build_tiny_lm(), inputs=inputs, outputs=outputs), ONE_THREAD)


def test_contract_checks_names_and_kinds() -> None:
    spec = lc.TensorSpec
    kv = ("batch", 2, "past", 4)
    good = [
        spec("input_ids", "tensor(int64)", ("b", "s")),
        spec("past_key_values.0.key", "tensor(float)", kv),
        spec("past_key_values.0.value", "tensor(float)", kv),
    ]
    outs = [
        spec("logits", "tensor(float)", ()),
        spec("present.0.key", "tensor(float)", kv),
        spec("present.0.value", "tensor(float)", kv),
    ]
    assert lc.LMSignature.from_specs(good, outs).num_layers == 1
    with pytest.raises(UnsupportedModelError, match="not one tierflow can feed"):
        lc.LMSignature.from_specs([*good, spec("pixel_values", "tensor(float)", ())], outs)
    with pytest.raises(UnsupportedModelError, match="no 'input_ids'"):
        lc.LMSignature.from_specs(good[1:], outs)
    with pytest.raises(UnsupportedModelError, match="missing input past_key_values.0.value"):
        lc.LMSignature.from_specs(good[:2], outs)
    with pytest.raises(UnsupportedModelError, match="type tensor\\(int8\\)"):
        lc.LMSignature.from_specs([good[0], spec("past_key_values.0.key", "tensor(int8)", kv), good[2]], outs)
    with pytest.raises(UnsupportedModelError, match="static heads"):
        lc.LMSignature.from_specs(
            [good[0], spec("past_key_values.0.key", "tensor(float)", ("b", "h", "p", 4)), good[2]], outs
        )
