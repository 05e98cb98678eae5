"""``tierflow generate`` against the in-process fake of the API (the SDK's transport injected)."""

from __future__ import annotations

import json

import pytest

import tierflow
from tests.client.fake_api import KEY, TOKENS, FakeAPI
from tests.support.cli import assert_one_line_error, cli
from tierflow.cli import generate as generate_cli

TEXT = "".join(t for t, _ in TOKENS)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    fake = FakeAPI()

    def make_client(url: str | None, api_key: str | None) -> tierflow.Client:
        fake.made.append((url, api_key))
        return tierflow.Client(url, api_key, transport=fake.transport())

    monkeypatch.setattr(generate_cli, "make_client", make_client)
    monkeypatch.setenv("TIERFLOW_API_KEY", KEY)
    return fake


def test_streams_the_text_then_the_context_and_route(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli(capsys, monkeypatch, "generate", "The for statement", "--max-tokens", "5",
                         "--seed", "3")
    assert code == 0, err
    assert out == TEXT  # it ends with a newline token: none is added
    assert api.seen[-1].body == {"prompt": "The for statement", "max_tokens": 5, "seed": 3, "stream": True}
    lines = err.strip().splitlines()
    assert lines[0] == "context: ctx_abc123  (expires in 3600 s; continue with --context ctx_abc123)"
    assert lines[1].startswith("route: device[0-1] 0.100 s -> edge[2-4] 0.210 s -> cloud[5-5] 0.070 s")
    assert "5 tokens, 41.2 tokens/s" in lines[1] and "prompt 5 tokens, 0 cached" in lines[1]
    assert "failover (lost=cloud)" in lines[1] and len(lines) == 2


def test_greedy_context_url_and_key(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli(capsys, monkeypatch, "generate", "more", "--context", "ctx_abc123", "--greedy",
                       "--url", "http://edge.example:9000", "--api-key", KEY)
    assert code == 0, err
    assert api.seen[-1].body == {"prompt": "more", "context_id": "ctx_abc123", "max_tokens": 64,
                                 "temperature": 0.0, "repeat_penalty": 1.0, "stream": True}
    assert api.made[-1] == ("http://edge.example:9000", KEY)
    assert str(api.seen[-1].headers["authorization"]) == f"Bearer {KEY}"


def test_json_prints_the_whole_result(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli(capsys, monkeypatch, "generate", "x", "--json", "--temperature", "0.7")
    assert code == 0, err
    result = json.loads(out)
    assert result["text"] == TEXT and result["context_id"] == "ctx_abc123"
    assert result["route"]["hops"][0]["from"] == "device"
    assert api.seen[-1].body == {"prompt": "x", "max_tokens": 64, "temperature": 0.7, "stream": False}


def test_greedy_with_a_temperature_is_one_line_error(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli(capsys, monkeypatch, "generate", "x", "--greedy", "--temperature", "0.5")
    assert_one_line_error(code, err, "--greedy means temperature 0")
    assert api.seen == []


@pytest.mark.parametrize(("context", "fragment"), [("ctx_gone", "has expired"),
                                                   ("ctx_missing", "")])
def test_api_errors_are_one_line(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch, context: str, fragment: str) -> None:
    if not fragment:
        api.error = (404, "no context has the id ctx_missing")
        fragment = "no context has the id ctx_missing"
    code, _, err = cli(capsys, monkeypatch, "generate", "x", "--context", context)
    assert_one_line_error(code, err, fragment)


def test_a_missing_key_says_how_to_give_one(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIERFLOW_API_KEY")
    code, _, err = cli(capsys, monkeypatch, "generate", "x")
    assert_one_line_error(code, err, "set TIERFLOW_API_KEY")


def test_an_error_mid_stream_ends_the_line_then_fails(api: FakeAPI, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    api.stream_error = ("TierUnavailable", "the cloud is gone and no tier can take layers 5-5")
    code, out, err = cli(capsys, monkeypatch, "generate", "x")
    assert code == 1
    assert out == TOKENS[0][0] + "\n"
    assert err.strip() == "error: the cloud is gone and no tier can take layers 5-5"


def test_an_unreachable_entry_point(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli(capsys, monkeypatch, "generate", "x", "--url", "http://127.0.0.1:9")
    assert code == 1 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: cannot reach the tierflow entry point at http://127.0.0.1:9")
