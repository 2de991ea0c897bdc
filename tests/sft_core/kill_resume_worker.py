"""Training process for test_kill_resume.py (run as a script; importable for the uninterrupted reference).

    python kill_resume_worker.py OUTPUT_DIR            # resume auto, train to MAX_STEPS (the test kills it)

Environment: KILL_IN_SAVE_AT_STEP=N SIGKILLs this process in the middle of writing checkpoint-N (after the
model and optimizer files, before the trainer state, EPI state and completion marker). Each finished
optimizer step prints "step N" on stdout (flushed) so the parent can kill it at a chosen point.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from transformers import TrainerCallback

MAX_STEPS, SAVE_STEPS = 10, 2


def build_trainer(output_dir: str):
    from sft_core.epi import EPIConfig
    from sft_core.sft_data import CausalLMCollator, SFTDataset
    from sft_core.testing import tiny_causal_lm
    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    torch.set_num_threads(1)
    model, tokenizer = tiny_causal_lm(hidden_size=16, num_hidden_layers=1)
    records = [{"task": task, "messages": [{"role": "user", "content": f"the movie {i} is {task}"},
                                           {"role": "assistant", "content": task}]}
               for task in ("positive", "negative") for i in range(6)]
    kill_step = int(os.environ.get("KILL_IN_SAVE_AT_STEP", "0"))

    class KillableTrainer(MultiTaskTrainer):
        def _save_rng_state(self, output_dir):
            super()._save_rng_state(output_dir)
            if self.state.global_step == kill_step:  # model + optimizer written; state, EPI, marker not yet
                os.kill(os.getpid(), signal.SIGKILL)

    class PrintSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(f"step {state.global_step}", flush=True)

    args = MultiTaskTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=2, max_steps=MAX_STEPS, save_steps=SAVE_STEPS,
        save_total_limit=2, learning_rate=5e-3, weight_decay=0.01, warmup_steps=2, logging_steps=1, report_to=[],
        disable_tqdm=True, use_cpu=True, seed=3, tuner="epi")
    return KillableTrainer(model=model, args=args, train_dataset=SFTDataset(records, tokenizer, 32),
                           data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[PrintSteps()],
                           epi_config=EPIConfig(method="epi", isolation_ratio=0.2, warmup_steps=2, update_interval=2))


def train(output_dir: str, resume: str = "auto") -> dict[str, torch.Tensor]:
    from sft_core.checkpoints import resolve_resume

    trainer = build_trainer(output_dir)
    trainer.train(resume_from_checkpoint=resolve_resume(output_dir, resume))
    return {name: p.detach().clone().contiguous() for name, p in trainer.model.named_parameters()}


if __name__ == "__main__":
    train(sys.argv[1])
