"""`MultiTaskTrainer`: the one training entry point of sftkit (a `transformers.Trainer` with tasks and EPI).

    args = MultiTaskTrainingArguments(output_dir="out", task_schedule="mixed", task_proportions=None, ...)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=ds, data_collator=collate,
                               epi_config=EPIConfig(method="epi"))
    trainer.train()

Items of ``train_dataset`` are dicts with a string ``"task"`` (missing: ``"default"``). The trainer makes
every optimizer step task-homogeneous, strips ``"task"`` before ``data_collator`` and exposes the step's
task as ``trainer.current_task``. Checkpoints hold model + optimizer + EPI state and end with a
completion marker (:mod:`sft_core.checkpoints`) written after every other file, so a checkpoint that a
kill interrupted is recognisable and never resumed from; ``save_total_limit`` counts complete
checkpoints only and is applied after the marker is written.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checkpoints import checkpoint_dirs, checkpoint_step, incomplete_reason, latest_complete_checkpoint, mark_checkpoint_complete
from .cli_errors import UserError
from .epi import DRIFT_LOG_NAME, EPICallback, EPIConfig, has_saved_state
from .epi.config import METHODS
from .tasks import (BATCH_TASK_KEY, SCHEDULES, TASK_KEY, TaskAwareCollator, TaskHomogeneousBatchSampler,
                    task_labels)

logger = logging.getLogger("sft_core.trainer")

# The one list of tuners: EPIConfig's methods, plain fine-tuning first.
TUNERS = ("full",) + tuple(method for method in METHODS if method != "full")


@dataclass
class MultiTaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus how tasks are scheduled.

    Args:
        tuner: ``"full"`` (plain fine-tuning), ``"static"`` (masks measured once per task) or ``"epi"``
            (evolving parameter isolation). With an ``epi_config`` the two must agree; without one,
            ``EPIConfig(method=tuner)`` is used.
        task_schedule: ``"mixed"`` (task-homogeneous steps of all tasks interleaved) or ``"sequential"``
            (all steps of one task, then the next).
        task_proportions: optional task -> weight. Mixed: share of optimizer steps per task. Sequential:
            the order of the tasks (weights then also scale each task's number of steps).
    """

    task_schedule: str = field(default="mixed", metadata={"help": "mixed | sequential"})
    task_proportions: dict[str, float] | None = field(default=None, metadata={"help": "task -> weight"})
    tuner: str | None = field(default=None, metadata={
        "help": f"{' | '.join(TUNERS)}: how parameters are shared between tasks. None: the method of the "
                "trainer's epi_config (full when there is none)."})

    def __post_init__(self):
        super().__post_init__()
        if self.task_schedule not in SCHEDULES:
            raise ValueError(f"task_schedule={self.task_schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.tuner is not None and self.tuner not in TUNERS:
            raise ValueError(f"tuner={self.tuner!r}: expected one of {', '.join(TUNERS)}")


def resolve_epi_config(tuner: str | None, epi_config: EPIConfig | None) -> EPIConfig:
    """The trainer's EPIConfig from ``args.tuner`` and/or an explicit ``epi_config`` (they must agree)."""
    if epi_config is None:
        return EPIConfig(method=tuner or "full")
    if tuner is not None and tuner != epi_config.method:
        raise ValueError(f"MultiTaskTrainingArguments.tuner={tuner!r} disagrees with epi_config.method="
                         f"{epi_config.method!r}; set one of them")
    return epi_config


_EXIT_HOOK_REGISTERED = False
_LIVE_TRAINERS: "weakref.WeakSet[MultiTaskTrainer]" = weakref.WeakSet()


def release_distributed(*trainers: "MultiTaskTrainer", barrier: bool = True) -> None:
    """Tear torch.distributed down while the interpreter is fully alive (call it at the end of a script run
    under torchrun; MultiTaskTrainer also registers it at exit).

    Why: gloo's process group runs C++ threads (``pt_gloo_runloop``, ``gloo_tcp_loop``) that stop only when
    the process-group object is freed, and the DistributedDataParallel wrapper a Trainer keeps
    (``model_wrapped``, ``accelerator._models``) holds a reference to it. ``destroy_process_group()`` alone
    leaves those threads running (measured: still there after it); they are then torn down during
    interpreter finalization, which aborts some exits with "terminate called without an active exception"
    (SIGABRT). Dropping the trainers' DDP wrappers, collecting garbage, then destroying the group joins
    the threads here. After a successful run every rank calls it (``barrier``: wait for the others first);
    the exit hook runs it without the barrier, so a rank that failed does not wait for ranks that never come.
    """
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier:
        dist.barrier()
    for trainer in trainers or tuple(_LIVE_TRAINERS):
        trainer.model_wrapped = trainer.model
        trainer.accelerator.free_memory()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def _release_distributed_at_exit() -> None:
    """Register :func:`release_distributed` once, at exit, when a trainer is built under torch.distributed."""
    global _EXIT_HOOK_REGISTERED
    import torch.distributed as dist

    if _EXIT_HOOK_REGISTERED or not (dist.is_available() and dist.is_initialized()):
        return
    import atexit

    atexit.register(release_distributed, barrier=False)
    _EXIT_HOOK_REGISTERED = True


class _CheckpointCompletion(TrainerCallback):
    """Runs after every other ``on_save`` callback (EPI state included): marks the checkpoint complete,
    then rotates old checkpoints, so a kill at any moment leaves at least one complete checkpoint."""

    def __init__(self, trainer: "MultiTaskTrainer"):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if args.world_size > 1:  # every rank has written its part (its RNG state) before the marker
            self.trainer.accelerator.wait_for_everyone()
        if args.should_save:
            directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if directory.is_dir():
                mark_checkpoint_complete(directory, global_step=state.global_step)
                self.trainer._rotate_complete_checkpoints()
        return control


class MultiTaskTrainer(Trainer):
    """A `transformers.Trainer` whose optimizer steps are task-homogeneous and optionally isolated by EPI."""

    def __init__(self, *args, epi_config: EPIConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epi_config = resolve_epi_config(getattr(self.args, "tuner", None), epi_config)
        self.current_task: str | None = None
        self.data_collator = TaskAwareCollator(self.data_collator)
        self._logged_refresh = 0
        self.epi_callback: EPICallback | None = None
        if self.epi_config.isolates:
            self.epi_callback = EPICallback(self.epi_config, task=lambda: self.current_task,
                                            drift_log_path=Path(self.args.output_dir) / DRIFT_LOG_NAME)
            self.add_callback(self.epi_callback)
        self.add_callback(_CheckpointCompletion(self))  # last: the marker follows every other file
        _LIVE_TRAINERS.add(self)
        _release_distributed_at_exit()

    @property
    def tuner(self) -> str:
        """``"full"``, ``"static"`` or ``"epi"``: the tuner this trainer runs."""
        return self.epi_config.method

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
        """As ``Trainer.train``; ``resume_from_checkpoint=True`` means the newest *complete* checkpoint.

        Raises :class:`~sft_core.cli_errors.UserError` when there is none, when an explicit checkpoint is
        incomplete, or when an isolating run (static / epi) would resume from a checkpoint without EPI state.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir, report_skipped=True)
            if resume_from_checkpoint is None:
                raise UserError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no complete checkpoint")
            logger.info("resuming from %s", resume_from_checkpoint)
        if resume_from_checkpoint:
            resume_from_checkpoint = str(resume_from_checkpoint)
            reason = incomplete_reason(resume_from_checkpoint)
            if reason is not None:
                raise UserError(f"{resume_from_checkpoint}: cannot resume from an incomplete checkpoint ({reason})")
            if self.epi_config.isolates and not has_saved_state(resume_from_checkpoint):
                raise UserError(f"{resume_from_checkpoint}: this is a tuner={self.tuner} run but the checkpoint holds "
                                "no EPI state (epi_state.json); it was written by a tuner=full run. Resume with "
                                "tuner full, or start fresh")
        if self.epi_callback is not None and resume_from_checkpoint:
            self.epi_callback.resume_from_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model, trial):
        # A leftover checkpoint-N from an interrupted earlier run is replaced, not merged into. Under
        # several processes other ranks write their RNG state into the same folder, so only single-process
        # runs clear it (the marker is rewritten from the new files either way).
        directory = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save and self.args.world_size == 1 and directory.is_dir():
            import shutil

            shutil.rmtree(directory)
        # Rotation waits until the new checkpoint is complete (_CheckpointCompletion), so Trainer's own
        # rotation, which runs before the EPI state and the marker are written, is switched off here.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit

    def _rotate_complete_checkpoints(self) -> None:
        """Keep the ``save_total_limit`` newest complete checkpoints (and the best one); delete older
        checkpoints, complete or not. Checkpoints newer than the newest complete one are left alone."""
        import shutil

        limit = self.args.save_total_limit
        directories = checkpoint_dirs(self.args.output_dir)
        complete = [d for d in directories if incomplete_reason(d) is None]
        if not complete:
            return
        keep = set(complete[-limit:]) if limit else set(complete)
        if self.state.best_model_checkpoint:
            keep.add(Path(self.state.best_model_checkpoint))
        newest_step = checkpoint_step(complete[-1])
        for directory in directories:
            if directory in keep:
                continue
            if directory in complete or checkpoint_step(directory) < newest_step:
                logger.info("deleting old checkpoint %s (save_total_limit=%s)", directory, limit)
                shutil.rmtree(directory, ignore_errors=True)

    def save_epi_state(self, directory: str | Path) -> None:
        """Write the EPI state (safetensors + json) next to a saved model."""
        if self.isolator is not None and self.args.should_save:
            self.isolator.save(directory)

