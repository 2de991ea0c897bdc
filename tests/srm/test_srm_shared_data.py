"""The shared preference datasets load cleanly and the canonical split keeps prompts on one side."""

import json
import os

import pytest

from srm.data import load_groups, select_split

DATA_ROOT = os.environ.get("SFTKIT_DATA_ROOT") or os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                                 "shared", "datasets")
FILES = ["rm-bench/chat_filtered.json", "rm-bench/code_filtered.json", "rm-bench/safety-refuse_filtered.json",
         "rm-bench/safety-response_filtered.json", "ifbench/data.converted.json"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.isdir(DATA_ROOT),
                                                   reason=f"shared datasets not found at {DATA_ROOT}")]


def test_shared_preference_data_loads_and_splits():
    groups, errors = load_groups([os.path.join(DATA_ROOT, f) for f in FILES], on_error="skip", data_root=DATA_ROOT)
    assert errors == []
    assert {g.source for g in groups} == set(FILES)
    assert sum(g.rmbench for g in groups) == 798 and sum(g.dataset == "ifbench" for g in groups) == 444
    with open(os.path.join(DATA_ROOT, "splits", "preference-split.json"), encoding="utf-8") as handle:
        split = json.load(handle)
    train, test = select_split(groups, split, "train"), select_split(groups, split, "test")
    assert len(train) == 94 + 182 + 227 + 126 + 355 and len(test) == 23 + 46 + 57 + 31 + 89
    assert not {(g.source, g.domain, g.record_id) for g in train} & {(g.source, g.domain, g.record_id) for g in test}
    levels = {g.domain for g in test if g.dataset == "ifbench"}
    assert levels == {"level-1", "level-2", "level-3"}
    assert all(p.dimensions.get("instruction_following") == 1 for g in train if g.dataset == "ifbench" for p in g.pairs)
