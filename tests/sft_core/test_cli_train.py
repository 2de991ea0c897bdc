"""`sft-core train` and `sft-core drift-plot` end to end on a tiny causal LM."""

from __future__ import annotations

import json

import pytest
import torch

from sft_core.cli import main
from sft_core.testing import tiny_causal_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-lm")
    model, tokenizer = tiny_causal_lm()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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


def test_train_writes_a_model_directory_epi_state_and_drift_plot(tiny_model_dir, data_files, tmp_path):
    from transformers import AutoModelForCausalLM

    output = tmp_path / "run"
    assert main(train_args(tiny_model_dir, data_files, output)) == 0
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
