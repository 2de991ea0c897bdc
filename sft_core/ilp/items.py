"""Training samples as the diagnostics see them: a stable key, the prompt, the target to reproduce.

Records come from :func:`sft_core.sft_data.read_sft_jsonl` (TRL formats). The *target* is the last
assistant turn; the *prompt* is every message before it; the *input text* (for duplicate detection
and embeddings) is the concatenated user turns. The key is a content hash of the messages, so the
dynamics recorded during training and the data given to ``diagnose`` meet without relying on order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    key: str
    task: str
    source: str
    prompt_messages: tuple
    target: str
    input_text: str

    @property
    def messages(self) -> list[dict]:
        return [dict(m) for m in self.prompt_messages] + [{"role": "assistant", "content": self.target}]


def sample_key(messages: list[dict]) -> str:
    payload = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def item_from_record(record: dict) -> Item:
    """``{"task", "messages", "source"}`` (as read by ``read_sft_jsonl``) -> :class:`Item`."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:last])
    user_text = "\n".join(m["content"] for m in prompt if m["role"] == "user")
    return Item(key=sample_key(messages[:last + 1]), task=record.get("task", "default"),
                source=record.get("source", ""), prompt_messages=prompt, target=messages[last]["content"],
                input_text=user_text or "\n".join(m["content"] for m in prompt))


def items_from_records(records: list[dict]) -> list[Item]:
    return [item_from_record(record) for record in records]


def read_items(paths) -> list[Item]:
    """Read SFT data files (``[TASK=]FILE``, the formats `sft-core train` reads; see :mod:`sft_core.sft_data`);
    raises SFTDataError naming file:line."""
    from sft_core.sft_data import read_sft_file

    return items_from_records([record for path in paths for record in read_sft_file(path)])
