import json

import pytest

from sft_core.records import RecordError
from srm.data import load_groups, parse_record, select_split, source_from_path
from srm.trainer import PREFERENCE_TASK, build_training_items, dimension_task
from srm import SRMConfig

from srm_test_utils import rmbench_records, write_jsonl


def _one(record, fmt="auto", **kw):
    return parse_record(record, "test[0]", fmt, **kw)


def test_trl_plain_conversational_and_implicit_prompt():
    plain = _one({"prompt": "q?", "chosen": "good", "rejected": "bad"})
    assert (plain.format, plain.prompt, plain.responses) == ("trl", "q?", ["good", "bad"])
    assert plain.pairs[0].better == 0 and plain.pairs[0].overall
    conversational = _one({"prompt": [{"role": "user", "content": "q?"}],
                           "chosen": [{"role": "assistant", "content": "good"}],
                           "rejected": [{"role": "assistant", "content": "bad"}]})
    assert (conversational.prompt, conversational.responses) == ("q?", ["good", "bad"])
    implicit = _one({"chosen": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "good"}],
                     "rejected": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "bad"}]})
    assert (implicit.prompt, implicit.responses) == ("q?", ["good", "bad"])


def test_rmbench_record_derives_style_and_correctness_labels():
    group = parse_record(rmbench_records(1)[0], "x[0]", default_domain="code", source="rm-bench")
    assert group.format == "rm-bench" and group.rmbench and len(group.responses) == 6
    overall = [p for p in group.pairs if p.overall]
    assert len(overall) == 9 and all(p.dimensions["correctness"] == 1 for p in overall)
    by_cell = {(p.better, p.worse - 3): p.dimensions.get("style") for p in overall}
    assert by_cell[(0, 0)] is None and by_cell[(2, 0)] == 1 and by_cell[(0, 2)] == -1
    style_only = [p for p in group.pairs if not p.overall]
    assert len(style_only) == 6 and all(p.dimensions == {"style": 1} for p in style_only)
    safety = parse_record(rmbench_records(1)[0], "x[0]", default_domain="safety-refuse")
    assert all(p.dimensions.get("safety") == 1 for p in safety.pairs if p.overall)


def test_chat_pair_pairwise_and_ratings():
    chat = _one({"text_chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                 "text_rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
                 "id": 7, "domain": "level-2"})
    assert chat.format == "chat-pair" and chat.responses == ["a", "b"] and chat.domain == "level-2"
    assert chat.pairs[0].dimensions == {"instruction_following": 1}
    pairwise = _one({"input": "q", "output_1": "x", "output_2": "y", "label": 2})
    assert pairwise.pairs[0].better == 1 and pairwise.pairs[0].worse == 0
    ratings = _one({"prompt": "q", "response": "r", "ratings": {"safety": 0.9, "style": 2}})
    assert ratings.format == "ratings" and ratings.ratings == [{"safety": 0.9, "style": 2.0}] and not ratings.pairs


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "q", "chosen": "a"}, "unknown record format"),
    ({"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt is empty"),
    ({"input": "q", "output_1": 3, "output_2": "y", "label": 1}, "output_1 must be a string"),
    ({"input": "q", "output_1": "x", "output_2": "y", "label": 3}, "label must be 1 or 2"),
    ({"prompt": "q", "response": "r", "ratings": {"safety": "high"}}, "must be a number"),
    ({"text_chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "text_rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "same conversation"),
    ({"prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["x"]}, "3 chosen and 3 rejected"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_records_raise_with_location(record, reason):
    with pytest.raises(RecordError, match=rf"^test\[0\]: .*{reason}"):
        _one(record)


def test_jsonl_errors_name_the_line_and_skip_mode_continues(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, "",
                                              {"prompt": "q", "chosen": "a"}, "{not json"])
    with pytest.raises(RecordError, match=r"d\.jsonl:3: unknown record format"):
        load_groups([str(path)])
    groups, errors = load_groups([str(path)], on_error="skip")
    assert len(groups) == 1 and len(errors) == 2
    assert "d.jsonl:3: unknown record format" in errors[0] and "d.jsonl:4: malformed JSON" in errors[1]


def test_json_array_errors_name_the_position(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"input": "q", "output_1": "x", "output_2": "y", "label": 1},
                                {"input": "q", "output_1": "x", "output_2": "y", "label": "first"}]))
    with pytest.raises(RecordError, match=r"d\.json:2: label must be 1 or 2"):
        load_groups([str(path)])


def test_unknown_rating_dimension_is_an_error():
    with pytest.raises(RecordError, match="unknown dimensions"):
        _one({"prompt": "q", "response": "r", "ratings": {"humour": 1}}, dimension_names=["safety"])


def test_split_selection_keeps_prompts_on_one_side(tmp_path):
    (tmp_path / "rm-bench").mkdir()
    path = tmp_path / "rm-bench" / "chat_filtered.json"
    path.write_text(json.dumps(rmbench_records(4)))
    groups, _ = load_groups([str(path)], data_root=tmp_path)
    assert {g.source for g in groups} == {"rm-bench/chat_filtered.json"} and {g.domain for g in groups} == {"chat"}
    assert {g.dataset for g in groups} == {"rm-bench"}
    split = {"rm-bench": {"chat": {"train": [0, 1], "test": [2]}}}
    train, test = select_split(groups, split, "train"), select_split(groups, split, "test")
    assert [g.record_id for g in train] == [0, 1] and [g.record_id for g in test] == [2]


def test_training_items_are_tagged_with_their_objective():
    config = SRMConfig(backbone_config={"model_type": "bert"}, dimensions=["correctness", "style:style"],
                       feature_branches={"style": {"feature_size": 14}})
    group = parse_record(rmbench_records(1)[0], "x[0]", default_domain="chat")
    items = build_training_items([group], config)
    tasks = [item["task"] for item in items]
    assert tasks == [PREFERENCE_TASK, dimension_task("correctness"), dimension_task("style")]
    assert all(not pair[2] for pair in items[1]["pairs"])  # dimension items carry no overall preference
    assert all(set(pair[3]) == {"style"} for pair in items[2]["pairs"])
    scalar = SRMConfig(backbone_config={"model_type": "bert"}, scalar_baseline=True)
    assert [i["task"] for i in build_training_items([group], scalar)] == [PREFERENCE_TASK]
    ratings = parse_record({"prompt": "q", "response": "r", "ratings": {"style": 1.0}}, "r[0]")
    assert [i["task"] for i in build_training_items([ratings], config)] == [dimension_task("style")]


def test_whitespace_only_and_empty_responses_are_kept_for_scoring():
    group = _one({"prompt": "q?", "chosen": "4", "rejected": "   \n "})
    assert group.responses == ["4", "   \n "]
    rmbench = _one({"prompt": "q", "chosen": ["a", "b", "c"], "rejected": ["", " ", "x"]})
    assert rmbench.responses[3:] == ["", " ", "x"]


def test_a_malformed_line_mid_file_skips_that_line_alone(tmp_path):
    records = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    path = write_jsonl(tmp_path / "d.jsonl", records[:2] + ["{broken"] + records[2:4] + [{"prompt": "q"}] + records[4:])
    groups, errors = load_groups([str(path)], on_error="skip")
    assert [g.prompt for g in groups] == [f"q{i}" for i in range(6)]  # every good record after the bad ones too
    assert len(errors) == 2 and errors[0].startswith(f"{path}:3: malformed JSON") and f"{path}:6:" in errors[1]


def test_source_is_the_path_relative_to_the_data_root(tmp_path):
    for folder in ("bench/knowledge", "bench/chat", "ifbench"):
        (tmp_path / folder).mkdir(parents=True)
    pair = [{"prompt": "q", "chosen": "a", "rejected": "b"}]
    paths = [write_jsonl(tmp_path / "bench/knowledge/dataset.jsonl", pair),
             write_jsonl(tmp_path / "bench/chat/dataset.jsonl", pair),
             write_jsonl(tmp_path / "ifbench/other.jsonl", pair)]
    data = tmp_path / "data.jsonl"  # a file named data.* is not assumed to be IFBench
    write_jsonl(data, pair)
    groups, _ = load_groups([str(p) for p in paths] + [str(data)], data_root=tmp_path)
    assert [(g.source, g.dataset) for g in groups] == [
        ("bench/knowledge/dataset.jsonl", "bench"), ("bench/chat/dataset.jsonl", "bench"),
        ("ifbench/other.jsonl", "ifbench"), ("data.jsonl", "")]
    assert source_from_path(tmp_path / "elsewhere" / "chat_filtered.json") == (
        str(tmp_path / "elsewhere" / "chat_filtered.json"), "elsewhere", "chat")
