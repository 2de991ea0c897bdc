"""Task-homogeneous batching, schedules and the task-stripping collator."""

from __future__ import annotations

from collections import Counter

import pytest

from sft_core.tasks import BATCH_TASK_KEY, TaskAwareCollator, TaskHomogeneousBatchSampler, task_labels

TASKS = ["a"] * 23 + ["b"] * 10 + ["c"] * 5


def rank_batches(schedule="mixed", accumulation=2, replicas=2, proportions=None, epoch=0):
    per_rank = []
    for rank in range(replicas):
        sampler = TaskHomogeneousBatchSampler(TASKS, batch_size=3, gradient_accumulation_steps=accumulation,
                                              num_replicas=replicas, rank=rank, schedule=schedule,
                                              proportions=proportions, seed=7)
        sampler.set_epoch(epoch)
        per_rank.append(list(sampler))
        assert len(per_rank[-1]) == len(sampler)
    return per_rank


def step_tasks(per_rank, accumulation):
    """Task of each optimizer step, asserting every micro-batch on every rank agrees."""
    steps = []
    for start in range(0, len(per_rank[0]), accumulation):
        tasks = {TASKS[i] for batches in per_rank for batch in batches[start:start + accumulation] for i in batch}
        assert len(tasks) == 1, f"optimizer step {start // accumulation} mixes tasks {tasks}"
        steps.append(tasks.pop())
    return steps


def test_every_optimizer_step_is_one_task_across_ranks_and_accumulation():
    per_rank = rank_batches()
    assert all(len(batch) == 3 for batches in per_rank for batch in batches)
    steps = step_tasks(per_rank, accumulation=2)
    assert Counter(steps) == {"a": 2, "b": 1, "c": 1}  # ceil(n / (3 * 2 * 2)) groups per task
    seen = {i for batches in per_rank for batch in batches for i in batch}
    assert seen == set(range(len(TASKS)))  # every item used; short tasks wrap around


def test_mixed_order_depends_on_epoch_and_sequential_keeps_task_order():
    mixed = [step_tasks(rank_batches(accumulation=1, replicas=1, epoch=e), 1) for e in range(6)]
    assert len({tuple(order) for order in mixed}) > 1
    sequential = step_tasks(rank_batches(schedule="sequential", accumulation=1, replicas=1), 1)
    assert sequential == ["a"] * 8 + ["b"] * 4 + ["c"] * 2
    ordered = step_tasks(rank_batches(schedule="sequential", accumulation=1, replicas=1,
                                      proportions={"c": 1, "b": 1, "a": 1}), 1)
    assert ordered[0] == "c" and ordered[-1] == "a"


def test_proportions_set_the_share_of_steps():
    steps = step_tasks(rank_batches(accumulation=1, replicas=1, proportions={"a": 1, "b": 1, "c": 2}), 1)
    counts = Counter(steps)
    assert sum(counts.values()) == 8 + 4 + 2
    assert counts["c"] == 7 and counts["a"] in (3, 4) and counts["b"] in (3, 4)
    with pytest.raises(ValueError, match="absent"):
        TaskHomogeneousBatchSampler(TASKS, batch_size=2, proportions={"zzz": 1})


def test_collator_strips_task_and_marks_mixed_batches():
    seen = []

    def collate(items):
        seen.extend(items)
        return {"n": len(items)}

    collator = TaskAwareCollator(collate)
    batch = collator([{"x": 1, "task": "a"}, {"x": 2, "task": "a"}])
    assert batch == {"n": 2, BATCH_TASK_KEY: "a"} and all("task" not in item for item in seen)
    assert collator([{"x": 1}])[BATCH_TASK_KEY] == "default"
    assert collator([{"task": "a"}, {"task": "b"}])[BATCH_TASK_KEY] is None  # evaluation may mix tasks
    with pytest.raises(ValueError, match="mixes tasks"):
        TaskAwareCollator(collate, require_single_task=True)([{"task": "a"}, {"task": "b"}])


def test_task_labels_reads_lists_and_hf_datasets():
    import datasets

    assert task_labels([{"task": "x"}, {"y": 1}]) == ["x", "default"]
    assert task_labels(datasets.Dataset.from_dict({"task": ["p", "q"], "v": [1, 2]})) == ["p", "q"]
    assert task_labels(datasets.Dataset.from_dict({"v": [1, 2]})) == ["default", "default"]
