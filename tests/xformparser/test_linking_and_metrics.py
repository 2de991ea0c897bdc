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
