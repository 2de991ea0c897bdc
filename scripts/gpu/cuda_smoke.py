"""First command on the GPU machine (README.md): every tuner through MultiTaskTrainer on CUDA with a tiny
causal LM, sequential schedule; static isolation must keep the first task's mask bit-identical while the
second task trains. Exits non-zero on any failure."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft_core.epi import EPIConfig  # noqa: E402
from sft_core.sft_data import CausalLMCollator, SFTDataset  # noqa: E402
from sft_core.testing import tiny_causal_lm  # noqa: E402
from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class Snapshot(TrainerCallback):
    def __init__(self):
        self.trainer, self.first_stage = None, None

    def on_step_end(self, args, state, control, **kwargs):
        isolator = self.trainer.isolator
        if state.global_step == 6 and isolator is not None:
            named = dict(zip(isolator.param_names, isolator.params))
            self.first_stage = {n: (isolator.mask("pos", n).expand_as(p).clone(), p.detach().clone())
                                for n, p in named.items() if isolator.mask("pos", n).any()}


def main() -> int:
    on_cpu = "--cpu" in sys.argv  # a local dry run of this script
    assert on_cpu or torch.cuda.is_available(), "no CUDA device"
    print(torch.__version__, "cpu" if on_cpu else torch.cuda.get_device_name(0), flush=True)
    failures = []
    for method in ("full", "static", "epi", "random"):
        started = time.time()
        model, tokenizer = tiny_causal_lm(seed=0)
        records = [{"task": task, "messages": [{"role": "user", "content": f"the movie {i} is {task}"},
                                               {"role": "assistant", "content": task}]}
                   for task in ("pos", "neg") for i in range(12)]
        args = MultiTaskTrainingArguments(output_dir=f"/tmp/w/smoke-{method}", per_device_train_batch_size=2,
                                          max_steps=12, learning_rate=5e-3, save_strategy="no", report_to=[],
                                          disable_tqdm=True, task_schedule="sequential",
                                          task_proportions={"pos": 1, "neg": 1}, use_cpu=on_cpu)
        snapshot = Snapshot()
        trainer = MultiTaskTrainer(model=model, args=args, train_dataset=SFTDataset(records, tokenizer, 48),
                                   data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[snapshot],
                                   epi_config=EPIConfig(method=method, isolation_ratio=0.2, warmup_steps=2,
                                                        update_interval=2, probe_steps=2))
        snapshot.trainer = trainer
        trainer.train()
        device = next(model.parameters()).device
        moved = None
        if snapshot.first_stage:
            named = dict(model.named_parameters())
            moved = sum(int((named[n].detach()[m] != before[m]).sum()) for n, (m, before) in snapshot.first_stage.items())
        print(f"{method}: device {device}, loss {trainer.state.log_history[-1].get('train_loss')}, "
              f"first-task mask units moved {moved}, {time.time() - started:.1f}s", flush=True)
        if device.type != ("cpu" if on_cpu else "cuda"):
            failures.append(f"{method}: trained on {device}")
        if method == "static" and moved != 0:
            failures.append(f"static: {moved} protected elements moved")
    print("FAILURES: " + "; ".join(failures) if failures else "cuda smoke OK", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
