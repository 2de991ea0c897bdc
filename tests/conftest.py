"""Shared test configuration: fully offline, shared datasets found by relative path, real models once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def shared_datasets_root() -> Path:
    return Path(os.environ.get("SFTKIT_DATA_ROOT") or PROJECT_ROOT.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def datasets_root() -> Path:
    """../shared/datasets (or $SFTKIT_DATA_ROOT); tests that need it skip with a reason when absent."""
    root = shared_datasets_root()
    if not root.is_dir():
        pytest.skip(f"shared datasets not found at {root} (set SFTKIT_DATA_ROOT)")
    return root


@pytest.fixture(scope="session")
def minilm():
    """Real all-MiniLM-L6-v2 (model, tokenizer), loaded once per session."""
    from sft_core.hub import load_encoder, load_tokenizer

    return load_encoder("minilm-l6").eval(), load_tokenizer("minilm-l6")


@pytest.fixture(scope="session")
def smollm2():
    """Real SmolLM2-135M-Instruct (model, tokenizer), loaded once per session."""
    from sft_core.hub import load_causal_lm, load_tokenizer

    return load_causal_lm("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
