"""Multi-task data plumbing: task labels, task-homogeneous batching, sequential / mixed schedules.

Every optimizer step (all its gradient-accumulation micro-batches, on every data-parallel rank) draws
from a single task, so the gradient that EPI scores and the isolation it applies belong to one task.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

TASK_KEY = "task"
DEFAULT_TASK = "default"
BATCH_TASK_KEY = "_sftkit_task"  # carries the task from the collator to the trainer; never reaches forward()
SCHEDULES = ("mixed", "sequential")


def task_of(item: Mapping[str, Any]) -> str:
    task = item.get(TASK_KEY, DEFAULT_TASK) if isinstance(item, Mapping) else DEFAULT_TASK
    return task if isinstance(task, str) and task else DEFAULT_TASK


def task_labels(dataset) -> list[str]:
    """The task of every item of a map-style dataset (reads one column for a ``datasets.Dataset``)."""
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None and not isinstance(column_names, dict):
        if TASK_KEY not in column_names:
            return [DEFAULT_TASK] * len(dataset)
        return [t if isinstance(t, str) and t else DEFAULT_TASK for t in dataset[TASK_KEY]]
    return [task_of(dataset[i]) for i in range(len(dataset))]


class TaskHomogeneousBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches of dataset indices; each optimizer step is one task.

    A *group* is ``batches_per_step = gradient_accumulation_steps * num_replicas`` batches of one task:
    the rank takes every ``num_replicas``-th of them, so all ranks and all accumulation micro-batches of
    an optimizer step share the task. Short tasks wrap around their (shuffled) items so every batch is
    full. ``schedule``:

    - ``"mixed"``: groups of all tasks interleaved in a seeded random order; without ``proportions``
      each task contributes ``ceil(len(task) / group_size)`` groups per epoch, with ``proportions``
      (task -> weight) the same total number of groups is split by weight.
    - ``"sequential"``: all groups of the first task, then the next, in the order of ``proportions``
      keys if given, else of first appearance in the dataset.
    """

    def __init__(self, tasks: Sequence[str], batch_size: int, gradient_accumulation_steps: int = 1,
                 num_replicas: int = 1, rank: int = 0, schedule: str = "mixed",
                 proportions: Mapping[str, float] | None = None, shuffle: bool = True, seed: int = 0):
        if schedule not in SCHEDULES:
            raise ValueError(f"task_schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if not tasks:
            raise ValueError("the training dataset is empty")
        self.batch_size = int(batch_size)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.schedule, self.shuffle, self.seed = schedule, shuffle, int(seed)
        self.epoch = 0
        self.indices_by_task: dict[str, list[int]] = {}
        for index, task in enumerate(tasks):
            self.indices_by_task.setdefault(task, []).append(index)
        self.proportions = dict(proportions) if proportions else None
        if self.proportions:
            unknown = sorted(set(self.proportions) - set(self.indices_by_task))
            if unknown:
                raise ValueError(f"task_proportions names task(s) absent from the dataset: {', '.join(unknown)}")
            if any(w < 0 for w in self.proportions.values()) or sum(self.proportions.values()) <= 0:
                raise ValueError("task_proportions: weights must be >= 0 with a positive sum")
        self.groups_per_task = self._groups_per_task()

    @property
    def items_per_group(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.num_replicas

    def _groups_per_task(self) -> dict[str, int]:
        natural = {t: math.ceil(len(ix) / self.items_per_group) for t, ix in self.indices_by_task.items()}
        if not self.proportions:
            return natural
        total_groups = sum(natural.values())
        weight_sum = sum(self.proportions.values())
        ordered = list(self.proportions)
        counts = {t: int(total_groups * self.proportions[t] / weight_sum) for t in ordered}
        # hand the rounding remainder to the largest fractional parts (deterministic)
        remainder = total_groups - sum(counts.values())
        by_fraction = sorted(ordered, key=lambda t: -(total_groups * self.proportions[t] / weight_sum - counts[t]))
        for task in by_fraction[:remainder]:
            counts[task] += 1
        return counts

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def task_order(self) -> list[str]:
        if self.proportions and self.schedule == "sequential":
            return [t for t in self.proportions if self.groups_per_task.get(t, 0) > 0]
        return [t for t in self.indices_by_task if self.groups_per_task.get(t, 0) > 0]

    def group_tasks(self) -> list[str]:
        """The task of every group (optimizer step) of the current epoch, identical on every rank."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        sequence = [t for t in self.task_order() for _ in range(self.groups_per_task[t])]
        if self.schedule == "mixed" and self.shuffle:
            sequence = [sequence[i] for i in torch.randperm(len(sequence), generator=generator).tolist()]
        return sequence

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003)
        streams = {}
        for task in self.task_order():
            indices = self.indices_by_task[task]
            if self.shuffle:
                indices = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            streams[task] = (indices, [0])
        for task in self.group_tasks():
            indices, cursor = streams[task]
            group = []
            for _ in range(self.items_per_group):
                group.append(indices[cursor[0] % len(indices)])
                cursor[0] += 1
            # batch b of the group goes to rank b % num_replicas
            batches = [group[b * self.batch_size:(b + 1) * self.batch_size]
                       for b in range(self.gradient_accumulation_steps * self.num_replicas)]
            yield from batches[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return sum(self.groups_per_task.values()) * self.gradient_accumulation_steps


class TaskAwareCollator:
    """Strips ``"task"`` from every item, calls the wrapped collator and puts the batch's task on the batch
    under :data:`BATCH_TASK_KEY` for the trainer to pop before ``forward``: the task name, or None for an
    evaluation batch that mixes tasks (``require_single_task=False``)."""

    def __init__(self, collator: Callable[[list], Any], require_single_task: bool = False):
        self.collator = collator
        self.require_single_task = require_single_task

    def __call__(self, items: list):
        tasks = set()
        stripped = []
        for item in items:
            if isinstance(item, Mapping):
                tasks.add(task_of(item))
                item = {k: v for k, v in item.items() if k != TASK_KEY}
            else:
                tasks.add(DEFAULT_TASK)
            stripped.append(item)
        if len(tasks) > 1 and self.require_single_task:
            raise ValueError(f"a batch mixes tasks {sorted(tasks)}: use TaskHomogeneousBatchSampler")
        batch = self.collator(stripped)
        if isinstance(batch, Mapping) and hasattr(batch, "__setitem__"):
            batch[BATCH_TASK_KEY] = tasks.pop() if len(tasks) == 1 else None
        return batch
