"""MultiTaskTrainer under torchrun (2 CPU processes, gloo): task-homogeneous steps and identical EPI masks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from sft_core.checkpoints import COMPLETE_MARKER, is_complete_checkpoint

WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from sft_core.epi import EPIConfig
    from sft_core.sft_data import CausalLMCollator, SFTDataset
    from sft_core.testing import tiny_causal_lm
    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    output = sys.argv[1]
    model, tokenizer = tiny_causal_lm()
    records = [{"task": task, "messages": [{"role": "user", "content": f"the movie {i} is {task}"},
                                           {"role": "assistant", "content": task}]}
               for task in ("positive", "negative") for i in range(16)]
    steps = []

    class Recording(MultiTaskTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            steps.append([self.state.global_step, self.current_task, inputs["input_ids"].tolist()])
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = MultiTaskTrainingArguments(output_dir=output, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                      max_steps=6, learning_rate=5e-3, report_to=[], disable_tqdm=True, use_cpu=True,
                                      ddp_backend="gloo", save_steps=6)
    trainer = Recording(model=model, args=args, train_dataset=SFTDataset(records, tokenizer, 48),
                        data_collator=CausalLMCollator(tokenizer.pad_token_id),
                        epi_config=EPIConfig(warmup_steps=2, update_interval=2, sync_masks_across_ranks=False,
                                             # replayed importance is computed per rank on its own buffer, so
                                             # identity without the broadcast holds only without replay
                                             replay_batches=0))
    trainer.train()
    rank = int(os.environ["RANK"])
    tensors = {f"mask/{task}/{i}": mask for task, state in trainer.isolator.tasks.items()
               for i, mask in enumerate(state.masks)}
    tensors.update({f"param/{name}": p.detach().contiguous() for name, p in trainer.model.named_parameters()})
    save_file(tensors, os.path.join(output, f"rank{rank}.safetensors"))
    with open(os.path.join(output, f"rank{rank}.json"), "w") as handle:
        json.dump({"world_size": args.world_size, "steps": steps}, handle)
    # Tear distributed down while the interpreter is fully alive: the trainer's DDP wrapper keeps gloo's
    # process group (and its C++ threads) alive past destroy_process_group(), and threads torn down during
    # interpreter finalization aborted rank 1 ("terminate called without an active exception", ~1 run in 5).
    from sft_core.trainer import release_distributed

    release_distributed(trainer)
    gloo_threads = [name for name in (open(f"/proc/self/task/{tid}/comm").read().strip()
                                      for tid in os.listdir("/proc/self/task")) if "gloo" in name]
    with open(os.path.join(output, f"rank{rank}-threads.json"), "w") as handle:
        json.dump(gloo_threads, handle)
''')


def test_torchrun_two_ranks_share_each_steps_task_and_end_with_identical_masks(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(port), str(script), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(log["world_size"] == 2 for log in logs)
    tasks_by_step = [{step: task for step, task, _ in log["steps"]} for log in logs]
    assert tasks_by_step[0] == tasks_by_step[1] and len(tasks_by_step[0]) == 6
    batches = [[ids for _, _, ids in log["steps"]] for log in logs]
    assert batches[0] != batches[1], "both ranks trained on the same items"
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert any(key.startswith("mask/") and rank0[key].numel() for key in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    for r in range(2):  # release_distributed joined gloo's threads before interpreter shutdown
        assert json.loads((tmp_path / f"rank{r}-threads.json").read_text()) == [], f"rank {r}: gloo threads alive"
    # the completion marker is written after both ranks wrote their part of the checkpoint
    checkpoint = tmp_path / "checkpoint-6"
    assert is_complete_checkpoint(checkpoint)
    marked = json.loads((checkpoint / COMPLETE_MARKER).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth", "epi_state.safetensors", "trainer_state.json"} <= set(marked)
