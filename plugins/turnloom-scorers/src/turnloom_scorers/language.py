"""A small, dependency-free language detector: script first, then stopwords.

Limits: it knows the languages in `SUPPORTED` only. Texts in a non-Latin script
are told apart by script alone (so Russian, Bulgarian and Serbian Cyrillic all
read as "ru" unless Ukrainian-only letters appear; Hindi, Marathi and Nepali
all read as "hi"). Latin-script texts need a few common function words to be
recognised: a list of keywords or a very short answer may come back as None
("cannot tell"), which the response-language check counts as not followed.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Unicode script (from the character name's first word) -> language code.
_SCRIPT_LANGUAGE = {
    "ARABIC": "ar", "HEBREW": "he", "GREEK": "el", "DEVANAGARI": "hi", "BENGALI": "bn",
    "THAI": "th", "TAMIL": "ta", "TELUGU": "te", "GUJARATI": "gu", "KANNADA": "kn",
    "MALAYALAM": "ml", "GURMUKHI": "pa", "HANGUL": "ko", "CYRILLIC": "ru",
}
_PERSIAN_LETTERS = set("پچژگکی")
_UKRAINIAN_LETTERS = set("іїєґІЇЄҐ")

_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and is are was of to in that it for on with as this be have not you "
                    "he she they we at by from or but an will would can what which there their "
                    "has been were".split()),
    "es": frozenset("el la los las de que y en un una es por con para no se del al lo como "
                    "pero más su sus está son muy también porque hay".split()),
    "fr": frozenset("le la les de des et est un une du que en dans pour pas qui sur au avec "
                    "il elle sont ce cette mais nous vous ne plus être".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den von mit sich des auf für im "
                    "dem auch es sie ich wir aber wird sind oder".split()),
    "it": frozenset("il lo la gli le di che e è un una per non con del della sono anche come "
                    "ma più nel alla questo essere sua".split()),
    "pt": frozenset("o a os as de que e é um uma do da em para não com por se dos das mais "
                    "como mas foi são está também muito".split()),
    "nl": frozenset("de het een en van is dat niet op te in zijn met voor er aan ook maar "
                    "als bij om wordt hij ze".split()),
    "sv": frozenset("och det att är som en på av för med till den har inte om ett var jag "
                    "men från vi kan sig".split()),
    "da": frozenset("og det at er som en på af for med til den har ikke om et var jeg men "
                    "fra vi kan sig de".split()),
    "fi": frozenset("ja on ei se että oli hän mutta kuin ovat myös tai joka tämä niin kun "
                    "ole olla sen".split()),
    "pl": frozenset("i w nie na się to że z jest do jak co o ale tak po czy od za przez "
                    "jego są być".split()),
    "tr": frozenset("ve bir bu da de için ile ne çok ama gibi daha olarak var değil ben sen "
                    "o en mi".split()),
    "id": frozenset("dan yang di ini itu dengan untuk tidak dari dalam akan pada juga ke "
                    "karena ada bisa saya kami mereka".split()),
}
SUPPORTED = frozenset(_STOPWORDS) | frozenset(_SCRIPT_LANGUAGE.values()) | {"zh", "ja", "fa", "uk"}

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def _script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    code = ord(ch)
    if 0x3040 <= code <= 0x30FF:
        return "KANA"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
        return "HAN"
    name = unicodedata.name(ch, "")
    if name.startswith("CJK"):
        return "HAN"
    return name.split(" ", 1)[0] if name else None


def detect(text: str) -> str | None:
    """The language code of `text` (one of SUPPORTED), or None when it cannot tell."""
    scripts = Counter(s for s in map(_script, text) if s is not None)
    if not scripts:
        return None
    script, _ = scripts.most_common(1)[0]
    if script in ("HAN", "KANA") or scripts.get("KANA", 0) + scripts.get("HAN", 0) > sum(
            scripts.values()) / 2:
        # Japanese mixes kana into kanji; Chinese has none.
        return "ja" if scripts.get("KANA", 0) > 0 else "zh"
    if script == "ARABIC" and any(c in _PERSIAN_LETTERS for c in text):
        return "fa"
    if script == "CYRILLIC" and any(c in _UKRAINIAN_LETTERS for c in text):
        return "uk"
    if script in _SCRIPT_LANGUAGE:
        return _SCRIPT_LANGUAGE[script]
    if script != "LATIN":
        return None
    words = [w.lower() for w in _WORD.findall(text)]
    hits = {lang: sum(w in stop for w in words) for lang, stop in _STOPWORDS.items()}
    best = max(hits.values())
    if best == 0:
        return None
    winners = [lang for lang, n in hits.items() if n == best]
    # Ties between close relatives (da/sv, es/pt) are broken by the order in _STOPWORDS.
    return winners[0]
