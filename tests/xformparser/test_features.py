import pytest
import torch

from xformparser import XFormParserConfig, XFormParserModel, load_documents
from xformparser.features import (XFormParserCollator, bio_tags, encode_document, normalize_box, reading_order,
                                  split_windows)
from xformparser.formats import DataFormatError, Document, Entity, Word

LABELS = ["header", "question", "answer", "other"]


@pytest.mark.parametrize("num_tokens, window, overlap", [(1, 10, 3), (10, 10, 3), (11, 10, 3), (57, 10, 4),
                                                         (100, 16, 0), (5, 4, 10)])
def test_split_windows_covers_every_token(num_tokens, window, overlap):
    windows = split_windows(num_tokens, window, overlap)
    covered = set()
    for start, end in windows:
        assert 0 <= start < end <= num_tokens and end - start <= window
        covered.update(range(start, end))
    assert covered == set(range(num_tokens))
    for (start_a, end_a), (start_b, _) in zip(windows, windows[1:]):
        assert start_b <= end_a  # consecutive windows overlap (or touch when overlap is 0)
        assert end_a - start_b == min(overlap, window - 1)


def test_reading_order_lines_then_left_to_right():
    entities = [Entity(0, "b", [300, 102, 400, 118], "answer"), Entity(1, "a", [10, 100, 200, 120], "question"),
                Entity(2, "title", [100, 10, 300, 40], "header"), Entity(3, "c", [10, 200, 90, 220], "other")]
    document = Document("d", entities, [], 1000, 1000)
    assert reading_order(document) == [2, 1, 0, 3]


def test_encoding_aligns_boxes_labels_and_links(tiny_tokenizer, funsd_folder):
    [document] = load_documents(funsd_folder / "annotations" / "doc000.json")
    encoded = encode_document(document, tiny_tokenizer, LABELS, ["question"], ["answer"])
    assert len(encoded.input_ids) == len(encoded.token_boxes) == len(encoded.token_entity) == len(encoded.token_bio)
    assert sorted(set(encoded.token_entity)) == list(range(len(document.entities)))  # every entity has tokens
    tags = bio_tags(LABELS)
    first_tag = tags[encoded.token_bio[0]]
    assert first_tag == "B-HEADER" and encoded.entity_labels[0] == LABELS.index("header")
    by_id = document.entity_by_id()
    for head, tail in encoded.links:
        assert by_id[encoded.entity_ids[head]].label == "question"
        assert by_id[encoded.entity_ids[tail]].label == "answer"
    assert len(encoded.links) == 5
    entity = by_id[encoded.entity_ids[0]]
    assert encoded.token_boxes[0] == normalize_box(entity.words[0].box, document.width, document.height)
    # "other" words are O; multi-word entities get B then I
    other_index = encoded.entity_ids.index(99)
    other_tags = [tags[t] for t, e in zip(encoded.token_bio, encoded.token_entity) if e == other_index and t >= 0]
    assert other_tags == ["O", "O"]


def test_unknown_label_is_an_error_unless_lenient(tiny_tokenizer):
    document = Document("weird", [Entity(0, "x", [0, 0, 10, 10], "signature", [Word("x", [0, 0, 10, 10])])], [], 100, 100)
    with pytest.raises(DataFormatError, match="weird"):
        encode_document(document, tiny_tokenizer, LABELS, ["question"], ["answer"])
    encoded = encode_document(document, tiny_tokenizer, LABELS, ["question"], ["answer"], strict_labels=False)
    assert encoded.entity_labels == [-100]


def test_empty_entity_text_still_gets_a_token(tiny_tokenizer):
    document = Document("e", [Entity(0, "", [0, 0, 10, 10], "other"), Entity(1, "name", [0, 20, 10, 30], "question")],
                        [], 100, 100)
    encoded = encode_document(document, tiny_tokenizer, LABELS, ["question"], ["answer"])
    assert sorted(set(encoded.token_entity)) == [0, 1]


def test_long_document_windows_lose_no_entity(tiny_tokenizer, tmp_path):
    from xformparser_fixtures import write_funsd_folder

    folder = write_funsd_folder(tmp_path / "long", count=2, pairs=30)
    documents = load_documents(folder)
    encoded = [encode_document(d, tiny_tokenizer, LABELS, ["question"], ["answer"]) for d in documents]
    collator = XFormParserCollator(tiny_tokenizer, window_size=20, window_overlap=5)
    batch = collator(encoded)
    assert batch["input_ids"].shape[1] <= 20
    for doc_index, document in enumerate(encoded):
        rows = batch["window_document"] == doc_index
        positions = batch["window_token_position"][rows]
        seen = set(positions[positions >= 0].tolist())
        assert seen == set(range(len(document.input_ids)))  # every token is in some window
        # and every entity, including those cut by a window edge, is recovered
        assert {document.token_entity[p] for p in seen} == set(range(len(document.entity_ids)))
        cut = [e for e in range(len(document.entity_ids))
               if len({int(r) for r, row in enumerate(positions) for p in row.tolist()
                       if p >= 0 and document.token_entity[p] == e}) > 1]
        assert cut, "the fixture should have entities spanning two windows"

    # The model's window merge reproduces the single-window result when windows hold identical states.
    config = XFormParserConfig(backbone_config={"model_type": "bert", "vocab_size": len(tiny_tokenizer),
                                                "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                                "intermediate_size": 32, "max_position_embeddings": 64},
                               window_size=20, window_overlap=5)
    model = XFormParserModel(config).eval()
    num_docs, num_tokens = batch["token_entity"].shape
    fake_states = batch["window_token_position"].clamp(min=0).float()[..., None].expand(-1, -1, 3)
    merged = model._merge_windows(fake_states, batch["window_document"], batch["window_token_position"],
                                  num_docs, num_tokens)
    for doc_index, document in enumerate(encoded):
        expected = torch.arange(len(document.input_ids)).float()
        assert torch.equal(merged[doc_index, : len(document.input_ids), 0], expected)
    with torch.no_grad():
        output = model(**batch)
    pooled_entities = output.ser_logits.shape[1]
    assert pooled_entities == max(len(d.entity_ids) for d in encoded)
    assert torch.isfinite(output.ser_logits).all()
