"""Training on sft_core's MultiTaskTrainer (full fine-tuning, static isolation or EPI).

    summary = train_parser(TrainingOptions(train_path=".../training_data", eval_path=".../testing_data",
                                           output_dir="runs/funsd", backbone="minilm-l6", tuner="epi"))

EPI tasks (``epi_tasks``): ``"languages"`` tags every document with its language (a multilingual set
such as XFUND), ``"objectives"`` presents every document twice per epoch, once for the SER loss and once
for the RE loss, so SER and RE are the isolated tasks. ``"auto"`` (default) picks languages when the
training set has more than one language and objectives otherwise. With ``tuner="full"`` there is one
task and both losses are summed in every step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, TrainerCallback
from sft_core.atomic_io import atomic_write_json
from sft_core.checkpoints import resolve_resume
from sft_core.epi import EPIConfig
from sft_core.param_groups import build_parameter_groups
from sft_core.trainer import TUNERS, MultiTaskTrainer, MultiTaskTrainingArguments

from .evaluation import FormParser
from .features import XFormParserCollator, encode_document
from .formats import DEFAULT_KEY_LABELS, DEFAULT_VALUE_LABELS, check_page_images, load_documents
from .modeling_xformparser import ENCODER_PREFIX, OBJECTIVES, XFormParserModel

logger = logging.getLogger("xformparser.training")
LAYOUT_PREFIX = "backbone.adapter.layout."
EPI_TASK_MODES = ("auto", "languages", "objectives")
BACKBONE_TYPE_BY_MODEL_TYPE = {"layoutlmv3": "layoutlmv3", "lilt": "lilt"}


@dataclass
class TrainingOptions:
    train_path: str
    output_dir: str
    eval_path: str | None = None
    backbone: str = "minilm-l6"  # offline alias, local HF dir or hub id (via sft_core.hub.resolve_model)
    data_format: str = "auto"
    tuner: str = "full"
    epi_tasks: str = "auto"
    # The recipe the sweep selected on the dev set (docs/results/xformparser_sweep.md): whole encoder
    # fine-tuned for 10 epochs at 1e-4 (3 seeds; it beat 4 epochs at 5e-5 / 1e-4 / 2e-4 on dev). About 10
    # minutes of one CPU core; 10-epoch runs at other learning rates were not measured.
    epochs: float = 10.0
    max_steps: int = -1
    batch_size: int = 2
    learning_rate: float = 1e-4  # backbone encoder
    head_learning_rate: float = 1e-3  # image branch, SER/RE heads (and layout embeddings above a frozen encoder part)
    # Layout embeddings that join the word embeddings at the encoder input (frozen_layers=0) perturb every
    # pretrained layer: they train at the encoder's rate unless set. With frozen_layers > 0 they follow the heads.
    layout_learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 42
    resume: str | None = None  # --resume semantics of sft_core.checkpoints.resolve_resume: never|auto|latest|PATH
    key_labels: tuple[str, ...] | None = None
    value_labels: tuple[str, ...] | None = None
    model_options: dict = field(default_factory=dict)  # XFormParserConfig overrides (use_bilstm=False, ...)
    epi_options: dict = field(default_factory=dict)  # EPIConfig overrides
    logging_steps: int = 10
    show_progress: bool = True
    device: str | None = None  # "cpu" or "cuda"; None: cuda when torch sees one


class SoftLabelScheduleCallback(TrainerCallback):
    """Tells the model the (fractional) epoch before every step: drives the soft-label warm-up."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            getattr(model, "module", model).soft_label_epoch = float(state.epoch or 0.0)


class XFormParserTrainer(MultiTaskTrainer):
    """MultiTaskTrainer + document-level evaluation (SER/RE F1) + per-objective tasks + head learning rate."""

    def __init__(self, *args, eval_documents=None, task_mode: str = "single", head_learning_rate=None,
                 layout_learning_rate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_documents = eval_documents or []
        self.task_mode = task_mode
        self.head_learning_rate = head_learning_rate
        self.layout_learning_rate = layout_learning_rate
        self.last_eval_report: dict | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # MultiTaskTrainer.training_step has already set current_task from the batch.
        if self.task_mode == "objectives" and self.current_task in OBJECTIVES:
            inputs = {**inputs, "objective": self.current_task}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.head_learning_rate is None:
            return super().create_optimizer(model)
        model = self.model if model is None else model
        # Everything outside the pretrained encoder (layout embeddings, image branch, heads) is "head".
        heads = tuple(name for name, _ in model.named_parameters() if not name.startswith(ENCODER_PREFIX))
        groups = build_parameter_groups(model, head_prefixes=heads, backbone_lr=self.args.learning_rate,
                                        head_lr=self.head_learning_rate, weight_decay=self.args.weight_decay)
        if self.layout_learning_rate is not None:
            layout = {id(p) for name, p in model.named_parameters() if name.startswith(LAYOUT_PREFIX)}
            split = []
            for group in groups:
                inside = [p for p in group["params"] if id(p) in layout]
                outside = [p for p in group["params"] if id(p) not in layout]
                if outside:
                    split.append({**group, "params": outside})
                if inside:
                    split.append({**group, "params": inside, "lr": self.layout_learning_rate, "name": "layout"})
            groups = split
        # foreach: one vectorised update instead of ~150 small ones (it was 15% of a CPU step).
        self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, foreach=True)
        return self.optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if not self.eval_documents:
            return {}
        started = time.time()
        parser = FormParser(self.model, self.processing_class, batch_size=self.args.per_device_eval_batch_size)
        report = parser.evaluate(self.eval_documents, include_rule_baseline=False)
        self.model.train()
        self.last_eval_report = report
        metrics = {
            f"{metric_key_prefix}_f1": report["f1"],
            f"{metric_key_prefix}_ser_micro_f1": report["ser"]["micro"]["f1"],
            f"{metric_key_prefix}_seqeval_f1": report["seqeval_bio"]["f1"],
            f"{metric_key_prefix}_re_gold_labels_f1": report["re_gold_labels"]["f1"],
            f"{metric_key_prefix}_re_end_to_end_f1": report["re_end_to_end"]["f1"],
            f"{metric_key_prefix}_runtime": time.time() - started,
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def synthetic_training_documents(out_dir, per_language: int, langs, seed: int, allowed_labels=None) -> list:
    """Generate ``per_language`` synthetic forms per language (xformparser.synth) into ``out_dir`` and read
    them back; with ``allowed_labels`` a form with any other label is an error (no silent new labels)."""
    from .synth import generate_dataset

    langs = list(langs)
    generate_dataset(out_dir, per_language, langs=langs, seed=seed)
    documents = []
    for lang in langs:
        documents += load_documents(str(Path(out_dir) / f"{lang}.json"), "xfund")
    if allowed_labels is not None:
        for document in documents:
            unknown = {e.label for e in document.entities} - set(allowed_labels)
            if unknown:
                raise ValueError(f"synthetic form {document.doc_id} has labels {sorted(unknown)} outside {sorted(allowed_labels)}")
    return documents


def layout_learning_rate(options: TrainingOptions, config) -> float | None:
    """The layout embeddings' rate: as set, else the encoder's when they enter at the encoder input."""
    if options.layout_learning_rate is not None:
        return options.layout_learning_rate
    return options.learning_rate if config.backbone_type == "text-layout" and not config.frozen_layers else None


def role_labels(labels: list[str], requested, defaults) -> list[str]:
    if requested:
        missing = [label for label in requested if label not in labels]
        if missing:
            raise ValueError(f"labels {missing} are not in the training label set {labels}")
        return list(requested)
    wanted = {label.lower() for label in defaults}
    return [label for label in labels if label.lower() in wanted]


def build_parser_model(backbone_path: str, labels, key_labels, value_labels, model_options: dict,
                       backbone_reference: str | None = None) -> XFormParserModel:
    model_type = AutoConfig.from_pretrained(backbone_path).model_type
    backbone_type = BACKBONE_TYPE_BY_MODEL_TYPE.get(model_type, "text-layout")
    return XFormParserModel.from_backbone(backbone_path, labels=labels, key_labels=key_labels,
                                          value_labels=value_labels, backbone_type=backbone_type,
                                          backbone_reference=backbone_reference, **model_options)


def training_items(encoded_documents, task_mode: str) -> list[dict]:
    if task_mode == "objectives":
        return [{"task": objective, "document": d} for d in encoded_documents for objective in OBJECTIVES]
    if task_mode == "languages":
        return [{"task": d.language or "default", "document": d} for d in encoded_documents]
    return [{"task": "default", "document": d} for d in encoded_documents]


def choose_task_mode(tuner: str, epi_tasks: str, documents) -> str:
    if epi_tasks not in EPI_TASK_MODES:
        raise ValueError(f"epi_tasks must be one of {EPI_TASK_MODES}")
    if tuner == "full":
        return "single"
    if epi_tasks == "auto":
        languages = {d.language for d in documents}
        return "languages" if len(languages) > 1 else "objectives"
    return epi_tasks


def train_parser(options: TrainingOptions, train_documents=None, eval_documents=None) -> dict:
    """Train, keep the best checkpoint by eval F1 (see ``selection_f1``), save a self-contained model
    dir (config + safetensors + tokenizer) in ``options.output_dir`` and return a summary.

    ``train_documents`` / ``eval_documents`` (lists of Document) replace reading the option paths."""
    from sft_core.hub import resolve_model

    if options.tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {TUNERS}, got {options.tuner!r}")
    if options.device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or None, got {options.device!r}")
    if options.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch sees no CUDA device")
    started = time.time()
    # Resolved first: a wrong --resume fails before any data or model is loaded.
    resume_mode = {True: "latest", False: None}.get(options.resume, options.resume)  # bool: older callers
    resume = resolve_resume(options.output_dir, resume_mode)
    backbone_path = resolve_model(options.backbone)
    if train_documents is None:
        train_documents = load_documents(options.train_path, options.data_format)
    if eval_documents is None:
        eval_documents = load_documents(options.eval_path, options.data_format) if options.eval_path else []
    if not train_documents:
        raise ValueError(f"{options.train_path}: no training documents")
    image_branch = bool(options.model_options.get("use_image_branch", False))
    check_page_images(train_documents, required=image_branch, what="training documents")
    check_page_images(eval_documents, required=image_branch, what="evaluation documents")
    labels = sorted({entity.label for document in train_documents for entity in document.entities})
    key_labels = role_labels(labels, options.key_labels, DEFAULT_KEY_LABELS)
    value_labels = role_labels(labels, options.value_labels, DEFAULT_VALUE_LABELS)

    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(backbone_path)
    model = build_parser_model(backbone_path, labels, key_labels, value_labels, options.model_options,
                               backbone_reference=options.backbone)
    config = model.config
    encoded = [encode_document(d, tokenizer, labels, key_labels, value_labels) for d in train_documents]
    task_mode = choose_task_mode(options.tuner, options.epi_tasks, train_documents)
    collator = XFormParserCollator(tokenizer, config.window_size, config.window_overlap,
                                   config.image_size if config.use_image_branch else None)
    has_eval = bool(eval_documents)
    args = MultiTaskTrainingArguments(
        output_dir=options.output_dir, per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size, num_train_epochs=options.epochs,
        max_steps=options.max_steps, learning_rate=options.learning_rate, weight_decay=options.weight_decay,
        warmup_steps=options.warmup_ratio, lr_scheduler_type="linear", seed=options.seed,
        logging_steps=options.logging_steps, save_strategy="epoch", eval_strategy="epoch" if has_eval else "no",
        load_best_model_at_end=has_eval, metric_for_best_model="f1" if has_eval else None,
        greater_is_better=True, save_total_limit=2, remove_unused_columns=False, report_to=[],
        disable_tqdm=not options.show_progress, use_cpu=options.device == "cpu" or not torch.cuda.is_available(),
        dataloader_num_workers=0, task_schedule="mixed", tuner=options.tuner,
    )
    epi_config = EPIConfig(method=options.tuner, **options.epi_options)
    trainer = XFormParserTrainer(
        model=model, args=args, train_dataset=training_items(encoded, task_mode), data_collator=collator,
        # evaluate() is overridden to score whole documents; the dataset only satisfies Trainer's checks.
        eval_dataset=eval_documents or None,
        processing_class=tokenizer, epi_config=epi_config, eval_documents=eval_documents, task_mode=task_mode,
        head_learning_rate=options.head_learning_rate, callbacks=[SoftLabelScheduleCallback()],
        layout_learning_rate=layout_learning_rate(options, config),
    )
    cpu_started = time.process_time()
    train_output = trainer.train(resume_from_checkpoint=resume)
    train_cpu_seconds = time.process_time() - cpu_started  # this process's CPU time: less contention-bound than wall
    trainer.save_model(options.output_dir)
    trainer.save_epi_state(options.output_dir)

    final_report = None
    if has_eval:
        parser = FormParser(trainer.model, tokenizer, batch_size=options.batch_size)
        final_report = parser.evaluate(eval_documents)
        atomic_write_json(Path(options.output_dir) / "eval_report.json", final_report)
    summary = {
        "output_dir": options.output_dir, "backbone": options.backbone, "backbone_path": backbone_path,
        "labels": labels, "key_labels": key_labels, "value_labels": value_labels, "task_mode": task_mode,
        "train_documents": len(train_documents), "eval_documents": len(eval_documents),
        "global_steps": trainer.state.global_step, "epochs": trainer.state.epoch,
        "best_checkpoint": trainer.state.best_model_checkpoint, "best_metric": trainer.state.best_metric,
        "train_loss": train_output.training_loss, "wall_seconds": round(time.time() - started, 1),
        "train_runtime_seconds": round(train_output.metrics.get("train_runtime", 0.0), 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "resumed_from": resume, "options": asdict(options), "eval_report": final_report,
    }
    atomic_write_json(Path(options.output_dir) / "training_summary.json", summary)
    return summary
