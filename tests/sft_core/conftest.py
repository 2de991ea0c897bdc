"""Fixtures shared by the sft_core tests."""

from __future__ import annotations

import pytest

from sft_core.testing import tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random causal LM with its tokenizer, saved once for every CLI test that loads a model dir."""
    directory = tmp_path_factory.mktemp("tiny-lm")
    model, tokenizer = tiny_causal_lm()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
