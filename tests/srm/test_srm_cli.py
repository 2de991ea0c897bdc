"""End to end through `srm train | score | evaluate` on tiny random models."""

import json
import os
import sys
import types

import pytest

import srm
from srm.cli import main

from srm_test_utils import BAD, GOOD, PROMPTS, rmbench_records, trained_tiny_srm, trl_records, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_tiny_srm(str(tmp_path_factory.mktemp("srm-cli")))


def test_train_writes_a_loadable_model(model_dir):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir)
    assert isinstance(model, srm.SRMModel)
    assert AutoTokenizer.from_pretrained(model_dir) is not None
    settings = model.config.feature_branches
    assert settings["similarity"]["feature_size"] == 33 and settings["style"]["feature_size"] == 14
    assert model.feature_std.min() > 0 and not (model.feature_std == 1).all()  # normalization was fitted


def test_saved_weights_have_the_same_file_mode_as_the_other_files(model_dir):
    modes = {name: os.stat(os.path.join(model_dir, name)).st_mode & 0o777
             for name in ("model.safetensors", "config.json", "tokenizer.json")}
    assert len(set(modes.values())) == 1, modes  # transformers alone writes model.safetensors as 0600
    assert not [name for name in os.listdir(model_dir) if name.startswith(".")]  # no staging folder left behind


def test_score_cli_singles_pairs_and_bad_lines(model_dir, tmp_path, capsys):
    records = [{"prompt": PROMPTS[0], "response": GOOD[0]},
               {"prompt": PROMPTS[1], "chosen": GOOD[1], "rejected": BAD[1]},
               "{broken json",
               {"prompt": PROMPTS[2], "chosen": ""},
               {"prompt": PROMPTS[3], "response": GOOD[3]}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out.jsonl"
    code = main(["score", "--model", model_dir, "--input", str(source), "--output", str(output), "--explain"])
    assert code == 1  # bad records -> non-zero exit, but the good ones are scored
    assert capsys.readouterr().out == ""  # with --output, nothing on stdout
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4]
    single = lines[0]
    assert set(single["dimensions"]) == set(single["gates"]) and abs(sum(single["gates"].values()) - 1) < 1e-5
    assert isinstance(single["reward"], float) and isinstance(lines[4]["reward"], float)  # after the bad lines
    pair = lines[1]
    assert len(pair["responses"]) == 2 and len(pair["comparisons"]) == 1
    comparison = pair["comparisons"][0]
    assert set(comparison["contributions"]) == set(single["dimensions"])
    assert abs(sum(comparison["contributions"].values()) - comparison["margin"]) < 1e-4
    winner_sign = 1 if comparison["margin"] > 0 else -1
    assert all(comparison["contributions"][d] * winner_sign > 0 for d in comparison["decided_by"])
    assert lines[2]["error"].startswith(f"{source}:3: malformed JSON")
    assert lines[3]["error"].startswith(f"{source}:4: unknown record format")


def test_score_writes_jsonl_to_stdout_and_logs_to_stderr(model_dir, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": p, "response": r} for p, r in zip(PROMPTS, GOOD)])
    assert main(["score", "--model", model_dir, "--input", str(source)]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["index"] for line in captured.out.splitlines()] == list(range(len(PROMPTS)))
    assert "6 scored, 0 failed" in captured.err


def test_evaluate_cli_reports_rmbench_matrix_and_dimensions(model_dir, tmp_path, capsys):
    rm = tmp_path / "chat_filtered.json"
    rm.write_text(json.dumps(rmbench_records(3)))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", trl_records(4))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", model_dir, "--data", str(rm), str(pairs), "--output", str(out),
                 "--data-root", str(tmp_path)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 3 * 9 + 4
    assert set(metrics["by_source"]) == {"chat_filtered.json", "pairs.jsonl"}
    assert set(metrics["rm_bench"]) >= {"easy", "normal", "hard", "average", "by_domain"}
    assert metrics["rm_bench"]["prompts"] == 3
    assert 0 <= metrics["rm_bench"]["hard"] <= 1
    assert metrics["by_domain"]["chat"]["pairs"] == 27
    assert metrics["dimensions"]["correctness"]["pairs"] == 27
    assert metrics["dimensions"]["style"]["pairs"] == 3 * (6 + 6)


def test_evaluate_skips_a_malformed_line_mid_file_alone_and_counts_truly(model_dir, tmp_path, capsys):
    records = trl_records(6)
    data = write_jsonl(tmp_path / "mixed.jsonl", records[:2] + ["{broken"] + records[2:4]
                       + [{"input": "q", "output_1": "a"}] + records[4:])
    assert main(["evaluate", "--model", model_dir, "--data", str(data)]) == 1
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert metrics["pairs"] == 6  # every good record, also those after the bad lines
    assert len(metrics["skipped_records"]) == 2
    assert f"{data}:3: malformed JSON" in captured.err and f"{data}:6:" in captured.err
    assert "2 bad records skipped" in captured.err


def test_whitespace_only_and_empty_responses_are_scored(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": PROMPTS[0], "chosen": GOOD[0], "rejected": "  \n "},
                                                  {"prompt": PROMPTS[1], "chosen": GOOD[1], "rejected": ""}])
    assert main(["evaluate", "--model", model_dir, "--data", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 2
    single = write_jsonl(tmp_path / "single.jsonl", [{"prompt": PROMPTS[0], "response": "   "}])
    assert main(["score", "--model", model_dir, "--input", str(single)]) == 0
    reward = json.loads(capsys.readouterr().out)["reward"]
    assert reward == reward  # a number, not NaN


class _ConstantScorer:
    """Gives every response the same reward: every comparison is a tie."""

    dimension_names = []

    def score(self, items):
        from srm.scoring import ScoreResult

        return [ScoreResult(0.25) for _ in items]

    def explain_pair(self, first, second):
        return {"preferred": "tie", "margin": 0.0, "contributions": {}, "decided_by": []}


def test_ties_follow_one_rule_in_score_and_evaluate(tmp_path, capsys, monkeypatch):
    import srm.cli

    monkeypatch.setattr(srm.cli, "_load_scorer", lambda args: _ConstantScorer())
    data = write_jsonl(tmp_path / "pairs.jsonl", trl_records(4))
    assert main(["score", "--model", "unused", "--input", str(data)]) == 0
    comparisons = [json.loads(line)["comparisons"][0] for line in capsys.readouterr().out.splitlines()]
    assert [(c["preferred"], c["correct"]) for c in comparisons] == [("tie", False)] * 4
    assert main(["evaluate", "--model", "unused", "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["accuracy"], metrics["ties"], metrics["pairs"]) == (0.0, 4, 4)  # a tie is wrong in both


def test_score_and_serve_without_model_use_the_default_srm(model_dir, tmp_path, capsys, monkeypatch):
    from transformers import AutoTokenizer

    import srm.serve

    calls = []

    def load_default_srm():
        calls.append(1)
        return srm.SRMModel.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)

    fake_defaults = types.SimpleNamespace(DEFAULT_MODEL_DIR=model_dir, load_default_srm=load_default_srm)
    monkeypatch.setitem(sys.modules, "srm.defaults", fake_defaults)
    monkeypatch.setattr(srm, "defaults", fake_defaults, raising=False)
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": PROMPTS[0], "response": GOOD[0]}])
    assert main(["score", "--input", str(source)]) == 0
    default_reward = json.loads(capsys.readouterr().out)["reward"]
    assert main(["score", "--model", model_dir, "--input", str(source)]) == 0
    assert json.loads(capsys.readouterr().out)["reward"] == pytest.approx(default_reward, abs=1e-6)
    served = []
    monkeypatch.setattr(srm.serve, "run_server", lambda scorer, **kwargs: served.append(scorer))
    assert main(["serve", "--port", "0"]) == 0
    assert len(calls) == 2 and served[0].dimension_names == srm.SRMModel.from_pretrained(model_dir).config.dimension_names


def test_scalar_baseline_trains_and_scores(tmp_path):
    from srm.scoring import SRMScorer

    scorer = SRMScorer.from_pretrained(trained_tiny_srm(str(tmp_path), scalar=True))
    results = scorer.score([(PROMPTS[0], GOOD[0]), (PROMPTS[0], BAD[0])])
    assert results[0].dimensions == {} and results[0].gates == {}
    assert scorer.explain_pair(results[0], results[1])["decided_by"] == []


def test_evaluate_counts_truncated_responses_and_pairs(model_dir, tmp_path, capsys):
    long_answer = " ".join([GOOD[0]] * 40)  # far beyond the tiny model's 64-token window
    data = write_jsonl(tmp_path / "long.jsonl", [{"prompt": PROMPTS[0], "chosen": long_answer, "rejected": BAD[0]},
                                                 {"prompt": PROMPTS[1], "chosen": GOOD[1], "rejected": BAD[1]}])
    assert main(["evaluate", "--model", model_dir, "--data", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["truncated_responses"], metrics["truncated_pairs"], metrics["pairs"]) == (1, 1, 2)


def test_scorer_batches_by_length_and_returns_results_in_input_order(model_dir):
    from srm.scoring import SRMScorer

    scorer = SRMScorer.from_pretrained(model_dir, batch_size=1, device="cpu")
    items = [(PROMPTS[i], " ".join([GOOD[i]] * (1 + 3 * (i % 3)))) for i in range(6)] + [(PROMPTS[0], BAD[0])]
    one_by_one = [r.reward for r in scorer.score(items)]
    scorer.batch_size = 3  # batches now group similar lengths: other batches, same results, same order
    assert [r.reward for r in scorer.score(items)] == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(r, 6) for r in one_by_one)) > 1
    # The gate's prompt pass runs once per distinct prompt of the call; the model's own forward (prompt tokens in
    # the batch) gives the same rewards.
    own_forward = [r.reward for r in scorer._score_batch(items)]
    assert [r.reward for r in scorer.score(items)] == pytest.approx(own_forward, abs=1e-5)


@pytest.mark.slow
def test_score_and_reward_function_use_the_shipped_default_model(tmp_path, capsys, monkeypatch):
    from srm.defaults import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        pytest.skip(f"no shipped default SRM in {DEFAULT_MODEL_DIR}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompt = "What is the capital of France?"
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": prompt, "response": "The capital of France is Paris."}])
    assert main(["score", "--input", str(source)]) == 0
    cli_reward = json.loads(capsys.readouterr().out)["reward"]
    reward = srm.reward_function(device="cpu")
    rewards = reward(prompts=[[{"role": "user", "content": prompt}]],
                     completions=[[{"role": "assistant", "content": "The capital of France is Paris."}]])
    assert rewards == pytest.approx([cli_reward], abs=1e-5)
