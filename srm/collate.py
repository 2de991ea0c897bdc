"""Tokenization, cached encoder embeddings and the batch collator shared by training, scoring and evaluation.

A collated batch holds N responses belonging to G prompts (a pair, an RM-Bench 3x3 group or a single rated
answer is one group) and every comparison between them, so each response is encoded once no matter how many
pairs it takes part in.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .branches import FeatureBranch, length_sorted_order, restore_order


def tokenize_joint(tokenizer, config, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """``prompt [SEP] response`` for the shared encoder; long pairs lose tokens from the longer side first."""
    return dict(tokenizer(list(prompts), list(responses), truncation="longest_first",
                          max_length=config.max_sequence_length, padding=True, return_tensors="pt"))


def tokenize_prompts(tokenizer, config, prompts: list[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(list(prompts), truncation=True, max_length=config.max_prompt_length, padding=True,
                        return_tensors="pt")
    return {"prompt_input_ids": encoded["input_ids"], "prompt_attention_mask": encoded["attention_mask"]}


class EncoderEmbeddingBranch(FeatureBranch):
    """The (frozen) shared encoder's pooled output as a cacheable 'feature': ``part="joint"`` embeds
    ``prompt + response``, ``part="prompt"`` the prompt alone (the gate input). Only valid while the encoder is
    frozen, which is when training uses it."""

    def __init__(self, model, tokenizer, part: str, batch_size: int = 32, show_progress: bool = True):
        assert part in ("joint", "prompt")
        self.model, self.tokenizer, self.part = model, tokenizer, part
        self.batch_size, self.show_progress = batch_size, show_progress
        self.kind = f"encoder-{part}"
        self.feature_size = model.backbone.config.hidden_size

    @property
    def cache_key(self) -> str:
        c = self.model.config
        return f"{self.kind}:{c.backbone_name_or_path}:{c.max_sequence_length}:{c.max_prompt_length}"

    @torch.inference_mode()
    def extract(self, prompts, responses):
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out = []
        order = length_sorted_order([p + r for p, r in zip(prompts, responses)])
        starts = range(0, len(prompts), self.batch_size)
        for start in tqdm(starts, desc=f"encoder ({self.part})", disable=not self.show_progress or len(starts) < 2):
            rows = order[start:start + self.batch_size]
            p, r = [prompts[i] for i in rows], [responses[i] for i in rows]
            if self.part == "joint":
                enc = tokenize_joint(self.tokenizer, self.model.config, p, r)
            else:
                tok = tokenize_prompts(self.tokenizer, self.model.config, p)
                enc = {"input_ids": tok["prompt_input_ids"], "attention_mask": tok["prompt_attention_mask"]}
            enc = {k: v.to(device) for k, v in enc.items()}
            out.append(self.model.encode(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")).float().cpu())
        self.model.train(was_training)
        return restore_order(torch.cat(out), order) if out else torch.zeros(0, self.feature_size)


class SRMCollator:
    """Items -> model kwargs. An item is a dict with ``prompt``, ``responses``, ``pairs`` (list of
    ``(better, worse, overall, {dimension: +-1}, margin)``), optional ``ratings`` (list per response of
    ``{dimension: value}`` or None), ``branch_features [n, F]`` and, for a cached frozen encoder,
    ``response_embeddings [n, H]`` + ``prompt_embedding [H]``. A ``task`` key is ignored."""

    def __init__(self, tokenizer, config):
        self.tokenizer = tokenizer
        self.config = config
        self.dimension_index = {name: k for k, name in enumerate(config.dimension_names)}

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        num_dims = len(self.dimension_index)
        prompts, responses, prompt_rows = [], [], []
        pairs, preference, margins, dim_labels, dim_masks = [], [], [], [], []
        ratings, rating_masks, features = [], [], []
        for g, item in enumerate(items):
            offset = len(responses)
            responses.extend(item["responses"])
            prompts.append(item["prompt"])
            prompt_rows.extend([g] * len(item["responses"]))
            for better, worse, overall, dimensions, margin in item.get("pairs", []):
                pairs.append((offset + better, offset + worse))
                preference.append(1.0 if overall else 0.0)
                margins.append(float(margin))
                labels, mask = [0.0] * num_dims, [0.0] * num_dims
                for name, value in dimensions.items():
                    if name in self.dimension_index and value != 0:
                        labels[self.dimension_index[name]], mask[self.dimension_index[name]] = float(value), 1.0
                dim_labels.append(labels)
                dim_masks.append(mask)
            item_ratings = item.get("ratings") or [None] * len(item["responses"])
            for rating in item_ratings:
                row, mask = [0.0] * num_dims, [0.0] * num_dims
                for name, value in (rating or {}).items():
                    if name in self.dimension_index:
                        row[self.dimension_index[name]], mask[self.dimension_index[name]] = float(value), 1.0
                ratings.append(row)
                rating_masks.append(mask)
            if item.get("branch_features") is not None:
                features.append(item["branch_features"])

        batch: dict[str, torch.Tensor] = {"response_prompt_index": torch.tensor(prompt_rows, dtype=torch.long)}
        if all(item.get("response_embeddings") is not None for item in items):
            batch["response_embeddings"] = torch.cat([item["response_embeddings"] for item in items])
            batch["prompt_embeddings"] = torch.stack([item["prompt_embedding"] for item in items])
        else:
            batch.update(tokenize_joint(self.tokenizer, self.config, [prompts[r] for r in prompt_rows], responses))
            if not self.config.scalar_baseline:
                batch.update(tokenize_prompts(self.tokenizer, self.config, prompts))
        if features:
            if len(features) != len(items):
                raise ValueError("either every item or none carries branch_features")
            batch["branch_features"] = torch.cat(features).float()
        if pairs:
            batch["pair_indices"] = torch.tensor(pairs, dtype=torch.long)
            batch["pair_preference_mask"] = torch.tensor(preference)
            batch["pair_margin"] = torch.tensor(margins)
            if num_dims:
                batch["pair_dimension_labels"] = torch.tensor(dim_labels)
                batch["pair_dimension_mask"] = torch.tensor(dim_masks)
        if num_dims and any(any(m) for m in rating_masks):
            batch["rating_targets"] = torch.tensor(ratings)
            batch["rating_mask"] = torch.tensor(rating_masks)
        return batch
