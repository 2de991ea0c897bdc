"""TrainingDynamicsRecorder on a tiny causal LM inside MultiTaskTrainer (two sequential stages)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sft_core.ilp import Dynamics, TrainingDynamicsRecorder, load_dynamics
from sft_core.ilp.dynamics import DYNAMICS_ARRAYS
from sft_core.sft_data import CausalLMCollator, SFTDataset
from sft_core.testing import tiny_causal_lm
from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

torch.set_num_threads(1)


def record(prompt, answer, task):
    return {"task": task, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


STAGE1 = [record(f"the capital of {w}", a, "first") for w, a in
          [("france", "paris"), ("dog", "cat"), ("sofa", "train"), ("book", "food")]]
STAGE2 = [record(f"{i} plus one", str(i + 1), "second") for i in range(6)]


def train(model, tokenizer, records, recorder, output_dir, epochs, lr=3e-3):
    args = MultiTaskTrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=2,
                                      num_train_epochs=epochs, learning_rate=lr, report_to=[], save_strategy="no",
                                      disable_tqdm=True, logging_steps=1000, seed=0)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=SFTDataset(records, tokenizer),
                               data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[recorder])
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("run")
    model, tokenizer = tiny_causal_lm(hidden_size=48)
    recorder = TrainingDynamicsRecorder(STAGE1 + STAGE2, tokenizer, every_steps=2, output_dir=directory)
    recorder.set_stage("first")
    train(model, tokenizer, STAGE1, recorder, directory / "a", epochs=6)
    steps_stage1 = recorder.global_step
    recorder.set_stage("second")
    train(model, tokenizer, STAGE2, recorder, directory / "b", epochs=3)
    return recorder, directory, steps_stage1


def test_recorder_measures_checkpoints_and_counts_seen_samples(recorded):
    recorder, directory, steps_stage1 = recorded
    dynamics = recorder.dynamics()
    n = len(STAGE1) + len(STAGE2)
    assert dynamics.losses.shape == dynamics.probs.shape == dynamics.correct.shape
    assert dynamics.losses.shape[1] == n and dynamics.losses.shape[0] >= 4
    assert dynamics.steps[0] == 0 and dynamics.steps[-1] == recorder.global_step
    assert np.all(np.diff(dynamics.steps) > 0)
    assert np.isfinite(dynamics.losses).all() and ((dynamics.probs > 0) & (dynamics.probs <= 1)).all()
    # every forward was matched to its samples: stage-1 samples trained only in stage 1, and 6 epochs each
    assert recorder.unmatched_batches == 0
    assert (dynamics.times_seen[:4] == 6).all() and (dynamics.times_seen[4:] == 3).all()
    assert (dynamics.last_seen[:4] <= steps_stage1).all() and (dynamics.first_seen[4:] > steps_stage1).all()
    assert [s["name"] for s in dynamics.stages] == ["first", "second"]
    assert dynamics.stages[0]["end_step"] == steps_stage1 == dynamics.stages[1]["start_step"]
    np.testing.assert_array_equal(dynamics.stage_index_of_last_seen(), [0] * 4 + [1] * 6)
    # training lowered the stage-2 loss between its start and the end
    start = list(dynamics.steps).index(steps_stage1)
    assert dynamics.losses[-1, 4:].mean() < dynamics.losses[start, 4:].mean()


def test_saved_dynamics_round_trip_and_alignment(recorded):
    recorder, directory, _ = recorded
    assert (directory / DYNAMICS_ARRAYS).is_file()
    loaded = Dynamics.load(directory)
    original = recorder.dynamics()
    np.testing.assert_allclose(loaded.losses, original.losses)
    np.testing.assert_array_equal(loaded.correct, original.correct)
    assert loaded.keys == original.keys and loaded.stages == original.stages
    keys = [original.keys[3], "missing-key", original.keys[0]]
    aligned = loaded.aligned(keys)
    np.testing.assert_allclose(aligned.losses[:, 0], original.losses[:, 3])
    assert np.isnan(aligned.losses[:, 1]).all() and aligned.times_seen[1] == 0
    # two runs as sequential stages: steps of the second are offset by the first's total
    merged = load_dynamics([directory, directory], original.keys)
    assert merged.total_steps == 2 * original.total_steps
    assert merged.losses.shape[0] == 2 * original.losses.shape[0]
    assert merged.last_seen[0] == original.last_seen[0] + original.total_steps
