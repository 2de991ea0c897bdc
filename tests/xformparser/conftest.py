"""Fixtures for xformparser tests: tiny offline encoder dir and synthetic FUNSD-style forms."""

from __future__ import annotations

import pytest
from xformparser_fixtures import write_funsd_folder


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    from sft_core.testing import tiny_encoder

    encoder, tokenizer = tiny_encoder(hidden_size=32, num_hidden_layers=1)
    directory = tmp_path_factory.mktemp("tiny_encoder")
    encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from sft_core.testing import tiny_encoder_tokenizer

    return tiny_encoder_tokenizer()


@pytest.fixture()
def funsd_folder(tmp_path):
    return write_funsd_folder(tmp_path / "funsd", count=4)
