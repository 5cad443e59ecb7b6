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

import numpy as np
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


def test_cli_compare_states_the_correction(runs: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from turnloom.cli import main

    assert main(["compare", str(runs["short"]), str(runs["short2"])]) == 0
    out = capsys.readouterr().out
    assert "whole conversations resampled" in out and "Bonferroni over" in out
    assert "Within noise (interval contains 0, 95% family-wise): " in out
    assert main(["compare", str(runs["short"]), str(runs["short2"]), "--correction", "none"]) == 0
    out = capsys.readouterr().out
    assert "Bonferroni over" not in out


# -- compare: calibration on hand-made run folders ---------------------------------------


def write_run(path: Path, seed: int, values: np.ndarray) -> Path:
    """A finished run folder written directly: `values[i, b, m]` is metric m of
    conversation i, branch b (scores `x.m0`, `x.m1`, ...)."""
    path.mkdir(parents=True)
    scenario = {"run": {"name": "hand", "seed": seed},
                "participants": [{"name": "user", "agent": "echo"},
                                 {"name": "assistant", "agent": "assistant"}]}
    (path / "manifest.json").write_text(json.dumps({"scenario": scenario}), encoding="utf-8")
    lines = []
    for i, branches in enumerate(values):
        for b, row in enumerate(branches):
            lines.append(json.dumps({
                "conversation_id": f"hand-{i:06d}", "index": i, "branch": b, "seed": seed + i,
                "messages": [], "participants": {}, "turns": [], "tokens": {},
                "stop_reason": "max_turns",
                "scores": {"x": {f"m{k}": float(v) for k, v in enumerate(row)}}}))
    (path / "conversations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def clustered(rng: np.random.Generator, conversations: int, branches: int,
              metrics: int) -> np.ndarray:
    """Values whose branches share a per-conversation effect (as branches sharing
    their history do): intra-conversation correlation 0.8."""
    effect = rng.normal(size=(conversations, 1, metrics))
    return effect + 0.5 * rng.normal(size=(conversations, branches, metrics))


def test_duplicated_branches_do_not_narrow_the_interval(tmp_path: Path) -> None:
    # Four exact copies of each conversation carry the information of one: the
    # cluster bootstrap gives the very interval of the one-branch runs.
    rng = np.random.default_rng(7)
    one_a, one_b = clustered(rng, 30, 1, 1), clustered(rng, 30, 1, 1) + 0.3
    c1 = compare_runs(write_run(tmp_path / "a1", 1, one_a), write_run(tmp_path / "b1", 2, one_b),
                      seed=3, correction="none")
    c4 = compare_runs(write_run(tmp_path / "a4", 1, np.repeat(one_a, 4, axis=1)),
                      write_run(tmp_path / "b4", 2, np.repeat(one_b, 4, axis=1)),
                      seed=3, correction="none")
    m1 = next(m for m in c1.metrics if m.metric == "x.m0")
    m4 = next(m for m in c4.metrics if m.metric == "x.m0")
    assert m4.n_a == 120 and m4.conversations == 60
    assert (m4.ci_low, m4.ci_high) == pytest.approx((m1.ci_low, m1.ci_high), abs=1e-12)


def test_bonferroni_widens_each_interval_to_the_family_level(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    a = write_run(tmp_path / "a", 1, clustered(rng, 40, 2, 5))
    b = write_run(tmp_path / "b", 2, clustered(rng, 40, 2, 5))
    plain = compare_runs(a, b, seed=0, correction="none")
    fam = compare_runs(a, b, seed=0)
    m = len(fam.metrics)  # 5 scores and the 3 derived counts
    assert m == 8 and fam.correction == "bonferroni"
    assert all(x.level == pytest.approx(1 - 0.05 / m) for x in fam.metrics)
    for p, f in zip(plain.metrics, fam.metrics):
        assert p.level == 0.95 and f.ci_low <= p.ci_low and f.ci_high >= p.ci_high
    with pytest.raises(ValueError, match="correction must be one of"):
        compare_runs(a, b, correction="holm")  # type: ignore[arg-type]


@pytest.mark.parametrize("paired", [False, True])
def test_calibration_same_distribution_false_verdicts_near_nominal(tmp_path: Path,
                                                                   paired: bool) -> None:
    """Runs of one distribution with different seeds, 4 branches per conversation
    and 5 metrics: 'different' verdicts must come at about the nominal rate per
    metric without correction, and at most the family-wise rate with it.
    Resampling branches as independent records reported a difference in about
    40% of such comparisons."""
    rng = np.random.default_rng(2024)
    reps, conversations, branches, metrics = 120, 50, 4, 5
    per_metric = family = 0
    for r in range(reps):
        if paired:  # the same conversations: a shared effect, and each run's own
            shared = clustered(rng, conversations, 1, metrics)
            va = shared + clustered(rng, conversations, branches, metrics)
            vb = shared + clustered(rng, conversations, branches, metrics)
            sa = sb = 5
        else:
            va = clustered(rng, conversations, branches, metrics)
            vb = clustered(rng, conversations, branches, metrics)
            sa, sb = 5, 6
        a = write_run(tmp_path / f"a{r}", sa, va)
        b = write_run(tmp_path / f"b{r}", sb, vb)
        plain = compare_runs(a, b, seed=r, resamples=400, correction="none")
        fam = compare_runs(a, b, seed=r, resamples=400)
        assert plain.paired is paired
        per_metric += sum(not m.within_noise for m in plain.metrics if m.metric.startswith("x."))
        family += any(not m.within_noise for m in fam.metrics)
    rate = per_metric / (reps * metrics)
    assert 0.01 <= rate <= 0.10, rate  # nominal 0.05; 600 tests: sd about 0.009
    assert family / reps <= 0.10, family / reps  # nominal at most 0.05
