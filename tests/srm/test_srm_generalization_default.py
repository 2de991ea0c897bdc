"""The SRM shipped in srm/default_model/: small, loads offline, scores known pairs sensibly."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sft_core.hub import ModelNotAvailableError
from srm.defaults import DEFAULT_MODEL_DIR, load_default_scorer, load_default_srm


def _load_or_skip():
    try:
        return load_default_srm()
    except ModelNotAvailableError as error:  # the offline minilm-l6 package is not installed
        pytest.skip(f"offline backbone not available: {error}")


def test_default_model_is_small_and_holds_no_encoder_weights():
    files = {name: os.path.getsize(DEFAULT_MODEL_DIR / name) for name in os.listdir(DEFAULT_MODEL_DIR)}
    assert "model.safetensors" in files and "config.json" in files
    assert sum(files.values()) <= 5 * 1024 * 1024
    weights = load_file(os.fspath(DEFAULT_MODEL_DIR / "model.safetensors"))
    assert not [k for k in weights if k.startswith("backbone.")]
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["backbone_weights"] == "offline" and config["backbone_name_or_path"] == "minilm-l6"


def test_default_model_loads_offline_and_prefers_the_sensible_answer(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    model, _ = _load_or_skip()
    assert model.config.dimension_names == ["correctness", "instruction_following", "safety", "style", "relevance"]
    scorer = load_default_scorer(device="cpu")
    prompt = "What is the capital of France?"
    on_topic, off_topic = scorer.score([
        (prompt, "The capital of France is Paris."),
        (prompt, "To reverse a list in Python, call my_list.reverse() or use slicing: my_list[::-1]."),
    ])
    assert on_topic.reward > off_topic.reward
    assert on_topic.dimensions["relevance"] > off_topic.dimensions["relevance"]
    assert abs(sum(on_topic.gates.values()) - 1.0) < 1e-5
