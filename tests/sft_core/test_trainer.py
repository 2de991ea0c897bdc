"""MultiTaskTrainer on a tiny causal LM: the contract srm/xformparser rely on, EPI glue, checkpoints, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from sft_core.epi import EPICallback, EPIConfig, read_drift_log
from sft_core.sft_data import CausalLMCollator, SFTDataset
from sft_core.tasks import BATCH_TASK_KEY
from sft_core.testing import tiny_causal_lm
from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

torch.set_num_threads(1)
COMPLETION = {"pos": "positive", "neg": "negative", "num": "one two"}


def tiny_dataset(tokenizer, per_task=10):
    records = [{"task": task, "messages": [{"role": "user", "content": f"the movie {i} is {task}"},
                                           {"role": "assistant", "content": COMPLETION[task]}]}
               for task in COMPLETION for i in range(per_task)]
    return SFTDataset(records, tokenizer, max_length=48)


class RecordingTrainer(MultiTaskTrainer):
    """Checks what reaches compute_loss and remembers the task of every micro-batch."""

    def __init__(self, *args, tokenizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        self.expected_ids = {task: tokenizer(text, add_special_tokens=False)["input_ids"][0]
                             for task, text in COMPLETION.items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        assert "task" not in inputs and BATCH_TASK_KEY not in inputs
        if not model.training:
            self.calls.append(("eval", self.current_task))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        first_label = [row[row != -100][0].item() for row in inputs["labels"]]
        assert set(first_label) == {self.expected_ids[self.current_task]}, "batch content is not the current task's"
        self.calls.append((self.state.global_step, self.current_task))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def make_trainer(output_dir, epi_config, max_steps=6, save_steps=3, schedule="mixed", seed=0):
    model, tokenizer = tiny_causal_lm(seed=seed)
    args = MultiTaskTrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=2,
                                      gradient_accumulation_steps=2, max_steps=max_steps, learning_rate=5e-3,
                                      weight_decay=0.01, save_steps=save_steps, logging_steps=1, report_to=[],
                                      disable_tqdm=True, seed=seed, task_schedule=schedule, use_cpu=True)
    return RecordingTrainer(model=model, args=args, train_dataset=tiny_dataset(tokenizer),
                            data_collator=CausalLMCollator(tokenizer.pad_token_id), epi_config=epi_config,
                            tokenizer=tokenizer)


class StopAfterStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


EPI = EPIConfig(method="epi", isolation_ratio=0.1, warmup_steps=2, update_interval=2)


def test_trainer_runs_task_homogeneous_epi_steps_and_checkpoints_the_state(tmp_path):
    trainer = make_trainer(tmp_path, EPI)
    trainer.train()
    metrics = trainer.evaluate(eval_dataset=trainer.train_dataset)  # sequential eval batches mix tasks
    assert metrics["eval_loss"] > 0 and ("eval", None) in trainer.calls
    trainer.calls = [call for call in trainer.calls if call[0] != "eval"]
    steps = {}
    for step, task in trainer.calls:
        steps.setdefault(step, set()).add(task)
    assert len(steps) == 6 and all(len(tasks) == 1 for tasks in steps.values())
    assert sum(len(t) for t in steps.values()) == 6 and len(trainer.calls) == 12  # 2 micro-batches per step
    isolator = trainer.isolator
    assert isolator.step_count == 6 and sum(s.steps for s in isolator.tasks.values()) == 6
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        assert (tmp_path / checkpoint / "epi_state.safetensors").is_file()
        assert (tmp_path / checkpoint / "epi_state.json").is_file()
    records = read_drift_log(tmp_path / "epi_drift.jsonl")
    assert records and {r["step"] for r in records} == {2, 4, 6}
    assert any(any(key.startswith("epi/") for key in entry) for entry in trainer.state.log_history)


def test_resume_from_checkpoint_restores_epi_state_and_matches_uninterrupted_run(tmp_path):
    straight = make_trainer(tmp_path / "straight", EPI)
    straight.train()
    interrupted = make_trainer(tmp_path / "resumed", EPI)
    interrupted.add_callback(StopAfterStep(3))  # a crash right after checkpoint-3, same LR schedule
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = make_trainer(tmp_path / "resumed", EPI)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.isolator.step_count == 6
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6), name
    for task, state in straight.isolator.tasks.items():
        assert all(torch.equal(a, b) for a, b in zip(state.masks, resumed.isolator.tasks[task].masks))
    records = read_drift_log(tmp_path / "resumed" / "epi_drift.jsonl")
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def test_full_method_is_plain_fine_tuning_without_epi_files(tmp_path):
    trainer = make_trainer(tmp_path, None, max_steps=2, save_steps=2, schedule="sequential")
    trainer.train()
    assert trainer.isolator is None
    assert not (tmp_path / "checkpoint-2" / "epi_state.json").exists()
    assert [task for _, task in trainer.calls] == ["pos"] * 4


def test_hf_dataset_keeps_task_column_until_the_collator(tmp_path):
    import datasets

    model, tokenizer = tiny_causal_lm()
    rows = tiny_dataset(tokenizer, per_task=4).examples
    hf_dataset = datasets.Dataset.from_list([{**row, "unused_column": 1} for row in rows])
    seen_keys = set()

    def collate(items):
        seen_keys.update(*(item.keys() for item in items))
        return CausalLMCollator(tokenizer.pad_token_id)(items)

    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                                      report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no")
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=hf_dataset, data_collator=collate,
                               epi_config=EPIConfig(method="static", probe_steps=1, warmup_steps=1, update_interval=1))
    trainer.train()
    assert seen_keys == {"input_ids", "labels"}
    assert trainer.isolator.step_count == 2


def test_callback_alone_isolates_a_plain_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, tokenizer = tiny_causal_lm()
    rows = [{k: v for k, v in row.items() if k != "task"} for row in tiny_dataset(tokenizer, per_task=4).examples]
    callback = EPICallback(EPIConfig(method="epi", warmup_steps=1, update_interval=1), task="only-task")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=3, report_to=[],
                             disable_tqdm=True, use_cpu=True, save_strategy="no")
    Trainer(model=model, args=args, train_dataset=rows, data_collator=CausalLMCollator(tokenizer.pad_token_id),
            callbacks=[callback]).train()
    assert callback.isolator.tasks["only-task"].steps == 3 and callback.isolator.tasks["only-task"].has_mask
    assert Path(tmp_path / "epi_drift.jsonl").is_file()


def test_arguments_reject_unknown_schedule(tmp_path):
    with pytest.raises(ValueError, match="task_schedule"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), task_schedule="random")


def test_checkpoints_end_with_a_marker_and_resume_skips_an_incomplete_newest_one(tmp_path, capsys):
    from sft_core.checkpoints import COMPLETE_MARKER, is_complete_checkpoint

    trainer = make_trainer(tmp_path, EPI, max_steps=4, save_steps=2)
    trainer.train()
    for name in ("checkpoint-2", "checkpoint-4"):
        assert is_complete_checkpoint(tmp_path / name)
        # the marker lists the EPI state too: it was written after the EPI callback's on_save
        assert "epi_state.safetensors" in (tmp_path / name / COMPLETE_MARKER).read_text()
    # a kill while checkpoint-4 was written: the marker (written last) is missing
    (tmp_path / "checkpoint-4" / COMPLETE_MARKER).unlink()
    (tmp_path / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = make_trainer(tmp_path, EPI, max_steps=4, save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert "skipping incomplete checkpoint" in capsys.readouterr().err
    assert resumed.isolator.step_count == 4 and len(resumed.calls) == 2 * 2  # steps 3 and 4 only, 2 micro-batches
    assert is_complete_checkpoint(tmp_path / "checkpoint-4")  # rewritten from scratch, then marked


def test_save_total_limit_counts_complete_checkpoints_only(tmp_path):
    trainer = make_trainer(tmp_path, None, max_steps=4, save_steps=1)
    trainer.args.save_total_limit = 2
    stale = tmp_path / "checkpoint-9"
    stale.mkdir(parents=True)  # an incomplete leftover newer than anything this run writes: left alone
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4", "checkpoint-9"]


def test_resuming_an_isolating_run_from_a_checkpoint_without_epi_state_is_a_clear_error(tmp_path):
    from sft_core.cli_errors import UserError

    make_trainer(tmp_path, None, max_steps=2, save_steps=2).train()
    with pytest.raises(UserError, match=r"checkpoint-2: this is a tuner=epi run but the checkpoint holds no EPI state"):
        make_trainer(tmp_path, EPI, max_steps=4, save_steps=2).train(resume_from_checkpoint=True)
    with pytest.raises(UserError, match="holds no complete checkpoint"):
        make_trainer(tmp_path / "empty", EPI).train(resume_from_checkpoint=True)


def test_tuner_argument_selects_the_method_and_must_agree_with_epi_config(tmp_path):
    model, tokenizer = tiny_causal_lm()
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), tuner="static", report_to=[], use_cpu=True)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=tiny_dataset(tokenizer, per_task=2),
                               data_collator=CausalLMCollator(tokenizer.pad_token_id))
    assert trainer.tuner == "static" and trainer.epi_config.method == "static"
    with pytest.raises(ValueError, match="disagrees"):
        MultiTaskTrainer(model=model, args=args, train_dataset=tiny_dataset(tokenizer, per_task=2),
                         data_collator=CausalLMCollator(tokenizer.pad_token_id), epi_config=EPIConfig(method="epi"))
    with pytest.raises(ValueError, match="tuner='lora'"):
        MultiTaskTrainingArguments(output_dir=str(tmp_path), tuner="lora")
