"""Metrics: entity-level SER P/R/F1, seqeval BIO F1, and link P/R/F1.

All functions take plain Python lists (one entry per document) so they work for any model's output.
"""

from __future__ import annotations

from collections import Counter


def precision_recall_f1(true_positive: int, predicted: int, gold: int) -> dict:
    precision = true_positive / predicted if predicted else 0.0
    recall = true_positive / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": gold, "predicted": predicted,
            "true_positive": true_positive}


def entity_label_scores(gold_labels: list[list[str]], predicted_labels: list[list[str]]) -> dict:
    """SER over gold entities: each entity is one prediction, so micro-F1 over all labels equals
    accuracy; ``micro_without_other`` leaves out the ``other`` class (as BIO/seqeval does)."""
    true_positive, predicted, gold = Counter(), Counter(), Counter()
    for doc_gold, doc_predicted in zip(gold_labels, predicted_labels, strict=True):
        if len(doc_gold) != len(doc_predicted):
            raise ValueError("gold and predicted entity lists differ in length")
        for g, p in zip(doc_gold, doc_predicted):
            gold[g] += 1
            predicted[p] += 1
            true_positive[g] += g == p
    labels = sorted(set(gold) | set(predicted))
    per_label = {label: precision_recall_f1(true_positive[label], predicted[label], gold[label]) for label in labels}
    kept = [label for label in labels if label.lower() != "other"]
    return {
        "per_label": per_label,
        "micro": precision_recall_f1(sum(true_positive.values()), sum(predicted.values()), sum(gold.values())),
        "micro_without_other": precision_recall_f1(sum(true_positive[l] for l in kept),
                                                   sum(predicted[l] for l in kept), sum(gold[l] for l in kept)),
        "macro_f1": sum(s["f1"] for s in per_label.values()) / len(per_label) if per_label else 0.0,
    }


def seqeval_scores(gold_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """Span-level BIO scores (seqeval, default mode): a span counts only with exact boundaries and type."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    if not any(gold_tags):
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    report = classification_report(gold_tags, predicted_tags, output_dict=True, zero_division=0)
    return {
        "precision": float(precision_score(gold_tags, predicted_tags, zero_division=0)),
        "recall": float(recall_score(gold_tags, predicted_tags, zero_division=0)),
        "f1": float(f1_score(gold_tags, predicted_tags, zero_division=0)),
        "per_type": {name: {k: float(v) for k, v in values.items()} for name, values in report.items()
                     if "avg" not in name},
    }


def link_scores(gold_links: list[set], predicted_links: list[set]) -> dict:
    """P/R/F1 over all gold (key, value) links of every document; nothing is filtered out."""
    true_positive = predicted = gold = 0
    for doc_gold, doc_predicted in zip(gold_links, predicted_links, strict=True):
        doc_gold, doc_predicted = set(doc_gold), set(doc_predicted)
        true_positive += len(doc_gold & doc_predicted)
        predicted += len(doc_predicted)
        gold += len(doc_gold)
    return precision_recall_f1(true_positive, predicted, gold)
