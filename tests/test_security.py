"""Simulated content is data: it is never evaluated as a template and never names
a file. Run folders follow the user's umask. API keys never reach the run folder
or the console."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import jinja2
import msgspec
import pytest

import turnloom
from turnloom.chat_template import TemplateChatFormat, compile_template
from turnloom.plugins import get_plugin_manager
from turnloom.testing.openai_server import OpenAITestServer
from turnloom.testing.sglang_server import SGLangTestServer
from turnloom.tokenizer import ByteTokenizer

HOSTILE = ["{profile}", "{{ 7*7 }}", "{0.__class__}", "{profile.name}", "${HOME}", "%s %(x)s",
           "{% for x in range(3) %}loop{% endfor %}", "{{ ''.__class__.__mro__ }}"]


def scenario_dict(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "run": {"name": "sec", "conversations": 2, "max_turns": 4, "seed": 3},
        "backends": {"sim": {"type": "scripted", "lines": HOSTILE[:4]}},
        "participants": [
            {"name": "user", "agent": "user-simulator",
             "system_prompt": "You are {profile.name}. Bio: {profile.bio}. All: {profile}",
             "sampler": "inline",
             "sampler_settings": {"profiles": [{"name": "{profile}",
                                                "bio": " ".join(HOSTILE)}]}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "{{ 7*7 }} {0}"},
        ],
    }
    d.update(over)
    return d


def run(tmp_path: Path, d: dict[str, Any]) -> turnloom.RunResult:
    return turnloom.run(turnloom.Scenario.from_dict(d), out=tmp_path / "run", progress=False,
                        plugin_manager=get_plugin_manager(autoload=False))


def test_profiles_and_messages_render_literally(tmp_path: Path) -> None:
    recs = run(tmp_path, scenario_dict()).conversations()
    bio = " ".join(HOSTILE)
    for rec in recs:
        user = rec["participants"]["user"]
        assert user["system_prompt"] == (f"You are {{profile}}. Bio: {bio}. "
                                         f"All: name: {{profile}}\nbio: {bio}")
        assert rec["participants"]["assistant"]["system_prompt"] == "{{ 7*7 }} {0}"
        contents = [m["content"] for m in rec["messages"]]
        # The assistant's system prompt leads its messages; the rest are backend lines.
        assert contents and all(c in {*HOSTILE[:4], "{{ 7*7 }} {0}"} for c in contents), contents
        assert not any("49" in c or "<class" in c for c in contents)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("content", HOSTILE)
def test_chat_template_treats_content_as_data(content: str) -> None:
    fmt = TemplateChatFormat(ByteTokenizer(), CHATML)
    text = fmt.render_text([{"role": "user", "content": content}])
    assert text == f"<|im_start|>user\n{content}<|im_end|>\n"
    assert content in fmt.segment_text("user", content)


def test_a_hostile_chat_template_is_sandboxed() -> None:
    # Chat templates come from model folders: they run in Jinja's sandbox.
    template = compile_template("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        template.render(messages=[])


def test_model_output_never_becomes_a_file(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex
    targets = [tmp_path / f"abs-{tag}.txt", tmp_path / "run" / ".." / f"rel-{tag}.txt"]
    lines = [str(targets[0]), f"../rel-{tag}.txt", f"../../../../../tmp/pwned-{tag}",
             "~/.ssh/authorized_keys", "conversations.jsonl\x00.sh"]
    before = set(tmp_path.iterdir())
    result = run(tmp_path, scenario_dict(backends={"sim": {"type": "scripted",
                                                           "lines": lines}}))
    said = {m["content"] for r in result.conversations() for m in r["messages"]}
    assert said & set(lines), "the paths were really produced"
    assert not any(t.exists() for t in targets) and not Path(f"/tmp/pwned-{tag}").exists()
    assert set(tmp_path.iterdir()) - before == {tmp_path / "run"}
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "conversations.jsonl", "manifest.json", "scores.jsonl", "summary.json", "turns.wal"]


# -- permissions -----------------------------------------------------------------------


SCENARIO_TOML = """\
[run]
name = "perm"
conversations = 2
max_turns = 2

[backends.sim]
type = "scripted"

[[participants]]
name = "user"
agent = "user-simulator"

[[participants]]
name = "assistant"
agent = "assistant"
"""


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1", **extra}


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o077, 0o700, 0o600),
                                                        (0o027, 0o750, 0o640),
                                                        (0o022, 0o755, 0o644)])
def test_run_folder_follows_the_umask(umask: int, dir_mode: int, file_mode: int,
                                      tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO_TOML)
    out = tmp_path / "nested" / "run"
    done = subprocess.run([sys.executable, "-m", "turnloom", "run", str(scenario), "--out",
                           str(out), "--no-progress"], env=cli_env(), capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr
    for directory in (out, out.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == dir_mode
    files = list(out.iterdir())
    assert len(files) == 5
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == file_mode, file.name


# -- API keys ------------------------------------------------------------------------------


def all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def backend_scenario(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO_TOML.replace('type = "scripted"', backend)
                    .replace('agent = "assistant"', 'agent = "assistant"\nbackend = "sim"'))
    return path


@pytest.mark.parametrize("kind", ["openai", "sglang"])
def test_api_key_from_the_environment_is_never_written(kind: str, tmp_path: Path) -> None:
    key = f"sk-test-{uuid.uuid4().hex}"
    server_cls = OpenAITestServer if kind == "openai" else SGLangTestServer
    with server_cls(api_key=key) as server:
        if kind == "openai":
            backend = (f'type = "openai"\nbase_url = "{server.url}/v1"\nmodel = "m"\n'
                       f'api_key_env = "SIM_KEY"\ntimeout = 10.0')
        else:
            backend = f'type = "sglang"\nurls = ["{server.url}"]\napi_key_env = "SIM_KEY"'
        scenario = backend_scenario(tmp_path, backend)
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "turnloom", "run", str(scenario), "--out",
                               str(out), "--no-progress"], env=cli_env(SIM_KEY=key),
                              capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        recs = [msgspec.json.decode(x) for x in (out / "conversations.jsonl").read_bytes()
                .splitlines()]
        assert all(r["stop_reason"] != "error" for r in recs), "the key was sent and accepted"
        # A wrong key: the errors recorded must not echo the key that was sent either.
        wrong = f"sk-wrong-{uuid.uuid4().hex}"
        bad = subprocess.run([sys.executable, "-m", "turnloom", "run", str(scenario), "--out",
                              str(tmp_path / "bad"), "--no-progress"],
                             env=cli_env(SIM_KEY=wrong), capture_output=True, timeout=120)
    assert key.encode() not in all_bytes(out) + done.stdout + done.stderr
    assert wrong.encode() not in all_bytes(tmp_path / "bad") + bad.stdout + bad.stderr


def test_inline_api_key_is_not_copied_into_the_manifest(tmp_path: Path) -> None:
    key = f"sk-inline-{uuid.uuid4().hex}"
    with SGLangTestServer(api_key=key) as server:
        d = scenario_dict(backends={"sim": {"type": "sglang", "urls": [server.url],
                                            "api_key": key}})
        run(tmp_path, d)
    assert key.encode() not in all_bytes(tmp_path / "run")


def test_resume_takes_a_redacted_key_from_the_environment(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from turnloom import rundir

    key = f"sk-inline-{uuid.uuid4().hex}"
    with SGLangTestServer(api_key=key) as server:
        d = scenario_dict(backends={"sim": {"type": "sglang", "urls": [server.url],
                                            "api_key": key}})
        run(tmp_path, d)
        run_dir = tmp_path / "run"
        full = (run_dir / "conversations.jsonl").read_bytes()
        # Cut the run back to its manifest: resume must generate everything again.
        for name in ("conversations.jsonl", "scores.jsonl", "summary.json", "turns.wal"):
            (run_dir / name).unlink(missing_ok=True)
        var = rundir.secret_env_var("sim", "api_key")
        monkeypatch.delenv(var, raising=False)
        with pytest.raises(rundir.RunDirError, match=var):
            turnloom.resume(run_dir, progress=False)
        monkeypatch.setenv(var, key)
        turnloom.resume(run_dir, progress=False)
    assert (run_dir / "conversations.jsonl").read_bytes() == full
    assert key.encode() not in (run_dir / "manifest.json").read_bytes()
