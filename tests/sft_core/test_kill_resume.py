"""SIGKILL a real training process at random points (one of them inside a checkpoint write), resume with
``--resume auto`` semantics each time, and end with exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kill_resume_worker as worker  # noqa: E402

from sft_core.checkpoints import COMPLETE_MARKER, checkpoint_dirs, is_complete_checkpoint  # noqa: E402

WORKER = Path(worker.__file__)
ROOT = Path(__file__).resolve().parents[2]


def start(output: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(output)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env})


def kill_after_step(process: subprocess.Popen, step: int) -> int:
    """SIGKILL once the process reports optimizer step ``step`` (or it ends); returns the last step seen."""
    seen = 0
    for line in process.stdout:
        if line.startswith("step "):
            seen = int(line.split()[1])
            if seen >= step:
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=120)
    return seen


def test_sigkill_anywhere_then_resume_matches_an_uninterrupted_run(tmp_path):
    rng = random.Random()
    seed = rng.randrange(10**6)
    rng.seed(seed)
    reference = worker.train(str(tmp_path / "reference"), resume="never")
    output = tmp_path / "run"

    # 1. killed inside the write of a random checkpoint: the directory exists but is recognisably incomplete
    save_step = rng.choice(range(worker.SAVE_STEPS, worker.MAX_STEPS, worker.SAVE_STEPS))
    process = start(output, KILL_IN_SAVE_AT_STEP=str(save_step))
    process.communicate(timeout=180)
    assert process.returncode == -signal.SIGKILL, f"seed {seed}: worker was not killed in checkpoint-{save_step}"
    partial = output / f"checkpoint-{save_step}"
    assert (partial / "model.safetensors").is_file() and not (partial / COMPLETE_MARKER).exists()
    assert not is_complete_checkpoint(partial)

    # 2. resumed from the newest complete checkpoint, then killed at a random later step
    kill_step = rng.randrange(save_step, worker.MAX_STEPS)
    process = start(output)
    last_step = kill_after_step(process, kill_step)
    assert process.returncode == -signal.SIGKILL, f"seed {seed}: finished before step {kill_step}"
    assert last_step >= save_step - worker.SAVE_STEPS + 1, f"seed {seed}: the resume did not start where expected"

    # 3. resumed again (in this process: one interpreter start less), runs to the end
    final = worker.train(str(output), resume="auto")
    assert final.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(final[name], value), f"seed {seed} (save kill {save_step}, kill {kill_step}): {name} differs"
    complete = [p.name for p in checkpoint_dirs(output) if is_complete_checkpoint(p)]
    assert complete == [f"checkpoint-{worker.MAX_STEPS - worker.SAVE_STEPS}", f"checkpoint-{worker.MAX_STEPS}"]
