"""Text measures shared by the instruction checkers: words, sentences, n-grams."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)
# Words with an inner apostrophe count once ("don't"), as a reader would count them.
_CASED_WORD = re.compile(r"\w+(?:['\u2019]\w+)*", re.UNICODE)

# Abbreviations whose period does not end a sentence.
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e",
                  "inc", "ltd", "co", "no", "fig", "approx")
_ABBREV = re.compile(r"\b(" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")\.",
                     re.IGNORECASE)
_DECIMAL = re.compile(r"(\d)\.(\d)")
_INITIALS = re.compile(r"\b([A-Za-z])\.(?=[A-Za-z]\.)")
# A period followed by a lower-case word ("p.m. in") is not a sentence end.
_SENTENCE_END = re.compile(r"(?<=[.!?\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+(?![a-z])|"
                           r"(?<=[\u3002\uff01\uff1f])")
_MASK = "\u0000"


def count_words(text: str) -> int:
    """Runs of word characters (letters, digits, underscore) in any script."""
    return len(_WORD.findall(text))


def words(text: str) -> list[str]:
    """Words, keeping inner apostrophes ("don't" is one word)."""
    return _CASED_WORD.findall(text)


def split_sentences(text: str) -> list[str]:
    """Sentences ended by '.', '!', '?' (or their CJK forms) followed by space or the end.

    Periods in common abbreviations (Mr., e.g.), initials (U.S.), decimals (3.5)
    and before a lower-case word do not end a sentence. Markdown line breaks without end punctuation do not
    split either, so a bullet list without periods counts as one sentence.
    """
    masked = _DECIMAL.sub(rf"\1{_MASK}\2", text)
    masked = _ABBREV.sub(lambda m: m.group(1) + _MASK, masked)
    masked = _INITIALS.sub(rf"\1{_MASK}", masked)
    parts = _SENTENCE_END.split(masked)
    return [p.replace(_MASK, ".").strip() for p in parts if p and p.strip()]


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def tokens(text: str) -> list[str]:
    """Lower-cased words, for lexical diversity measures."""
    return [w.lower() for w in _WORD.findall(text)]
