"""`mitigate`: turn a diagnosis into a new training plan (stage JSONL files + plan.json + review files).

Per primary cause of an unlearned sample (learned samples are kept once, in their stage):

- under_optimization: resampled ``upsample`` times (re-weighting by repetition: the trainer's loss has no
  per-sample weights, repetition works with any trainer).
- data_inconsistency: its conflict group (exact duplicates and embedding near-duplicates with different
  targets, learned members included) goes to ``review_conflicts.jsonl``. By default every member is kept
  and the variants get distinct task names (``<task>__variant<k>``) so task-homogeneous batches never
  hold two contradicting targets; with ``drop_minority`` only the majority target is kept (ties: the
  target the tuned model reproduced best), the rest are listed as dropped.
- left_forgetting: the forgotten samples are replayed in the final stage, together with a
  ``replay_fraction`` share of the other earlier-stage samples (seeded choice).
- knowledge_conflict / knowledge_gap: flagged in ``knowledge_flags.jsonl`` with the evidence (the base
  model's preferred answer, probabilities, PMI); kept and resampled ``upsample`` times so the SFT target
  gets more weight against the prior (``conflict_policy="drop"`` leaves conflicts out instead). User-supplied
  ``prerequisites`` (JSONL in any accepted SFT format: knowledge the samples depend on) are added to the
  stage holding the knowledge-gap samples.
- unexplained: kept once and listed in the plan.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from sft_core.atomic_io import atomic_write_json, atomic_write_text

from .diagnose import load_report
from .items import Item, read_items

PLAN_NAME = "plan.json"
REVIEW_NAME = "review_conflicts.jsonl"
FLAGS_NAME = "knowledge_flags.jsonl"


@dataclass
class MitigationConfig:
    upsample: int = 3
    replay_fraction: float = 0.25
    drop_minority: bool = False
    conflict_policy: str = "upweight"  # "upweight" | "keep" | "drop"
    separate_conflicting: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.upsample < 1:
            raise ValueError(f"upsample must be >= 1, got {self.upsample}")
        if not 0.0 <= self.replay_fraction <= 1.0:
            raise ValueError(f"replay_fraction must be in [0, 1], got {self.replay_fraction}")
        if self.conflict_policy not in ("upweight", "keep", "drop"):
            raise ValueError(f"conflict_policy must be upweight, keep or drop, got {self.conflict_policy!r}")


def conflict_groups(report: dict) -> list[list[int]]:
    """Groups of sample indices whose inputs are (near-)duplicates with different targets (union-find
    over exact duplicate groups and embedding neighbour pairs above the report's threshold)."""
    samples = report["samples"]
    threshold = report["config"]["attribution"]["neighbour_similarity"]
    parent = list(range(len(samples)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_exact = defaultdict(list)
    involved = set()
    for s in samples:
        group = s["signals"].get("conflict_group")
        if group is not None and group >= 0:
            by_exact[int(group)].append(s["index"])
        similarity, neighbour = s["signals"].get("neighbour_similarity"), s["signals"].get("neighbour_index")
        if similarity is not None and neighbour is not None and neighbour >= 0 and similarity >= threshold:
            parent[find(s["index"])] = find(int(neighbour))
            involved.update((s["index"], int(neighbour)))
    for members in by_exact.values():
        involved.update(members)
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    groups = defaultdict(list)
    for i in sorted(involved):
        groups[find(i)].append(i)
    return [members for members in groups.values() if len(members) > 1]


def _majority_keep(members: list[int], samples: list[dict]) -> set[int]:
    from .signals import normalize_text

    by_target = defaultdict(list)
    for i in members:
        by_target[normalize_text(samples[i]["target"])].append(i)
    ranked = sorted(by_target.values(), key=lambda ids: (-len(ids), -max(samples[i]["pass_rate"] or 0 for i in ids),
                                                          min(samples[i]["signals"].get("final_loss") or 0 for i in ids)))
    return set(ranked[0])


def _record(item: Item, task: str | None = None, **extra) -> dict:
    return {"task": task or item.task, "messages": item.messages, **extra}


def build_plan(report, data, out_dir, config: MitigationConfig | None = None, prerequisites=(),
               base_model: str | None = None) -> dict:
    """Write the plan into ``out_dir`` and return plan.json's content.

    Args:
        report: a diagnosis report (dict or directory).
        data: the training JSONL paths (or :class:`Item` list) the report was made on.
        prerequisites: JSONL files of user-supplied prerequisite knowledge for the knowledge gaps.
        base_model: written into the suggested ``sft-core train`` commands.
    """
    config = config or MitigationConfig()
    report = load_report(report)
    items = list(data) if data and isinstance(next(iter(data)), Item) else read_items(data)
    samples = report["samples"]
    by_key = {s["key"]: s for s in samples}
    missing = [item.source or item.key for item in items if item.key not in by_key]
    if missing:
        raise ValueError(f"{len(missing)} training sample(s) are not in the report (first: {missing[0]}); "
                         "diagnose the same data you mitigate")
    index_of_key = {item.key: i for i, item in enumerate(items)}
    sample_of = [by_key[item.key] for item in items]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)

    stage_names = [s["name"] for s in (report.get("dynamics") or {}).get("stages") or []] or ["train"]
    last_stage = len(stage_names) - 1

    def stage_of(sample) -> int:
        stage = sample["signals"].get("stage")
        return int(stage) if stage is not None else last_stage

    stages: list[list[dict]] = [[] for _ in stage_names]
    actions = Counter()
    flags, review = [], []

    # conflict groups -> review file, variant tasks or dropped minority
    report_index_to_item = {s["index"]: index_of_key[s["key"]] for s in samples if s["key"] in index_of_key}
    variant_task: dict[int, str] = {}
    dropped: set[int] = set()
    for group_id, members in enumerate(conflict_groups(report)):
        members = [report_index_to_item[m] for m in members if m in report_index_to_item]
        keep = _majority_keep(members, sample_of) if config.drop_minority else set(members)
        from .signals import normalize_text

        targets = sorted({normalize_text(sample_of[i]["target"]) for i in members})
        for i in members:
            variant_task[i] = f"{items[i].task}__variant{targets.index(normalize_text(items[i].target))}"
        dropped.update(set(members) - keep)
        review.append({"group": group_id, "members": [
            {"source": items[i].source, "input": items[i].input_text, "target": items[i].target,
             "pass_rate": sample_of[i]["pass_rate"], "unlearned": sample_of[i]["unlearned"],
             "kept": i in keep} for i in members]})

    replay_pool = []
    for i, (item, sample) in enumerate(zip(items, sample_of)):
        stage = stage_of(sample)
        cause = sample["cause"] if sample["unlearned"] else None
        if i in dropped:
            actions["dropped_minority_target"] += 1
            continue
        task = variant_task.get(i) if (config.separate_conflicting and not config.drop_minority) else None
        copies = 1
        if cause == "under_optimization":
            copies = config.upsample
            actions["upsampled_rare_or_under_optimized"] += 1
        elif cause in ("knowledge_gap", "knowledge_conflict"):
            flags.append({"cause": cause, "source": item.source, "input": item.input_text, "target": item.target,
                          "best_alternative": sample.get("best_alternative"),
                          "evidence": sample["evidence"], "confidence": sample["confidence"]})
            if cause == "knowledge_conflict" and config.conflict_policy == "drop":
                actions["dropped_knowledge_conflict"] += 1
                continue
            if cause == "knowledge_gap" or config.conflict_policy == "upweight":
                copies = config.upsample
            actions[f"flagged_{cause}"] += 1
        elif cause == "left_forgetting":
            stages[last_stage].append(_record(item, task, ilp_replay=True))
            actions["replayed_forgotten"] += 1
        elif cause == "data_inconsistency":
            actions["separated_conflicting" if task else "kept_conflicting"] += 1
        elif cause is not None:
            actions["kept_unexplained"] += 1
        if cause != "left_forgetting" and stage < last_stage:
            replay_pool.append((item, task))
        stages[stage].extend(_record(item, task) for _ in range(copies))

    replayed = rng.sample(replay_pool, int(round(config.replay_fraction * len(replay_pool)))) \
        if any(s["cause"] == "left_forgetting" for s in sample_of if s["unlearned"]) else []
    for item, task in replayed:
        stages[last_stage].append(_record(item, task, ilp_replay=True))
    actions["replayed_earlier_stage"] += len(replayed)

    prerequisite_records = []
    for path in prerequisites:
        from sft_core.sft_data import read_sft_jsonl

        prerequisite_records += [{"task": r["task"], "messages": r["messages"]} for r in read_sft_jsonl(path)]
    if prerequisite_records:
        gap_stages = [stage_of(s) for s in sample_of if s["unlearned"] and s["cause"] == "knowledge_gap"]
        target_stage = Counter(gap_stages).most_common(1)[0][0] if gap_stages else last_stage
        stages[target_stage].extend(prerequisite_records)
        actions["prerequisite_records_added"] += len(prerequisite_records)

    stage_rows, commands, previous = [], [], base_model or "BASE_MODEL"
    for k, (name, records) in enumerate(zip(stage_names, stages)):
        if not records:
            continue
        rng.shuffle(records)
        path = out_dir / f"stage{k}_{_safe(name)}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        stage_rows.append({"name": name, "file": path.name, "records": len(records),
                           "tasks": dict(Counter(r["task"] for r in records))})
        output = f"runs/mitigated_stage{k}"
        commands.append(f"sft-core train --model {previous} --data {path} --output {output} --record-dynamics 10")
        previous = output
    atomic_write_text(out_dir / REVIEW_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in review))
    atomic_write_text(out_dir / FLAGS_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in flags))
    plan = {"stages": stage_rows, "actions": dict(actions), "config": asdict(config),
            "review_file": REVIEW_NAME, "conflict_groups": len(review), "flags_file": FLAGS_NAME,
            "flagged": len(flags), "commands": commands,
            "note": "train the stages in order, each from the previous stage's output; then diagnose again "
                    "with --before on the old report to compare per cause"}
    atomic_write_json(out_dir / PLAN_NAME, plan)
    return plan


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name))[:40] or "stage"
