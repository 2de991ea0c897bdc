"""Delta model directories (only what differs from the backbone) and the shipped default parser."""

import json
import os
from pathlib import Path

import pytest
import torch

from xformparser import XFormParserModel, load_documents
from xformparser.defaults import (DEFAULT_MODEL_DIR, DELTA_WEIGHTS_NAME, MANIFEST_NAME, ModelDirectoryError,
                                  export_backbone_delta, load_model_and_tokenizer, load_parser)
from xformparser.features import XFormParserCollator, encode_document

LABELS = ["answer", "header", "other", "question"]
DATA_ROOT = Path(os.environ.get("SFTKIT_DATA_ROOT", Path(__file__).resolve().parents[2].parent / "shared/datasets"))


def _fine_tuned(tiny_encoder_dir, **options):
    torch.manual_seed(0)
    model = XFormParserModel.from_backbone(tiny_encoder_dir, labels=LABELS, window_size=24, window_overlap=6,
                                           entity_hidden_size=32, lstm_hidden_size=16, re_hidden_size=16,
                                           label_embedding_size=8, **options)
    with torch.no_grad():  # stand-in for fine-tuning: every trainable weight moves
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.eval()


def _outputs(model, tokenizer, folder):
    documents = load_documents(folder)[:2]
    encoded = [encode_document(d, tokenizer, LABELS, ["question"], ["answer"]) for d in documents]
    batch = XFormParserCollator(tokenizer, 24, 6)(encoded)
    with torch.no_grad():
        return model(**batch)


def test_delta_export_round_trips_and_stores_no_frozen_weight(tiny_encoder_dir, funsd_folder, tmp_path):
    from safetensors import safe_open

    model = _fine_tuned(tiny_encoder_dir)
    manifest = export_backbone_delta(model, tmp_path / "delta", rank=0)
    with safe_open(str(tmp_path / "delta" / DELTA_WEIGHTS_NAME), framework="pt") as handle:
        stored = list(handle.keys())
    assert not any("word_embeddings" in name for name in stored)  # frozen: the backbone supplies it
    assert any(name.startswith("delta.backbone.adapter.encoder.encoder.layer.0") for name in stored)
    assert manifest["backbone_reference"] == tiny_encoder_dir and manifest["low_rank"] == 0
    loaded, tokenizer = load_model_and_tokenizer(tmp_path / "delta")
    expected, actual = _outputs(model, tokenizer, funsd_folder), _outputs(loaded, tokenizer, funsd_folder)
    for name in ("ser_logits", "bio_logits"):  # fp16 storage: close, not bit-equal
        assert torch.allclose(getattr(expected, name), getattr(actual, name), atol=2e-2), name
    assert torch.equal(expected.ser_logits.argmax(-1), actual.ser_logits.argmax(-1))


def test_low_rank_export_respects_the_size_limit_and_reports_its_error(tiny_encoder_dir, tmp_path):
    model = _fine_tuned(tiny_encoder_dir)
    full = export_backbone_delta(model, tmp_path / "full", rank=0)
    limit = full["weights_bytes"] - 1000
    small = export_backbone_delta(model, tmp_path / "small", rank=64, max_bytes=limit)
    assert small["weights_bytes"] <= limit < full["weights_bytes"]
    assert 1 <= small["low_rank"] < 64 and 0 < small["low_rank_relative_error"]["max"] < 1
    assert (tmp_path / "small" / DELTA_WEIGHTS_NAME).stat().st_size <= limit + 20_000  # + safetensors header
    load_model_and_tokenizer(tmp_path / "small")  # loads (factors applied)
    with pytest.raises(ValueError, match="MB even at rank 1"):
        export_backbone_delta(model, tmp_path / "never", rank=4, max_bytes=1000)
    assert not (tmp_path / "never").exists()  # nothing half-written


def test_wrong_or_missing_model_directories_give_one_line_errors(tiny_encoder_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model_and_tokenizer(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirectoryError, match="not an xformparser model directory"):
        load_model_and_tokenizer(tmp_path / "empty")
    model = _fine_tuned(tiny_encoder_dir)
    export_backbone_delta(model, tmp_path / "delta", rank=0)
    manifest = json.loads((tmp_path / "delta" / MANIFEST_NAME).read_text())
    (tmp_path / "delta" / MANIFEST_NAME).write_text(json.dumps({**manifest, "backbone_fingerprint": "0" * 16}))
    with pytest.raises(ModelDirectoryError, match="fingerprint mismatch") as error:
        load_model_and_tokenizer(tmp_path / "delta")
    assert "\n" not in str(error.value)
    (tmp_path / "delta" / MANIFEST_NAME).write_text(json.dumps(manifest))
    (tmp_path / "delta" / DELTA_WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ModelDirectoryError, match="cannot read the model files"):
        load_model_and_tokenizer(tmp_path / "delta")


needs_default = pytest.mark.skipif(not (DEFAULT_MODEL_DIR / MANIFEST_NAME).exists(), reason="no shipped default model")


@needs_default
def test_shipped_default_model_is_small_and_loads_offline(funsd_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file())
    assert size <= 15 * 1024 * 1024
    parser = load_parser()
    manifest = json.loads((DEFAULT_MODEL_DIR / MANIFEST_NAME).read_text())
    assert manifest["backbone_reference"] == "minilm-l6" and manifest["funsd_test"]["ser_micro_f1"] > 0.5
    predictions = parser.predict(load_documents(funsd_folder))
    questions = sum(label == "question" for p in predictions for label in p.entity_labels)
    assert questions >= 5  # "name:", "date:", ... on the synthetic fixture forms are keys
    assert sum(len(p.links) for p in predictions) >= 5


@needs_default
def test_evaluate_without_model_uses_the_shipped_default(funsd_folder, capsys, monkeypatch):
    from xformparser.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["evaluate", "--data", str(funsd_folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 4 and report["ser"]["micro"]["f1"] > 0.5


@needs_default
@pytest.mark.slow
def test_shipped_default_model_scores_above_a_floor_on_funsd_test():
    test_dir = DATA_ROOT / "funsd" / "testing_data"
    if not test_dir.exists():
        pytest.skip(f"{test_dir} not found (FUNSD is not shipped with the repository)")
    torch.set_num_threads(1)
    report = load_parser(batch_size=4).evaluate(load_documents(str(test_dir)), include_rule_baseline=False)
    assert report["ser"]["micro"]["f1"] >= 0.60  # shipped v3: 0.741
    assert report["re_gold_labels"]["f1"] >= 0.85
    assert report["re_end_to_end"]["f1"] >= 0.45  # shipped v3: 0.587
