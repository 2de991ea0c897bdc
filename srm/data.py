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
dimension, -1: worse). Files are read by sftkit's one record reader (:func:`sft_core.records.read_records`): a
JSON array (``.json``) or one record per line (``.jsonl``). A bad record raises
:class:`~sft_core.records.RecordError` whose message starts with ``file:line`` (the line of a ``.jsonl`` file,
the 1-based position in a ``.json`` array); with ``on_error="skip"`` that record alone is left out.

Responses may be empty or whitespace-only (a policy can produce such an answer; it is scored like any other);
prompts must hold text.

Each group remembers where it came from: ``source`` is the file's path relative to the data root
(``rm-bench/chat_filtered.json``), and ``dataset`` the top folder of that path (``rm-bench``), which is what the
canonical split's tables are keyed by.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from sft_core.records import RecordError, read_records

RMBENCH_STYLES = ("concise", "detailed", "detailed-markdown")
# Which dimension the chosen-vs-rejected difference of a domain is about (RM-Bench / IFBench domains).
DIMENSION_BY_DOMAIN = {
    "chat": "correctness", "code": "correctness", "math": "correctness",
    "safety-refuse": "safety", "safety-response": "safety", "safety": "safety",
}
INSTRUCTION_DOMAIN_PREFIX = "level-"  # IFBench difficulty levels -> instruction_following
FORMATS = ("trl", "rm-bench", "chat-pair", "pairwise", "ratings")


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
    source: str = ""  # the file, relative to the data root: "rm-bench/chat_filtered.json"
    dataset: str = ""  # the top folder of ``source`` ("rm-bench", "ifbench"): the split's table key
    domain: str = ""
    subset: str = ""
    record_id: Any = None
    location: str = ""
    rmbench: bool = False  # responses are chosen[0..2] + rejected[0..2]: the 3x3 style matrix applies


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
    """A prompt: a string with some text in it."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return value


def _response(value: Any, what: str) -> str:
    """A response: any string. An empty or whitespace-only answer is a (bad) answer, and is scored as one."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
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
    return _response("\n".join(answers), f"{what} assistant content")


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
        chosen_text = (_response(chosen, "chosen") if isinstance(chosen, str)
                       else _answer(_check_messages(chosen, "chosen"), "chosen"))
        rejected_text = (_response(rejected, "rejected") if isinstance(rejected, str)
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
    responses = [_response(c, f"chosen[{i}]") for i, c in enumerate(chosen)] + [
        _response(r, f"rejected[{j}]") for j, r in enumerate(rejected)]
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
    return ResponseGroup(render_prompt(chosen[:-1]), [_response(chosen[-1]["content"], "text_chosen answer"),
                                                      _response(rejected[-1]["content"], "text_rejected answer")],
                         [PairLabel(0, 1, True, labels)])


def _parse_pairwise(record: dict, domain: str) -> ResponseGroup:
    prompt = _text(record.get("input"), "input")
    outputs = [_response(record.get("output_1"), "output_1"), _response(record.get("output_2"), "output_2")]
    label = record.get("label")
    if label not in (1, 2) or isinstance(label, bool):
        raise ValueError(f"label must be 1 or 2 (the better output), got {label!r}")
    better = label - 1
    return ResponseGroup(prompt, outputs, [PairLabel(better, 1 - better, True, _dimension_labels(record))])


def _parse_ratings(record: dict, domain: str) -> ResponseGroup:
    prompt, response = _text(record.get("prompt"), "prompt"), _response(record.get("response"), "response")
    ratings = record["ratings"]
    if not isinstance(ratings, dict) or not ratings:
        raise ValueError("ratings must be a non-empty object {dimension: number}")
    for name, value in ratings.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ValueError(f"rating {name!r} must be a number, got {value!r}")
    return ResponseGroup(prompt, [response], [], ratings=[{k: float(v) for k, v in ratings.items()}])


_PARSERS = {"trl": _parse_trl, "rm-bench": _parse_rmbench, "chat-pair": _parse_chat_pair,
            "pairwise": _parse_pairwise, "ratings": _parse_ratings}


RMBENCH_FILE_SUFFIX = "_filtered"  # RM-Bench names its files <domain>_filtered.json


def source_from_path(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> tuple[str, str, str]:
    """``(source, dataset, default domain)`` of a data file.

    ``source`` is the path relative to ``data_root`` when the file lies under it (``rm-bench/chat_filtered.json``,
    ``benchmark/knowledge/dataset.json``), otherwise the path as given. ``dataset`` is the top folder of that
    relative path (``rm-bench``); for a file outside the data root, the folder the file is in. The default
    domain is RM-Bench's ``<domain>_filtered`` file-name convention (``chat``), else empty (records carry
    their own ``domain``)."""
    path = Path(path)
    relative = None
    if data_root is not None:
        try:
            relative = path.resolve().relative_to(Path(data_root).resolve())
        except ValueError:
            relative = None
    if relative is not None:
        source = relative.as_posix()
        dataset = relative.parts[0] if len(relative.parts) > 1 else ""
    else:
        source = PurePath(os.path.normpath(path)).as_posix()
        dataset = path.resolve().parent.name
    stem = path.name.split(".")[0]
    domain = stem[: -len(RMBENCH_FILE_SUFFIX)] if stem.endswith(RMBENCH_FILE_SUFFIX) else ""
    return source, dataset, domain


def parse_record(record: Any, location: str = "", fmt: str = "auto", default_domain: str = "",
                 source: str = "", dimension_names: list[str] | None = None, dataset: str = "") -> ResponseGroup:
    """One record -> :class:`ResponseGroup`; raises :class:`~sft_core.records.RecordError` naming ``location``
    (``file:line``)."""
    try:
        record_format = detect_format(record) if fmt == "auto" else fmt
        if record_format not in _PARSERS:
            raise ValueError(f"unknown format {record_format!r}; choose from {FORMATS}")
        domain = str(record.get("domain") or default_domain)
        group = _PARSERS[record_format](record, domain)
    except (ValueError, TypeError, KeyError) as error:
        detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise RecordError(location or "record", None, detail) from None
    group.format, group.domain, group.source, group.location = record_format, domain, source, location
    group.dataset = dataset
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
            raise RecordError(group.location or "record", None, f"ratings for unknown dimensions {sorted(unknown)}; "
                              f"the model has {sorted(known)}")
    return group


def load_groups(paths: str | os.PathLike | list, fmt: str = "auto", dimension_names: list[str] | None = None,
                on_error: str = "raise", data_root: str | os.PathLike | None = None
                ) -> tuple[list[ResponseGroup], list[str]]:
    """Read every file; returns ``(groups, errors)``.

    ``on_error="raise"`` stops at the first bad record; ``"skip"`` leaves out each bad record (a malformed
    JSONL line or a record that does not parse) alone, goes on with the next one and returns one
    ``file:line: reason`` message per record left out. A file that cannot be read at all (missing, not JSON,
    no records) raises :class:`~sft_core.records.RecordError` either way: there is nothing to go on with.
    ``data_root`` makes each group's ``source`` the file's path relative to it (see :func:`source_from_path`).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    groups, errors = [], []
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        source, dataset, default_domain = source_from_path(path, data_root)
        # Read every line first, then go through lines and malformed lines in file order, so "raise" names the
        # first bad line of the file whichever kind of problem it has.
        report = read_records(path, on_error="skip")
        entries = sorted([(record.line, record) for record in report.records]
                         + [(error.line or 0, error) for error in report.errors], key=lambda entry: entry[0])
        for _, entry in entries:
            try:
                if isinstance(entry, RecordError):
                    raise entry
                groups.append(parse_record(entry.data, entry.where, fmt, default_domain, source, dimension_names,
                                           dataset=dataset))
            except RecordError as error:
                if on_error == "raise":
                    raise
                errors.append(str(error))
    return groups, errors


# ---------------------------------------------------------------------------------------------------------
# the canonical prompt-level split (splits/preference-split.json)
# ---------------------------------------------------------------------------------------------------------
def split_part(group: ResponseGroup, split: dict) -> str | None:
    """``"train"``, ``"test"`` or ``None`` (in neither list) for a group of the shared datasets.

    The split holds one table per dataset folder (``ifbench: {train: [ids], test: [ids]}``) and, for RM-Bench,
    one per domain (``rm-bench: {chat: {...}}``). Ids of the form ``domain/N`` (RM-Bench records converted to
    chat pairs) are looked up in the RM-Bench table of that domain. Ids compare as text (the IFBench file
    stores ``"94046"``, the split ``94046``)."""
    record_id = group.record_id
    if isinstance(record_id, str) and "/" in record_id:
        domain, record_id = record_id.split("/", 1)
        table = split.get("rm-bench", {}).get(domain, {})
    elif group.dataset == "rm-bench":
        table = split.get("rm-bench", {}).get(group.domain, {})
    else:
        table = split.get(group.dataset) if group.dataset else None
    if not isinstance(table, dict) or record_id is None:
        return None
    for part in ("train", "test"):
        if str(record_id) in {str(i) for i in table.get(part, [])}:
            return part
    return None


def select_split(groups: list[ResponseGroup], split: dict, part: str) -> list[ResponseGroup]:
    return [g for g in groups if split_part(g, split) == part]
