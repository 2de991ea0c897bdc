"""sft_core.records: the one record reader (line-numbered errors, skip-or-fail)."""

from __future__ import annotations

import json

import pytest

from sft_core.records import Record, RecordError, read_records, validate_records


def test_jsonl_skip_policy_drops_only_the_bad_line_and_keeps_reading(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n[4]\n')
    report = read_records(path, on_error="skip")
    assert [(r.line, r.data) for r in report.records] == [(1, {"a": 1}), (4, {"a": 3}), (5, [4])]
    assert len(report.errors) == 1 and str(report.errors[0]).startswith(f"{path}:3: malformed JSON")
    assert "\n" not in str(report.errors[0])
    assert report.summary() == "3 records, 1 bad record skipped"


def test_jsonl_raise_policy_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\nnot json\n')
    with pytest.raises(RecordError, match=r"data\.jsonl:2: malformed JSON") as caught:
        read_records(path)
    assert caught.value.line == 2 and caught.value.source == str(path)


@pytest.mark.parametrize("payload", [[{"x": 1}, {"x": 2}], {"data": [{"x": 1}, {"x": 2}], "version": 3}])
def test_json_list_or_object_holding_one_list(tmp_path, payload):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(payload))
    records = read_records(path).records
    assert [(r.line, r.data["x"]) for r in records] == [(1, 1), (2, 2)]


@pytest.mark.parametrize("name, content, reason", [
    ("missing.jsonl", None, "no such file"),
    ("empty.jsonl", "\n\n", "no records"),
    ("only_bad.jsonl", "{oops\n", "no records (1 malformed line(s))"),
    ("two_lists.json", '{"a": [], "b": []}', "exactly one list"),
    ("scalar.json", '"text"', "got str"),
    ("broken.json", '[{"a": 1},', "malformed JSON"),
])
def test_file_level_errors_always_raise(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecordError, match="^" + str(path).replace(".", r"\.")) as caught:
        read_records(path, on_error="skip")
    assert reason in str(caught.value)


def test_directory_and_non_utf8_are_clear_errors(tmp_path):
    with pytest.raises(RecordError, match="is a directory"):
        read_records(tmp_path)
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"a": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(RecordError, match="not UTF-8"):
        read_records(path)


def test_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        read_records(tmp_path / "x.jsonl", on_error="ignore")


def test_validate_records_turns_value_errors_into_located_record_errors():
    records = [Record("f.jsonl", 1, {"n": 1}), Record("f.jsonl", 2, {"n": -1}), Record("f.jsonl", 3, {"n": 3})]

    def check(record):
        if record.data["n"] < 0:
            raise ValueError("'n' must be >= 0")
        return record.data["n"]

    values, errors = validate_records(records, check, on_error="skip")
    assert values == [1, 3] and [str(e) for e in errors] == ["f.jsonl:2: 'n' must be >= 0"]
    with pytest.raises(RecordError, match=r"^f\.jsonl:2: 'n' must be >= 0$"):
        validate_records(records, check)
