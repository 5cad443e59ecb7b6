"""`turnloom probe`: what a server is and supports, against the loopback fakes of
vLLM and llama.cpp's Python server (the real servers' tables are in docs/BACKENDS.md)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from turnloom.backends._http import HTTPClient
from turnloom.probe import ServerInfo, probe, sampling_fields
from turnloom.testing.openai_server import OpenAITestServer


def run_probe(url: str) -> ServerInfo:
    async def main() -> ServerInfo:
        client = HTTPClient(timeout=10.0)
        try:
            return await probe(client, url)
        finally:
            await client.close()

    return asyncio.run(main())


def test_probe_of_a_vllm_like_server() -> None:
    with OpenAITestServer(context_length=4096) as s:
        info = run_probe(s.url + "/v1")
    assert (info.kind, info.model, info.context_length) == ("vllm", "turnloom/hash-model", 4096)
    assert info.token_id_prompts is True and "own tokenization" in info.token_id_note
    assert info.seeds_reproduce is True
    assert info.cached_tokens is True
    assert info.tool_calling == "tools accepted; the reply had no tool_calls"
    assert sampling_fields(info) == {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}


def test_probe_of_llama_cpp_python() -> None:
    with OpenAITestServer(flavor="llama-cpp-python", context_length=2048) as s:
        info = run_probe(s.url + "/v1")
    assert info.kind == "llama-cpp-python"
    assert info.context_length == 2048  # from the over-long prompt's error
    assert info.token_id_prompts is False and "HTTP 500" in info.token_id_note
    # The same prompt twice is served from its KV cache and samples differently.
    assert info.seeds_reproduce is False and info.cached_tokens is False
    assert info.defaults["repeat_penalty"] == 1.1 and info.defaults["min_p"] == 0.05
    assert sampling_fields(info) == {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


def test_probe_sees_seeds_that_are_not_honoured() -> None:
    with OpenAITestServer(honour_seed=False) as s:
        info = run_probe(s.url + "/v1")
    assert info.seeds_reproduce is False
    assert "differed" in info.seed_note


def test_cli_prints_the_table() -> None:
    with OpenAITestServer(flavor="llama-cpp-python", context_length=2048) as s:
        out = subprocess.run([sys.executable, "-m", "turnloom", "probe", s.url + "/v1",
                              "--timeout", "10"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1)
                for line in out.stdout.splitlines() if not line.startswith("note:"))
    assert rows["server"].startswith("llama-cpp-python at http://127.0.0.1:")
    assert rows["context length"] == "2048"
    assert rows["token-id prompts"].startswith("no (HTTP 500")
    assert rows["repetition penalty field"] == "repeat_penalty"


def test_cli_on_an_unreachable_server_fails_with_the_cause() -> None:
    out = subprocess.run([sys.executable, "-m", "turnloom", "probe", "http://127.0.0.1:9/v1",
                          "--timeout", "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "GET /models failed: connect to 127.0.0.1:9 failed" in out.stdout


@pytest.mark.parametrize("bad", ["ftp://x/v1", "not a url"])
def test_cli_rejects_a_non_http_url(bad: str) -> None:
    out = subprocess.run([sys.executable, "-m", "turnloom", "probe", bad],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not an http(s) URL" in out.stderr
