"""Pairwise accuracy of a scorer on labelled response groups (overall, per source/dataset/domain/subset, per
dimension, and RM-Bench's easy / normal / hard over the 3x3 chosen-style x rejected-style matrix).

Ties: one rule for ``srm score`` and ``srm evaluate`` (:func:`is_correct`). A comparison is correct only when
the labelled-better response gets a strictly higher score; equal scores count as wrong (as RewardBench's
``chosen > rejected``). A model that gives every answer the same reward is then at 0%, not at a
chance-looking 50%. ``ties`` reports how many comparisons were exact ties.

Truncation: ``truncated_responses`` counts responses that lost tokens in the model's joint ``prompt + response``
window (head + tail truncation keeps their start and end) and ``truncated_pairs`` the comparisons with at least
one such response, so a low accuracy on long answers can be told apart from a wrong judgement.
"""

from __future__ import annotations

from collections import defaultdict

from .collate import truncated_responses
from .data import ResponseGroup


class _Tally:
    def __init__(self):
        self.correct = defaultdict(float)
        self.total = defaultdict(int)

    def add(self, key: str, outcome: float) -> None:
        self.correct[key] += outcome
        self.total[key] += 1

    def table(self) -> dict[str, dict]:
        return {k: {"accuracy": self.correct[k] / self.total[k], "pairs": self.total[k]} for k in sorted(self.total)}


def is_correct(margin: float) -> bool:
    """``margin`` = score(labelled better) - score(labelled worse); a tie (0) is not correct."""
    return margin > 0


def _outcome(difference: float) -> float:
    return 1.0 if is_correct(difference) else 0.0


def rmbench_cells(rewards: list[float]) -> dict[str, list[float]]:
    """Outcomes of the 9 chosen[i] vs rejected[j] comparisons split into easy (i > j: chosen more styled),
    normal (i == j) and hard (i < j)."""
    cells = {"easy": [], "normal": [], "hard": []}
    for i in range(3):
        for j in range(3):
            key = "normal" if i == j else ("easy" if i > j else "hard")
            cells[key].append(_outcome(rewards[i] - rewards[3 + j]))
    return cells


def _truncation_flags(scorer, items: list[tuple[str, str]]) -> list[bool] | None:
    """Per item: does it lose tokens in the scorer's joint window? None for scorers without a tokenizer."""
    tokenizer, model = getattr(scorer, "tokenizer", None), getattr(scorer, "model", None)
    if tokenizer is None or model is None or not items:
        return None
    return truncated_responses(tokenizer, model.config, [p for p, _ in items], [r for _, r in items])


def evaluate_groups(scorer, groups: list[ResponseGroup]) -> dict:
    items = [(g.prompt, r) for g in groups for r in g.responses]
    scores = scorer.score(items)
    truncated = _truncation_flags(scorer, items)
    truncated_pairs = 0
    overall, dimensions = _Tally(), _Tally()
    ties = 0
    matrix = {"all": defaultdict(list)}
    start = 0
    for group in groups:
        offset, start = start, start + len(group.responses)
        group_scores = scores[offset:start]
        rewards = [s.reward for s in group_scores]
        for pair in group.pairs:
            if pair.overall:
                outcome = _outcome(rewards[pair.better] - rewards[pair.worse])
                ties += rewards[pair.better] == rewards[pair.worse]
                if truncated is not None:
                    truncated_pairs += truncated[offset + pair.better] or truncated[offset + pair.worse]
                overall.add("all", outcome)
                overall.add(f"source/{group.source or 'unknown'}", outcome)
                if group.dataset:
                    overall.add(f"dataset/{group.dataset}", outcome)
                if group.domain:
                    overall.add(f"domain/{group.domain}", outcome)
                if group.subset and group.subset != group.domain:
                    overall.add(f"subset/{group.subset}", outcome)
            for name, label in pair.dimensions.items():
                first, second = group_scores[pair.better].dimensions, group_scores[pair.worse].dimensions
                if label and name in first:
                    dimensions.add(name, _outcome(label * (first[name] - second[name])))
        if group.rmbench:
            for key, outcomes in rmbench_cells(rewards).items():
                for scope in ("all", f"domain/{group.domain}"):
                    matrix.setdefault(scope, defaultdict(list))[key].extend(outcomes)
    table = overall.table()
    result = {"pairs": table.get("all", {}).get("pairs", 0), "accuracy": table.get("all", {}).get("accuracy"),
              "ties": ties,
              "truncated_responses": sum(truncated) if truncated is not None else None,
              "truncated_pairs": truncated_pairs if truncated is not None else None,
              "by_source": {k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("source/")},
              "by_dataset": {k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("dataset/")},
              "by_domain": {k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("domain/")},
              "by_subset": {k.split("/", 1)[1]: v for k, v in table.items() if k.startswith("subset/")},
              "dimensions": dimensions.table()}
    if matrix["all"]:
        def summary(cells):
            out = {key: sum(values) / len(values) for key, values in cells.items() if values}
            every = [v for values in cells.values() for v in values]
            out["average"] = sum(every) / len(every)
            out["prompts"] = len(cells.get("normal", [])) // 3
            return out

        result["rm_bench"] = summary(matrix["all"])
        result["rm_bench"]["by_domain"] = {k.split("/", 1)[1]: summary(v) for k, v in matrix.items() if k != "all"}
    return result
