"""User errors give one `error: ...` line on stderr and exit code 2, never a traceback (issue 8);
`srm train` reproducibility and `--resume` (issue 13, issue 8)."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from sft_core.testing import tiny_encoder
from srm.cli import main

from srm_test_utils import rmbench_records, trl_records, write_jsonl


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-encoder")
    model, tokenizer = tiny_encoder()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return str(write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", trl_records(6) + rmbench_records(2)))


def _train_args(encoder_dir, data, output, *extra):
    return ["train", "--backbone", encoder_dir, "--data", str(data), "--output", str(output),
            "--dimensions", "correctness,style:style", "--max-length", "48", "--max-prompt-length", "16",
            "--batch-size", "4", *extra]


def _assert_one_error_line(capsys, *fragments):
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_score_missing_and_empty_input_and_bad_model_are_one_line_errors(encoder_dir, tmp_path, capsys):
    assert main(["score", "--model", encoder_dir, "--input", str(tmp_path / "missing.jsonl")]) == 2
    _assert_one_error_line(capsys, "missing.jsonl", "no such file")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["score", "--model", encoder_dir, "--input", str(empty)]) == 2  # was "0 scored, 0 failed", exit 0
    _assert_one_error_line(capsys, "empty.jsonl", "no records")
    items = write_jsonl(tmp_path / "items.jsonl", [{"prompt": "q", "response": "a"}])
    assert main(["score", "--model", str(tmp_path / "nope"), "--input", str(items)]) == 2
    _assert_one_error_line(capsys, "--model", "nope", "not a saved SRM directory")
    assert main(["evaluate", "--model", encoder_dir, "--data", str(empty)]) == 2
    _assert_one_error_line(capsys, "empty.jsonl", "no records")


@pytest.mark.parametrize("backbone", ["data", "empty-dir", "no-such-alias"])
def test_train_with_a_backbone_that_is_not_a_model(backbone, data_file, tmp_path, capsys):
    value = {"data": data_file, "empty-dir": str(tmp_path), "no-such-alias": "no-such-alias"}[backbone]
    assert main(_train_args(value, data_file, tmp_path / "out")) == 2
    _assert_one_error_line(capsys, value)


def test_train_with_empty_data_and_resume_latest_without_checkpoint(encoder_dir, data_file, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(_train_args(encoder_dir, empty, tmp_path / "out")) == 2
    _assert_one_error_line(capsys, "empty.jsonl", "no records")
    assert main(_train_args(encoder_dir, data_file, tmp_path / "out", "--resume", "latest")) == 2
    _assert_one_error_line(capsys, "--resume latest", "no complete checkpoint")
    assert main(_train_args(encoder_dir, data_file, tmp_path / "out", "--resume", str(tmp_path / "gone"))) == 2
    _assert_one_error_line(capsys, "--resume", "gone")
    bad_dimensions = _train_args(encoder_dir, data_file, tmp_path / "out")
    bad_dimensions[bad_dimensions.index("--dimensions") + 1] = "correctness:no-such-branch"
    assert main(bad_dimensions) == 2
    _assert_one_error_line(capsys, "--dimensions", "no-such-branch")
    assert main(_train_args(encoder_dir, data_file, tmp_path / "out", "--split", str(tmp_path / "split.json"))) == 2
    _assert_one_error_line(capsys, "--split", "split.json")


def test_the_installed_entry_point_prints_no_traceback(tmp_path):
    """The real process, not only main(): `python -m srm.cli score` on a missing file."""
    result = subprocess.run([sys.executable, "-m", "srm.cli", "score", "--input", str(tmp_path / "x.jsonl")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'x.jsonl'}: no such file"]


def test_train_seed_makes_runs_reproducible_and_resume_continues(encoder_dir, data_file, tmp_path, capsys):
    outputs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert main(_train_args(encoder_dir, data_file, tmp_path / name, "--seed", seed, "--epochs", "1")) == 0
        summary = json.loads(capsys.readouterr().out)  # stdout holds the JSON summary and nothing else
        assert summary["seed"] == int(seed) and summary["global_step"] > 0 and summary["resumed_from"] is None
        outputs[name] = load_file(os.path.join(tmp_path, name, "model.safetensors"))
    a, b, c = outputs["a"], outputs["b"], outputs["c"]
    assert all((a[key] == b[key]).all() for key in a)  # same seed: the same model, bit for bit
    assert any(not (a[key] == c[key]).all() for key in a if key.startswith("gate."))  # another seed: another init

    assert main(_train_args(encoder_dir, data_file, tmp_path / "a", "--seed", "3", "--epochs", "2",
                            "--resume", "latest")) == 0
    captured = capsys.readouterr()
    resumed = json.loads(captured.out)
    assert os.path.basename(resumed["resumed_from"]).startswith("checkpoint-")
    assert resumed["global_step"] == 2 * summary["global_step"]
    assert "resuming from" in captured.err
