"""The USP plugin package (plugins/turnloom-usp): profile schema, prompt rendering, the
simulator's stop, the extractor's parsing, profile comparison, the diverse sampler,
loop/fault metrics, diversity, and judges run by the engine on the scripted backend."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import pytest

import turnloom
from turnloom import Scenario
from turnloom.judging import JudgeCall, Unparseable
from turnloom.plugins import Registry, get_plugin_manager
from turnloom.records import ConversationState, TurnRecord

SETUP = "uv pip install -p .venv/bin/python -e plugins/turnloom-usp (scripts/setup.sh does it)"

try:
    importlib.metadata.distribution("turnloom-usp")
except importlib.metadata.PackageNotFoundError:
    pytest.fail(f"turnloom-usp is not installed; run: {SETUP}", pytrace=False)

from turnloom_usp.bank import load_bank  # noqa: E402
from turnloom_usp.consistency import compare_profiles, text_similarity  # noqa: E402
from turnloom_usp.diversity import diversity, distinct_n  # noqa: E402
from turnloom_usp.extractor import (  # noqa: E402
    ProfileConsistency,
    ProfileExtractor,
    parse_extracted_profile,
)
from turnloom_usp.metrics import FaultScorer, LoopScorer  # noqa: E402
from turnloom_usp.profile import Profile, ProfileError, parse_profile, require_complete  # noqa: E402
from turnloom_usp.render import fill_template, render_profile  # noqa: E402
from turnloom_usp.sampler import DiverseProfileSampler  # noqa: E402
from turnloom_usp.simulator import UspUser  # noqa: E402

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "turnloom-usp"

MAYA: dict[str, Any] = {
    "id": "maya",
    "facts": {"name": "Maya", "age": 34, "gender": "female", "occupation": "nurse",
              "location": "Leeds, UK", "goal": "plan healthy dinners for night shifts",
              "task_details": "budget of 40 a week; partner does not eat pork"},
    "traits": {"big_five": {"openness": 0.8, "extraversion": "low"},
               "speaking_style": "warm and brief"},
}


def conversation(*messages: tuple[str, str], profile: dict | None = None,
                 seed: int = 1) -> ConversationState:
    """A conversation with these (participant, text) messages already spoken."""
    state = ConversationState("c-0", 0, seed)
    if profile is not None:
        state.profiles["user"] = profile
    for i, (who, text) in enumerate(messages):
        role = "user" if who == "user" else "assistant"
        state.messages.append((who, role, text))
        state.turns.append(TurnRecord(conversation_id="c-0", branch=0, turn=i, participant=who,
                                      role=role, text=text, node=i))
    return state


# -- schema ---------------------------------------------------------------------------


def test_profile_schema_accepts_full_and_partial_profiles() -> None:
    p = parse_profile(MAYA)
    assert p.facts.age == 34 and p.traits.big_five.extraversion == "low"
    partial = parse_profile({"facts": {"occupation": "nurse"}})
    assert partial.facts.goal is None and partial.traits.speaking_style is None
    assert parse_profile({}) == Profile()


@pytest.mark.parametrize("data, field", [
    ({"facts": {"age": "thirty"}}, "facts.age"),
    ({"facts": {"age": 300}}, "facts.age"),
    ({"facts": {"occupation": ["nurse"]}}, "facts.occupation"),
    ({"traits": {"big_five": {"openness": 1.5}}}, "traits.big_five.openness"),
    ({"traits": {"big_five": {"openness": "very high"}}}, "traits.big_five.openness"),
    ({"facts": {"job": "nurse"}}, "facts"),
    ({"facts": {"name": ""}}, "facts.name"),
])
def test_profile_schema_rejects_wrong_types_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(ProfileError) as err:
        parse_profile(data, where="bank[3]")
    assert str(err.value).startswith("bank[3]: ")
    assert field in str(err.value)


def test_a_simulated_profile_needs_a_goal() -> None:
    with pytest.raises(ProfileError, match="facts.goal"):
        require_complete(parse_profile({"facts": {"name": "Ada"}}))


# -- rendering ------------------------------------------------------------------------


def test_profile_renders_as_facts_then_traits() -> None:
    text = render_profile(parse_profile(MAYA))
    facts, traits = text.split("\n\n")
    assert "Your name is Maya." in facts and "34 years old" in facts and "nurse" in facts
    assert "plan healthy dinners for night shifts" in facts and "pork" in facts
    assert traits == "Your personality: high openness, low extraversion. How you write: warm and brief."


def test_system_prompt_holds_profile_and_end_marker() -> None:
    user = UspUser({"end_marker": "<<DONE>>"})
    prompt = user.system_prompt(conversation(profile=MAYA), "user")
    assert "Your name is Maya." in prompt and prompt.rstrip().endswith("<<DONE>>")
    assert "{" not in prompt


def test_profile_text_cannot_inject_placeholders() -> None:
    evil = json.loads(json.dumps(MAYA))
    evil["facts"]["occupation"] = "{end_marker} and {profile}"
    evil["facts"]["goal"] = "{__class__} {0} {profile.name}"
    user = UspUser({"system_prompt": "P: {profile}\nEnd with {end_marker}", "end_marker": "[X]"})
    prompt = user.system_prompt(conversation(profile=evil), "user")
    assert "Your occupation: {end_marker} and {profile}." in prompt
    assert "{__class__} {0} {profile.name}" in prompt
    assert prompt.count("[X]") == 1  # only the template's own placeholder was filled


def test_templates_with_unknown_placeholders_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match=r"unknown placeholder\(s\) \{persona\}"):
        UspUser({"system_prompt": "You are {persona}."})
    with pytest.raises(ValueError, match="usp-user settings"):
        UspUser({"end_markr": "[END]"})
    assert fill_template("{a}{b}", {"a": "{b}", "b": "x"}) == "{b}x"


def test_simulator_needs_a_sampled_complete_profile() -> None:
    user = UspUser({})
    with pytest.raises(ValueError, match="none was sampled"):
        user.system_prompt(conversation(), "user")
    with pytest.raises(ProfileError, match="facts.goal"):
        user.system_prompt(conversation(profile={"facts": {"name": "Ada"}}), "user")


def test_simulator_roles_are_flipped_and_the_end_marker_stops() -> None:
    user = UspUser({"end_marker": "[END]", "min_turns": 2})
    assert user.role == "user"
    assert user.role_in_view("user", "user") == "assistant"
    assert user.role_in_view("assistant", "user") == "user"
    first = conversation(profile=MAYA)
    early = user.on_output(first, "user", "Thanks! [END]", "stop")
    assert early.stop is None and early.text == "Thanks!"  # below min_turns: marker dropped
    later = conversation(("user", "Hi"), ("assistant", "Hello"), profile=MAYA)
    reply = user.on_output(later, "user", " Great, thanks. [END] trailing", "stop")
    assert reply.stop == "user_done" and reply.text == "Great, thanks."
    assert user.on_output(later, "user", " Tell me more. ", "length") == \
        type(reply)("Tell me more.")


# -- extractor ------------------------------------------------------------------------


def test_extractor_output_is_parsed_from_prose_and_code_fences() -> None:
    text = ('Here is the profile:\n```json\n{"facts": {"occupation": "nurse", "age": 34, '
            '"hobbies": "unknown"}, "traits": {"big_five": {"openness": "high"}, '
            '"speaking_style": ""}}\n```')
    assert parse_extracted_profile(text) == {
        "facts": {"occupation": "nurse", "age": 34},
        "traits": {"big_five": {"openness": "high"}}}


@pytest.mark.parametrize("text", [
    "I think the user is a nurse.",  # no JSON
    '{"facts": {"age": "thirty-four"}}',  # wrong type
    '{"facts": {"occupation": "nurse"}, "mood": "happy"}',  # not in the schema
    '{"facts": {"age": 34, "goal": {"what": "cook"}}}',  # nested where a string belongs
    '{"facts": {"occupation": "nur',  # cut off by the token limit
    '{"facts": {}}',  # nothing at all
])
def test_malformed_extractor_output_is_unparseable(text: str) -> None:
    with pytest.raises(Unparseable):
        parse_extracted_profile(text)


def test_extractor_reads_only_the_users_messages() -> None:
    conv = conversation(("user", "I'm a nurse in Leeds."), ("assistant", "SECRET reply"),
                        ("user", "  "), ("user", "I need dinner ideas."), profile=MAYA)
    calls = ProfileExtractor({}).calls(conv)
    assert len(calls) == 1 and calls[0].key == "profile"
    assert [r for r, _ in calls[0].messages] == ["system", "user"]
    prompt = calls[0].messages[1][1]
    assert "I'm a nurse in Leeds." in prompt and "I need dinner ideas." in prompt
    assert "SECRET" not in prompt and "[Message 2]" in prompt and "[Message 3]" not in prompt
    assert ProfileExtractor({}).calls(conversation(("assistant", "hi"))) == []
    assert ProfileExtractor({"max_messages": 1}).user_texts(conv) == ["I'm a nurse in Leeds."]


def test_judges_record_a_failed_extraction_instead_of_raising() -> None:
    conv = conversation(("user", "hello"), profile=MAYA)
    assert ProfileExtractor({}).score(conv, {"profile": None}) == {"extracted": 0}
    assert ProfileConsistency({}).score(conv, {"profile": None}) == {"extracted": 0}
    assert ProfileConsistency({}).calls(conversation(("user", "hello"))) == []  # no target
    with pytest.raises(ValueError, match="invalid usp-consistency-lexical settings"):
        ProfileConsistency({"participnt": "user"})


# -- comparison -----------------------------------------------------------------------


def test_identical_profiles_match_fully_and_empty_ones_not_at_all() -> None:
    target = parse_profile(MAYA)
    same = compare_profiles(target, target)
    assert (same.facts_precision, same.facts_recall, same.facts_f1, same.traits) == (1, 1, 1, 1)
    assert same.facts_compared == 7 and same.traits_compared == 3
    empty = compare_profiles(target, Profile())
    assert (empty.facts_f1, empty.traits, empty.overall) == (0, 0, 0)


def test_profile_comparison_arithmetic_on_a_hand_made_pair() -> None:
    target = parse_profile({
        "facts": {"age": 30, "occupation": "high school teacher", "location": "Lyon",
                  "goal": "learn to bake bread"},
        "traits": {"big_five": {"openness": 0.9, "neuroticism": "low"},
                   "speaking_style": "formal and precise"}})
    extracted = parse_profile({
        "facts": {"age": 35, "occupation": "teacher", "location": "Paris", "hobbies": "chess"},
        "traits": {"big_five": {"openness": "high", "extraversion": "high"},
                   "speaking_style": "precise"}})
    m = compare_profiles(target, extracted)
    # age: 1 - 5/10 = 0.5; occupation: words {high, school, teacher} vs {teacher} -> 2*1/4 = 0.5;
    # location: 0; goal: not extracted; hobbies: not in the target.
    assert m.facts_precision == pytest.approx((0.5 + 0.5 + 0) / 4)
    assert m.facts_recall == pytest.approx((0.5 + 0.5 + 0) / 4)
    assert m.facts_f1 == pytest.approx(0.25)
    # openness 0.9 vs high (5/6); neuroticism missing -> 0; style {formal, precise} vs {precise}.
    assert m.traits == pytest.approx(((1 - abs(0.9 - 5 / 6)) + 0 + 2 / 3) / 3)
    assert m.overall == pytest.approx((0.25 + m.traits) / 2)
    assert text_similarity("a", "A ") == 1.0


def test_consistency_judge_compares_with_the_target_profile() -> None:
    conv = conversation(("user", "Hi, nurse here."), profile=MAYA)
    judge = ProfileConsistency({})
    call = judge.calls(conv)[0]
    verdict = judge.parse(call, json.dumps({"facts": {"occupation": "nurse", "age": 34}}))
    score = judge.score(conv, {"profile": verdict})
    assert score is not None and score["extracted"] == 1
    assert score["facts_precision"] == 1.0 and score["facts_recall"] == pytest.approx(2 / 7)
    assert score["traits"] == 0.0


# -- bank and sampler -----------------------------------------------------------------


def test_shipped_bank_is_valid_and_matches_its_generator() -> None:
    bank = load_bank()
    assert len(bank) >= 300
    assert len({p.id for p in bank}) == len(bank)
    assert all(p.facts.goal and p.traits.speaking_style for p in bank)
    spec = importlib.util.spec_from_file_location("generate_bank",
                                                  PLUGIN_DIR / "scripts" / "generate_bank.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rng = random.Random(gen.SEED)
    regenerated = [gen.compose(rng, i) for i in range(gen.COUNT)]
    shipped = json.loads((PLUGIN_DIR / "src/turnloom_usp/data/profiles.json").read_text())
    assert regenerated == shipped


def test_bad_bank_files_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bank.json"
    bad.write_text(json.dumps([MAYA, {"facts": {"goal": "x", "age": "old"}}]))
    with pytest.raises(ValueError, match=r"bank\.json\[1\]: .*facts\.age"):
        load_bank(bad)
    bad.write_text("[{]")
    with pytest.raises(ValueError, match=r"bank\.json:1: invalid JSON"):
        load_bank(bad)
    bad.write_text(json.dumps([MAYA, MAYA]))
    with pytest.raises(ValueError, match="duplicate id 'maya'"):
        load_bank(bad)
    with pytest.raises(ValueError, match="strategy"):
        DiverseProfileSampler({"strategy": "kde"})
    with pytest.raises(ValueError, match="virtual"):
        DiverseProfileSampler({"virtual": 1.5})


def test_sampler_is_deterministic_under_a_seed() -> None:
    a, b = DiverseProfileSampler({}), DiverseProfileSampler({})
    draws_a = [a.sample(random.Random(seed), i) for i, seed in enumerate(range(40))]
    draws_b = [b.sample(random.Random(seed), i) for i, seed in enumerate(range(40))]
    assert draws_a == draws_b
    assert len({json.dumps(d, sort_keys=True) for d in draws_a}) > 30
    other = [a.sample(random.Random(seed + 1000), 0) for seed in range(40)]
    assert other != draws_a
    assert all(parse_profile(d).facts.goal for d in draws_a)


def _crowded_bank(tmp_path: Path) -> Path:
    """40 near-identical cooking profiles and 4 unlike anything else."""
    common = [{"id": f"c{i}", "facts": {"occupation": "chef", "age": 30 + i % 5,
                                        "goal": "plan a week of cheap healthy dinners",
                                        "location": "Leeds, UK"},
               "traits": {"big_five": {"openness": 0.5}, "speaking_style": "short and plain"}}
              for i in range(40)]
    rare = [{"id": f"r{i}", "facts": {"occupation": occ, "goal": goal, "location": place},
             "traits": {"big_five": {"openness": 0.9}, "speaking_style": style}}
            for i, (occ, goal, place, style) in enumerate([
                ("beekeeper", "set up a first beehive", "rural Ireland", "rambling stories"),
                ("astronomer", "choose a first telescope", "Atacama desert", "precise jargon"),
                ("luthier", "repair a cracked violin", "Cremona", "poetic and slow"),
                ("ferry captain", "renew a maritime licence", "Tromso", "gruff one-liners")])]
    path = tmp_path / "crowded.json"
    path.write_text(json.dumps(common + rare))
    return path


def test_density_sampling_covers_rare_profiles(tmp_path: Path) -> None:
    bank = _crowded_bank(tmp_path)
    shares = {}
    for strategy in ("uniform", "density"):
        s = DiverseProfileSampler({"bank": str(bank), "strategy": strategy, "virtual": 0,
                                   "neighbours": 5})
        rng = random.Random(7)
        ids = [s.draw(rng).id for _ in range(2000)]
        shares[strategy] = sum(i.startswith("r") for i in ids) / len(ids)
    assert shares["uniform"] == pytest.approx(4 / 44, abs=0.03)
    assert shares["density"] > 3 * shares["uniform"]
    # Weights follow inverse density: every rare profile outweighs every common one.
    s = DiverseProfileSampler({"bank": str(bank), "neighbours": 5})
    assert min(s.weights[40:]) > max(s.weights[:40])


def test_virtual_profiles_mix_facts_with_the_nearest_neighbours_traits(tmp_path: Path) -> None:
    s = DiverseProfileSampler({"bank": str(_crowded_bank(tmp_path)), "virtual": 1.0})
    by_id = {p.id: p for p in s.bank}
    rng = random.Random(3)
    for _ in range(20):
        v = s.draw(rng)
        base_id, other_id = v.id.split("+")
        assert v.virtual and v.traits_from == other_id != base_id
        assert v.facts == by_id[base_id].facts and v.traits == by_id[other_id].traits
        assert other_id == s.bank[int(s.nearest[list(by_id).index(base_id)])].id
    assert parse_profile(s.sample(random.Random(1), 0)).virtual


# -- metrics --------------------------------------------------------------------------


def test_thank_you_loop_is_an_early_stop_loop() -> None:
    conv = conversation(("user", "How do I bake bread?"), ("assistant", "Mix flour..."),
                        ("user", "Thank you so much!"), ("assistant", "You're welcome!"),
                        ("user", "Thanks again, have a nice day!"), ("assistant", "You too!"))
    score = LoopScorer({}).score_conversation(conv)
    assert score == {"loop": 1, "loop_at": 1, "repeats": 0, "thanks": 2, "user_turns": 3}
    assert LoopScorer({}).score_turn(conv, conv.turns[2]) == {"repeat": 0, "thanks": 1}
    assert LoopScorer({}).score_turn(conv, conv.turns[1]) is None  # not the user


def test_repeated_messages_loop_but_a_single_thanks_does_not() -> None:
    repeat = conversation(("user", "What time is the train to Lyon?"), ("assistant", "At 9."),
                          ("user", "What time is the train to Lyon?"), ("assistant", "At 9."),
                          ("user", "what time is the train to Lyon"))
    assert LoopScorer({}).score_conversation(repeat)["loop"] == 1
    assert LoopScorer({}).score_conversation(repeat)["repeats"] == 2
    fine = conversation(("user", "How do I bake bread?"), ("assistant", "Mix flour..."),
                        ("user", "Thanks! Can I use rye flour instead?"), ("assistant", "Yes."),
                        ("user", "Thank you, bye."))
    score = LoopScorer({}).score_conversation(fine)
    assert score["loop"] == 0 and score["thanks"] == 1 and "loop_at" not in score
    assert LoopScorer({"loop_length": 1}).score_conversation(fine)["loop"] == 1
    assert LoopScorer({}).score_conversation(conversation(("assistant", "hi"))) is None
    with pytest.raises(ValueError, match="invalid usp-loops settings.*loop_length"):
        LoopScorer({"loop_length": 0})
    with pytest.raises(ValueError, match="invalid usp-faults settings.*parrot_threshold"):
        FaultScorer({"parrot_threshold": 1.5})


def test_simulator_faults_are_counted_per_kind() -> None:
    conv = conversation(
        ("user", "   "),
        ("assistant", "Bread needs flour, water, salt and yeast, then a long rise."),
        ("user", "Bread needs flour, water, salt and yeast, then a long rise!"),
        ("assistant", "Anything else?"),
        ("user", "As an AI, I can suggest recipes. How can I help you today?"),
        ("assistant", "Ok."),
        ("user", "Can I use rye flour?"))
    faults = FaultScorer({})
    per_turn = [faults.score_turn(conv, t) for t in conv.turns]
    assert per_turn[0] == {"empty": 1, "parrot": 0, "as_assistant": 0}
    assert per_turn[1] is None
    assert per_turn[2] == {"empty": 0, "parrot": 1, "as_assistant": 0}
    assert per_turn[4] == {"empty": 0, "parrot": 0, "as_assistant": 1}
    assert per_turn[6] == {"empty": 0, "parrot": 0, "as_assistant": 0}
    assert faults.score_conversation(conv) == {"empty": 1, "parrot": 1, "as_assistant": 1,
                                               "faulty_turns": 3, "fault_rate": 0.75}


def test_diversity_over_exported_records() -> None:
    def record(profile: str, *texts: str) -> dict[str, Any]:
        return {"participants": {"user": {"profile": {"id": profile}}},
                "messages": [{"role": "user", "name": "user", "content": t} for t in texts]
                + [{"role": "assistant", "name": "assistant", "content": "shared answer"}]}

    same = [record("a", "plan my dinners"), record("a", "plan my dinners")]
    out = diversity(same)
    assert out["users"] == 2 and out["distinct_profiles"] == 1
    assert out["self_similarity"] == pytest.approx(1.0) and out["diversity"] == pytest.approx(0.0)
    assert out["distinct_1"] == pytest.approx(3 / 6) and out["distinct_2"] == pytest.approx(2 / 4)
    apart = diversity([record("a", "plan my dinners"), record("b", "fix a leaking tap")])
    assert apart["self_similarity"] == pytest.approx(0.0) and apart["distinct_profiles"] == 2
    assert distinct_n([], 2) == 0.0


# -- the plugin in a run --------------------------------------------------------------


def test_entry_point_registers_every_component(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNLOOM_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TURNLOOM_PLUGINS", "usp")
    registry = Registry.from_plugin_manager(get_plugin_manager(default_plugins=()))
    assert "usp-user" in registry.names("agents")
    assert "usp-profiles" in registry.names("samplers")
    assert {"usp-loops", "usp-faults"} <= set(registry.names("scorers"))
    assert {"usp-extract", "usp-consistency", "usp-consistency-lexical"} <= set(
        registry.names("judges"))


def scripted_study(judge_lines: list[str]) -> Scenario:
    return Scenario.from_dict({
        "run": {"name": "usp", "conversations": 4, "max_turns": 4, "seed": 5},
        "backends": {"sim": {"type": "scripted", "lines": [
                         "I need help planning dinners.", "Thank you! [END]",
                         "Sure: soup, stew and a salad."]},
                     "judge": {"type": "scripted", "lines": judge_lines}},
        "participants": [
            {"name": "user", "agent": "usp-user", "backend": "sim", "sampler": "usp-profiles",
             "sampler_settings": {"virtual": 0.5}},
            {"name": "assistant", "agent": "assistant", "backend": "sim"}],
        "scorers": ["usp-loops", "usp-faults"],
        "judges": [{"name": "consistency", "judge": "usp-consistency-lexical", "backend": "judge"},
                   {"name": "extracted", "judge": "usp-extract", "backend": "judge"}],
    })


def run(tmp_path: Path, scenario: Scenario, name: str) -> list[dict[str, Any]]:
    import turnloom_usp.plugin

    pm = get_plugin_manager(autoload=False)
    pm.register(turnloom_usp.plugin, name="usp")
    result = turnloom.run(scenario, out=tmp_path / name, progress=False, plugin_manager=pm)
    assert result.summary["failures"] == 0
    return result.conversations()


def test_a_study_runs_with_lexical_consistency(tmp_path: Path) -> None:
    extracted = {"facts": {"occupation": "nurse", "goal": "plan dinners"}}
    records = run(tmp_path, scripted_study([json.dumps(extracted)]), "good")
    assert len(records) == 4
    for r in records:
        profile = r["participants"]["user"]["profile"]
        assert "What you want from this conversation" in r["participants"]["user"]["system_prompt"]
        expected = compare_profiles(parse_profile(profile), parse_profile(extracted)).as_score()
        assert r["scores"]["consistency"] == {"extracted": 1, **expected, "unparseable": 0}
        assert r["scores"]["extracted"] == {"extracted": 1, "profile": extracted, "facts_found": 2,
                                            "traits_found": 0, "unparseable": 0}
        assert set(r["scores"]["usp-faults"]) >= {"fault_rate", "faulty_turns"}
        if r["stop_reason"] == "user_done":
            assert r["turns"][-1]["participant"] == "user"
    assert len({json.dumps(r["participants"]["user"]["profile"]) for r in records}) > 1
    again = run(tmp_path, scripted_study([json.dumps(extracted)]), "again")
    assert [r["participants"]["user"]["profile"] for r in again] == \
        [r["participants"]["user"]["profile"] for r in records]


def test_malformed_extractor_output_is_recorded_not_raised(tmp_path: Path) -> None:
    records = run(tmp_path, scripted_study(["The user seems nice.", '{"facts": {"age": "x"}}']),
                  "bad")
    for r in records:
        assert r["scores"]["consistency"] == {"extracted": 0, "unparseable": 1}
        assert r["scores"]["extracted"] == {"extracted": 0, "unparseable": 1}
        assert r["stop_reason"] in ("max_turns", "user_done")
