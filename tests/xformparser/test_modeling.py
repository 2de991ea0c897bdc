import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, LayoutLMv3Config, LiltConfig

from xformparser import XFormParserConfig, XFormParserModel, load_documents, soft_label_mix
from xformparser.features import XFormParserCollator, encode_document

WINDOW = 24


def _backbone_config(kind: str, vocab_size: int) -> tuple[str, dict]:
    common = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64)
    if kind == "text-layout":
        return kind, BertConfig(**common).to_dict()
    if kind == "layoutlmv3":
        return kind, LayoutLMv3Config(**common, coordinate_size=4, shape_size=8, visual_embed=False,
                                      input_size=32, max_2d_position_embeddings=1024).to_dict()
    common["hidden_size"] = 48  # LiLT concatenates six hidden_size // 6 layout embeddings
    return kind, LiltConfig(**common, channel_shrink_ratio=4, max_2d_position_embeddings=1024).to_dict()


def _model_and_batch(kind, tokenizer, funsd_folder, **overrides):
    backbone_type, backbone_config = _backbone_config(kind, len(tokenizer))
    config = XFormParserConfig(backbone_type=backbone_type, backbone_config=backbone_config, window_size=WINDOW,
                               window_overlap=6, entity_hidden_size=32, lstm_hidden_size=16, re_hidden_size=16,
                               label_embedding_size=8, **overrides)
    torch.manual_seed(0)
    model = XFormParserModel(config)
    documents = load_documents(funsd_folder)[:2]
    encoded = [encode_document(d, tokenizer, config.labels, config.key_labels, config.value_labels) for d in documents]
    collator = XFormParserCollator(tokenizer, config.window_size, config.window_overlap,
                                   config.image_size if config.use_image_branch else None)
    return model, collator(encoded)


@pytest.mark.parametrize("kind", ["text-layout", "layoutlmv3", "lilt"])
def test_backbone_forward_training_step_and_save_load(kind, tiny_tokenizer, funsd_folder, tmp_path):
    model, batch = _model_and_batch(kind, tiny_tokenizer, funsd_folder, dropout=0.0)
    assert batch["input_ids"].shape[0] > 2  # the documents really were split into several windows
    output = model(**batch)
    num_docs, num_entities = batch["entity_mask"].shape
    assert output.ser_logits.shape == (num_docs, num_entities, 4)
    assert output.re_logits.shape == (num_docs, num_entities, num_entities + 1)
    assert output.bio_logits.shape[:2] == batch["token_entity"].shape
    assert torch.isfinite(output.loss)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = model(**batch).loss
    before.backward()
    encoder_grads = [p.grad for p in model.backbone.encoder.parameters() if p.grad is not None]
    assert encoder_grads and any(g.abs().sum() > 0 for g in encoder_grads)
    optimizer.step()
    optimizer.zero_grad()
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert model(**batch).loss < before

    model.eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path / "model")
    assert isinstance(loaded, XFormParserModel) and loaded.config.backbone_type == kind
    assert AutoConfig.from_pretrained(tmp_path / "model").model_type == "xformparser"
    with torch.no_grad():
        expected, actual = model(**batch), loaded.eval()(**batch)
    for name in ("ser_logits", "re_logits", "bio_logits", "loss"):
        assert torch.allclose(getattr(expected, name), getattr(actual, name), atol=1e-5), name


def test_image_branch_changes_token_states_and_gets_gradients(tiny_tokenizer, funsd_folder, tmp_path):
    from PIL import Image

    for path in (funsd_folder / "annotations").glob("*.json"):
        (funsd_folder / "images").mkdir(exist_ok=True)
        Image.new("L", (500, 400), color=200).save(funsd_folder / "images" / f"{path.stem}.png")
    model, batch = _model_and_batch("text-layout", tiny_tokenizer, funsd_folder, use_image_branch=True, image_size=32)
    assert batch["pixel_values"].shape == (2, 1, 32, 32)
    model.train()
    model(**batch).loss.backward()
    assert model.backbone.image_branch.cnn[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        with_image = model(**batch).ser_logits
        without = model(**{k: v for k, v in batch.items() if k != "pixel_values"}).ser_logits
    assert not torch.allclose(with_image, without)


def test_soft_label_schedule_values():
    assert soft_label_mix(0.0, start_epoch=2, warmup_epochs=2) == 0.0
    assert soft_label_mix(1.99, start_epoch=2, warmup_epochs=2) == 0.0
    assert soft_label_mix(2.0, start_epoch=2, warmup_epochs=2) == 0.0
    assert soft_label_mix(3.0, start_epoch=2, warmup_epochs=2) == pytest.approx(0.5)
    assert soft_label_mix(3.5, start_epoch=2, warmup_epochs=2, final_mix=0.8) == pytest.approx(0.6)
    assert soft_label_mix(4.0, start_epoch=2, warmup_epochs=2) == 1.0
    assert soft_label_mix(9.0, start_epoch=2, warmup_epochs=2, final_mix=0.8) == pytest.approx(0.8)
    assert soft_label_mix(2.0, start_epoch=2, warmup_epochs=0) == 1.0


def test_soft_labels_enter_the_relation_input_only_after_the_start_epoch(tiny_tokenizer, funsd_folder):
    model, batch = _model_and_batch("text-layout", tiny_tokenizer, funsd_folder, dropout=0.0,
                                    soft_label_start_epoch=1.0, soft_label_warmup_epochs=1.0)
    model.train()
    model.backbone.eval()  # no encoder dropout: differences can only come from the label mix
    with torch.no_grad():
        model.soft_label_epoch = 0.5
        early = model(**batch).re_logits
        model.soft_label_epoch = 0.9
        still_gold = model(**batch).re_logits
        model.soft_label_epoch = 2.0
        late = model(**batch).re_logits
    assert torch.equal(early, still_gold)
    assert not torch.allclose(early, late)


def test_objectives_and_label_sources(tiny_tokenizer, funsd_folder):
    model, batch = _model_and_batch("text-layout", tiny_tokenizer, funsd_folder)
    model.eval()
    with torch.no_grad():
        full = model(**batch, label_source="gold")
        ser_only = model(**batch, label_source="gold", objective="ser")
        re_only = model(**batch, label_source="gold", objective="re")
        predicted = model(**{k: v for k, v in batch.items() if k != "entity_labels"})
    config = model.config
    assert ser_only.loss == pytest.approx(float(config.ser_loss_weight * full.ser_loss + config.bio_loss_weight * full.bio_loss), rel=1e-5)
    assert re_only.loss == pytest.approx(float(full.re_loss), rel=1e-5)
    # gold candidates follow the gold labels; predicted ones follow the SER argmax
    gold_keys = (batch["entity_labels"] == config.labels.index("question")) & batch["entity_mask"]
    assert torch.equal(full.head_candidates, gold_keys)
    predicted_keys = (predicted.ser_logits.argmax(-1) == config.labels.index("question")) & batch["entity_mask"]
    assert torch.equal(predicted.head_candidates, predicted_keys)


@pytest.mark.parametrize("flag", ["use_bilstm", "use_label_embedding", "use_geometric_features"])
def test_ablation_switches_build_and_run(flag, tiny_tokenizer, funsd_folder):
    model, batch = _model_and_batch("text-layout", tiny_tokenizer, funsd_folder, **{flag: False})
    output = model(**batch)
    assert torch.isfinite(output.loss)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    module = {"use_bilstm": "entity_context", "use_label_embedding": "label_embedding",
              "use_geometric_features": "geometry_mlp"}[flag]
    if flag == "use_bilstm":
        assert not isinstance(model.entity_context, torch.nn.LSTM)
    else:
        assert module not in names


@pytest.mark.parametrize("frozen_layers", [1, 2])
def test_frozen_layers_are_cached_and_receive_no_gradient(frozen_layers, tiny_tokenizer, funsd_folder):
    from xformparser.backbones import _FROZEN_STATE_CACHE, clear_frozen_state_cache

    backbone_type, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    backbone_config["num_hidden_layers"] = 2
    config = XFormParserConfig(backbone_config=backbone_config, window_size=WINDOW, window_overlap=6,
                               frozen_layers=frozen_layers)
    model = XFormParserModel(config)
    documents = load_documents(funsd_folder)[:2]
    encoded = [encode_document(d, tiny_tokenizer, config.labels, ["question"], ["answer"]) for d in documents]
    batch = XFormParserCollator(tiny_tokenizer, WINDOW, 6)(encoded)
    clear_frozen_state_cache()
    model.train()
    model(**batch).loss.backward()
    assert len(_FROZEN_STATE_CACHE) == batch["input_ids"].shape[0]
    encoder = model.backbone.encoder
    assert all(p.grad is None for p in encoder.embeddings.parameters())
    assert all(p.grad is None for p in encoder.encoder.layer[frozen_layers - 1].parameters())
    assert model.backbone.adapter.layout.x_embedding.weight.grad.abs().sum() > 0
    if frozen_layers < 2:
        assert encoder.encoder.layer[1].attention.self.query.weight.grad.abs().sum() > 0
    # a second pass is served from the cache and gives the same result in eval mode
    model.eval()
    with torch.no_grad():
        first = model(**batch).ser_logits
        size = len(_FROZEN_STATE_CACHE)
        second = model(**batch).ser_logits
    assert len(_FROZEN_STATE_CACHE) == size and torch.allclose(first, second)
    with pytest.raises(ValueError):
        XFormParserModel(XFormParserConfig(backbone_config=backbone_config, frozen_layers=3))
