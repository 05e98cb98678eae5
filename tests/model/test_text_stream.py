"""TextStream (model/tokenizer.py): a generation's text token by token, decoding a short window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierflow.model.registry import resolve_model
from tierflow.model.tokenizer import TextStream, Tokenizer
from tierflow.runtime.lm import CausalLM


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return CausalLM.open(resolve_model("demo-lm")).require_tokenizer()


def _whole_text_each_time(tokenizer: Tokenizer, tokens: list[int]) -> list[str]:
    """The reference, as the entry point did it before: decode everything so far at each token and
    emit what is new, nothing while the text ends in an incomplete UTF-8 sequence."""
    deltas, printed = [], 0
    for n in range(1, len(tokens) + 1):
        text = tokenizer.decode(tokens[:n])
        if text.endswith("\ufffd"):
            deltas.append("")
            continue
        deltas.append(text[printed:])
        printed = len(text)
    return deltas


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_stream_emits_what_decoding_everything_each_time_does(
    tokenizer: Tokenizer, data: st.DataObject
) -> None:
    tokens = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), min_size=1, max_size=40))
    stream = TextStream(tokenizer)
    got = [stream.add(tokens[:n]) for n in range(1, len(tokens) + 1)]
    assert got == _whole_text_each_time(tokenizer, tokens)  # the same piece at the same token
    assert "".join(got) + stream.finish(tokens) == tokenizer.decode(tokens)  # and nothing lost at the end


def test_multi_byte_characters_split_over_tokens_come_out_whole(tokenizer: Tokenizer) -> None:
    text = "naïve café 東京 ✓ done"
    tokens = tokenizer.encode(text)
    stream = TextStream(tokenizer)
    deltas = [stream.add(tokens[:n]) for n in range(1, len(tokens) + 1)]
    assert "".join(deltas) == tokenizer.decode(tokens)
    assert not any("\ufffd" in d for d in deltas)


class CountingTokenizer(Tokenizer):
    """Records how many tokens each decode is given."""

    def __init__(self, inner: Tokenizer) -> None:
        super().__init__(inner._hf)
        self.lengths: list[int] = []

    def decode(self, ids: list[int]) -> str:
        self.lengths.append(len(ids))
        return super().decode(ids)


def test_a_long_stream_decodes_a_window_not_everything(tokenizer: Tokenizer) -> None:
    counting = CountingTokenizer(tokenizer)
    tokens = tokenizer.encode("the quick brown fox jumps over the lazy dog. " * 40)
    stream = TextStream(counting)
    text = "".join(stream.add(tokens[:n]) for n in range(1, len(tokens) + 1))
    assert text == tokenizer.decode(tokens)
    assert len(tokens) > 300 and max(counting.lengths) <= 4  # each decode sees the last few tokens only


def _metaspace_tokenizer() -> Tokenizer:
    """A sentencepiece-style vocabulary: words carry a leading "▁", which a decode drops at its start."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "\u2581the": 1, "\u2581cat": 2, "s": 3, "\u2581": 4, "\u2581caf": 5, "\u00e9": 6}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    return Tokenizer(hf)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(st.integers(0, 6), min_size=1, max_size=30))
def test_a_tokenizer_that_drops_a_leading_space_keeps_the_spaces_between_words(tokens: list[int]) -> None:
    tokenizer = _metaspace_tokenizer()
    stream = TextStream(tokenizer)
    got = [stream.add(tokens[:n]) for n in range(1, len(tokens) + 1)]
    assert got == _whole_text_each_time(tokenizer, tokens)
