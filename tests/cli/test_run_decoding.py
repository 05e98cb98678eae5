"""`tierflow run`'s decoding: the Python API's defaults (llama.cpp's); ``--greedy``: deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, cli
from tests.support.tiny_lm import save_tiny_lm
from tierflow.runtime.lm import CausalLM, SamplingConfig
from tierflow.runtime.session import SessionOptions

PROMPT = "the cat"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny.onnx")


def continuation(model: Path, config: SamplingConfig) -> str:
    text = CausalLM.open(model, SessionOptions(intra_op_threads=1)).generate(PROMPT, config).text
    assert text is not None
    return text


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    code, out, err = cli(capsys, monkeypatch, "run", *args)
    assert code == 0, err
    return out.rstrip("\n")


def test_greedy_is_the_deterministic_argmax(
    model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(capsys, monkeypatch, str(model), "-p", PROMPT, "-n", "12", "--greedy")
    assert first == run(capsys, monkeypatch, str(model), "-p", PROMPT, "-n", "12", "--greedy")
    assert first == PROMPT + continuation(model, SamplingConfig.greedy(max_new_tokens=12))


def test_the_default_is_the_python_apis_default_sampling(
    model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run(capsys, monkeypatch, str(model), "-p", PROMPT, "-n", "12", "--seed", "4")
    assert out == PROMPT + continuation(model, SamplingConfig(max_new_tokens=12, seed=4))
    tuned = run(capsys, monkeypatch, str(model), "-p", PROMPT, "-n", "12", "--seed", "4", "--top-k", "3",
                "--temperature", "1.2", "--repeat-penalty", "1.5")
    expected = SamplingConfig(max_new_tokens=12, seed=4, top_k=3, temperature=1.2, repeat_penalty=1.5)
    assert tuned == PROMPT + continuation(model, expected)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(("--greedy", "--temperature", "0.5"), "--greedy"), (("--repeat-penalty", "0"), "repeat_penalty")],
)
def test_contradicting_options_are_one_line_errors(
    model: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    fragment: str,
) -> None:
    code, _, err = cli(capsys, monkeypatch, "run", str(model), "-p", PROMPT, *args)
    if code == 2 and "error:" not in err:  # typer's own usage error (a box, on stderr)
        assert fragment in err and "Traceback" not in err
    else:
        assert_one_line_error(code, err, fragment)
