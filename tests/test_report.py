"""The HTML report (figures, escaping, branch trees, headless Chromium) and
`turnloom compare` (bootstrap intervals, pairing, the within-noise statement)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario, hookimpl
from turnloom.plugins import get_plugin_manager
from turnloom.report import compare_runs, format_table, write_report

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "runs" / "artifacts"
EVIL = "<script>alert('x')</script> & <b>bold</b>"
SHORT = ["Yes.", "No.", "Maybe so."]
LONG = ["Here is a longer answer with several words in it.",
        "Another fairly long reply that goes on for a while, with detail.", EVIL]


def scenario(lines: list[str], conversations: int = 12, seed: int = 4,
             branches: list[dict[str, int]] | None = None) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "report", "conversations": conversations, "max_turns": 6, "seed": seed},
        "backends": {"sim": {"type": "scripted", "lines": lines}},
        "participants": [
            {"name": "user", "agent": "user-simulator", "system_prompt": "You are {profile.name}.",
             "sampler": "inline", "sampler_settings": {"profiles": [{"name": "Ada"}, {"name": "Bo"}]}},
            {"name": "assistant", "agent": "assistant", "system_prompt": "Be <helpful>."}],
        "branches": branches or [],
        "scorers": ["length", "stop-reason"],
    })


class FailSome:
    """Fails every third conversation at its second turn (a plugin fault)."""

    @hookimpl
    def on_turn_end(self, conversation: Any, turn: Any) -> None:
        if conversation.index % 3 == 0 and turn.turn == 1:
            raise RuntimeError("tool <crashed> in conversation")


def run(path: Path, s: Scenario, *plugins: object) -> Path:
    pm = get_plugin_manager(autoload=False)
    for p in plugins:
        pm.register(p)
    turnloom.run(s, out=path, progress=False, plugin_manager=pm)
    return path


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.details = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs).get("src") or "")
        if tag == "details":
            self.details += 1


@pytest.fixture(scope="module")
def branched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("report") / "run",
               scenario(LONG, branches=[{"at_turn": 1, "n": 3}]), FailSome())


def test_report_has_every_section_and_png_figures(branched: Path) -> None:
    path = write_report(branched)
    html = path.read_text(encoding="utf-8")
    for heading in ("Scores per turn", "Conversation scores", "Lengths", "Stop reasons",
                    "Failures", "Tokens and cache", "Conversations"):
        assert f"<h2>{heading}</h2>" in html
    parser = Images()
    parser.feed(html)
    assert len(parser.srcs) == 5  # curves, lengths, stop reasons, failures, tokens
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert "http://" not in html and "https://" not in html  # self-contained


def test_user_content_is_escaped_and_failures_are_grouped(branched: Path) -> None:
    html = write_report(branched, branched / "r.html").read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "Be &lt;helpful&gt;." in html
    summary = json.loads((branched / "summary.json").read_text())
    failed = summary["failures"]
    assert failed > 0
    # One cause row counting every failed branch, with the error escaped.
    row = re.search(r"<tr><td>([^<]*RuntimeError)</td><td class=\"n\">(\d+)</td>", html)
    assert row is not None and int(row.group(2)) == failed
    assert "tool &lt;crashed&gt;" in html


def test_branches_render_as_a_tree(branched: Path) -> None:
    html = write_report(branched, branched / "t.html", sample=2).read_text(encoding="utf-8")
    conv = html[html.index("<h2>Conversations</h2>"):]
    parser = Images()
    parser.feed(conv)
    records = [json.loads(x) for x in (branched / "conversations.jsonl").read_text().splitlines()]
    first_two = [r for r in records if r["index"] in (0, 1)]
    forked = {r["index"] for r in first_two if r["branch"] > 0}
    # One block per conversation, plus one per branch of each forked conversation.
    assert parser.details == 2 + 3 * len(forked)
    assert conv.count("fork at turn 1: choice 3 of 3") == len(forked)
    for r in first_two:  # every branch's ending is shown
        assert f"branch {r['branch']} ended: {r['stop_reason']}" in conv


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs chromium (scripts/setup.sh installs it as root)")
def test_report_renders_in_headless_chromium(branched: Path, tmp_path: Path) -> None:
    path = write_report(branched, tmp_path / "report.html")
    shot = tmp_path / "report.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2200",
         f"--screenshot={shot}", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000  # a page, not a blank
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
    # The DOM Chromium built holds the figures and no script.
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 5 and "<script" not in dom


def test_report_command_in_a_subprocess(branched: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.html"
    proc = subprocess.run([sys.executable, "-m", "turnloom.cli", "report", str(branched),
                           "--out", str(out), "--sample", "1"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TURNLOOM_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.read_text(encoding="utf-8").count("<details") >= 1


def test_cli_report(branched: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from turnloom.cli import main

    assert main(["report", str(branched), "--out", str(branched / "cli.html")]) == 0
    assert (branched / "cli.html").is_file()
    assert main(["report", str(branched / "missing")]) == 2


# -- compare ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("compare")
    return {"short": run(base / "short", scenario(SHORT, conversations=40)),
            "long": run(base / "long", scenario(LONG, conversations=40)),
            "short2": run(base / "short2", scenario(SHORT, conversations=40)),
            "reseeded": run(base / "reseeded", scenario(LONG, conversations=40, seed=9))}


def test_compare_finds_a_real_difference_paired(runs: dict[str, Path]) -> None:
    c = compare_runs(runs["short"], runs["long"], seed=1)
    assert c.paired
    words = next(m for m in c.metrics if m.metric == "length.words")
    assert words.diff > 0 and words.ci_low > 0 and words.verdict == "B higher"
    assert words.n_a == words.n_b == 40
    # Seeded: the same intervals again.
    again = compare_runs(runs["short"], runs["long"], seed=1)
    assert [(m.ci_low, m.ci_high) for m in again.metrics] == [(m.ci_low, m.ci_high) for m in c.metrics]


def test_identical_runs_are_within_noise(runs: dict[str, Path]) -> None:
    c = compare_runs(runs["short"], runs["short2"])
    assert c.metrics and all(m.within_noise for m in c.metrics)
    text = format_table(c)
    assert "Within noise (95% interval contains 0): " in text


def test_other_seed_is_compared_unpaired(runs: dict[str, Path]) -> None:
    c = compare_runs(runs["long"], runs["reseeded"])
    assert not c.paired
    with pytest.raises(ValueError, match="cannot pair"):
        compare_runs(runs["long"], runs["reseeded"], paired=True)


def test_cli_compare_writes_table_json_and_html(runs: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from turnloom.cli import main

    rc = main(["compare", str(runs["short"]), str(runs["long"]), "--json", str(tmp_path / "c.json"),
               "--html", str(tmp_path / "c.html")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "paired by conversation index and branch" in out
    assert re.search(r"^length\.words\s+.*B higher$", out, re.M)
    data = json.loads((tmp_path / "c.json").read_text())
    row = next(m for m in data["metrics"] if m["metric"] == "length.words")
    assert row["within_noise"] is False and row["ci_low"] > 0
    assert "<table>" in (tmp_path / "c.html").read_text()
    assert main(["compare", str(runs["short"]), str(tmp_path / "nope")]) == 2
