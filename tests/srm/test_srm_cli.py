"""End to end through `srm train | score | evaluate` on tiny random models."""

import json

import pytest

from srm.cli import main

from srm_test_utils import BAD, GOOD, PROMPTS, rmbench_records, trained_tiny_srm, trl_records, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return trained_tiny_srm(str(tmp_path_factory.mktemp("srm-cli")))


def test_train_writes_a_loadable_model(model_dir):
    from transformers import AutoModel, AutoTokenizer

    import srm

    model = AutoModel.from_pretrained(model_dir)
    assert isinstance(model, srm.SRMModel)
    assert AutoTokenizer.from_pretrained(model_dir) is not None
    settings = model.config.feature_branches
    assert settings["similarity"]["feature_size"] == 33 and settings["style"]["feature_size"] == 14
    assert model.feature_std.min() > 0 and not (model.feature_std == 1).all()  # normalization was fitted


def test_score_cli_singles_pairs_and_bad_lines(model_dir, tmp_path, capsys):
    records = [{"prompt": PROMPTS[0], "response": GOOD[0]},
               {"prompt": PROMPTS[1], "chosen": GOOD[1], "rejected": BAD[1]},
               "{broken json",
               {"prompt": PROMPTS[2], "chosen": ""}]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    output = tmp_path / "out.jsonl"
    code = main(["score", "--model", model_dir, "--input", str(source), "--output", str(output), "--explain"])
    assert code == 1  # bad records -> non-zero exit, but the good ones are scored
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    single = lines[0]
    assert set(single["dimensions"]) == set(single["gates"]) and abs(sum(single["gates"].values()) - 1) < 1e-5
    assert isinstance(single["reward"], float)
    pair = lines[1]
    assert len(pair["responses"]) == 2 and len(pair["comparisons"]) == 1
    comparison = pair["comparisons"][0]
    assert set(comparison["contributions"]) == set(single["dimensions"])
    assert abs(sum(comparison["contributions"].values()) - comparison["margin"]) < 1e-4
    winner_sign = 1 if comparison["margin"] > 0 else -1
    assert all(comparison["contributions"][d] * winner_sign > 0 for d in comparison["decided_by"])
    assert "line 3" in lines[2]["error"] and "invalid JSON" in lines[2]["error"]
    assert "line 4" in lines[3]["error"]
    assert "2 scored, 2 failed" in capsys.readouterr().err


def test_evaluate_cli_reports_rmbench_matrix_and_dimensions(model_dir, tmp_path, capsys):
    rm = tmp_path / "chat_filtered.json"
    rm.write_text(json.dumps(rmbench_records(3)))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", trl_records(4))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", model_dir, "--data", str(rm), str(pairs), "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics == json.loads(capsys.readouterr().out)
    assert metrics["pairs"] == 3 * 9 + 4
    assert set(metrics["rm_bench"]) >= {"easy", "normal", "hard", "average", "by_domain"}
    assert metrics["rm_bench"]["prompts"] == 3
    assert 0 <= metrics["rm_bench"]["hard"] <= 1
    assert metrics["by_domain"]["chat"]["pairs"] == 27
    assert metrics["dimensions"]["correctness"]["pairs"] == 27
    assert metrics["dimensions"]["style"]["pairs"] == 3 * (6 + 6)


def test_evaluate_cli_skips_bad_records_and_exits_non_zero(model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mixed.jsonl", trl_records(2) + [{"input": "q", "output_1": "a"}])
    assert main(["evaluate", "--model", model_dir, "--data", str(data)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["pairs"] == 2
    assert "mixed.jsonl:line 3" in captured.err


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not a saved SRM directory"):
        main(["score", "--model", str(tmp_path / "nope"), "--input", str(tmp_path / "x.jsonl")])


def test_scalar_baseline_trains_and_scores(tmp_path):
    from srm.scoring import SRMScorer

    scorer = SRMScorer.from_pretrained(trained_tiny_srm(str(tmp_path), scalar=True))
    results = scorer.score([(PROMPTS[0], GOOD[0]), (PROMPTS[0], BAD[0])])
    assert results[0].dimensions == {} and results[0].gates == {}
    assert scorer.explain_pair(results[0], results[1])["decided_by"] == []
