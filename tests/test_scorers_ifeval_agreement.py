"""Agreement of the instruction checks with IFEval's and Multi-IF's reference code.

tests/data/ifeval_reference_verdicts.jsonl holds hand-made responses, one instruction
each, with the strict and loose verdicts that the reference implementations give:
``ifeval`` from Google's checks (as copied into lm-evaluation-harness), ``multi-if``
from Multi-IF's official ``ifeval.py``; both run with langdetect seeded at 0 and nltk's
English Punkt model. Every verdict is one comparison; the aims are 98% overall and 95%
for every instruction type.

Run as a script to print the table: ``python tests/test_scorers_ifeval_agreement.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from turnloom_scorers import ifeval
from turnloom_scorers.instructions import TYPES, parse_instruction

DATA = Path(__file__).parent / "data" / "ifeval_reference_verdicts.jsonl"
READINGS = ("ifeval", "multi-if")


def load_cases() -> list[dict]:
    with DATA.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def disagreements_by_type() -> tuple[dict[str, int], dict[str, list[str]]]:
    """Verdicts compared per type, and a description of each disagreement."""
    compared: dict[str, int] = defaultdict(int)
    wrong: dict[str, list[str]] = defaultdict(list)
    for i, case in enumerate(load_cases()):
        instruction = parse_instruction({"type": case["type"], **case["kwargs"]},
                                        f"case {i}")
        for reading in READINGS:
            ev = ifeval.evaluate([instruction], case["response"], reading)
            ours = {"strict": ev.strict[0], "loose": ev.loose[0]}
            for mode, expected in case[reading].items():
                compared[case["type"]] += 1
                if ours[mode] != expected:
                    wrong[case["type"]].append(
                        f"case {i} {reading}/{mode}: reference {expected}, ours {ours[mode]}: "
                        f"{case['response']!r}")
    return dict(compared), dict(wrong)


def test_cases_cover_every_type_twenty_times() -> None:
    counts: dict[str, int] = defaultdict(int)
    for case in load_cases():
        counts[case["type"]] += 1
    assert set(counts) == set(TYPES)
    assert min(counts.values()) >= 20, counts


def test_agreement_with_the_reference_code() -> None:
    compared, wrong = disagreements_by_type()
    total = sum(compared.values())
    overall = 1 - sum(len(w) for w in wrong.values()) / total
    assert overall >= 0.98, (overall, wrong)
    for kind, n in compared.items():
        assert 1 - len(wrong.get(kind, [])) / n >= 0.95, (kind, wrong[kind])


if __name__ == "__main__":
    compared, wrong = disagreements_by_type()
    total = sum(compared.values())
    missed = sum(len(w) for w in wrong.values())
    for kind in sorted(compared):
        n = compared[kind]
        print(f"{kind:50s} {n:4d} verdicts  agreement {1 - len(wrong.get(kind, [])) / n:7.2%}")
    print(f"{'overall':50s} {total:4d} verdicts  agreement {1 - missed / total:7.2%}")
    for lines in wrong.values():
        for line in lines:
            print("  " + line)
