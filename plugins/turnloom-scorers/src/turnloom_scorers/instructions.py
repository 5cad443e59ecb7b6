"""IFEval's 25 verifiable instruction types, each a msgspec Struct with its parameters.

An instruction is written as a dict with a ``type`` (e.g. ``"keywords:frequency"``)
and its parameters, and parsed with `parse_instruction` (bad input raises
`InstructionError` naming the type and the parameter). Each type knows:

- ``check(response) -> bool``: whether a response follows it (strict reading; the
  loose reading is in `turnloom_scorers.ifeval`);
- ``description() -> str``: the instruction as a user would write it;
- ``sample(rng, prompt)``: a random instance, for simulated users that add
  instructions (``prompt`` is the request it is attached to).

The checks follow the reference code of IFEval (Zhou et al., 2023; Google's
``instruction_following_eval``). ``reading="multi-if"`` applies the changes of
Multi-IF's official code (He et al., 2024): words and sentences counted per the
language langdetect finds (one word per CJK character, Hindi sentences ended by
'।', Thai through pythainlp) and curly or corner quotes accepted by
``startend:quotation``. `Instruction.reference_note` names the few parameters for
which a check departs from the reference on purpose.
"""

from __future__ import annotations

import difflib
import json
import random
import re
from collections import Counter
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec

from turnloom_scorers import language, textutil

Relation = Literal["less than", "at least"]
Reading = Literal["ifeval", "multi-if"]
READINGS: tuple[Reading, ...] = ("ifeval", "multi-if")
RELATIONS: tuple[Relation, ...] = ("less than", "at least")
Count = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class InstructionError(ValueError):
    """An instruction dict is malformed: unknown type, missing or bad parameter."""


def _compare(count: int, relation: str, n: int) -> bool:
    return count < n if relation == "less than" else count >= n


_REGEX_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def _literal_note(field: str, values: tuple[str, ...]) -> str | None:
    """The reference code uses these strings as regular expressions; here they match
    literally. The two agree unless a string holds a regex metacharacter."""
    special = [v for v in values if _REGEX_SPECIAL & set(v)]
    if not special:
        return None
    return (f"{field} {special} matched literally; the reference code reads them as regular "
            f"expressions")


class Instruction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                  tag_field="type"):
    """Base of every instruction type; the ``type`` tag names the type."""

    group: ClassVar[str] = ""

    @property
    def type(self) -> str:
        return str(type(self).__struct_config__.tag)

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        raise NotImplementedError

    def description(self) -> str:
        raise NotImplementedError

    def reference_note(self) -> str | None:
        """How this instance's check departs from the reference code, if it does."""
        return None

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


# Vocabulary the samplers draw from (kept apart so sampled keywords and
# forbidden words never contradict each other).
_KEYWORDS = ("history", "future", "energy", "balance", "river", "window", "garden", "signal",
             "journey", "market", "memory", "pattern", "harbor", "lantern", "season")
_FORBIDDEN = ("very", "really", "thing", "stuff", "basically", "actually", "just", "good",
              "nice", "great")
_END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional "
                "questions.", "Any other questions?")
_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
# Languages a user may ask for: those of IFEval's and Multi-IF's data that langdetect
# tells apart reliably.
_LANGUAGES = ("es", "fr", "de", "it", "pt", "nl", "ru", "ja", "ko", "hi", "ar", "vi", "th",
              "fi", "pl", "uk", "bn", "fa", "he", "ta")
_LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
    "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "da": "Danish", "fi": "Finnish",
    "pl": "Polish", "tr": "Turkish", "id": "Indonesian", "ru": "Russian", "uk": "Ukrainian",
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "hi": "Hindi", "ar": "Arabic",
    "fa": "Persian", "he": "Hebrew", "el": "Greek", "bn": "Bengali", "th": "Thai",
    "ta": "Tamil", "te": "Telugu", "gu": "Gujarati", "kn": "Kannada", "ml": "Malayalam",
    "pa": "Punjabi", "zh-cn": "Chinese (simplified)", "zh-tw": "Chinese (traditional)",
    "ur": "Urdu", "vi": "Vietnamese", "bg": "Bulgarian", "ne": "Nepali", "sw": "Swahili",
    "mr": "Marathi",
}


# -- keywords ------------------------------------------------------------------------------


class KeywordsExistence(Instruction, frozen=True, tag="keywords:existence"):
    keywords: tuple[NonEmpty, ...]

    def __post_init__(self) -> None:
        if not self.keywords:
            raise ValueError("`keywords` must not be empty")

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return all(re.search(re.escape(k), response, re.IGNORECASE) for k in self.keywords)

    def reference_note(self) -> str | None:
        return _literal_note("keywords", self.keywords)

    def description(self) -> str:
        return f"Include keywords {', '.join(self.keywords)} in the response."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(keywords=tuple(rng.sample(_KEYWORDS, 2)))


class KeywordsFrequency(Instruction, frozen=True, tag="keywords:frequency"):
    keyword: NonEmpty
    frequency: Positive
    relation: Relation

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        count = len(re.findall(re.escape(self.keyword.strip()), response, re.IGNORECASE))
        return _compare(count, self.relation, self.frequency)

    def reference_note(self) -> str | None:
        return _literal_note("keyword", (self.keyword.strip(),))

    def description(self) -> str:
        return (f"In your response, the word {self.keyword} should appear {self.relation} "
                f"{self.frequency} times.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(keyword=rng.choice(_KEYWORDS), frequency=rng.randint(1, 3),
                   relation=rng.choice(RELATIONS))


class KeywordsForbiddenWords(Instruction, frozen=True, tag="keywords:forbidden_words"):
    forbidden_words: tuple[NonEmpty, ...]

    def __post_init__(self) -> None:
        if not self.forbidden_words:
            raise ValueError("`forbidden_words` must not be empty")

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return not any(re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE)
                       for w in self.forbidden_words)

    def reference_note(self) -> str | None:
        return _literal_note("forbidden_words", self.forbidden_words)

    def description(self) -> str:
        return f"Do not include keywords {', '.join(self.forbidden_words)} in the response."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(forbidden_words=tuple(rng.sample(_FORBIDDEN, 2)))


class KeywordsLetterFrequency(Instruction, frozen=True, tag="keywords:letter_frequency"):
    letter: Annotated[str, msgspec.Meta(min_length=1, max_length=1)]
    let_frequency: Positive
    let_relation: Relation

    def __post_init__(self) -> None:
        if not self.letter.isalpha():
            raise ValueError(f"`letter` must be a letter, got {self.letter!r}")

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        count = Counter(response.lower())[self.letter.lower()]
        return _compare(count, self.let_relation, self.let_frequency)

    def description(self) -> str:
        return (f"In your response, the letter {self.letter} should appear {self.let_relation} "
                f"{self.let_frequency} times.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(letter=rng.choice("abcdefghijklmnopqrstuvwxyz"),
                   let_frequency=rng.randint(1, 12), let_relation=rng.choice(RELATIONS))


# -- language ------------------------------------------------------------------------------


class ResponseLanguage(Instruction, frozen=True, tag="language:response_language"):
    language: str

    def __post_init__(self) -> None:
        if self.language not in language.SUPPORTED:
            raise ValueError(f"`language` {self.language!r} is not a code langdetect returns; "
                             f"choose one of {sorted(language.SUPPORTED)}")

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        detected = language.detect(response)
        # An undetectable language counts as followed, as in the reference.
        return detected is None or language.is_language(detected, self.language)

    def reference_note(self) -> str | None:
        if self.language == "zh":
            return ("language 'zh' accepted as zh-cn or zh-tw; the reference compares "
                    "langdetect's code literally, so 'zh' never matches there")
        return None

    def description(self) -> str:
        name = _LANGUAGE_NAMES.get(self.language, self.language)
        return (f"Your ENTIRE response should be in {name} language, no other language is "
                f"allowed.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(language=rng.choice(_LANGUAGES))


# -- length --------------------------------------------------------------------------------


def _detect_or_english(text: str) -> str:
    # Multi-IF's counting falls back to English rules when the language is undetectable.
    return language.detect(text) or "en"


def _multi_if_sentences(text: str) -> int:
    lang = _detect_or_english(text)
    if lang == "th":
        return textutil.count_thai_sentences(text)
    if lang == "hi":
        return textutil.count_hindi_sentences(text)
    if lang in ("zh-cn", "zh-tw", "ja"):
        return len(textutil.split_cjk_sentences(text))
    return textutil.count_sentences(text)


def _multi_if_words(text: str) -> int:
    lang = _detect_or_english(text)
    if lang == "th":
        return textutil.count_thai_words(text)
    if lang in ("zh-cn", "zh-tw", "ja"):
        return textutil.count_cjk_words(text)
    return textutil.count_words(text)


class NumberSentences(Instruction, frozen=True, tag="length_constraints:number_sentences"):
    num_sentences: Positive
    relation: Relation

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        count = (_multi_if_sentences(response) if reading == "multi-if"
                 else textutil.count_sentences(response))
        return _compare(count, self.relation, self.num_sentences)

    def description(self) -> str:
        return f"Your response should contain {self.relation} {self.num_sentences} sentences."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_sentences=rng.randint(2, 10), relation=rng.choice(RELATIONS))


def _star_paragraphs(response: str) -> int | None:
    """Paragraphs separated by the markdown divider ***; None when one is empty."""
    parts = re.split(r"\s?\*\*\*\s?", response)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return None
    return count


class NumberParagraphs(Instruction, frozen=True, tag="length_constraints:number_paragraphs"):
    num_paragraphs: Positive

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return _star_paragraphs(response) == self.num_paragraphs

    def description(self) -> str:
        return (f"There should be {self.num_paragraphs} paragraphs. Paragraphs are separated "
                f"with the markdown divider: ***")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_paragraphs=rng.randint(2, 5))


class NumberWords(Instruction, frozen=True, tag="length_constraints:number_words"):
    num_words: Positive
    relation: Relation

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        count = (_multi_if_words(response) if reading == "multi-if"
                 else textutil.count_words(response))
        return _compare(count, self.relation, self.num_words)

    def description(self) -> str:
        return f"Answer with {self.relation} {self.num_words} words."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_words=rng.choice((20, 50, 100, 150, 300)), relation=rng.choice(RELATIONS))


class NthParagraphFirstWord(Instruction, frozen=True, tag="length_constraints:nth_paragraph_first_word"):
    num_paragraphs: Positive
    nth_paragraph: Positive
    first_word: NonEmpty

    def __post_init__(self) -> None:
        if self.nth_paragraph > self.num_paragraphs:
            raise ValueError(f"`nth_paragraph` ({self.nth_paragraph}) must not exceed "
                             f"`num_paragraphs` ({self.num_paragraphs})")

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        paragraphs = re.split(r"\n\n", response)
        count = sum(1 for p in paragraphs if p.strip())
        if self.nth_paragraph > count:
            return False
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].lstrip("'").lstrip('"')
        first = ""
        for ch in word:
            if ch in ".,?!'\"":
                break
            first += ch.lower()
        return count == self.num_paragraphs and first == self.first_word.lower()

    def description(self) -> str:
        return (f"There should be {self.num_paragraphs} paragraphs. Paragraphs and only "
                f"paragraphs are separated with each other by two new lines. Paragraph "
                f"{self.nth_paragraph} must start with word {self.first_word}.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        n = rng.randint(2, 4)
        return cls(num_paragraphs=n, nth_paragraph=rng.randint(1, n),
                   first_word=rng.choice(("first", "then", "finally", "however", "today")))


# -- detectable content --------------------------------------------------------------------


class NumberPlaceholders(Instruction, frozen=True, tag="detectable_content:number_placeholders"):
    num_placeholders: Positive

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return len(re.findall(r"\[.*?\]", response)) >= self.num_placeholders

    def description(self) -> str:
        return (f"The response must contain at least {self.num_placeholders} placeholders "
                f"represented by square brackets, such as [address].")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_placeholders=rng.randint(1, 4))


class Postscript(Instruction, frozen=True, tag="detectable_content:postscript"):
    postscript_marker: NonEmpty

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        marker = self.postscript_marker.strip()
        if marker == "P.P.S":
            pattern = r"\s*p\.\s?p\.\s?s.*$"
        elif marker == "P.S.":
            pattern = r"\s*p\.\s?s\..*$"
        else:
            pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
        return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))

    def reference_note(self) -> str | None:
        if self.postscript_marker.strip() in ("P.S.", "P.P.S"):
            return None
        return _literal_note("postscript_marker", (self.postscript_marker.strip(),))

    def description(self) -> str:
        return (f"At the end of your response, please explicitly add a postscript starting "
                f"with {self.postscript_marker}")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(postscript_marker=rng.choice(("P.S.", "P.P.S")))


# -- detectable format ---------------------------------------------------------------------


class NumberBulletLists(Instruction, frozen=True, tag="detectable_format:number_bullet_lists"):
    num_bullets: Positive

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
        return len(stars) + len(dashes) == self.num_bullets

    def description(self) -> str:
        return (f"Your answer must contain exactly {self.num_bullets} bullet points. Use the "
                f"markdown bullet points such as:\n* This is point 1.\n* This is point 2")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_bullets=rng.randint(2, 5))


class ConstrainedResponse(Instruction, frozen=True, tag="detectable_format:constrained_response"):
    options: tuple[NonEmpty, ...] = _OPTIONS

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        text = response.strip()
        return any(option in text for option in self.options)

    def description(self) -> str:
        return "Answer with one of the following options: " + " ".join(
            f"({o})" for o in self.options)

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


class NumberHighlightedSections(Instruction, frozen=True, tag="detectable_format:number_highlighted_sections"):
    num_highlights: Positive

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        single = re.findall(r"\*[^\n\*]*\*", response)
        double = re.findall(r"\*\*[^\n\*]*\*\*", response)
        count = sum(1 for h in single if h.strip("*").strip())
        count += sum(1 for h in double if h.removeprefix("**").removesuffix("**").strip())
        return count >= self.num_highlights

    def description(self) -> str:
        return (f"Highlight at least {self.num_highlights} sections in your answer with "
                f"markdown, i.e. *highlighted section*.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(num_highlights=rng.randint(1, 4))


class MultipleSections(Instruction, frozen=True, tag="detectable_format:multiple_sections"):
    section_spliter: NonEmpty
    num_sections: Positive

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        pattern = r"\s?" + re.escape(self.section_spliter.strip()) + r"\s?\d+\s?"
        return len(re.split(pattern, response)) - 1 >= self.num_sections

    def reference_note(self) -> str | None:
        return _literal_note("section_spliter", (self.section_spliter.strip(),))

    def description(self) -> str:
        s = self.section_spliter
        return (f"Your response must have {self.num_sections} sections. Mark the beginning of "
                f"each section with {s} X, such as:\n{s} 1\n[content of section 1]\n"
                f"{s} 2\n[content of section 2]")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(section_spliter=rng.choice(("Section", "SECTION")),
                   num_sections=rng.randint(2, 4))


class JsonFormat(Instruction, frozen=True, tag="detectable_format:json_format"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        # Each fence is removed in turn, as the reference chains removeprefix calls.
        text = response.strip()
        for fence in ("```json", "```Json", "```JSON", "```"):
            text = text.removeprefix(fence)
        text = text.removesuffix("```").strip()
        try:
            json.loads(text)
        except ValueError:
            return False
        return True

    def description(self) -> str:
        return ("Entire output should be wrapped in JSON format. You can use markdown ticks "
                "such as ```.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


class Title(Instruction, frozen=True, tag="detectable_format:title"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return any(t.lstrip("<").rstrip(">").strip()
                   for t in re.findall(r"<<[^\n]+>>", response))

    def description(self) -> str:
        return ("Your answer must contain a title, wrapped in double angular brackets, such as "
                "<<poem of joy>>.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


# -- combination ---------------------------------------------------------------------------


class TwoResponses(Instruction, frozen=True, tag="combination:two_responses"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        parts = response.split("******")
        kept = []
        for i, part in enumerate(parts):
            if not part.strip():
                if i not in (0, len(parts) - 1):
                    return False
            else:
                kept.append(part)
        return len(kept) == 2 and kept[0].strip() != kept[1].strip()

    def description(self) -> str:
        return ("Give two different responses. Responses and only responses should be "
                "separated by 6 asterisk symbols: ******.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


class RepeatPrompt(Instruction, frozen=True, tag="combination:repeat_prompt"):
    prompt_to_repeat: NonEmpty

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return response.strip().lower().startswith(self.prompt_to_repeat.strip().lower())

    def description(self) -> str:
        return ("First repeat the request word for word without change, then give your answer "
                "(1. do not say any words or characters before repeating the request; 2. the "
                "request you need to repeat does not include this sentence)")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(prompt_to_repeat=prompt)


# -- start and end -------------------------------------------------------------------------


class EndChecker(Instruction, frozen=True, tag="startend:end_checker"):
    end_phrase: NonEmpty

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return response.strip().strip('"').lower().endswith(self.end_phrase.strip().lower())

    def description(self) -> str:
        return (f"Finish your response with this exact phrase: {self.end_phrase} No other "
                f"words should follow this phrase.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(end_phrase=rng.choice(_END_PHRASES))


# Straight quotes; Multi-IF also takes Chinese curly quotes and Japanese corner brackets.
_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"), ("\u300c", "\u300d"))


class Quotation(Instruction, frozen=True, tag="startend:quotation"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        text = response.strip()
        pairs = _QUOTE_PAIRS if reading == "multi-if" else _QUOTE_PAIRS[:1]
        return len(text) > 1 and any(text[0] == a and text[-1] == b for a, b in pairs)

    def description(self) -> str:
        return "Wrap your entire response with double quotation marks."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


# -- case ----------------------------------------------------------------------------------


class CapitalWordFrequency(Instruction, frozen=True, tag="change_case:capital_word_frequency"):
    capital_frequency: Positive
    capital_relation: Relation

    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        capitals = sum(1 for w in textutil.word_tokenize(response) if w.isupper())
        return _compare(capitals, self.capital_relation, self.capital_frequency)

    def description(self) -> str:
        return (f"In your response, words with all capital letters should appear "
                f"{self.capital_relation} {self.capital_frequency} times.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls(capital_frequency=rng.randint(1, 8), capital_relation=rng.choice(RELATIONS))


def _english_or_undetectable(text: str) -> bool:
    detected = language.detect(text)
    return detected is None or detected == "en"


class EnglishCapital(Instruction, frozen=True, tag="change_case:english_capital"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return response.isupper() and _english_or_undetectable(response)

    def description(self) -> str:
        return "Your entire response should be in English, and in all capital letters."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


class EnglishLowercase(Instruction, frozen=True, tag="change_case:english_lowercase"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return response.islower() and _english_or_undetectable(response)

    def description(self) -> str:
        return ("Your entire response should be in English, and in all lowercase letters. No "
                "capital letters are allowed.")

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


# -- punctuation ---------------------------------------------------------------------------


class NoComma(Instruction, frozen=True, tag="punctuation:no_comma"):
    def check(self, response: str, reading: Reading = "ifeval") -> bool:
        return "," not in response

    def description(self) -> str:
        return "In your entire response, refrain from the use of any commas."

    @classmethod
    def sample(cls, rng: random.Random, prompt: str) -> Instruction:
        return cls()


# -- registry ------------------------------------------------------------------------------

TYPES: dict[str, type[Instruction]] = {
    str(cls.__struct_config__.tag): cls for cls in (
        KeywordsExistence, KeywordsFrequency, KeywordsForbiddenWords, KeywordsLetterFrequency,
        ResponseLanguage, NumberSentences, NumberParagraphs, NumberWords, NthParagraphFirstWord,
        NumberPlaceholders, Postscript, NumberBulletLists, ConstrainedResponse,
        NumberHighlightedSections, MultipleSections, JsonFormat, Title, TwoResponses,
        RepeatPrompt, EndChecker, Quotation, CapitalWordFrequency, EnglishCapital,
        EnglishLowercase, NoComma)
}
AnyInstruction = Union[tuple(TYPES.values())]  # type: ignore[valid-type]

# Pairs that cannot both be followed (or make each other unverifiable); a
# simulated user never gives one while the other is in force.
_CONFLICT_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"change_case:capital_word_frequency", "change_case:english_capital",
               "change_case:english_lowercase", "language:response_language"}),
    frozenset({"detectable_format:json_format", "detectable_format:title",
               "detectable_format:multiple_sections", "detectable_format:number_bullet_lists",
               "detectable_format:number_highlighted_sections", "combination:two_responses",
               "combination:repeat_prompt", "startend:quotation", "startend:end_checker",
               "detectable_content:postscript", "detectable_format:constrained_response",
               "length_constraints:number_paragraphs",
               "length_constraints:nth_paragraph_first_word"}),
    frozenset({"startend:end_checker", "startend:quotation", "detectable_content:postscript",
               "combination:two_responses"}),
    frozenset({"length_constraints:number_paragraphs",
               "length_constraints:nth_paragraph_first_word", "combination:two_responses",
               "detectable_format:constrained_response"}),
    frozenset({"detectable_format:constrained_response", "length_constraints:number_words",
               "length_constraints:number_sentences", "keywords:existence",
               "keywords:frequency", "detectable_content:number_placeholders",
               "combination:repeat_prompt"}),
    frozenset({"language:response_language", "keywords:existence", "keywords:frequency",
               "combination:repeat_prompt", "length_constraints:nth_paragraph_first_word",
               "detectable_format:constrained_response", "startend:end_checker"}),
)


def conflicts(a: str, b: str) -> bool:
    """Whether instruction types `a` and `b` should not be in force together."""
    if a == b:
        return True
    # json_format only conflicts with the other format types, not among them
    # pairwise: the second group lists json_format's conflicts.
    for group in _CONFLICT_GROUPS:
        if a in group and b in group:
            if group is _CONFLICT_GROUPS[1] and "detectable_format:json_format" not in (a, b):
                continue
            return True
    return False


def parse_instruction(data: Any, where: str = "instruction") -> Instruction:
    """An instruction from its dict form; `where` names it in errors."""
    if isinstance(data, Instruction):
        return data
    if not isinstance(data, dict):
        raise InstructionError(f"{where}: expected a table with a `type`, got "
                               f"{type(data).__name__}")
    kind = data.get("type")
    if kind not in TYPES:
        close = difflib.get_close_matches(str(kind), TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InstructionError(f"{where}: unknown instruction type {kind!r}{hint} "
                               f"(known: {', '.join(sorted(TYPES))})")
    try:
        return msgspec.convert(data, TYPES[kind])
    except msgspec.ValidationError as exc:
        raise InstructionError(f"{where} ({kind}): {exc}") from None


def parse_instructions(items: Any, where: str = "instructions") -> tuple[Instruction, ...]:
    if not isinstance(items, (list, tuple)):
        raise InstructionError(f"{where}: expected a list, got {type(items).__name__}")
    return tuple(parse_instruction(item, f"{where}[{i}]") for i, item in enumerate(items))
