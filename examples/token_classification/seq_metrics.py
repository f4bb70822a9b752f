"""Entity-level scores of BIO tag sequences, computed here (no download, no extra package).

The rules are conlleval's and seqeval's default mode: an entity starts at ``B-X``, or at ``I-X``
after anything that is not an entity of type X; it continues over ``I-X``; it counts as correct
when gold and prediction have the same span and type. The per-sentence counts
(``example_counts``) sum to the micro scores, so a bootstrap over sentences resamples them.
"""

from __future__ import annotations

from typing import Iterable


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """``(start, end, type)`` of every entity in a BIO sequence (``end`` exclusive)."""
    found: set[tuple[int, int, str]] = set()
    start, kind = None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label and start is not None
        if start is not None and not continues:
            found.add((start, i, kind))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return found


def example_counts(gold: list[str], pred: list[str]) -> dict[str, int]:
    """Counts of one sentence: gold, predicted and correct entities; tokens and correct tokens."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold tags and {len(pred)} predicted tags")
    g, p = entities(gold), entities(pred)
    return {"gold_entities": len(g), "pred_entities": len(p), "correct_entities": len(g & p),
            "token_count": len(gold), "correct_tokens": sum(a == b for a, b in zip(gold, pred))}


def micro_scores(counts: Iterable[dict[str, int]]) -> dict[str, float]:
    """Entity precision, recall and F1 (micro, over all sentences) and token accuracy."""
    total = {"gold_entities": 0, "pred_entities": 0, "correct_entities": 0, "token_count": 0, "correct_tokens": 0}
    for row in counts:
        for key in total:
            total[key] += row[key]
    precision = total["correct_entities"] / total["pred_entities"] if total["pred_entities"] else 0.0
    recall = total["correct_entities"] / total["gold_entities"] if total["gold_entities"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = total["correct_tokens"] / total["token_count"] if total["token_count"] else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "token_accuracy": accuracy}
