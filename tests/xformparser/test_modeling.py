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


def _cached_windows(model) -> int:
    return sum(1 for key in model.backbone.adapter._frozen_cache if key != "version")


@pytest.mark.parametrize("frozen_layers", [1, 2])
def test_frozen_layers_are_cached_and_receive_no_gradient(frozen_layers, tiny_tokenizer, funsd_folder):
    backbone_type, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    backbone_config["num_hidden_layers"] = 2
    config = XFormParserConfig(backbone_config=backbone_config, window_size=WINDOW, window_overlap=6,
                               frozen_layers=frozen_layers)
    model = XFormParserModel(config)
    documents = load_documents(funsd_folder)[:2]
    encoded = [encode_document(d, tiny_tokenizer, config.labels, ["question"], ["answer"]) for d in documents]
    batch = XFormParserCollator(tiny_tokenizer, WINDOW, 6)(encoded)
    model.train()
    model(**batch).loss.backward()
    assert _cached_windows(model) == batch["input_ids"].shape[0]
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
        size = _cached_windows(model)
        second = model(**batch).ser_logits
    assert _cached_windows(model) == size and torch.allclose(first, second)
    with pytest.raises(ValueError):
        XFormParserModel(XFormParserConfig(backbone_config=backbone_config, frozen_layers=3))


def test_frozen_cache_is_owned_by_the_model_and_follows_weight_changes(tiny_tokenizer, funsd_folder):
    """The cache was process-wide (and keyed by a sum over every frozen weight, computed on every
    forward pass): now each model owns one, and an in-place weight change invalidates it."""
    _, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    config = XFormParserConfig(backbone_config=backbone_config, window_size=WINDOW, window_overlap=6,
                               frozen_layers=1, dropout=0.0)
    torch.manual_seed(0)
    first, second = XFormParserModel(config).eval(), XFormParserModel(config).eval()
    second.load_state_dict(first.state_dict())
    documents = load_documents(funsd_folder)[:2]
    encoded = [encode_document(d, tiny_tokenizer, config.labels, ["question"], ["answer"]) for d in documents]
    batch = XFormParserCollator(tiny_tokenizer, WINDOW, 6)(encoded)
    with torch.no_grad():
        before = first(**batch).ser_logits
        assert _cached_windows(first) == batch["input_ids"].shape[0] and _cached_windows(second) == 0
        second.backbone.encoder.embeddings.word_embeddings.weight.mul_(3.0)  # frozen weight, changed in place
        changed = second(**batch).ser_logits
        assert not torch.allclose(before, changed)
        first.backbone.encoder.embeddings.word_embeddings.weight.mul_(3.0)
        assert torch.allclose(first(**batch).ser_logits, changed, atol=1e-5)  # recomputed, not stale


@pytest.mark.parametrize("frozen_layers", [0, 1])
def test_unpadded_cpu_windows_equal_the_padded_masked_batch(frozen_layers, tiny_tokenizer, funsd_folder):
    _, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    backbone_config["num_hidden_layers"] = 2
    config = XFormParserConfig(backbone_config=backbone_config, window_size=WINDOW, window_overlap=6,
                               frozen_layers=frozen_layers)
    model = XFormParserModel(config).eval()
    documents = load_documents(funsd_folder)[:3]
    encoded = [encode_document(d, tiny_tokenizer, config.labels, ["question"], ["answer"]) for d in documents]
    batch = XFormParserCollator(tiny_tokenizer, WINDOW, 6)(encoded)
    lengths = batch["attention_mask"].sum(-1)
    assert lengths.min() < lengths.max()  # some windows really are padded
    adapter = model.backbone.adapter
    with torch.no_grad():
        unpadded = adapter(batch["input_ids"], batch["bbox"], batch["attention_mask"])
        padded = adapter._encode(batch["input_ids"], batch["bbox"], batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.allclose(unpadded[real], padded[real], atol=1e-5)
    assert torch.all(unpadded[~real] == 0)


def test_word_embeddings_frozen_by_default_and_trainable_on_request(tiny_tokenizer):
    _, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    frozen = XFormParserModel(XFormParserConfig(backbone_config=backbone_config))
    trainable = XFormParserModel(XFormParserConfig(backbone_config=backbone_config, freeze_word_embeddings=False))
    assert not frozen.backbone.encoder.get_input_embeddings().weight.requires_grad
    assert frozen.backbone.encoder.encoder.layer[0].attention.self.query.weight.requires_grad
    assert trainable.backbone.encoder.get_input_embeddings().weight.requires_grad
    assert frozen.backbone.encoder.config.attention_probs_dropout_prob == 0.0


def test_checkpoint_leaves_out_frozen_backbone_weights_and_restores_them(tiny_encoder_dir, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModel as HFAutoModel

    model = XFormParserModel.from_backbone(tiny_encoder_dir, labels=["header", "question", "answer", "other"],
                                           frozen_layers=1)
    with torch.no_grad():
        model.ser_head[-1].bias.add_(1.0)  # something trained
    model.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), framework="pt") as handle:
        saved = set(handle.keys())
    frozen = set(model.backbone_derived_keys())
    assert frozen and not frozen & saved  # the frozen encoder is referenced, not copied
    assert "backbone.adapter.encoder.encoder.layer.0.attention.self.query.weight" in frozen
    loaded = XFormParserModel.from_pretrained(tmp_path / "saved")
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    pretrained = HFAutoModel.from_pretrained(tiny_encoder_dir)
    assert torch.equal(loaded.backbone.encoder.encoder.layer[0].output.dense.weight,
                       pretrained.encoder.layer[0].output.dense.weight)


def test_relation_loss_is_zero_not_nan_without_value_candidates():
    """Masked pairs hold finfo.min; summing them overflowed to -inf and '* 0' gave a NaN loss whenever
    a batch had no value candidate (e.g. evaluation with predicted labels that never say 'answer')."""
    re_logits = torch.full((1, 3, 4), torch.finfo(torch.float).min, requires_grad=True)
    no_candidates = torch.zeros(1, 3, dtype=torch.bool)
    loss = XFormParserModel._relation_loss(re_logits, torch.zeros(1, 3, 3), no_candidates, no_candidates)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(re_logits.grad).all()


def test_neighbour_attention_sees_only_the_k_nearest_entities():
    from xformparser.modeling_xformparser import NeighbourAttention

    torch.manual_seed(0)
    attention = NeighbourAttention(16, heads=2, neighbours=2, dropout=0.0).eval()
    boxes = torch.tensor([[[0, 0, 10, 10], [20, 0, 30, 10], [900, 900, 950, 950], [0, 0, 0, 0]]], dtype=torch.float)
    mask = torch.tensor([[True, True, True, False]])
    features = torch.randn(1, 4, 16)
    base = attention(features, boxes, mask)
    changed = features.clone()
    # (random changes: a constant shift would vanish in the layer norm)
    changed[0, 2] += 3 * torch.randn(16)  # far away: outside entity 0's 2 nearest (itself and entity 1)
    changed[0, 3] += 3 * torch.randn(16)  # padding
    after = attention(changed, boxes, mask)
    assert torch.allclose(base[0, :2], after[0, :2], atol=1e-6)
    changed[0, 1] += 3 * torch.randn(16)  # a neighbour: entity 0 must see it
    assert not torch.allclose(base[0, 0], attention(changed, boxes, mask)[0, 0])


def test_configs_saved_before_neighbour_attention_keep_their_bilstms(tiny_tokenizer, tmp_path):
    _, backbone_config = _backbone_config("text-layout", len(tiny_tokenizer))
    assert XFormParserConfig(backbone_config=backbone_config).context_kind == "attention"
    saved = XFormParserConfig(backbone_config=backbone_config, context_kind="bilstm").to_dict()
    saved.pop("context_kind")  # as written by the earlier code
    old = XFormParserConfig.from_dict(saved)
    assert old.context_kind == "bilstm"
    assert isinstance(XFormParserModel(old).entity_context, torch.nn.LSTM)
    model = XFormParserModel(XFormParserConfig(backbone_config=backbone_config))
    model.save_pretrained(tmp_path / "new")
    assert AutoConfig.from_pretrained(tmp_path / "new").context_kind == "attention"
