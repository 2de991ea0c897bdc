"""benchmarks/epi_quality.py and epi_lm_tasks.py: the causal-LM scoring, calibration, run queue and report merge.

Tiny random models and hand-made run records: no real weights, no training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _load("epi_quality")


@pytest.fixture(scope="module")
def lm_tasks(quality):  # epi_quality puts benchmarks/ on sys.path
    import epi_lm_tasks

    return epi_lm_tasks


def test_answer_log_likelihood_matches_the_models_own_loss(lm_tasks):
    from sft_core.sft_data import CausalLMCollator, tokenize_messages
    from sft_core.testing import tiny_causal_lm

    model, tokenizer = tiny_causal_lm(seed=1)
    encoded = [tokenize_messages(lm_tasks.conversation(f"the movie {i} is", answer), tokenizer, 64)
               for i, answer in enumerate(["positive", "negative one two"])]
    collator = CausalLMCollator(tokenizer.pad_token_id)
    stats = lm_tasks._answer_token_stats(model, collator, encoded, batch_size=2)
    for (log_likelihood, tokens, correct), item in zip(stats, encoded):
        batch = collator([item])
        with torch.no_grad():
            loss = model(**batch).loss  # mean NLL over the answer tokens
        assert tokens == sum(label != -100 for label in item["labels"][1:])
        assert log_likelihood == pytest.approx(-float(loss) * tokens, rel=1e-5)
        assert 0 <= correct <= tokens


def test_calibrated_accuracy_removes_a_shifted_label_prior(lm_tasks, monkeypatch):
    # 4 examples, gold 0,1,0,1; the model prefers option 1 by +5 everywhere but ranks correctly (+1 for gold)
    gold = [0, 1, 0, 1]
    scores = []
    for label in gold:
        scores += [(-10.0 + (1.0 if label == 0 else 0.0), 2, 1), (-5.0 + (1.0 if label == 1 else 0.0), 2, 1)]
    monkeypatch.setattr(lm_tasks, "_answer_token_stats", lambda *args, **kwargs: scores)
    bench = object.__new__(lm_tasks.LanguageModelBench)
    bench.model = torch.nn.Linear(1, 1)
    bench.collate, bench.eval_batch_size = None, 4
    bench.eval_encoded = {"sst2": {"options": 2, "gold": gold, "sequences": [None] * 8}}
    result = bench.evaluate("sst2")
    assert result["acc"] == 0.5 and result["predicted_share"] == [0.0, 1.0]
    assert result["calibrated_acc"] == 1.0 and result["auc"] == 1.0


def test_generative_task_scores_token_accuracy_and_nll(lm_tasks, monkeypatch):
    monkeypatch.setattr(lm_tasks, "_answer_token_stats", lambda *a, **k: [(-2.0, 4, 3), (-6.0, 6, 3)])
    bench = object.__new__(lm_tasks.LanguageModelBench)
    bench.model = torch.nn.Linear(1, 1)
    bench.collate, bench.eval_batch_size = None, 4
    bench.eval_encoded = {"gsm8k": {"sequences": [None, None]}}
    result = bench.evaluate("gsm8k")
    assert result["acc"] == pytest.approx(0.6) and result["nll"] == pytest.approx(0.8)
    assert result["calibrated_acc"] is None and result["auc"] is None


def test_summary_ratio_runs_are_queued_first_sequential_before_mixed(quality):
    args = SimpleNamespace(methods="full,epi", schedules="sequential,mixed", summary_ratios_only=True)
    profile = {"ratios": (0.1, 0.2), "summary_ratio": 0.2, "seeds": (0, 1)}
    queue = quality.run_queue(args, profile)
    assert queue[:4] == [("sequential", "full", None, 0), ("sequential", "epi", 0.2, 0),
                         ("sequential", "full", None, 1), ("sequential", "epi", 0.2, 1)]
    assert all(spec[2] != 0.1 for spec in queue[:8]) and queue[8:] == [
        ("sequential", "epi", 0.1, 0), ("sequential", "epi", 0.1, 1), ("mixed", "epi", 0.1, 0), ("mixed", "epi", 0.1, 1)]
    assert len(queue) == len(set(queue))


def _run(method, seed, forgetting, accuracy):
    final = {t: {"acc": accuracy, "auc": 0.9, "calibrated_acc": 0.85} for t in ("a", "b")}
    return {"method": method, "ratio": None if method == "full" else 0.2, "schedule": "sequential", "seed": seed,
            "final": final, "mean_accuracy": accuracy, "mean_auc": 0.9, "mean_calibrated_accuracy": 0.85,
            "mean_forgetting": forgetting, "mean_forgetting_auc": 0.0, "mean_forgetting_calibrated": 0.0,
            "probe_nll": 1.0, "train_seconds": 1.0}


def _report(quality, runs, not_run, command):
    profile = dict(quality.PROFILES["smoke-lm"], tasks=("a", "b"), report_name="merge_test")
    return {"complete": not not_run, "command": command, "machine": "test", "profile": "smoke-lm",
            "profile_settings": profile, "base": {0: {"probe_nll": 1.0}, 1: {"probe_nll": 1.1}},
            "runs": runs, "not_run": not_run, "trainable_params": 1000, "wall_seconds": 1.0}, profile


def test_merge_from_adds_missing_runs_and_recomputes_the_summary(quality, tmp_path):
    first, profile = _report(quality, [_run("full", 0, 0.2, 0.6), _run("epi", 0, 0.05, 0.8)],
                             [["sequential", "epi", 0.2, 1]], "first")
    quality.write_report(first, profile, tmp_path)
    second, _ = _report(quality, [_run("epi", 1, 0.07, 0.7), _run("epi", 0, 0.9, 0.1)], [], "second")
    (tmp_path / "second.json").write_text(json.dumps(second))
    assert quality.merge_reports(tmp_path, profile, [tmp_path / "second.json"]) == 0
    merged = json.loads((tmp_path / "merge_test.json").read_text())
    assert len(merged["runs"]) == 3  # the duplicate (epi, seed 0) is not taken twice
    assert merged["not_run"] == [] and merged["earlier_commands"] == ["first"] and merged["command"] == "second"
    assert merged["summary"]["forgetting"]["epi"] == pytest.approx(0.06)
    assert merged["summary"]["seeds"] == 2
    assert "then `second`" in (tmp_path / "merge_test.md").read_text()
