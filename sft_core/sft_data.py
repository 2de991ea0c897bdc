"""Causal-LM SFT data: TRL-format JSONL records -> chat-templated token ids with completion-only labels.

Accepted records (one JSON object per line; TRL's dataset formats)::

    {"prompt": "Is this review positive? great movie", "completion": "positive"}
    {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

An optional ``"task"`` string names the record's task; otherwise the task is the file's stem
(``data/sst2.jsonl`` -> ``sst2``). The loss covers the completion (every assistant turn of a
``messages`` record) only: prompt tokens get label -100.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")


class SFTDataError(ValueError):
    """A record cannot be used; the message names ``file:line`` and the reason."""


def _check_messages(value, where: str, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise SFTDataError(f"{where}: '{field}' must be a non-empty list of {{'role', 'content'}} messages")
    for position, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise SFTDataError(f"{where}: {field}[{position}] must be an object with string 'role' and 'content'")
        if message["role"] not in ROLES:
            raise SFTDataError(f"{where}: {field}[{position}] has unknown role {message['role']!r} "
                               f"(expected one of {', '.join(ROLES)})")
    return value


def record_to_messages(record: dict, where: str) -> list[dict]:
    """Normalise any accepted record to a message list whose assistant turns are the completion."""
    if "messages" in record:
        messages = _check_messages(record["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise SFTDataError(f"{where}: 'messages' has no assistant turn, so there is nothing to learn")
        return messages
    if "prompt" not in record or "completion" not in record:
        raise SFTDataError(f"{where}: missing field(s) {', '.join(k for k in ('prompt', 'completion') if k not in record)}"
                           " (expected 'prompt' + 'completion', or 'messages')")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise SFTDataError(f"{where}: 'completion' is empty")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = _check_messages(prompt, where, "prompt") + _check_messages(completion, where, "completion")
        if not any(m["role"] == "assistant" for m in completion):
            raise SFTDataError(f"{where}: 'completion' has no assistant message")
        return messages
    raise SFTDataError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists")


def read_sft_jsonl(path: str | os.PathLike, default_task: str | None = None) -> list[dict]:
    """Read and validate one JSONL file -> ``[{"task", "messages", "source"}]``; raises SFTDataError."""
    path = Path(path)
    if not path.is_file():
        raise SFTDataError(f"{path}: no such file")
    task_from_name = default_task or path.stem
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SFTDataError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise SFTDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            task = record.get("task", task_from_name)
            if not isinstance(task, str) or not task:
                raise SFTDataError(f"{where}: 'task' must be a non-empty string")
            records.append({"task": task, "messages": record_to_messages(record, where), "source": where})
    if not records:
        raise SFTDataError(f"{path}: no records")
    return records


def render_segments(messages: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """Split the chat-templated conversation into (text, is_completion) pieces.

    Each assistant turn's text is what the template adds between the prompt with a generation prompt
    and the conversation including that turn; everything else is prompt. Without a chat template a
    plain ``role: content`` layout is used.
    """
    if getattr(tokenizer, "chat_template", None):
        def render(history, generation_prompt):
            return tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=generation_prompt)
    else:
        def render(history, generation_prompt):
            text = "".join(f"{m['role']}: {m['content']}\n" for m in history)
            if generation_prompt:
                text += "assistant: "
            if history and history[-1]["role"] == "assistant":
                text = text[:-1] + (tokenizer.eos_token or "") + "\n"
            return text

    segments, consumed = [], ""
    for position, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(messages[:position], True)
        through = render(messages[:position + 1], False)
        if not prefix.startswith(consumed) or not through.startswith(prefix):
            raise SFTDataError("the chat template does not render conversations prefix-consistently; "
                               "cannot locate the completion tokens")
        segments.append((prefix[len(consumed):], False))
        segments.append((through[len(prefix):], True))
        consumed = through
    tail = render(messages, False)[len(consumed):]
    if tail:
        segments.append((tail, False))
    return [(text, trainable) for text, trainable in segments if text]


def tokenize_messages(messages: list[dict], tokenizer, max_length: int = 512) -> dict:
    """-> ``{"input_ids", "labels"}`` lists; prompt tokens are labelled -100. Over-long examples lose
    prompt tokens from the left first, then completion tokens from the right."""
    input_ids, labels = [], []
    for text, trainable in render_segments(messages, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += ids if trainable else [IGNORE_INDEX] * len(ids)
    if len(input_ids) > max_length:
        first_completion = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
        cut_left = min(len(input_ids) - max_length, first_completion)
        input_ids, labels = input_ids[cut_left:], labels[cut_left:]
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


class SFTDataset(Dataset):
    """Tokenised SFT examples with a ``"task"`` key, ready for :class:`~sft_core.trainer.MultiTaskTrainer`."""

    def __init__(self, records: list[dict], tokenizer, max_length: int = 512):
        self.examples = []
        for record in records:
            try:
                example = tokenize_messages(record["messages"], tokenizer, max_length)
            except SFTDataError as error:
                raise SFTDataError(f"{record.get('source', '?')}: {error}") from None
            if all(label == IGNORE_INDEX for label in example["labels"]):
                raise SFTDataError(f"{record.get('source', '?')}: no completion token survives "
                                   f"truncation to max_length={max_length}")
            self.examples.append({**example, "task": record["task"]})

    @classmethod
    def from_files(cls, paths: list[str | os.PathLike], tokenizer, max_length: int = 512) -> "SFTDataset":
        records = [record for path in paths for record in read_sft_jsonl(path)]
        return cls(records, tokenizer, max_length)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]

    @property
    def tasks(self) -> list[str]:
        return sorted({example["task"] for example in self.examples})


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids`` / ``labels`` and builds ``attention_mask``."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
