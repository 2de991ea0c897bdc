"""`diagnose` end to end on a tiny causal LM: report files, the HTML's charts, the CLI, the mitigation plan."""

from __future__ import annotations

import argparse
import base64
import csv
import json
from html.parser import HTMLParser

import pytest
import torch

from sft_core.ilp import CAUSES, DetectionConfig, MitigationConfig, TrainingDynamicsRecorder, build_plan, diagnose
from sft_core.ilp.commands import register
from sft_core.ilp.mitigation import FLAGS_NAME, PLAN_NAME, REVIEW_NAME
from sft_core.sft_data import CausalLMCollator, SFTDataset, read_sft_jsonl
from sft_core.testing import tiny_causal_lm
from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Base + tuned tiny models, one data file with a contradictory duplicate, recorded dynamics."""
    root = tmp_path_factory.mktemp("ilp")
    model, tokenizer = tiny_causal_lm(hidden_size=48)
    base_dir = root / "base"
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    records = [{"prompt": f"{i} plus one", "completion": str(i + 1)} for i in range(6)]
    records += [{"prompt": "the movie is good", "completion": "positive"},
                {"prompt": "The movie is good.", "completion": "negative"},
                {"prompt": "what is the capital of france", "completion": "paris"},
                {"prompt": "what is the capital of dog", "completion": "cat"}]
    data = write_jsonl(root / "train.jsonl", records)
    sft_records = read_sft_jsonl(data)
    run_dir = root / "run"
    recorder = TrainingDynamicsRecorder(sft_records, tokenizer, every_steps=3, output_dir=run_dir)
    args = MultiTaskTrainingArguments(output_dir=str(run_dir), per_device_train_batch_size=4, num_train_epochs=8,
                                      learning_rate=5e-3, report_to=[], save_strategy="no", disable_tqdm=True,
                                      logging_steps=1000, seed=0)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=SFTDataset(sft_records, tokenizer),
                               data_collator=CausalLMCollator(tokenizer.pad_token_id), callbacks=[recorder])
    trainer.train()
    tuned_dir = root / "tuned"
    model.save_pretrained(tuned_dir)
    tokenizer.save_pretrained(tuned_dir)
    report = diagnose([str(tuned_dir)], str(base_dir), [data], out_dir=root / "report", run_dirs=[run_dir],
                      detection=DetectionConfig(num_samples=2), embedder=None, progress=False)
    return {"root": root, "base": base_dir, "tuned": tuned_dir, "data": data, "run": run_dir, "report": report}


def test_report_records_every_sample_with_signals(trained):
    report = trained["report"]
    samples = report["samples"]
    assert len(samples) == 10 and report["summary"]["samples"] == 10
    assert report["summary"]["unlearned"] == sum(s["unlearned"] for s in samples) >= 1
    assert sum(report["summary"]["causes"].values()) == report["summary"]["unlearned"]
    for s in samples:
        assert 0.0 <= s["pass_rate"] <= 1.0 and len(s["sampled"]) == 2
        assert s["unlearned"] == (s["pass_rate"] < 0.5)
        for name in ("final_loss", "base_loss", "pmi", "js_base_tuned", "confidence", "variability",
                     "last_seen_fraction", "loss_drop"):
            assert s["signals"][name] is not None, name
        if s["unlearned"]:
            assert s["cause"] in (*CAUSES, "unexplained") and s["scores"] is not None
        else:
            assert s["cause"] is None
    # the contradictory duplicate is found whatever the model learned
    duplicates = [s for s in samples if s["target"] in ("positive", "negative")]
    assert all(s["signals"]["exact_conflicts"] == 1 for s in duplicates)
    assert all(s["cause"] == "data_inconsistency" for s in duplicates if s["unlearned"])
    # dynamics made it into the report for the timeline
    assert report["dynamics"]["steps"][0] == 0 and len(report["dynamics"]["steps"]) >= 3


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = {}
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images[attrs.get("id")] = attrs.get("src", "")
        if tag == "table":
            self.tables += 1


def test_report_files_and_html_charts(trained):
    out = trained["root"] / "report"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["summary"] == trained["report"]["summary"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 10 and {"cause", "pass_rate", "base_alt_margin", "pmi"} <= set(rows[0])
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert {"cause_distribution", "data_map", "forgetting_timeline"} <= set(parser.images)
    for name, src in parser.images.items():
        assert src.startswith("data:image/png;base64,"), name
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(PNG_MAGIC) and len(png) > 2000, name  # a real rendered chart, not a stub
    assert parser.tables >= 1  # example table(s) per cause


def test_mitigation_plan_contents(trained, tmp_path):
    report = trained["report"]
    prerequisites = write_jsonl(tmp_path / "prereq.jsonl", [{"prompt": "tell me about dog", "completion": "a dog"}])
    # force a known mix of causes onto the real report to check every action
    forced = json.loads(json.dumps(report))
    causes = {0: "under_optimization", 1: "knowledge_gap", 2: "knowledge_conflict"}
    for index, cause in causes.items():
        forced["samples"][index].update(unlearned=True, cause=cause)
    plan = build_plan(forced, [trained["data"]], tmp_path / "plan", MitigationConfig(upsample=3),
                      prerequisites=[prerequisites], base_model="base")
    stage = [json.loads(line) for line in (tmp_path / "plan" / plan["stages"][0]["file"]).read_text().splitlines()]
    contents = [r["messages"][-1]["content"] for r in stage]
    assert contents.count("1") == 3 and contents.count("2") == 3 and contents.count("3") == 3  # upsampled
    assert "a dog" in contents  # prerequisite data added
    # conflicting duplicates: both kept, as different tasks so they never share a batch
    variants = {r["task"] for r in stage if r["messages"][-1]["content"] in ("positive", "negative")}
    assert len(variants) == 2
    review = [json.loads(line) for line in (tmp_path / "plan" / REVIEW_NAME).read_text().splitlines()]
    assert len(review) == 1 and {m["target"] for m in review[0]["members"]} == {"positive", "negative"}
    flags = [json.loads(line) for line in (tmp_path / "plan" / FLAGS_NAME).read_text().splitlines()]
    assert {f["cause"] for f in flags} == {"knowledge_gap", "knowledge_conflict"}
    assert json.loads((tmp_path / "plan" / PLAN_NAME).read_text())["commands"][0].startswith("sft-core train --model base")
    # drop the minority target on request: exactly one of the pair survives
    plan = build_plan(forced, [trained["data"]], tmp_path / "plan2", MitigationConfig(drop_minority=True))
    stage = (tmp_path / "plan2" / plan["stages"][0]["file"]).read_text()
    assert ('"positive"' in stage) != ('"negative"' in stage)
    assert plan["actions"]["dropped_minority_target"] == 1


def test_replay_against_left_side_forgetting(trained, tmp_path):
    forced = json.loads(json.dumps(trained["report"]))
    forced["dynamics"]["stages"] = [{"name": "one", "start_step": 0, "end_step": 5},
                                    {"name": "two", "start_step": 5, "end_step": 10}]
    for s in forced["samples"]:
        s["signals"]["stage"] = 0 if s["index"] < 4 else 1
    forced["samples"][0].update(unlearned=True, cause="left_forgetting")
    plan = build_plan(forced, [trained["data"]], tmp_path / "plan", MitigationConfig(replay_fraction=1.0))
    assert [s["name"] for s in plan["stages"]] == ["one", "two"]
    last = [json.loads(line) for line in (tmp_path / "plan" / plan["stages"][1]["file"]).read_text().splitlines()]
    replayed = [r["messages"][-1]["content"] for r in last if r.get("ilp_replay")]
    assert sorted(replayed) == ["1", "2", "3", "4"]  # the forgotten sample + all other earlier-stage samples


def _cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_diagnose_compare_and_mitigate(trained, tmp_path, capsys):
    out = tmp_path / "cli_report"
    code = _cli(["diagnose", "--model", str(trained["tuned"]), "--base", str(trained["base"]), "--data",
                 str(trained["data"]), "--run", str(trained["run"]), "--out", str(out), "--num-samples", "1",
                 "--embedder", "none", "--before", str(trained["root"] / "report"), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 10 and "comparison" in summary
    report = json.loads((out / "report.json").read_text())
    assert report["comparison"]["unlearned_before"] == trained["report"]["summary"]["unlearned"]
    code = _cli(["mitigate", "--report", str(out), "--data", str(trained["data"]), "--out", str(tmp_path / "plan")])
    assert code == 0 and (tmp_path / "plan" / PLAN_NAME).is_file()


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    code = _cli(["diagnose", "--model", str(trained["tuned"]), "--base", str(trained["base"]), "--data",
                 str(trained["data"]), "--run", str(tmp_path), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --run") and "\n" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    code = _cli(["mitigate", "--report", str(trained["root"] / "report"), "--data", str(bad), "--out",
                 str(tmp_path / "p")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bad.jsonl:1" in err and "\n" not in err


def test_sft_core_train_records_dynamics_and_diagnose_reads_them(trained, tmp_path, capsys):
    from sft_core.cli import main

    run = tmp_path / "run"
    code = main(["train", "--model", str(trained["base"]), "--data", str(trained["data"]), "--output", str(run),
                 "--tuner", "full", "--epochs", "2", "--batch-size", "4", "--lr", "5e-3", "--record-dynamics", "2",
                 "--no-progress"])
    assert code == 0 and (run / "ilp_dynamics.npz").is_file()
    capsys.readouterr()
    code = main(["diagnose", "--model", str(run), "--base", str(trained["base"]), "--data", str(trained["data"]),
                 "--run", str(run), "--out", str(tmp_path / "report"), "--num-samples", "1", "--embedder", "none",
                 "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["dynamics"]["steps"][0] == 0 and report["dynamics"]["steps"][-1] == 6  # 10 samples / 4 x 2 epochs
    assert all(s["signals"]["times_seen"] >= 2 for s in report["samples"])


def test_contrastive_pmi_swaps_in_the_most_similar_inputs(trained):
    import numpy as np

    from sft_core.hub import load_causal_lm, load_tokenizer
    from sft_core.ilp.diagnose import _contrastive_pmi
    from sft_core.ilp.items import read_items
    from sft_core.ilp.probes import score_completions

    items = read_items([trained["data"]])
    model, tokenizer = load_causal_lm(str(trained["base"])), load_tokenizer(str(trained["base"]))
    embeddings = np.eye(len(items))
    embeddings[1] += 0.5 * embeddings[0]  # sample 0's nearest other input is sample 1
    unlearned = np.zeros(len(items), dtype=bool)
    unlearned[0] = True
    own = -score_completions(model, tokenizer, [i.prompt_messages for i in items], [i.target for i in items],
                             content_only=True)["loss"]
    contrast = _contrastive_pmi(model, tokenizer, items, embeddings, unlearned, own, 16, 512, False, neighbours=1)
    assert np.isnan(contrast[1:]).all()
    swapped = -score_completions(model, tokenizer, [items[1].prompt_messages], [items[0].target],
                                 content_only=True)["loss"][0]
    assert contrast[0] == pytest.approx(own[0] - swapped, abs=1e-5)
