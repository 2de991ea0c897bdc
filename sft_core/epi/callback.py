"""`EPICallback`: EPI for any `transformers.Trainer` (including TRL's SFTTrainer) through callbacks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from .config import EPIConfig
from .drift import DRIFT_LOG_NAME
from .isolator import ParameterIsolator
from .state_io import has_saved_state

logger = logging.getLogger("sft_core.epi")


class EPICallback(TrainerCallback):
    """Runs a :class:`ParameterIsolator` around every optimizer step of a Trainer.

    ``task`` is the task of every step (a string; fine for one task per run, e.g. sequential runs of
    TRL's SFTTrainer sharing one callback) or a zero-argument callable returning the current step's
    task (``MultiTaskTrainer`` passes ``lambda: trainer.current_task``). The isolator state is written
    into every checkpoint directory and restored when training resumes from one::

        trainer = SFTTrainer(model=model, args=sft_args, train_dataset=ds,
                             callbacks=[EPICallback(EPIConfig(method="epi"), task="gsm8k")])
    """

    def __init__(self, config: EPIConfig | None = None, task: str | Callable[[], str] = "default",
                 drift_log_path: str | os.PathLike | None = None,
                 resume_from_checkpoint: str | os.PathLike | None = None):
        self.config = config or EPIConfig()
        self._task_source = task
        self.drift_log_path = drift_log_path
        self.resume_from_checkpoint = resume_from_checkpoint
        self.isolator: ParameterIsolator | None = None
        self._step_task: str | None = None

    def current_task(self) -> str:
        task = self._task_source() if callable(self._task_source) else self._task_source
        return task or "default"

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.isolator is None:
            log_path = self.drift_log_path or Path(args.output_dir) / DRIFT_LOG_NAME
            self.isolator = ParameterIsolator(model, self.config, drift_log_path=log_path)
        checkpoint = self.resume_from_checkpoint
        if checkpoint is None and state.global_step > 0:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint is not None and state.global_step > 0:
            if has_saved_state(checkpoint):
                self.isolator.load(checkpoint)
                if self.isolator.drift_log is not None and args.should_save:
                    self.isolator.drift_log.truncate_after(self.isolator.step_count)
                logger.info("EPI state restored from %s (step %d)", checkpoint, self.isolator.step_count)
            elif self.config.isolates:
                raise FileNotFoundError(f"{checkpoint}: resuming an EPI run, but the checkpoint holds no EPI state")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._step_task = self.current_task()
        self.isolator.before_step(self._step_task)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.isolator.after_step(self._step_task)
        self._step_task = None

    def on_save(self, args, state, control, **kwargs):
        if args.should_save and self.isolator is not None:
            self.isolator.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")
