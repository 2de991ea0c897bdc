"""Training an SRM: Bradley-Terry on overall preferences + per-dimension losses, on sftkit's MultiTaskTrainer.

Each objective is an EPI task: ``preference`` (overall BT) and ``dimension/<name>`` (that dimension's
pairwise or rating loss). With ``task_grouping="objective"`` (default) a response group yields one item per
objective it has labels for, tagged with that task, so ``--tuner epi|static`` isolates the parameters each
objective relies on. Frozen feature branches (and the encoder itself when ``freeze_backbone``) are computed
once per response and cached, so epochs only run the small trainable parts.

The encoder (``backbone.*``) trains at ``learning_rate``; everything built on top of it (heads, scorers, gate,
reward scale) at ``head_learning_rate``; biases and norms get no weight decay
(:func:`sft_core.param_groups.build_parameter_groups`). Checkpoints go to ``OUTPUT/checkpoints`` and end with
sftkit's completion marker; the final model is written to ``OUTPUT`` file by file, each by an atomic rename.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sft_core.atomic_io import atomic_write_bytes
from sft_core.param_groups import build_parameter_groups
from sft_core.trainer import TUNERS, MultiTaskTrainer, MultiTaskTrainingArguments

from .branches import FeatureCache, compute_branch_features
from .collate import EncoderEmbeddingBranch, SRMCollator
from .data import ResponseGroup

logger = logging.getLogger("srm.trainer")
PREFERENCE_TASK = "preference"
BACKBONE_MODULE = "backbone"
CHECKPOINTS_SUBDIR = "checkpoints"


def checkpoint_dir(output_dir: str | os.PathLike) -> str:
    """Where ``train_srm`` writes the checkpoints of a model saved to ``output_dir``."""
    return os.path.join(output_dir, CHECKPOINTS_SUBDIR)


def dimension_task(name: str) -> str:
    return f"dimension/{name}"


@dataclass
class GroupTensors:
    branch_features: torch.Tensor | None = None
    response_embeddings: torch.Tensor | None = None
    prompt_embedding: torch.Tensor | None = None


def precompute_group_tensors(model, tokenizer, groups: list[ResponseGroup], cache: FeatureCache | None = None,
                             cache_encoder: bool | None = None, fit_normalization: bool = False) -> list[GroupTensors]:
    """Frozen-branch features (and frozen-encoder embeddings) for every response, split back per group."""
    config = model.config
    cache = cache if cache is not None else FeatureCache()
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    features = None
    if not config.scalar_baseline and config.used_feature_branches:
        branches = model.get_feature_branches()
        for branch in branches.values():
            branch.show_progress = True  # long one-off pass over the whole training set
        features = compute_branch_features(config, branches, prompts, responses, cache)
        if fit_normalization:
            model.fit_feature_normalization(features)
    joint = prompt_vectors = None
    if cache_encoder if cache_encoder is not None else config.freeze_backbone:
        if not config.freeze_backbone:
            raise ValueError("encoder outputs can only be cached when freeze_backbone=True")
        joint = cache.get_or_compute(EncoderEmbeddingBranch(model, tokenizer, "joint"), prompts, responses)
        unique_prompts = list(dict.fromkeys(g.prompt for g in groups))
        if not config.scalar_baseline:
            vectors = cache.get_or_compute(EncoderEmbeddingBranch(model, tokenizer, "prompt"), unique_prompts,
                                           [""] * len(unique_prompts))
            prompt_vectors = {p: v for p, v in zip(unique_prompts, vectors)}
    cache.save()
    out, start = [], 0
    for group in groups:
        end = start + len(group.responses)
        out.append(GroupTensors(
            branch_features=features[start:end] if features is not None else None,
            response_embeddings=joint[start:end] if joint is not None else None,
            prompt_embedding=(prompt_vectors[group.prompt] if prompt_vectors is not None
                              else (torch.zeros(joint.shape[1]) if joint is not None else None))))
        start = end
    return out


def group_item(group: ResponseGroup, tensors: GroupTensors | None = None, pairs=None, ratings=None,
               task: str | None = None) -> dict:
    item = {"prompt": group.prompt, "responses": group.responses,
            "pairs": pairs if pairs is not None else [(p.better, p.worse, p.overall, dict(p.dimensions), p.margin)
                                                      for p in group.pairs],
            "ratings": ratings if ratings is not None else group.ratings}
    if tensors is not None:
        item.update(branch_features=tensors.branch_features, response_embeddings=tensors.response_embeddings,
                    prompt_embedding=tensors.prompt_embedding)
    if task is not None:
        item["task"] = task
    return item


def build_training_items(groups: list[ResponseGroup], config, tensors: list[GroupTensors] | None = None,
                         task_grouping: str = "objective") -> list[dict]:
    """Task-tagged items. ``objective``: one item per (group, objective); ``single``: one item per group."""
    if task_grouping not in ("objective", "single"):
        raise ValueError("task_grouping must be 'objective' or 'single'")
    items = []
    for index, group in enumerate(groups):
        group_tensors = tensors[index] if tensors is not None else None
        overall = [(p.better, p.worse, True, {}, p.margin) for p in group.pairs if p.overall]
        if config.scalar_baseline:
            if overall:
                items.append(group_item(group, group_tensors, overall, [None] * len(group.responses), PREFERENCE_TASK))
            continue
        if task_grouping == "single":
            items.append(group_item(group, group_tensors, task=PREFERENCE_TASK))
            continue
        if overall:
            items.append(group_item(group, group_tensors, overall, [None] * len(group.responses), PREFERENCE_TASK))
        for name in config.dimension_names:
            pairs = [(p.better, p.worse, False, {name: p.dimensions[name]}, p.margin)
                     for p in group.pairs if p.dimensions.get(name)]
            ratings = [({name: r[name]} if r and name in r else None) for r in (group.ratings or [])]
            if pairs or any(ratings):
                items.append(group_item(group, group_tensors, pairs, ratings or None, dimension_task(name)))
    return items


class ItemDataset(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return dict(self.items[index])


def head_prefixes(model) -> tuple[str, ...]:
    """Names of everything the SRM adds on top of the pretrained encoder (heads, scorers, gate, scale...): every
    top-level module and parameter except the backbone, so a new module gets the head learning rate."""
    modules = [f"{name}." for name, _ in model.named_children() if name != BACKBONE_MODULE]
    parameters = [name for name, _ in model.named_parameters(recurse=False)]
    return tuple(modules + parameters)


class SRMTrainer(MultiTaskTrainer):
    """``MultiTaskTrainer`` with two learning rates: the encoder is pretrained, the parts on top are new."""

    def __init__(self, *args, head_learning_rate: float = 1e-3, **kwargs):
        self.head_learning_rate = head_learning_rate
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_parameter_groups(opt_model, head_prefixes=head_prefixes(opt_model),
                                            backbone_lr=self.args.learning_rate, head_lr=self.head_learning_rate,
                                            weight_decay=self.args.weight_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)  # each group carries its own
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer


def make_trainer(model, tokenizer, items: list[dict], output_dir: str, tuner: str = "full",
                 num_train_epochs: float = 1.0, learning_rate: float = 5e-5, head_learning_rate: float = 1e-3,
                 batch_size: int = 8, seed: int = 0, max_steps: int = -1, logging_steps: int = 10,
                 weight_decay: float = 0.0, save_checkpoints: bool = True, show_progress: bool = True,
                 epi_kwargs: dict | None = None) -> SRMTrainer:
    if tuner not in TUNERS:
        raise ValueError(f"tuner must be one of {TUNERS}, got {tuner!r}")
    args = MultiTaskTrainingArguments(
        output_dir=checkpoint_dir(output_dir), tuner=tuner, per_device_train_batch_size=batch_size,
        num_train_epochs=num_train_epochs, max_steps=max_steps, learning_rate=learning_rate, weight_decay=weight_decay,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=logging_steps, seed=seed,
        save_strategy="epoch" if save_checkpoints else "no", save_total_limit=1, remove_unused_columns=False,
        report_to=[], disable_tqdm=not show_progress, dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available())
    epi_config = None
    if epi_kwargs:
        from sft_core.epi import EPIConfig

        epi_config = EPIConfig(method=tuner, **epi_kwargs)
    return SRMTrainer(model=model, args=args, train_dataset=ItemDataset(items),
                      data_collator=SRMCollator(tokenizer, model.config), head_learning_rate=head_learning_rate,
                      epi_config=epi_config)


def save_srm(model, tokenizer, output_dir: str | os.PathLike) -> None:
    """Write weights (safetensors), config and tokenizer into ``output_dir``.

    Everything is first written to a staging folder; each file then lands through
    :func:`sft_core.atomic_io.atomic_write_bytes` (temporary file, fsync, rename, ordinary 0644-style
    permissions), ``config.json`` last: a reader never sees a half-written file, and a folder with a
    ``config.json`` from this save holds its weights too.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".srm-save-", dir=output_dir)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        names = sorted(os.listdir(staging), key=lambda name: (name == "config.json", name))
        for name in names:
            source = Path(staging) / name
            if source.is_file():
                atomic_write_bytes(output_dir / name, source.read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_srm(model, tokenizer, train_groups: list[ResponseGroup], output_dir: str, tuner: str = "full",
              task_grouping: str = "objective", feature_cache: FeatureCache | None = None,
              resume_from_checkpoint: str | bool | None = None, save: bool = True, **trainer_kwargs):
    """Precompute frozen features, fit their normalization, train, save to ``output_dir``; returns the trainer."""
    if not train_groups:
        raise ValueError("no training data")
    tensors = precompute_group_tensors(model, tokenizer, train_groups, feature_cache, fit_normalization=True)
    items = build_training_items(train_groups, model.config, tensors, task_grouping)
    if not items:
        raise ValueError("the training data has no labels this model can learn from")
    tasks = sorted({item["task"] for item in items})
    logger.info("training on %d items, tasks: %s", len(items), tasks)
    trainer = make_trainer(model, tokenizer, items, output_dir, tuner=tuner, **trainer_kwargs)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    if save:
        save_srm(model, tokenizer, output_dir)
    return trainer
