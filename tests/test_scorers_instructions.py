"""IFEval's instruction types (turnloom_scorers.instructions) and the strict/loose readings."""

from __future__ import annotations

import random

import pytest

from turnloom_scorers import ifeval, language, textutil
from turnloom_scorers.instructions import (TYPES, Instruction, InstructionError, conflicts,
                                           parse_instruction, parse_instructions)

# type -> (parameters, responses that follow, responses that do not)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "keywords:existence": (
        {"keywords": ["river", "lantern"]},
        ["The RIVER glowed under a lantern.", "río river, lantern: ünïcode ok"],
        ["Only the river.", ""]),
    "keywords:frequency": (
        {"keyword": "sun", "frequency": 2, "relation": "at least"},
        ["Sun, sun everywhere.", "SUN sun sun"],
        ["One sun only.", ""]),
    "keywords:forbidden_words": (
        {"forbidden_words": ["very", "stuff"]},
        ["Everything is fine.", "Everybody likes stuffing."],  # whole words only
        ["It is VERY good.", "all that stuff"]),
    "keywords:letter_frequency": (
        {"letter": "z", "let_frequency": 3, "let_relation": "less than"},
        ["Jazz.", "no such letter"],
        ["Zzz zoo", "ZZZ"]),
    "language:response_language": (
        {"language": "fr"},
        # Text langdetect cannot classify counts as followed, as in the reference.
        ["Je pense que la maison est très grande et que le jardin est beau.", "12345"],
        ["I think that the house is very big and the garden is nice.", ""]),
    "length_constraints:number_sentences": (
        {"num_sentences": 3, "relation": "less than"},
        ["One. Two!", "Mr. Smith paid 3.5 dollars. Done.", "We met at 3 p.m. in the U.S. Fine."],
        ["One. Two. Three.", "A? B! C."]),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        ["First part.\n***\nSecond part.", "***\nFirst.\n***\nSecond.\n***"],
        ["Just one.", "A\n***\n***\nB", "A\n***\nB\n***\nC"]),
    "length_constraints:number_words": (
        {"num_words": 5, "relation": "at least"},
        ["one two three four five", "日本 語 の 文 章"],
        ["one two three four", ""]),
    "length_constraints:nth_paragraph_first_word": (
        {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
        ["First we go.\n\nThen we stay.", "Intro.\n\n\"Then,\" she said."],
        ["First.\n\nNext we stay.", "Then only one paragraph.", "A\n\nThen B\n\nC"]),
    "detectable_content:number_placeholders": (
        {"num_placeholders": 2},
        ["Send it to [name] at [address].", "[a][b]"],
        ["Send it to [name].", "no brackets"]),
    "detectable_content:postscript": (
        {"postscript_marker": "P.S."},
        ["Hello.\n\nP.S. See you soon.", "Hi\np.s. later"],
        ["Hello. PS see you.", "P.P.S late"]),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        ["* one\n* two", "Intro\n- a\n- b"],
        ["* one", "* a\n* b\n- c", "**bold** only\n**bold** again"]),
    "detectable_format:constrained_response": (
        {},
        ["My answer is yes.", "Hmm. My answer is maybe."],
        ["Yes.", "my answer is yes."]),
    "detectable_format:number_highlighted_sections": (
        {"num_highlights": 2},
        ["*one* and *two*", "**bold one** and *two*"],
        ["*one* only", "** ** and * *"]),
    "detectable_format:multiple_sections": (
        {"section_spliter": "Section", "num_sections": 2},
        ["Section 1\nIntro\nSection 2\nBody", "Section 1 a Section 2 b Section 3 c"],
        ["Section 1\nOnly one", "Part 1\nPart 2"]),
    "detectable_format:json_format": (
        {},
        ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "[1, 2]"],
        ["{a: 1}", "Here: {\"a\": 1}", ""]),
    "detectable_format:title": (
        {},
        ["<<My Poem>>\nRoses.", "Text <<ünïcode title>> more"],
        ["<<>>", "<< >>", "No title"]),
    "combination:two_responses": (
        {},
        ["First answer.\n******\nSecond answer.", "******\nA\n******\nB"],
        ["Same\n******\nSame", "A\n******\n\n******\nB", "Only one"]),
    "combination:repeat_prompt": (
        {"prompt_to_repeat": "Write a poem about the sea."},
        ["Write a poem about the sea. The sea is wide.", "  write a POEM about the sea. ok"],
        ["Sure! Write a poem about the sea.", ""]),
    "startend:end_checker": (
        {"end_phrase": "Any other questions?"},
        ["Done. Any other questions?", '"Done. any other questions?"'],
        ["Any other questions? Bye.", ""]),
    "startend:quotation": (
        {},
        ['"All quoted."', '  "x"  '],
        ['"Unclosed', "No quotes", '"']),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        ["This is VERY IMPORTANT.", "DON'T STOP"],
        ["Only ONE here.", "none at all"]),
    "change_case:english_capital": (
        {},
        ["THIS IS THE ANSWER AND IT IS CLEAR."],
        ["This is the answer and it is clear.", "C'EST LA MAISON ET LE JARDIN DE LA VILLE."]),
    "change_case:english_lowercase": (
        {},
        ["this is the answer and it is clear."],
        ["This is the answer and it is clear.", "c'est la maison et le jardin de la ville."]),
    "punctuation:no_comma": (
        {},
        ["No commas here.", "Ideographic comma \u3001 only"],
        ["One, two.", ","]),
}


def test_every_type_is_covered() -> None:
    assert len(TYPES) == 25
    assert set(CASES) == set(TYPES)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_instruction_follows_and_fails(kind: str) -> None:
    params, good, bad = CASES[kind]
    instruction = parse_instruction({"type": kind, **params})
    assert instruction.type == kind
    for text in good:
        assert ifeval.follows(instruction, text), (kind, text)
    for text in bad:
        assert not ifeval.follows(instruction, text), (kind, text)
    # The dict form round-trips and the description mentions something concrete.
    assert parse_instruction(instruction.to_dict()) == instruction
    assert instruction.description().strip()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_empty_response_follows_nothing(kind: str) -> None:
    params, _, _ = CASES[kind]
    instruction = parse_instruction({"type": kind, **params})
    ev = ifeval.evaluate([instruction], "")
    assert ev == ifeval.Evaluation((False,), (False,))
    assert ifeval.evaluate([instruction], "   \n ").strict == (False,)


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_sampled_instructions_are_valid(kind: str) -> None:
    rng = random.Random(7)
    for _ in range(20):
        instruction = TYPES[kind].sample(rng, "Write a poem.")
        assert isinstance(instruction, Instruction)
        assert parse_instruction(instruction.to_dict()) == instruction


def test_loose_forgives_markdown_and_framing_lines() -> None:
    title = parse_instruction({"type": "startend:quotation"})
    framed = 'Sure, here it is:\n"The answer."\nHope this helps!'
    assert ifeval.evaluate([title], framed) == ifeval.Evaluation((False,), (True,))
    json_fmt = parse_instruction({"type": "detectable_format:json_format"})
    assert ifeval.evaluate([json_fmt], 'Here you go:\n{"a": 1}') == ifeval.Evaluation(
        (False,), (True,))
    ender = parse_instruction({"type": "startend:end_checker", "end_phrase": "The end."})
    assert ifeval.evaluate([ender], "Story.\n**The end.**") == ifeval.Evaluation(
        (False,), (True,))
    lower = parse_instruction({"type": "change_case:english_lowercase"})
    assert ifeval.evaluate([lower], "Answer:\nthis is the house and the garden.") == \
        ifeval.Evaluation((False,), (True,))
    nth = parse_instruction({"type": "length_constraints:nth_paragraph_first_word",
                             "num_paragraphs": 2, "nth_paragraph": 2, "first_word": "então"})
    assert ifeval.evaluate([nth], "Olá.\n\n**Então** vamos.") == ifeval.Evaluation(
        (False,), (True,))
    # Loose never loses what strict has.
    keywords = parse_instruction({"type": "keywords:existence", "keywords": ["sea"]})
    assert ifeval.evaluate([keywords], "the sea") == ifeval.Evaluation((True,), (True,))
    # ...and removing a line can hide a violation: loose passes where strict fails.
    comma = parse_instruction({"type": "punctuation:no_comma"})
    assert ifeval.evaluate([comma], "Well, sure.\nNo commas below") == ifeval.Evaluation(
        (False,), (True,))


def test_prompt_and_instruction_level_accuracy() -> None:
    a = parse_instruction({"type": "punctuation:no_comma"})
    b = parse_instruction({"type": "keywords:existence", "keywords": ["sea"]})
    evs = [ifeval.evaluate([a, b], "the sea"),        # both
           ifeval.evaluate([a, b], "the sky, blue"),  # neither
           ifeval.evaluate([a], "one, two"),          # neither
           ifeval.evaluate([b], "SEA")]               # all
    acc = ifeval.accuracy(evs)
    assert acc["prompt_strict"] == pytest.approx(2 / 4)
    assert acc["instruction_strict"] == pytest.approx(3 / 6)
    assert acc["overall"] == pytest.approx(sum(acc[k] for k in (
        "prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")) / 4)
    assert ifeval.accuracy([]) == {}


@pytest.mark.parametrize("data, message", [
    ({"type": "keywords:frequncy"}, "unknown instruction type 'keywords:frequncy'; did you "
                                    "mean 'keywords:frequency'"),
    ({"keyword": "x"}, "unknown instruction type None"),
    ({"type": "keywords:frequency", "keyword": "x", "frequency": 0, "relation": "at least"},
     r"keywords:frequency.*\$\.frequency"),
    ({"type": "keywords:frequency", "keyword": "x", "frequency": 2, "relation": "more than"},
     r"Invalid enum value 'more than' - at `\$\.relation`"),
    ({"type": "keywords:frequency", "keyword": "x", "frequency": 2, "relation": "at least",
      "extra": 1}, r"unknown field `extra`"),
    ({"type": "keywords:existence", "keywords": []}, "`keywords` must not be empty"),
    ({"type": "language:response_language", "language": "xx"}, "'xx' is not a code langdetect"),
    ({"type": "length_constraints:nth_paragraph_first_word", "num_paragraphs": 2,
      "nth_paragraph": 3, "first_word": "a"}, "must not exceed"),
    ({"type": "keywords:letter_frequency", "letter": "ab", "let_frequency": 1,
      "let_relation": "at least"}, r"\$\.letter"),
    ("keywords:existence", "expected a table"),
])
def test_bad_instructions_name_the_problem(data, message: str) -> None:
    with pytest.raises(InstructionError, match=message):
        parse_instruction(data)


def test_errors_name_the_position() -> None:
    with pytest.raises(InstructionError, match=r"turn\[1\].*punctuation:no_coma"):
        parse_instructions([{"type": "punctuation:no_comma"}, {"type": "punctuation:no_coma"}],
                           "turn")


def test_conflicts_are_symmetric_and_cover_case() -> None:
    assert conflicts("change_case:english_capital", "change_case:english_lowercase")
    assert conflicts("detectable_format:json_format", "detectable_format:title")
    assert not conflicts("detectable_format:title", "detectable_format:number_bullet_lists")
    assert not conflicts("punctuation:no_comma", "keywords:existence")
    for a in TYPES:
        for b in TYPES:
            assert conflicts(a, b) == conflicts(b, a)


@pytest.mark.parametrize("text, code", [
    # The stop-word detector this replaced read these two as Polish and Portuguese.
    ("I went to a party and I had fun.", "en"),
    ("The cat is on the table and the dog is in the garden.", "en"),
    ("El perro está en la casa y el gato también.", "es"),
    ("Der Hund ist nicht in dem Haus und die Katze auch.", "de"),
    ("这是一个测试句子。", "zh-cn"),
    ("これはテストの文です。", "ja"),
    ("Це тестове речення і їжа.", "uk"),
    ("12345 !!!", None),
    ("", None),
])
def test_language_detector_is_seeded_langdetect(text: str, code: str | None) -> None:
    assert language.detect(text) == code
    assert all(language.detect(text) == code for _ in range(3))


def test_english_answers_follow_english_only_instructions() -> None:
    english = parse_instruction({"type": "language:response_language", "language": "en"})
    lower = parse_instruction({"type": "change_case:english_lowercase"})
    capital = parse_instruction({"type": "change_case:english_capital"})
    assert ifeval.follows(english, "I went to a party and I had fun.")
    assert ifeval.follows(lower, "i went to a party and i had fun.")
    assert ifeval.follows(capital, "I WENT TO A PARTY AND I HAD FUN.")
    # The case test comes first: text without letters is not lower case.
    assert ifeval.follows(lower, "123 !!!") is False


def test_chinese_alias_is_a_noted_deviation() -> None:
    zh = parse_instruction({"type": "language:response_language", "language": "zh"})
    assert ifeval.follows(zh, "这是一个测试句子，我们今天去公园散步。")
    assert "never matches" in (zh.reference_note() or "")
    assert parse_instruction({"type": "language:response_language",
                              "language": "zh-cn"}).reference_note() is None


def test_sentence_and_word_counts_follow_nltk() -> None:
    # Punkt knows "p.m." and "U.S." but still ends the sentence at "U.S." before "He".
    assert textutil.split_sentences(
        "Dr. Who met Mr. Smith at 3.30 p.m. in the U.S. He left.") == [
        "Dr. Who met Mr. Smith at 3.30 p.m. in the U.S.", "He left."]
    assert textutil.count_sentences("¿Qué? ¡Sí! Bien.") == 3
    assert textutil.count_words("naïve café — don't") == 4  # \w+ splits "don't"
    # nltk's word_tokenize splits contractions: three all-capital tokens here.
    assert textutil.word_tokenize("DON'T stop") == ["DO", "N'T", "stop"]


def test_multi_if_counts() -> None:
    assert textutil.split_cjk_sentences("第一句。第二句！") == ["第一句。", "第二句！"]
    assert textutil.count_cjk_words("我今天很高兴，因为天气很好。") == 12
    assert textutil.count_cjk_words("こんにちは、ジェイソンさん、Jason? Nice to meet you☺ ❤") == 19
    assert textutil.count_hindi_sentences("यह एक वाक्य है। यह दूसरा है।") == 2


def test_literal_patterns_are_noted_where_the_reference_reads_a_regex() -> None:
    plain = parse_instruction({"type": "keywords:existence", "keywords": ["sea"]})
    regex = parse_instruction({"type": "keywords:existence", "keywords": ["C++"]})
    assert ifeval.evaluate([plain], "the sea").notes == ()
    ev = ifeval.evaluate([plain, regex], "I write C++.")
    assert ev.strict == (False, True)
    assert ev.notes and "C++" in ev.notes[0] and "regular expressions" in ev.notes[0]
