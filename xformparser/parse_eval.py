"""Score `xformparser parse` output against labelled documents (key -> value pair F1).

Parse output has its own entities (from OCR), so they are first matched to the gold entities:
a predicted entity matches the gold entity that covers the largest share of its box, when that share
is at least ``MIN_BOX_SHARE`` of the predicted box's area and the normalised texts (lowercase, letters
and digits only, any script) have a ``difflib`` similarity ratio of at least ``MIN_TEXT_RATIO``. A
predicted pair is correct when its key and value match the two ends of a gold key -> value link.
Predicted pairs that map to the same gold pair count once; unmatched entities keep their own identity
(so a pair with an unmatched end is a false positive).

    from xformparser.parse_eval import pair_scores
    report = pair_scores(parse_results, gold_documents)   # {"pair_f1", "precision", "recall", ...}
"""

from __future__ import annotations

import difflib

from .formats import Document

MIN_BOX_SHARE = 0.5
MIN_TEXT_RATIO = 0.6


def normalise_text(text: str) -> str:
    return "".join(character for character in text.lower() if character.isalnum())


def _area(box) -> float:
    return max(box[2] - box[0], 0) * max(box[3] - box[1], 0)


def match_entities(predicted: list[dict], gold: Document) -> dict[int, int | None]:
    """Predicted entity id -> matched gold entity id, or None (rule in the module docstring)."""
    matches = {}
    for entity in predicted:
        box, best, best_share = entity["box"], None, 0.0
        area = max(_area(box), 1e-6)
        for candidate in gold.entities:
            g = candidate.box
            share = _area([max(box[0], g[0]), max(box[1], g[1]), min(box[2], g[2]), min(box[3], g[3])]) / area
            if share > best_share:
                best, best_share = candidate, share
        similar = best is not None and difflib.SequenceMatcher(
            None, normalise_text(entity["text"]), normalise_text(best.text)).ratio() >= MIN_TEXT_RATIO
        matches[entity["id"]] = best.id if best is not None and best_share >= MIN_BOX_SHARE and similar else None
    return matches


def page_pair_counts(result: dict, gold: Document, key_labels=("question", "key"),
                     value_labels=("answer", "value")) -> dict:
    """True positives, predicted and gold pair counts for one parsed page."""
    gold_links = gold.key_value_links(key_labels, value_labels)
    matches = match_entities(result["entities"], gold)
    mapped = set()
    for pair in result["pairs"]:
        key, value = pair["key"]["id"], pair["value"]["id"]
        mapped.add((matches[key] if matches[key] is not None else ("unmatched", key),
                    matches[value] if matches[value] is not None else ("unmatched", value)))
    return {"true_positive": len(mapped & gold_links), "predicted": len(mapped), "gold": len(gold_links),
            "entities": len(result["entities"]), "matched_entities": sum(m is not None for m in matches.values())}


def combine_counts(counts: list[dict]) -> dict:
    true_positive = sum(c["true_positive"] for c in counts)
    predicted, gold = sum(c["predicted"] for c in counts), sum(c["gold"] for c in counts)
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"pair_f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
            "true_positive": true_positive, "predicted": predicted, "gold": gold}


def pair_scores(results: list[dict], documents: list[Document], **roles) -> dict:
    """Micro-averaged pair P/R/F1 over pages (``results[i]`` is the parse of ``documents[i]``)."""
    return combine_counts([page_pair_counts(r, d, **roles) for r, d in zip(results, documents, strict=True)])


__all__ = ["MIN_BOX_SHARE", "MIN_TEXT_RATIO", "combine_counts", "match_entities", "normalise_text",
           "page_pair_counts", "pair_scores"]
