"""Every user error of `sft-core` is one `error:` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import pytest
import torch

from sft_core.cli import main

torch.set_num_threads(1)


@pytest.fixture()
def good_data(tmp_path):
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"the movie {i}", "completion": "good"}) + "\n" for i in range(4)))
    return path


def incomplete_checkpoint(tmp_path):
    directory = tmp_path / "out" / "checkpoint-3"
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(b"")
    return directory


CASES = {
    "missing data file": (["--data", "{tmp}/nope.jsonl"], "nope.jsonl: no such file"),
    "missing model directory": (["--model", "{tmp}/no/such/model"], "does not exist"),
    "unknown alias": (["--model", "gpt-17"], "unknown model alias 'gpt-17'"),
    "resume latest with no checkpoint": (["--resume", "latest"], "--resume latest:"),
    "resume an incomplete checkpoint": (["--resume", "{tmp}/out/checkpoint-3"], "incomplete checkpoint"),
    "table without a mapping": (["--data", "{tmp}/t.tsv"], "a table needs a column mapping"),
    "template names a missing column": (["--data", "{tmp}/t.tsv", "--prompt-template", "{txt}", "--label-field",
                                         "label"], "names column 'txt'"),
    "label field without a prompt": (["--label-field", "label"], "--label-field needs"),
    "bad EPIConfig value": (["--saliency", "magic"], "--saliency: EPIConfig.saliency='magic'"),
    "bad isolation ratio": (["--isolation-ratio", "2"], "--isolation-ratio:"),
    "unreadable proportions": (["--task-proportions", "good"], "--task-proportions: cannot read 'good'"),
    "proportions of an absent task": (["--task-proportions", "other=1"], "absent from --data: other"),
    "negative save limit": (["--save-total-limit", "-1"], "--save-total-limit -1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_user_errors_are_one_line(case, tiny_model_dir, good_data, tmp_path, capsys):
    extra, expected = CASES[case]
    (tmp_path / "t.tsv").write_text("text\tlabel\nhello\t1\n")
    incomplete_checkpoint(tmp_path)
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    data = [] if "--data" in extra else ["--data", str(good_data)]
    argv = ["train", "--model", str(tiny_model_dir), *data, "--output", str(tmp_path / "out"),
            "--max-steps", "1", "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_resuming_epi_from_a_full_run_checkpoint_is_one_line(tiny_model_dir, good_data, tmp_path, capsys):
    base = ["train", "--model", str(tiny_model_dir), "--data", str(good_data), "--output", str(tmp_path / "out"),
            "--max-steps", "2", "--save-steps", "2", "--batch-size", "2", "--no-progress"]
    assert main(base + ["--tuner", "full"]) == 0
    capsys.readouterr()
    assert main(base + ["--tuner", "epi", "--resume", "latest", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "holds no EPI state" in err and "Traceback" not in err


def test_drift_plot_and_models_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "epi_drift.jsonl").write_text("{broken\n")
    assert main(["drift-plot", str(tmp_path / "epi_drift.jsonl")]) == 2
    assert main(["drift-plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_hub_id_while_offline_is_one_line(good_data, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    argv = ["train", "--model", "someorg/some-model", "--data", str(good_data), "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: --model someorg/some-model: cannot load it") and "offline" in lines[-1]
    assert not any("Traceback" in line for line in lines)
