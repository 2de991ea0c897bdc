"""`sft-core train`: multi-task causal-LM SFT from JSONL / JSON / TSV / CSV files with any tuner (thin glue).

The options are generated from :class:`TrainOptions` and :class:`~sft_core.epi.EPIConfig`
(:mod:`sft_core.cli_args`), so every EPIConfig field is a flag with EPIConfig's own default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sft_core.atomic_io import atomic_write_text
from sft_core.checkpoints import resolve_resume
from sft_core.cli_errors import UserError
from sft_core.epi import DRIFT_LOG_NAME, EPIConfig
from sft_core.epi.config import METHODS
from sft_core.sft_data import ColumnMapping, SFTDataError
from sft_core.tasks import SCHEDULES

RUN_SUMMARY_NAME = "train_summary.json"
TUNER_CHOICES = ("full",) + tuple(m for m in METHODS if m != "full")  # = sft_core.trainer.TUNERS


@dataclass
class TrainOptions:
    """Options of ``sft-core train`` (one flag each: ``--model``, ``--data``, ...)."""

    model: str = field(default=None, metadata={"required": True,
                                                "help": "alias (smollm2-135m), local HF model directory or hub id"})
    data: list[str] = field(default=None, metadata={
        "required": True, "metavar": "[TASK=]FILE",
        "help": "repeatable. .jsonl/.json TRL records ({'prompt','completion'} or {'messages'}), or any "
                ".jsonl/.json/.tsv/.csv with --text-field/--prompt-template and --label-field. TASK= names the "
                "task (else a 'task' field, else the file name; split files such as sst2/train.tsv -> sst2)"})
    output: str = field(default=None, metadata={"required": True,
                                                 "help": "run directory (checkpoints, final model, EPI state)"})
    tuner: str = field(default="epi", metadata={"choices": TUNER_CHOICES, "aliases": ("--method",),
                                                "help": "full fine-tuning, or parameter isolation between tasks "
                                                        "(--method is a deprecated alias)"})
    # The column-mapping flags are repeatable: "VALUE" applies to every --data file, "TASK:VALUE" only to
    # the file given as --data TASK=FILE (so tables of different layouts train together).
    text_field: list[str] | None = field(default=None, metadata={
        "metavar": "[TASK:]COLUMN", "help": "column that becomes the prompt"})
    label_field: list[str] | None = field(default=None, metadata={
        "metavar": "[TASK:]COLUMN", "help": "column that becomes the completion"})
    prompt_template: list[str] | None = field(default=None, metadata={
        "metavar": "[TASK:]TEMPLATE",
        "help": "prompt built from columns, e.g. 'Review: {sentence}\\nSentiment:' (a typed \\n is a newline)"})
    label_map: list[str] | None = field(default=None, metadata={"metavar": "[TASK:]LABEL=TEXT,...",
                                                                "help": "rename labels, e.g. 0=negative,1=positive"})
    columns: list[str] | None = field(default=None, metadata={
        "metavar": "[TASK:]NAME,...", "help": "column names of a TSV/CSV without a header row"})
    max_records: int | None = field(default=None, metadata={"help": "read at most this many records per file"})
    schedule: str = field(default="mixed", metadata={"choices": SCHEDULES, "help": "task schedule"})
    task_proportions: str | None = field(default=None, metadata={"metavar": "TASK=W,...",
                                                                 "help": "e.g. sst2=2,gsm8k=1"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps (overrides --epochs)"})
    epochs: float = field(default=1.0, metadata={"help": "passes over the data"})
    batch_size: int = field(default=4, metadata={"help": "per device"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr: float = field(default=5e-5, metadata={"help": "learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_length: int = field(default=512, metadata={"help": "tokens per example (prompt cut from the left)"})
    seed: int = field(default=0, metadata={"help": "seed of weights-independent randomness (data order)"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N optimizer steps"})
    save_total_limit: int = field(default=2, metadata={
        "help": "keep this many newest complete checkpoints (0 keeps all; a smollm2 checkpoint is ~2 GB)"})
    logging_steps: int = field(default=10, metadata={"help": "log every N optimizer steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (stderr)"})
    record_dynamics: int = field(default=0, metadata={
        "metavar": "N", "help": "record every sample's loss/correctness every N steps into OUTPUT/ilp_dynamics.* "
                                "for `sft-core diagnose --run` (0: off)"})


def parse_key_values(text: str | None, flag: str, convert=str) -> dict | None:
    if not text:
        return None
    values = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            values[key.strip()] = convert(value.strip())
        except ValueError:
            raise UserError(f"{flag}: cannot read {part!r} (expected KEY=VALUE,...)") from None
    return values


def parse_proportions(text: str | None) -> dict[str, float] | None:
    return parse_key_values(text, "--task-proportions", float)


def _option_for_task(values: list[str] | None, task: str | None, tasks: set[str]) -> str | None:
    """The value of a repeatable mapping flag for one --data file: ``TASK:VALUE`` for its task wins over
    an unprefixed value; a prefix that names none of the --data tasks is part of the value."""
    chosen = None
    for value in values or []:
        prefix, sep, rest = value.partition(":")
        if sep and prefix in tasks:
            if prefix == task:
                return rest
        elif chosen is None:
            chosen = value
    return chosen


def column_mapping_for(spec: str, args) -> ColumnMapping:
    from sft_core.sft_data import parse_data_argument

    task, _ = parse_data_argument(spec)
    tasks = {parse_data_argument(other)[0] for other in args.data} - {None}

    def option(name):
        return _option_for_task(getattr(args, name), task, tasks)

    columns = option("columns")
    return ColumnMapping(text_field=option("text_field"), label_field=option("label_field"),
                         prompt_template=option("prompt_template"),
                         label_map=parse_key_values(option("label_map"), "--label-map"),
                         columns=tuple(c.strip() for c in columns.split(",")) if columns else None)


def epi_config_from_args(args: argparse.Namespace) -> EPIConfig:
    from sft_core.cli_args import dataclass_from_args

    try:
        return dataclass_from_args(EPIConfig, args, method=args.tuner)
    except ValueError as error:  # EPIConfig.saliency='x': expected ... -> name the flag
        message = str(error)
        if message.startswith("EPIConfig."):
            name = message.split("=", 1)[0].removeprefix("EPIConfig.")
            message = f"--{name.replace('_', '-')}: {message}"
        raise UserError(message) from None


def _load_pretrained(model_name: str):
    """Tokenizer + causal LM; a converted alias that fails to load is hash-checked and rebuilt once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sft_core.hub import load_with_repair

    try:
        tokenizer, model = load_with_repair(model_name, lambda path: (AutoTokenizer.from_pretrained(path),
                                                                      AutoModelForCausalLM.from_pretrained(path)))
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        reason = "the model hub is offline (HF_HUB_OFFLINE=1) and it is not in the local cache" if offline \
            else " ".join(str(error).split())[:240]
        raise UserError(f"--model {model_name}: cannot load it: {reason}. Offline aliases: "
                        "minilm-l6, me5-small, smollm2-135m (`sft-core models`)") from None
    return tokenizer, model


def _save_final_model(trainer, output: Path) -> None:
    """Model, tokenizer and EPI state land file by file with atomic renames: a reader (or a kill) never
    sees a half-written model.safetensors in the run directory."""
    staging = output / f".final-model.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging))  # config.json + model.safetensors + tokenizer (processing_class)
        trainer.save_epi_state(staging)
        if trainer.args.should_save:
            for path in sorted(staging.iterdir()):
                os.replace(path, output / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_command(args: argparse.Namespace) -> int:
    from sft_core.hub import resolve_model
    from sft_core.sft_data import CausalLMCollator, SFTDataset, read_sft_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    output = Path(args.output)
    epi_config = epi_config_from_args(args)
    proportions = parse_proportions(args.task_proportions)
    records = [record for spec in args.data
               for record in read_sft_file(spec, column_mapping_for(spec, args), limit=args.max_records)]
    resume_from = resolve_resume(output, args.resume)
    model_dir = resolve_model(args.model)
    if args.save_total_limit < 0:
        raise UserError(f"--save-total-limit {args.save_total_limit}: expected >= 0 (0 keeps every checkpoint)")

    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    tokenizer, model = _load_pretrained(args.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = SFTDataset(records, tokenizer, max_length=args.max_length)
    unknown = sorted(set(proportions or {}) - set(dataset.tasks))
    if unknown:
        raise UserError(f"--task-proportions names task(s) absent from --data: {', '.join(unknown)} "
                        f"(tasks: {', '.join(dataset.tasks)})")
    try:
        training_args = MultiTaskTrainingArguments(
            output_dir=str(output), per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, weight_decay=args.weight_decay,
            num_train_epochs=args.epochs, max_steps=args.max_steps, seed=args.seed, save_steps=args.save_steps,
            save_total_limit=args.save_total_limit or None, logging_steps=args.logging_steps, report_to=[],
            disable_tqdm=not args.progress, task_schedule=args.schedule, task_proportions=proportions,
            tuner=args.tuner)
        trainer = MultiTaskTrainer(model=model, args=training_args, train_dataset=dataset,
                                   data_collator=CausalLMCollator(tokenizer.pad_token_id),
                                   processing_class=tokenizer, epi_config=epi_config)
        if args.record_dynamics:  # ILP hook: per-sample training dynamics for `sft-core diagnose --run`
            from sft_core.ilp.dynamics import TrainingDynamicsRecorder

            trainer.add_callback(TrainingDynamicsRecorder(records, tokenizer, every_steps=args.record_dynamics,
                                                          output_dir=output, max_length=args.max_length))
    except ValueError as error:  # e.g. --task-proportions naming an absent task, bad step counts
        raise UserError(str(error)) from None
    # transformers prints its log dicts on stdout (tqdm.write / print); stdout is for the JSON summary
    with contextlib.redirect_stdout(sys.stderr):
        result = trainer.train(resume_from_checkpoint=resume_from)
        _save_final_model(trainer, output)
    summary = None
    if trainer.args.should_save:
        isolator = trainer.isolator
        summary = {
            "model": args.model, "model_dir": model_dir, "data": list(args.data),
            "tasks": {task: sum(1 for e in dataset.examples if e["task"] == task) for task in dataset.tasks},
            "tuner": args.tuner, "schedule": args.schedule, "epi_config": epi_config.to_dict(),
            "global_steps": trainer.state.global_step, "train_loss": result.training_loss,
            "resumed_from": resume_from,
            "task_steps": {name: state.steps for name, state in isolator.tasks.items()} if isolator else None,
            "drift_log": DRIFT_LOG_NAME if (output / DRIFT_LOG_NAME).is_file() else None,
        }
        atomic_write_text(output / RUN_SUMMARY_NAME, json.dumps(summary, indent=2))
    from sft_core.trainer import release_distributed

    # under torchrun: join gloo's threads before the interpreter exits (after a failure the exit hook does)
    release_distributed(trainer)
    if summary is not None:
        print(f"saved model and EPI state to {output}", file=sys.stderr)
        print(json.dumps(summary, indent=2))
    return 0


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from sft_core.checkpoints import add_resume_argument
    from sft_core.cli_args import add_dataclass_arguments

    add_dataclass_arguments(parser, TrainOptions)
    add_resume_argument(parser)
    add_dataclass_arguments(parser.add_argument_group("isolation (EPIConfig; used by the static / epi tuners)"),
                            EPIConfig, exclude={"method"})


__all__ = ["TrainOptions", "add_train_arguments", "train_command", "SFTDataError", "RUN_SUMMARY_NAME"]
