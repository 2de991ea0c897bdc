"""`sft-core train` and `sft-core drift-plot` end to end on a tiny causal LM."""

from __future__ import annotations

import json

import pytest
import torch

from sft_core.cli import main

torch.set_num_threads(1)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def data_files(tmp_path):
    sentiment = write_jsonl(tmp_path / "sentiment.jsonl",
                            [{"prompt": f"the movie {i} is good", "completion": "positive"} for i in range(8)])
    chat = write_jsonl(tmp_path / "mixed.jsonl", [
        {"task": "arith", "messages": [{"role": "user", "content": f"{i} plus one"},
                                       {"role": "assistant", "content": str(i + 1)}]} for i in range(8)])
    return sentiment, chat


def train_args(model_dir, files, output, *extra):
    args = ["train", "--model", str(model_dir), "--output", str(output), "--max-steps", "6", "--save-steps", "3",
            "--batch-size", "2", "--lr", "5e-3", "--warmup-steps", "2", "--update-interval", "2",
            "--no-progress", "--logging-steps", "2"]
    for path in files:
        args += ["--data", str(path)]
    return args + list(extra)


def test_train_writes_a_model_directory_epi_state_and_drift_plot(tiny_model_dir, data_files, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    output = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data_files, output)) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout)["global_steps"] == 6  # stdout is the JSON summary alone, logs went to stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "epi_state.safetensors", "epi_state.json",
                 "epi_drift.jsonl", "train_summary.json"):
        assert (output / name).is_file(), name
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["tasks"] == {"arith": 8, "sentiment": 8} and summary["global_steps"] == 6
    assert set(summary["task_steps"]) == {"arith", "sentiment"}
    trained = AutoModelForCausalLM.from_pretrained(output)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, original.model.layers[0].mlp.up_proj.weight)

    assert main(["drift-plot", str(output)]) == 0
    assert (output / "epi_drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --resume continues from checkpoint-6 to step 8 with the EPI state restored
    assert main(train_args(tiny_model_dir, data_files, output, "--resume", "--max-steps", "8")) == 0
    assert json.loads((output / "train_summary.json").read_text())["global_steps"] == 8
    assert json.loads((output / "epi_state.json").read_text())["step_count"] == 8


@pytest.mark.parametrize("line,reason", [
    ('{"prompt": "hi"', "malformed JSON"),
    ('{"prompt": "hi"}', "missing field(s) completion"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('["prompt", "completion"]', "expected a JSON object"),
])
def test_bad_records_give_one_clear_error_with_file_and_line(tiny_model_dir, tmp_path, capsys, line, reason):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "completion": "ok"}\n' + line + "\n")
    assert main(train_args(tiny_model_dir, [bad], tmp_path / "out")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and f"{bad}:2:" in error and reason in error
    assert len(error.splitlines()) == 1


def test_drift_plot_without_a_log_fails_cleanly(tmp_path, capsys):
    assert main(["drift-plot", str(tmp_path)]) == 2
    assert "no drift log" in capsys.readouterr().err


def test_tables_and_json_lists_through_a_column_mapping(tiny_model_dir, tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f'the "movie" {i} is good\t{i % 2}\n' for i in range(6)))
    (tmp_path / "news.tsv").write_text("".join(f"world news {i}\tWorld\n" for i in range(6)))  # no header row
    (tmp_path / "code.json").write_text(json.dumps(
        [{"instruction": f"sum {i}", "input": "one two", "output": "3"} for i in range(4)]))
    output = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dir), "--output", str(output), "--tuner", "full",
            "--data", str(tmp_path / "sst2" / "train.tsv"), "--text-field", "sentence", "--label-field", "label",
            "--label-map", "0=negative,1=positive", "--max-records", "4", "--max-steps", "2", "--batch-size", "2",
            "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((output / "train_summary.json").read_text())
    assert summary["tasks"] == {"sst2": 4} and summary["tuner"] == "full"
    # three layouts in one run: per-task mapping flags (TASK:VALUE) for the files given as TASK=FILE
    run2 = tmp_path / "run2"
    assert main(["train", "--model", str(tiny_model_dir), "--output", str(run2), "--tuner", "full",
                 "--data", f"topics={tmp_path / 'news.tsv'}", "--columns", "topics:text,label",
                 "--text-field", "topics:text", "--label-field", "topics:label",
                 "--data", f"code={tmp_path / 'code.json'}", "--prompt-template", "code:{instruction}\\n{input}",
                 "--label-field", "code:output",
                 "--data", f"sst2={tmp_path / 'sst2' / 'train.tsv'}", "--prompt-template", "sst2:Review: {sentence}",
                 "--label-field", "label", "--max-steps", "3", "--batch-size", "2", "--no-progress"]) == 0
    summary = json.loads((run2 / "train_summary.json").read_text())
    assert summary["tasks"] == {"topics": 6, "code": 4, "sst2": 6}
    from sft_core.sft_data import ColumnMapping, read_sft_file

    code = read_sft_file(tmp_path / "code.json", ColumnMapping(label_field="output",
                                                             prompt_template="{instruction}\\n{input}"))
    assert code[0]["messages"] == [{"role": "user", "content": "sum 0\none two"},
                                   {"role": "assistant", "content": "3"}]
    assert code[0]["task"] == "code" and code[0]["source"] == f"{tmp_path / 'code.json'}:1"
    news = read_sft_file(f"topics={tmp_path / 'news.tsv'}", ColumnMapping(text_field="text", label_field="label",
                                                                        columns=("text", "label")))
    assert {r["task"] for r in news} == {"topics"} and news[0]["messages"][1]["content"] == "World"
    assert news[0]["source"].endswith("news.tsv:1")


def test_epi_config_flags_are_generated_from_the_dataclass():
    import dataclasses

    from sft_core.cli import build_parser
    from sft_core.epi import EPIConfig

    parser = build_parser()
    args = parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--output", "o"])
    for field in dataclasses.fields(EPIConfig):
        if field.name != "method":
            assert getattr(args, field.name) == field.default, field.name  # EPIConfig's own default, every field
    assert args.tuner == "epi" and args.save_total_limit == 2 and args.resume == "never"
    legacy = parser.parse_args(["train", "--model", "m", "--data", "d.jsonl", "--output", "o", "--method", "static"])
    assert legacy.tuner == "static"


def readme_train_commands() -> list[list[str]]:
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0])[1:] for line in joined.splitlines() if line.startswith("sft-core train ")]


def test_readme_train_examples_parse_and_their_data_reads():
    """The README's `sft-core train` commands are valid for this CLI and read their data as written
    (the demo files always; the shared tables when ../shared/datasets is present)."""
    import os
    from pathlib import Path

    from sft_core.cli import build_parser
    from sft_core.sft_data import read_sft_file
    from sft_core.train_command import column_mapping_for

    root = Path(__file__).resolve().parents[2]
    commands = readme_train_commands()
    assert len(commands) >= 2
    checked_demo = False
    for argv in commands:
        args = build_parser().parse_args(argv)
        tasks = set()
        for spec in args.data:
            path = spec.split("=", 1)[-1]
            if path.startswith("../shared/") and not (root / path).exists():
                continue  # shared data absent on this machine
            cwd = os.getcwd()
            os.chdir(root)
            try:
                records = read_sft_file(spec, column_mapping_for(spec, args), limit=args.max_records)
            finally:
                os.chdir(cwd)
            assert records and all(r["messages"][-1]["role"] == "assistant" for r in records)
            tasks |= {r["task"] for r in records}
        if any("data/demo/sft" in spec for spec in args.data):
            assert tasks == {"capitals", "arithmetic"}
            checked_demo = True
    assert checked_demo
