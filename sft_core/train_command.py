"""`sft-core train`: multi-task causal-LM SFT from JSONL files with EPI / static / full (thin glue)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sft_core.epi import DRIFT_LOG_NAME, EPIConfig
from sft_core.atomic_io import atomic_write_text
from sft_core.sft_data import CausalLMCollator, SFTDataError, SFTDataset, read_sft_jsonl

RUN_SUMMARY_NAME = "train_summary.json"


def parse_proportions(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    proportions = {}
    for part in text.split(","):
        task, sep, weight = part.partition("=")
        try:
            if not sep or not task.strip():
                raise ValueError
            proportions[task.strip()] = float(weight)
        except ValueError:
            raise SFTDataError(f"--task-proportions: cannot read {part!r} (expected TASK=WEIGHT,...)") from None
    return proportions


def epi_config_from_args(args: argparse.Namespace) -> EPIConfig:
    return EPIConfig(method=args.method, isolation_ratio=args.isolation_ratio, update_interval=args.update_interval,
                     warmup_steps=args.warmup_steps, release_patience=args.release_patience,
                     saliency=args.saliency, ema_decay=args.ema_decay, granularity=args.granularity,
                     probe_steps=args.probe_steps, overlap=args.overlap)


def train_command(args: argparse.Namespace) -> int:
    from transformers.trainer_utils import get_last_checkpoint

    from sft_core.hub import ModelNotAvailableError, resolve_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    output = Path(args.output)
    try:
        epi_config = epi_config_from_args(args)
        proportions = parse_proportions(args.task_proportions)
        records = [record for path in args.data for record in read_sft_jsonl(path)]
        model_dir = resolve_model(args.model)
    except (SFTDataError, ValueError, ModelNotAvailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    resume_from = None
    if args.resume:
        resume_from = get_last_checkpoint(str(output)) if output.is_dir() else None
        if resume_from is None:
            print(f"error: --resume: {output} holds no checkpoint-* directory", file=sys.stderr)
            return 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        dataset = SFTDataset(records, tokenizer, max_length=args.max_length)
    except SFTDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model = AutoModelForCausalLM.from_pretrained(model_dir)

    training_args = MultiTaskTrainingArguments(
        output_dir=str(output), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, weight_decay=args.weight_decay,
        num_train_epochs=args.epochs, max_steps=args.max_steps, seed=args.seed, save_steps=args.save_steps,
        logging_steps=args.logging_steps, report_to=[], disable_tqdm=args.no_progress,
        task_schedule=args.schedule, task_proportions=proportions)
    trainer = MultiTaskTrainer(model=model, args=training_args, train_dataset=dataset,
                               data_collator=CausalLMCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                               epi_config=epi_config)
    try:
        result = trainer.train(resume_from_checkpoint=resume_from)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    trainer.save_model(str(output))  # config.json + model.safetensors + tokenizer (processing_class)
    trainer.save_epi_state(output)
    if trainer.args.should_save:
        isolator = trainer.isolator
        summary = {
            "model": args.model, "model_dir": model_dir, "data": [str(p) for p in args.data],
            "tasks": {task: sum(1 for e in dataset.examples if e["task"] == task) for task in dataset.tasks},
            "method": args.method, "schedule": args.schedule, "epi_config": epi_config.to_dict(),
            "global_steps": trainer.state.global_step, "train_loss": result.training_loss,
            "resumed_from": resume_from,
            "task_steps": {name: state.steps for name, state in isolator.tasks.items()} if isolator else None,
            "drift_log": DRIFT_LOG_NAME if (output / DRIFT_LOG_NAME).is_file() else None,
        }
        atomic_write_text(output / RUN_SUMMARY_NAME, json.dumps(summary, indent=2))
    print(f"saved model and EPI state to {output}")
    return 0
