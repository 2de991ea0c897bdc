"""Causal-LM SFT data: records from JSONL / JSON / TSV / CSV -> chat-templated token ids with
completion-only labels.

TRL-format records (``.jsonl`` one object a line, or a ``.json`` list), read by :mod:`sft_core.records`::

    {"prompt": "Is this review positive? great movie", "completion": "positive"}
    {"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}

Any other layout (TSV/CSV tables, JSON records with other field names) is mapped by a
:class:`ColumnMapping`: the prompt is ``prompt_template.format(**row)`` (or the ``text_field`` column),
the completion is the ``label_field`` column (optionally renamed by ``label_map``). TSV/CSV files are
read through ``datasets``; ``columns`` names the columns of a file without a header row.

The task of a record is the ``TASK=`` prefix of the file argument, else the record's ``"task"`` field,
else the file's stem (``data/sst2.jsonl`` -> ``sst2``; for split names such as ``train.tsv`` the folder name:
``sst2/train.tsv`` -> ``sst2``). The loss covers the completion (every assistant turn of a
``messages`` record) only: prompt tokens get label -100.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sft_core.records import Record, RecordError, read_records, validate_records

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")
TABLE_SUFFIXES = {".tsv": "\t", ".csv": ","}
RECORD_SUFFIXES = (".jsonl", ".json")
SPLIT_STEMS = {"train", "dev", "test", "valid", "validation", "eval"}


class SFTDataError(RecordError):
    """A record or file cannot be used; the message names ``file:line`` (or the file) and the reason."""

    def __init__(self, message: str, line: int | None = None, reason: str | None = None):
        if reason is None:  # SFTDataError("file:3: reason"), the historic one-argument form
            ValueError.__init__(self, message)
            self.source, self.line, self.reason = message, line, message
        else:
            super().__init__(message, line, reason)


def check_messages(value, where: str, field: str) -> list[dict]:
    """The one check of a chat message list (``messages``, or ``prompt`` / ``completion`` as lists)."""
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
        messages = check_messages(record["messages"], where, "messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise SFTDataError(f"{where}: 'messages' has no assistant turn, so there is nothing to learn")
        return messages
    if "prompt" not in record or "completion" not in record:
        raise SFTDataError(f"{where}: missing field(s) {', '.join(k for k in ('prompt', 'completion') if k not in record)}"
                           " (expected 'prompt' + 'completion', or 'messages'; for other layouts give "
                           "--text-field/--prompt-template and --label-field)")
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise SFTDataError(f"{where}: 'completion' is empty")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    if isinstance(prompt, list) and isinstance(completion, list):
        messages = check_messages(prompt, where, "prompt") + check_messages(completion, where, "completion")
        if not any(m["role"] == "assistant" for m in completion):
            raise SFTDataError(f"{where}: 'completion' has no assistant message")
        return messages
    raise SFTDataError(f"{where}: 'prompt' and 'completion' must both be strings or both be message lists")


@dataclass(frozen=True)
class ColumnMapping:
    """How a row of a table (or a JSON record with other field names) becomes a prompt/completion pair.

    ``prompt_template`` uses ``{column}`` placeholders (``{{``/``}}`` for literal braces; a typed ``\\n``
    is a newline); without it the prompt is the ``text_field`` column. ``label_map`` renames completions
    (e.g. ``{"0": "negative", "1": "positive"}``). ``columns`` names the columns of header-less tables.
    """

    text_field: str | None = None
    label_field: str | None = None
    prompt_template: str | None = None
    label_map: dict[str, str] | None = None
    columns: tuple[str, ...] | None = None

    @property
    def active(self) -> bool:
        return bool(self.text_field or self.label_field or self.prompt_template)

    def check(self) -> None:
        if self.active and not self.label_field:
            raise SFTDataError("--label-field is required with --text-field / --prompt-template "
                               "(it names the column that becomes the completion)")
        if self.active and not (self.text_field or self.prompt_template):
            raise SFTDataError("--label-field needs --text-field or --prompt-template (what becomes the prompt)")

    def to_record(self, row: dict, where: str) -> dict:
        if not isinstance(row, dict):
            raise SFTDataError(f"{where}: expected an object with named fields, got {type(row).__name__}")
        available = ", ".join(map(str, row)) or "none"
        if self.label_field not in row:
            raise SFTDataError(f"{where}: no column {self.label_field!r} (--label-field); columns are {available}")
        if self.prompt_template:
            try:
                prompt = self.prompt_template.replace("\\n", "\n").format_map(
                    {k: "" if v is None else v for k, v in row.items()})
            except KeyError as error:
                raise SFTDataError(f"{where}: --prompt-template names column {error.args[0]!r}, "
                                   f"which is missing; columns are {available}") from None
            except (ValueError, IndexError) as error:
                raise SFTDataError(f"--prompt-template: {error} (write literal braces as {{{{ and }}}})") from None
        else:
            if self.text_field not in row:
                raise SFTDataError(f"{where}: no column {self.text_field!r} (--text-field); columns are {available}")
            prompt = row[self.text_field]
        completion = row[self.label_field]
        if prompt is None or completion is None:
            raise SFTDataError(f"{where}: empty prompt or {self.label_field!r}")
        completion = str(completion)
        if self.label_map is not None:
            if completion not in self.label_map:
                raise SFTDataError(f"{where}: label {completion!r} is not in --label-map "
                                   f"({', '.join(self.label_map)})")
            completion = self.label_map[completion]
        record = {"prompt": str(prompt), "completion": completion}
        if isinstance(row.get("task"), str):
            record["task"] = row["task"]
        return record


def parse_data_argument(spec: str) -> tuple[str | None, Path]:
    """``"TASK=PATH"`` or ``"PATH"`` -> (task or None, path)."""
    task, sep, path = spec.partition("=")
    if sep and task and "/" not in task and os.sep not in task and not Path(spec).exists():
        return task, Path(path)
    return None, Path(spec)


def default_task_name(path: Path) -> str:
    """The file stem, or the folder name for split files (``sst2/train.tsv`` -> ``sst2``)."""
    if path.stem.lower() in SPLIT_STEMS and path.resolve().parent.name:
        return path.resolve().parent.name
    return path.stem


def _table_rows(path: Path, mapping: ColumnMapping, limit: int | None) -> list[Record]:
    """TSV/CSV rows through ``datasets`` (each row a dict; line = 1-based data row + header lines)."""
    import csv

    import datasets

    if not path.is_file():
        raise SFTDataError(f"{path}: no such file")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    options = {"delimiter": delimiter, "keep_default_na": False}
    if delimiter == "\t":
        options["quoting"] = csv.QUOTE_NONE  # TSV text holds bare quotes (AG News, SST-2)
    if mapping.columns:
        options["column_names"] = list(mapping.columns)
    split = "train" if limit is None else f"train[:{int(limit)}]"
    try:
        table = datasets.load_dataset("csv", data_files=str(path), split=split, **options)
    except Exception as error:  # pandas/arrow parse errors come in many classes; all mean "cannot read"
        raise SFTDataError(f"{path}: cannot read as {path.suffix[1:].upper()} ({type(error).__name__}: "
                           f"{' '.join(str(error).split())[:200]})") from None
    first_line = 1 if mapping.columns else 2
    return [Record(str(path), first_line + index, row) for index, row in enumerate(table)]


def read_sft_file(spec: str | os.PathLike, mapping: ColumnMapping | None = None, limit: int | None = None,
                  default_task: str | None = None) -> list[dict]:
    """Read and validate one data file -> ``[{"task", "messages", "source"}]``; raises SFTDataError.

    ``spec`` is ``PATH`` or ``TASK=PATH``. ``.jsonl`` / ``.json`` go through :func:`read_records`,
    ``.tsv`` / ``.csv`` through ``datasets``; a table needs a ``mapping``. ``limit`` keeps the first rows.
    """
    mapping = mapping or ColumnMapping()
    mapping.check()
    task_prefix, path = parse_data_argument(str(spec))
    file_task = task_prefix or default_task or default_task_name(path)
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        if not mapping.active:
            raise SFTDataError(f"{path}: a table needs a column mapping: --text-field or --prompt-template, "
                               "and --label-field")
        rows = _table_rows(path, mapping, limit)
    else:
        rows = read_records(path).records
        if limit is not None:
            rows = rows[:int(limit)]

    def to_sft_record(row: Record) -> dict:
        data = mapping.to_record(row.data, row.where) if mapping.active else row.data
        if not isinstance(data, dict):
            raise SFTDataError(f"{row.where}: expected a JSON object, got {type(data).__name__}")
        task = task_prefix or data.get("task", file_task)
        if not isinstance(task, str) or not task:
            raise SFTDataError(f"{row.where}: 'task' must be a non-empty string")
        return {"task": task, "messages": record_to_messages(data, row.where), "source": row.where}

    records, _ = validate_records(rows, to_sft_record, on_error="raise")
    if not records:
        raise SFTDataError(f"{path}: no records")
    return records


def read_sft_jsonl(path: str | os.PathLike, default_task: str | None = None) -> list[dict]:
    """TRL-format ``.jsonl`` / ``.json`` -> ``[{"task", "messages", "source"}]`` (see :func:`read_sft_file`)."""
    return read_sft_file(path, default_task=default_task)


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
