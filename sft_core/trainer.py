"""`MultiTaskTrainer`: the one training entry point of sftkit (a `transformers.Trainer` with tasks and EPI).

    args = MultiTaskTrainingArguments(output_dir="out", task_schedule="mixed", task_proportions=None, ...)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=ds, data_collator=collate,
                               epi_config=EPIConfig(method="epi"))
    trainer.train()

Items of ``train_dataset`` are dicts with a string ``"task"`` (missing: ``"default"``). The trainer makes
every optimizer step task-homogeneous, strips ``"task"`` before ``data_collator`` and exposes the step's
task as ``trainer.current_task``. Checkpoints hold model + optimizer + EPI state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .epi import DRIFT_LOG_NAME, EPICallback, EPIConfig
from .tasks import (BATCH_TASK_KEY, SCHEDULES, TASK_KEY, TaskAwareCollator, TaskHomogeneousBatchSampler,
                    task_labels)

logger = logging.getLogger("sft_core.trainer")


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus how tasks are scheduled.

    Args:
        task_schedule: ``"mixed"`` (task-homogeneous steps of all tasks interleaved) or ``"sequential"``
            (all steps of one task, then the next).
        task_proportions: optional task -> weight. Mixed: share of optimizer steps per task. Sequential:
            the order of the tasks (weights then also scale each task's number of steps).
    """

    task_schedule: str = field(default="mixed", metadata={"help": "mixed | sequential"})
    task_proportions: dict[str, float] | None = field(default=None, metadata={"help": "task -> weight"})

    def __post_init__(self):
        super().__post_init__()
        if self.task_schedule not in SCHEDULES:
            raise ValueError(f"task_schedule={self.task_schedule!r}: expected one of {', '.join(SCHEDULES)}")


class MultiTaskTrainer(Trainer):
    """A `transformers.Trainer` whose optimizer steps are task-homogeneous and optionally isolated by EPI."""

    def __init__(self, *args, epi_config: EPIConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epi_config = epi_config or EPIConfig(method="full")
        self.current_task: str | None = None
        self.data_collator = TaskAwareCollator(self.data_collator)
        self._logged_refresh = 0
        self.epi_callback: EPICallback | None = None
        if self.epi_config.isolates:
            self.epi_callback = EPICallback(self.epi_config, task=lambda: self.current_task,
                                            drift_log_path=Path(self.args.output_dir) / DRIFT_LOG_NAME)
            self.add_callback(self.epi_callback)

    @property
    def isolator(self):
        """The live :class:`~sft_core.epi.ParameterIsolator` (None for ``full`` or before training)."""
        return self.epi_callback.isolator if self.epi_callback else None

    # ---- data ----
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if TASK_KEY not in self._signature_columns:
            self._signature_columns.append(TASK_KEY)  # keep "task" until TaskAwareCollator strips it

    def get_train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ValueError("MultiTaskTrainer: training requires a train_dataset.")
        import datasets

        dataset = self.train_dataset
        collator = self.data_collator
        if isinstance(dataset, datasets.Dataset):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        args = self.args
        sampler = TaskHomogeneousBatchSampler(
            task_labels(dataset), batch_size=self._train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, num_replicas=args.world_size,
            rank=args.process_index, schedule=getattr(args, "task_schedule", "mixed"),
            proportions=getattr(args, "task_proportions", None), seed=args.seed)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                            num_workers=args.dataloader_num_workers,
                            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available())
        prepared = self.accelerator.prepare(loader)
        # The sampler is already rank-aware: make accelerate's BatchSamplerShard (if any) a passthrough.
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            if hasattr(shard, "num_processes"):
                shard.num_processes, shard.process_index = 1, 0
        return prepared

    # ---- steps ----
    def _pop_task(self, inputs, training: bool) -> None:
        if hasattr(inputs, "pop") and BATCH_TASK_KEY in inputs:
            task = inputs.pop(BATCH_TASK_KEY)
            if task is None and training:
                raise ValueError("a training batch mixes tasks; MultiTaskTrainer's sampler should prevent this "
                                 "(was get_train_dataloader overridden?)")
            self.current_task = task  # None: an evaluation batch mixing tasks

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._pop_task(inputs, training=True)
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self._pop_task(inputs, training=False)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._pop_task(inputs, training=model.training)  # for subclasses that call compute_loss directly
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    # ---- logging and checkpoints ----
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        isolator = self.isolator
        if isolator is not None and isolator.refresh_count > self._logged_refresh and "loss" in logs:
            logs.update(isolator.drift_summary())
            self._logged_refresh = isolator.refresh_count
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint")
        if self.epi_callback is not None and resume_from_checkpoint:
            self.epi_callback.resume_from_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_epi_state(self, directory: str | Path) -> None:
        """Write the EPI state (safetensors + json) next to a saved model."""
        if self.isolator is not None and self.args.should_save:
            self.isolator.save(directory)

