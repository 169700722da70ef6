"""How much a student's answer agrees with the teacher's: ROUGE-L F1 over lower-cased
words (the longest common subsequence, as a share of both answers). 1.0: the same words in
the same order; 0.0: no word in common."""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def rouge_l(candidate: str, reference: str) -> float:
    a, b = words(candidate), words(reference)
    if not a or not b:
        return 1.0 if a == b else 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    common = previous[-1]
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return round(2 * precision * recall / (precision + recall), 6)
