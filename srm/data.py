"""Preference data for the SRM: readers for the supported formats, dimension-label derivation, splits.

Every record becomes a :class:`ResponseGroup`: one prompt, its candidate responses, and labelled comparisons
(:class:`PairLabel`) and/or per-response ratings. Supported record formats (auto-detected per record; see
docs/srm.md for an example of each):

* ``trl``       TRL preference: ``{prompt, chosen, rejected}`` as strings, or conversational message lists
                (also the implicit-prompt form where ``chosen``/``rejected`` are full conversations).
* ``rm-bench``  RM-Bench: ``{prompt, chosen: [3 styles], rejected: [3 styles], ...}``, styles ordered
                concise, detailed, detailed-markdown. Style and correctness/safety labels are derived.
* ``chat-pair`` ``{text_chosen: [messages], text_rejected: [messages], domain}`` (IFBench conversion).
* ``pairwise``  ``{input, output_1, output_2, label}`` with ``label`` 1 or 2 (the better output).
* ``ratings``   ``{prompt, response, ratings: {dimension: number}}``.

Pair formats may add ``dimension_labels: {dimension: 1 | -1}`` (+1: the preferred answer is also better on that
dimension, -1: worse). Files are a JSON array (``.json``) or one record per line (``.jsonl``); a bad record
raises :class:`DataFormatError` naming the file and line (JSONL) or index (JSON array).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

RMBENCH_STYLES = ("concise", "detailed", "detailed-markdown")
# Which dimension the chosen-vs-rejected difference of a domain is about (RM-Bench / IFBench domains).
DIMENSION_BY_DOMAIN = {
    "chat": "correctness", "code": "correctness", "math": "correctness",
    "safety-refuse": "safety", "safety-response": "safety", "safety": "safety",
}
INSTRUCTION_DOMAIN_PREFIX = "level-"  # IFBench difficulty levels -> instruction_following
FORMATS = ("trl", "rm-bench", "chat-pair", "pairwise", "ratings")


class DataFormatError(ValueError):
    """A record that cannot be read; the message starts with ``file:line N`` or ``file[index]``."""


@dataclass
class PairLabel:
    better: int
    worse: int
    overall: bool = True  # carries the overall preference (BT loss); False = dimension-only comparison
    dimensions: dict[str, int] = field(default_factory=dict)  # name -> +1 (better wins) / -1 (worse wins)
    margin: float = 0.0


@dataclass
class ResponseGroup:
    prompt: str
    responses: list[str]
    pairs: list[PairLabel] = field(default_factory=list)
    ratings: list[dict[str, float]] | None = None
    format: str = ""
    source: str = ""
    domain: str = ""
    subset: str = ""
    record_id: Any = None
    location: str = ""
    rmbench: bool = False  # responses are chosen[0..2] + rejected[0..2]: the 3x3 style matrix applies


# ---------------------------------------------------------------------------------------------------------
# reading files
# ---------------------------------------------------------------------------------------------------------
def read_records(path: str | os.PathLike) -> Iterable[tuple[str, Any]]:
    """Yield ``(location, record)``; malformed JSON raises :class:`DataFormatError` with the location."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: no such file")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    stripped = text.lstrip()
    if path.endswith(".json") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{path}:line {error.lineno}: invalid JSON ({error.msg})") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataFormatError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
        for index, record in enumerate(data):
            yield f"{path}[{index}]", record
        return
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        location = f"{path}:line {line_number}"
        try:
            yield location, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{location}: invalid JSON ({error.msg})") from None


def detect_format(record: Any) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "text_chosen" in record or "text_rejected" in record:
        return "chat-pair"
    if "output_1" in record or "output_2" in record:
        return "pairwise"
    if "ratings" in record:
        return "ratings"
    if "chosen" in record and "rejected" in record:
        chosen = record["chosen"]
        if isinstance(chosen, list) and len(chosen) == 3 and all(isinstance(c, str) for c in chosen):
            return "rm-bench"
        return "trl"
    raise ValueError("unknown record format: expected keys of one of "
                     "trl {prompt, chosen, rejected}, rm-bench, chat-pair {text_chosen, text_rejected}, "
                     "pairwise {input, output_1, output_2, label}, ratings {prompt, response, ratings}")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _check_messages(messages: Any, what: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{what} must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or not isinstance(message.get("content"), str):
            raise ValueError(f"{what}[{i}] must be a message {{role, content}}")
    return messages


def render_prompt(messages: list[dict]) -> str:
    """A conversation (everything before the answer) as the prompt text the encoder and gate read."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _answer(messages: list[dict], what: str) -> str:
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers:
        raise ValueError(f"{what} has no assistant message")
    return _text("\n".join(answers), f"{what} assistant content")


def _dimension_labels(record: dict) -> dict[str, int]:
    labels = record.get("dimension_labels") or {}
    if not isinstance(labels, dict) or any(v not in (1, -1) for v in labels.values()):
        raise ValueError("dimension_labels must map dimension names to 1 or -1")
    return dict(labels)


def _domain_dimension(domain: str) -> str | None:
    if domain.startswith(INSTRUCTION_DOMAIN_PREFIX):
        return "instruction_following"
    return DIMENSION_BY_DOMAIN.get(domain)


# ---------------------------------------------------------------------------------------------------------
# one parser per format
# ---------------------------------------------------------------------------------------------------------
def _parse_trl(record: dict, domain: str) -> ResponseGroup:
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if "prompt" in record and isinstance(record["prompt"], str):
        prompt = _text(record["prompt"], "prompt")
        chosen_text = _text(chosen, "chosen") if isinstance(chosen, str) else _answer(_check_messages(chosen, "chosen"), "chosen")
        rejected_text = (_text(rejected, "rejected") if isinstance(rejected, str)
                         else _answer(_check_messages(rejected, "rejected"), "rejected"))
    elif "prompt" in record:
        prompt = render_prompt(_check_messages(record["prompt"], "prompt"))
        chosen_text = _answer(_check_messages(chosen, "chosen"), "chosen")
        rejected_text = _answer(_check_messages(rejected, "rejected"), "rejected")
    else:  # implicit prompt: the shared leading messages of two full conversations
        chosen, rejected = _check_messages(chosen, "chosen"), _check_messages(rejected, "rejected")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise ValueError("no 'prompt' and chosen/rejected share no leading messages")
        prompt = render_prompt(chosen[:shared])
        chosen_text, rejected_text = _answer(chosen[shared:], "chosen"), _answer(rejected[shared:], "rejected")
    labels = _dimension_labels(record)
    dimension = _domain_dimension(domain)
    if dimension:
        labels.setdefault(dimension, 1)
    return ResponseGroup(prompt, [chosen_text, rejected_text], [PairLabel(0, 1, True, labels, float(record.get("margin", 0.0)))])


def _parse_rmbench(record: dict, domain: str) -> ResponseGroup:
    prompt = _text(record.get("prompt"), "prompt")
    chosen, rejected = record["chosen"], record["rejected"]
    if not (isinstance(chosen, list) and len(chosen) == 3 and isinstance(rejected, list) and len(rejected) == 3):
        raise ValueError("rm-bench records need 3 chosen and 3 rejected responses (concise, detailed, markdown)")
    responses = [_text(c, f"chosen[{i}]") for i, c in enumerate(chosen)] + [
        _text(r, f"rejected[{j}]") for j, r in enumerate(rejected)]
    content_dimension = _domain_dimension(domain) or "correctness"
    pairs = []
    for i in range(3):  # chosen style i vs rejected style j: the 3x3 matrix
        for j in range(3):
            labels = {content_dimension: 1}
            if i != j:
                labels["style"] = 1 if i > j else -1
            pairs.append(PairLabel(i, 3 + j, True, labels))
    for offset in (0, 3):  # same content, more styled vs less styled: style-only comparisons
        for i in range(3):
            for j in range(i):
                pairs.append(PairLabel(offset + i, offset + j, False, {"style": 1}))
    return ResponseGroup(prompt, responses, pairs, rmbench=True, subset=str(record.get("subset", "")))


def _parse_chat_pair(record: dict, domain: str) -> ResponseGroup:
    chosen = _check_messages(record.get("text_chosen"), "text_chosen")
    rejected = _check_messages(record.get("text_rejected"), "text_rejected")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("text_chosen and text_rejected must share the same conversation before the answer")
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("the last message of text_chosen and text_rejected must be the assistant answer")
    if len(chosen) < 2:
        raise ValueError("text_chosen needs a prompt message before the answer")
    labels = _dimension_labels(record)
    dimension = _domain_dimension(domain)
    if dimension:
        labels.setdefault(dimension, 1)
    return ResponseGroup(render_prompt(chosen[:-1]), [_text(chosen[-1]["content"], "text_chosen answer"),
                                                      _text(rejected[-1]["content"], "text_rejected answer")],
                         [PairLabel(0, 1, True, labels)])


def _parse_pairwise(record: dict, domain: str) -> ResponseGroup:
    prompt = _text(record.get("input"), "input")
    outputs = [_text(record.get("output_1"), "output_1"), _text(record.get("output_2"), "output_2")]
    label = record.get("label")
    if label not in (1, 2) or isinstance(label, bool):
        raise ValueError(f"label must be 1 or 2 (the better output), got {label!r}")
    better = label - 1
    return ResponseGroup(prompt, outputs, [PairLabel(better, 1 - better, True, _dimension_labels(record))])


def _parse_ratings(record: dict, domain: str) -> ResponseGroup:
    prompt, response = _text(record.get("prompt"), "prompt"), _text(record.get("response"), "response")
    ratings = record["ratings"]
    if not isinstance(ratings, dict) or not ratings:
        raise ValueError("ratings must be a non-empty object {dimension: number}")
    for name, value in ratings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"rating {name!r} must be a number, got {value!r}")
    return ResponseGroup(prompt, [response], [], ratings=[{k: float(v) for k, v in ratings.items()}])


_PARSERS = {"trl": _parse_trl, "rm-bench": _parse_rmbench, "chat-pair": _parse_chat_pair,
            "pairwise": _parse_pairwise, "ratings": _parse_ratings}


def source_from_path(path: str) -> tuple[str, str]:
    """(source, default domain) from a file name: ``rm-bench/code_filtered.json`` -> ("rm-bench", "code")."""
    stem = os.path.basename(path).split(".")[0]
    if stem.endswith("_filtered"):
        return "rm-bench", stem[: -len("_filtered")]
    if "ifbench" in path.lower() or stem == "data":
        return "ifbench", ""
    return stem, ""


def parse_record(record: Any, location: str = "", fmt: str = "auto", default_domain: str = "",
                 source: str = "", dimension_names: list[str] | None = None) -> ResponseGroup:
    """One record -> :class:`ResponseGroup`; raises :class:`DataFormatError` naming ``location``."""
    try:
        record_format = detect_format(record) if fmt == "auto" else fmt
        if record_format not in _PARSERS:
            raise ValueError(f"unknown format {record_format!r}; choose from {FORMATS}")
        domain = str(record.get("domain") or default_domain)
        group = _PARSERS[record_format](record, domain)
    except (ValueError, TypeError, KeyError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise DataFormatError(f"{location or 'record'}: {detail}") from None
    group.format, group.domain, group.source, group.location = record_format, domain, source, location
    group.record_id = record.get("id")
    group.subset = group.subset or str(record.get("subset", "")) or domain
    if dimension_names is not None:
        keep_dimensions(group, dimension_names)
    return group


def keep_dimensions(group: ResponseGroup, dimension_names: list[str]) -> ResponseGroup:
    """Drop labels for dimensions the model does not have, and comparisons left with no label at all."""
    known = set(dimension_names)
    for pair in group.pairs:
        pair.dimensions = {k: v for k, v in pair.dimensions.items() if k in known and v != 0}
    group.pairs = [p for p in group.pairs if p.overall or p.dimensions]
    if group.ratings is not None:
        unknown = {k for r in group.ratings for k in r} - known
        if unknown:
            raise DataFormatError(f"{group.location}: ratings for unknown dimensions {sorted(unknown)}; "
                                  f"the model has {sorted(known)}")
    return group


def load_groups(paths: str | list[str], fmt: str = "auto", dimension_names: list[str] | None = None,
                on_error: str = "raise") -> tuple[list[ResponseGroup], list[str]]:
    """Read every file; returns ``(groups, errors)``. ``on_error="raise"`` stops at the first bad record,
    ``"skip"`` keeps going and collects one message per bad record."""
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    groups, errors = [], []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        source, default_domain = source_from_path(os.fspath(path))
        try:
            for location, record in read_records(path):
                try:
                    groups.append(parse_record(record, location, fmt, default_domain, source, dimension_names))
                except DataFormatError as error:
                    if on_error == "raise":
                        raise
                    errors.append(str(error))
        except DataFormatError as error:
            if on_error == "raise" or str(error) in errors:
                raise
            errors.append(str(error))
    return groups, errors


# ---------------------------------------------------------------------------------------------------------
# the canonical prompt-level split (splits/preference-split.json)
# ---------------------------------------------------------------------------------------------------------
def split_part(group: ResponseGroup, split: dict) -> str | None:
    """``"train"``, ``"test"`` or ``None`` (in neither list) for a group of the shared datasets."""
    record_id = group.record_id
    if group.source == "rm-bench" or (isinstance(record_id, str) and "/" in record_id):
        domain = group.domain
        if isinstance(record_id, str) and "/" in record_id:
            domain, record_id = record_id.split("/", 1)
            record_id = int(record_id)
        table = split.get("rm-bench", {}).get(domain, {})
    elif group.source == "ifbench":
        table = split.get("ifbench", {})
    else:
        return None
    for part in ("train", "test"):
        if record_id in set(table.get(part, [])):
            return part
    return None


def select_split(groups: list[ResponseGroup], split: dict, part: str) -> list[ResponseGroup]:
    return [g for g in groups if split_part(g, split) == part]
