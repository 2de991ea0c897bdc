import pytest
import torch

from xformparser.evaluation import rule_baseline
from xformparser.formats import Document, Entity
from xformparser.linking import NUM_GEOMETRIC_FEATURES, geometric_pair_features, rule_links
from xformparser.metrics import entity_label_scores, link_scores, seqeval_scores


def _layout():
    # 0 "Name:" with its value 1 on the same line; 2 a column header "Date" with value 3 below it;
    # 4 a question far to the right on the value's line but to its right (not a candidate for 3).
    boxes = torch.tensor([[[50, 100, 150, 120], [200, 100, 400, 120], [500, 200, 600, 220],
                           [500, 240, 620, 260], [700, 240, 800, 260]]], dtype=torch.float)
    heads = torch.tensor([[True, False, True, False, True]])
    tails = torch.tensor([[False, True, False, True, False]])
    return boxes, heads, tails


def test_rule_prefers_the_key_on_the_line_to_the_left_then_the_nearest_above():
    boxes, heads, tails = _layout()
    assert rule_links(boxes, heads, tails).tolist() == [[-1, 0, -1, 2, -1]]
    assert rule_links(boxes, heads, tails, above_cost="box").tolist() == [[-1, 0, -1, 2, -1]]
    # with no key at all, values get no link
    assert rule_links(boxes, torch.zeros_like(heads), tails).tolist() == [[-1] * 5]


def test_rule_left_key_wins_over_a_closer_key_above():
    boxes = torch.tensor([[[300, 80, 400, 95], [20, 100, 100, 120], [300, 100, 400, 120]]], dtype=torch.float)
    heads = torch.tensor([[True, True, False]])
    tails = torch.tensor([[False, False, True]])
    assert rule_links(boxes, heads, tails).tolist() == [[-1, -1, 1]]


def test_geometric_features_shape_and_rule_indicator():
    boxes, heads, tails = _layout()
    features = geometric_pair_features(boxes, heads, tails)
    assert features.shape == (1, 5, 5, NUM_GEOMETRIC_FEATURES)
    rule_pick = features[0, :, :, 15]
    assert rule_pick[0, 1] == 1 and rule_pick[2, 3] == 1 and rule_pick.sum() == 2
    assert torch.isfinite(features).all()


def test_rule_baseline_on_documents():
    entities = [Entity(1, "name", [50, 100, 150, 120], "question"), Entity(2, "paris", [200, 100, 400, 120], "answer"),
                Entity(3, "date", [50, 200, 150, 220], "question"), Entity(4, "today", [200, 200, 300, 220], "answer")]
    document = Document("d", entities, [(1, 2), (3, 2)], 1000, 1000)  # 4 has no gold link, 2 has two keys
    scores = rule_baseline([document])
    assert (scores["true_positive"], scores["predicted"], scores["support"]) == (1, 2, 2)
    assert scores["f1"] == pytest.approx(0.5)


def test_entity_label_scores_hand_computed():
    gold = [["question", "answer", "answer", "other"], ["header", "question"]]
    predicted = [["question", "answer", "question", "other"], ["question", "question"]]
    scores = entity_label_scores(gold, predicted)
    assert scores["micro"]["f1"] == pytest.approx(4 / 6)
    question = scores["per_label"]["question"]
    # question: gold 2, predicted 4, correct 2 -> P 0.5, R 1.0, F1 2/3
    assert (question["precision"], question["recall"]) == (0.5, 1.0)
    assert question["f1"] == pytest.approx(2 / 3)
    assert scores["per_label"]["header"]["f1"] == 0.0
    # without "other": gold 5, predicted 5, correct 3
    assert scores["micro_without_other"]["f1"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        entity_label_scores([["a"]], [["a", "b"]])


def test_link_scores_hand_computed():
    gold = [{(1, 2), (3, 4)}, {(5, 6)}]
    predicted = [{(1, 2), (3, 2)}, set()]
    scores = link_scores(gold, predicted)
    assert (scores["precision"], scores["recall"]) == (0.5, pytest.approx(1 / 3))
    assert scores["f1"] == pytest.approx(0.4)
    assert link_scores([set()], [set()])["f1"] == 0.0


def test_seqeval_scores_hand_computed():
    gold = [["B-QUESTION", "I-QUESTION", "B-ANSWER", "O"], ["B-HEADER"]]
    predicted = [["B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER"], ["O"]]
    scores = seqeval_scores(gold, predicted)
    # spans gold: Q, A, H (3); predicted: Q, A(2 words) (2); correct: Q only
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(0.4)


def test_merged_line_spans_and_split_scores():
    from types import SimpleNamespace

    from xformparser.evaluation import line_split_scores, merged_line_spans

    # "Date:" "12/03/98" on one line, then a lone line below; words: 1 + 2 + 1
    document = SimpleNamespace(entity_boxes=[[10, 10, 60, 30], [70, 10, 150, 30], [10, 80, 90, 100]],
                               token_entity=[0, 1, 1, 1, 2], token_bio=[1, 3, 4, -100, 1])
    assert merged_line_spans(document) == [[0, 1]]
    gold = [["B-QUESTION", "B-ANSWER", "I-ANSWER", "B-QUESTION"]]
    assert line_split_scores([document], gold, gold) == {"spans": 1, "exact": 1.0, "boundaries": 1.0}
    unsplit = [["B-QUESTION", "I-QUESTION", "I-QUESTION", "B-QUESTION"]]  # the merged line kept whole
    assert line_split_scores([document], gold, unsplit)["exact"] == 0.0
    wrong_type = [["B-ANSWER", "B-QUESTION", "I-QUESTION", "B-QUESTION"]]  # split right, labels wrong
    scores = line_split_scores([document], gold, wrong_type)
    assert scores["exact"] == 0.0 and scores["boundaries"] == 1.0


def test_joint_decoding_relabels_the_ends_of_confident_links(tiny_tokenizer, monkeypatch):
    import torch
    from transformers import BertConfig

    from xformparser import XFormParserConfig, XFormParserModel
    from xformparser.evaluation import FormParser

    labels = ["answer", "header", "other", "question"]
    backbone = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64).to_dict()
    model = XFormParserModel(XFormParserConfig(labels=labels, backbone_config=backbone)).eval()
    probabilities = torch.tensor([[[0.1, 0.0, 0.3, 0.6],     # 0: a key
                                   [0.4, 0.0, 0.55, 0.05],   # 1: "other" by argmax, but may be a value
                                   [0.7, 0.0, 0.2, 0.1],     # 2: a value
                                   [0.0, 0.0, 1.0, 0.0]]])   # 3: other, never a candidate
    states = {"ser_logits": probabilities.log(), "entity_features": torch.zeros(1, 4, 8)}
    batch = {"entity_mask": torch.ones(1, 4, dtype=torch.bool), "entity_boxes": torch.zeros(1, 4, 4)}
    seen = {}

    def fake_scores(features, ser_logits, label_ids, source, boxes, mask, heads, tails):
        seen["heads"], seen["tails"] = heads.clone(), tails.clone()
        logits = torch.full((1, 4, 5), -20.0)
        logits[0, 1, 0] = 5.0  # value candidate 1 -> key 0, confident
        logits[0, 2, 0], logits[0, 2, 1], logits[0, 2, 4] = 0.0, -0.1, -0.2  # value 2 -> key 0 at p = 0.37
        return logits

    monkeypatch.setattr(model, "_score_relations", fake_scores)
    label_ids, chosen = FormParser(model, tiny_tokenizer)._joint_decode(states, batch)
    assert seen["tails"].tolist() == [[False, True, True, False]]  # entity 1 joined the value candidates
    assert [labels[i] for i in label_ids[0].tolist()] == ["question", "answer", "answer", "other"]
    assert chosen[0].tolist() == [-1, 0, 0, -1]  # 1: confident link; 2: both ends already key/value
