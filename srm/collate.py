"""Tokenization, cached encoder embeddings and the batch collator shared by training, scoring and evaluation.

A collated batch holds N responses belonging to G prompts (a pair, an RM-Bench 3x3 group or a single rated
answer is one group) and every comparison between them, so each response is encoded once no matter how many
pairs it takes part in.

Long pairs use *head + tail* truncation: the prompt keeps at most ``max_prompt_length`` tokens of the joint
window when the response needs the room, and whatever does not fit is cut from the *middle* of each text
(``truncation_head_fraction`` of the kept tokens come from its start, the rest from its end), so the end of a
long answer (the final result, the conclusion) stays visible. :func:`truncated_responses` says which pairs
lost tokens (``srm evaluate`` reports the count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .branches import FeatureBranch, length_sorted_order, restore_order


# ---------------------------------------------------------------------------------------------------------
# head + tail tokenization
# ---------------------------------------------------------------------------------------------------------
def head_tail(ids: list[int], keep: int, head_fraction: float = 0.5) -> list[int]:
    """``ids`` cut to ``keep`` tokens by dropping the middle: ``ceil(keep * head_fraction)`` from the start,
    the rest from the end."""
    if keep >= len(ids):
        return list(ids)
    if keep <= 0:
        return []
    head = min(keep, math.ceil(keep * head_fraction))
    tail = keep - head
    return list(ids[:head]) + (list(ids[len(ids) - tail:]) if tail else [])


@dataclass(frozen=True)
class _Template:
    """Where an encoder tokenizer puts its special tokens around one text or a text pair (learned by probing
    the tokenizer once, so any BERT/RoBERTa/XLM-R style template works)."""

    single_prefix: tuple[int, ...]
    single_suffix: tuple[int, ...]
    pair_prefix: tuple[int, ...]
    pair_middle: tuple[int, ...]
    pair_suffix: tuple[int, ...]
    second_type_id: int  # token_type_id of the response segment (0 for tokenizers without segment ids)
    has_token_types: bool


def _find(sequence: list[int], part: list[int], start: int = 0) -> int:
    for i in range(start, len(sequence) - len(part) + 1):
        if sequence[i:i + len(part)] == part:
            return i
    raise ValueError("cannot locate the probe text inside the tokenizer's template")


def _template(tokenizer) -> _Template:
    cached = getattr(tokenizer, "_srm_template", None)
    if cached is not None:
        return cached
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    single = tokenizer("a")["input_ids"]
    pair = tokenizer("a", "b")
    pair_ids = pair["input_ids"]
    s = _find(single, first)
    i = _find(pair_ids, first)
    j = _find(pair_ids, second, i + len(first))
    types = pair.get("token_type_ids")
    template = _Template(tuple(single[:s]), tuple(single[s + len(first):]), tuple(pair_ids[:i]),
                         tuple(pair_ids[i + len(first):j]), tuple(pair_ids[j + len(second):]),
                         int(types[j]) if types is not None else 0, types is not None)
    try:
        tokenizer._srm_template = template
    except AttributeError:  # pragma: no cover - tokenizers that refuse new attributes just re-probe
        pass
    return template


def _is_decoder(config) -> bool:
    return getattr(config, "pooling", "mean") == "last"


def _pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if value is not None:
            return int(value)
    return 0


def _content_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]]


def _decoder_prompt_ids(tokenizer, prompts: list[str]) -> list[list[int]]:
    """A causal LM reads the prompt as a chat user turn followed by the assistant header."""
    if getattr(tokenizer, "chat_template", None):
        out = []
        for prompt in prompts:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out.append(list(ids))
        return out
    return _content_ids(tokenizer, [p + "\n" for p in prompts])


def _split_budget(prompt_len: int, response_len: int, total: int, prompt_cap: int) -> tuple[int, int]:
    """Tokens kept of the prompt and of the response inside a window of ``total`` content tokens. The response
    gets the room first; the prompt keeps at least ``min(prompt_len, prompt_cap)``."""
    if prompt_len + response_len <= total:
        return prompt_len, response_len
    prompt_keep = min(prompt_len, max(total - response_len, min(prompt_cap, total // 2)))
    return prompt_keep, min(response_len, total - prompt_keep)


@dataclass
class JointTokens:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    response_masks: list[list[int]]
    truncated: list[bool]  # True where the prompt or the response lost tokens


def joint_token_ids(tokenizer, config, prompts: list[str], responses: list[str]) -> JointTokens:
    """Unpadded ``prompt + response`` token ids with head+tail truncation to ``config.max_sequence_length``."""
    max_length = int(config.max_sequence_length)
    fraction = float(getattr(config, "truncation_head_fraction", 0.5))
    response_ids = _content_ids(tokenizer, responses)
    ids_out, types_out, masks_out, truncated = [], [], [], []
    if _is_decoder(config):
        prompt_ids = _decoder_prompt_ids(tokenizer, prompts)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for p, r in zip(prompt_ids, response_ids):
            keep_p, keep_r = _split_budget(len(p), len(r), max_length - len(eos), int(config.max_prompt_length))
            p2, r2 = head_tail(p, keep_p, fraction), head_tail(r, keep_r, fraction)
            ids_out.append(p2 + r2 + eos)
            masks_out.append([0] * len(p2) + [1] * len(r2) + [1] * len(eos))
            truncated.append(keep_p < len(p) or keep_r < len(r))
        return JointTokens(ids_out, None, masks_out, truncated)
    t = _template(tokenizer)
    prompt_ids = _content_ids(tokenizer, prompts)
    specials = len(t.pair_prefix) + len(t.pair_middle) + len(t.pair_suffix)
    for p, r in zip(prompt_ids, response_ids):
        keep_p, keep_r = _split_budget(len(p), len(r), max_length - specials, int(config.max_prompt_length))
        p2, r2 = head_tail(p, keep_p, fraction), head_tail(r, keep_r, fraction)
        first = list(t.pair_prefix) + p2 + list(t.pair_middle)
        second = r2 + list(t.pair_suffix)
        ids_out.append(first + second)
        types_out.append([0] * len(first) + [t.second_type_id] * len(second))
        masks_out.append([0] * len(first) + [1] * len(r2) + [0] * len(t.pair_suffix))
        truncated.append(keep_p < len(p) or keep_r < len(r))
    return JointTokens(ids_out, types_out if t.has_token_types else None, masks_out, truncated)


def truncated_responses(tokenizer, config, prompts: list[str], responses: list[str]) -> list[bool]:
    """Per (prompt, response): does it lose tokens in the joint window? (``srm evaluate`` counts them.)"""
    return joint_token_ids(tokenizer, config, prompts, responses).truncated


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), max(width, 1)), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def tokenize_joint(tokenizer, config, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """``prompt + response`` for the shared encoder (right-padded): ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (encoders that use them) and ``response_mask`` (1 on the response's own tokens, what
    the shared similarity features pool over)."""
    tokens = joint_token_ids(tokenizer, config, prompts, responses)
    batch = {"input_ids": _pad(tokens.input_ids, _pad_id(tokenizer)),
             "attention_mask": _pad([[1] * len(r) for r in tokens.input_ids], 0)}
    if tokens.token_type_ids is not None:
        batch["token_type_ids"] = _pad(tokens.token_type_ids, 0)
    batch["response_mask"] = _pad(tokens.response_masks, 0)
    return batch


def prompt_token_ids(tokenizer, config, prompts: list[str]) -> list[list[int]]:
    fraction = float(getattr(config, "truncation_head_fraction", 0.5))
    limit = int(config.max_prompt_length)
    if _is_decoder(config):
        return [head_tail(ids, limit, fraction) for ids in _decoder_prompt_ids(tokenizer, prompts)]
    t = _template(tokenizer)
    room = limit - len(t.single_prefix) - len(t.single_suffix)
    return [list(t.single_prefix) + head_tail(ids, room, fraction) + list(t.single_suffix)
            for ids in _content_ids(tokenizer, prompts)]


def tokenize_prompts(tokenizer, config, prompts: list[str]) -> dict[str, torch.Tensor]:
    rows = prompt_token_ids(tokenizer, config, prompts)
    return {"prompt_input_ids": _pad(rows, _pad_id(tokenizer)),
            "prompt_attention_mask": _pad([[1] * len(r) for r in rows], 0)}


class EncoderEmbeddingBranch(FeatureBranch):
    """The (frozen) shared encoder's pooled output as a cacheable 'feature': ``part="joint"`` embeds
    ``prompt + response`` and returns ``[N, 2H]``: the pooled output followed by the mean-pooled response
    segment (what a shared-encoder similarity dimension reads; a model without one ignores it, so an SRM and a
    scalar model on the same backbone share one cache entry); ``part="prompt"`` the prompt alone (the gate
    input). Only valid while the encoder is frozen, which is when training uses it."""

    def __init__(self, model, tokenizer, part: str, batch_size: int = 16, show_progress: bool = True):
        assert part in ("joint", "prompt")
        self.model, self.tokenizer, self.part = model, tokenizer, part
        self.batch_size, self.show_progress = batch_size, show_progress
        self.kind = f"encoder-{part}"
        hidden = model.backbone.config.hidden_size
        self.with_segment = part == "joint"
        self.feature_size = hidden * (2 if self.with_segment else 1)

    @property
    def cache_key(self) -> str:
        c = self.model.config
        return (f"{self.kind}:v2:{c.backbone_name_or_path}:{c.max_sequence_length}:{c.max_prompt_length}:"
                f"{getattr(c, 'pooling', 'mean')}:{getattr(c, 'truncation_head_fraction', 0.5)}")

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
                enc = {k: v.to(device) for k, v in tokenize_joint(self.tokenizer, self.model.config, p, r).items()}
                pooled, segment = self.model.encode_joint(enc["input_ids"], enc["attention_mask"],
                                                          enc.get("token_type_ids"), enc["response_mask"])
                out.append(torch.cat([pooled, segment], -1).float().cpu())
            else:
                tok = tokenize_prompts(self.tokenizer, self.model.config, p)
                out.append(self.model.encode(tok["prompt_input_ids"].to(device),
                                             tok["prompt_attention_mask"].to(device)).float().cpu())
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
