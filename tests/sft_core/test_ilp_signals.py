"""ILP signal functions and checkers on hand-made arrays with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sft_core.ilp import signals as S
from sft_core.ilp.checkers import exact_match, final_number, final_number_match, get_checker, label_match
from sft_core.ilp.probes import js_divergence_torch


def test_normalize_text_drops_case_punctuation_articles_and_spaces():
    assert S.normalize_text("  The  Paris. ") == "paris"
    assert S.normalize_text("A cat, an owl!") == "cat owl"


def test_cartography_confidence_variability_correctness():
    probs = np.array([[0.2, 0.9], [0.4, 0.9], [0.6, 0.9]])
    correct = np.array([[0, 1], [0, 1], [1, 1]], dtype=bool)
    result = S.cartography(probs, correct)
    np.testing.assert_allclose(result["confidence"], [0.4, 0.9])
    np.testing.assert_allclose(result["variability"], [np.std([0.2, 0.4, 0.6]), 0.0])
    np.testing.assert_allclose(result["correctness"], [1 / 3, 1.0])


def test_forgetting_events_first_learned_and_learned_then_lost():
    correct = np.array([[0, 1, 0, 1],
                        [1, 0, 0, 1],
                        [0, 1, 0, 1],
                        [1, 0, 0, 1]], dtype=bool)
    steps = [0, 10, 20, 30]
    np.testing.assert_array_equal(S.forgetting_events(correct), [1, 2, 0, 0])
    first = S.step_first_learned(correct, steps)
    assert first[0] == 10 and first[1] == 0 and math.isnan(first[2]) and first[3] == 0
    np.testing.assert_array_equal(S.learned_then_lost(correct), [False, True, False, False])
    np.testing.assert_allclose(S.peak_minus_final(np.array([[0.1, 0.5], [0.9, 0.5], [0.3, 0.5]])), [0.6, 0.0])


def test_relative_loss_drop_detects_loss_still_falling():
    steps = [0, 10, 20, 30]
    losses = np.array([[4.0, 2.0, 1.0],
                       [3.0, 2.0, 1.0],
                       [2.0, 2.0, 1.0],
                       [1.0, 2.0, 1.2]])
    drop = S.relative_loss_drop(losses, steps, window=3)
    # last three points 3,2,1: slope -0.1/step over 20 steps = -2, mean 2 -> relative drop 1.0
    assert drop[0] == pytest.approx(1.0)
    assert drop[1] == pytest.approx(0.0)
    assert drop[2] < 0  # rising at the end
    assert np.isnan(S.relative_loss_drop(losses[:1], steps[:1])).all()


def test_js_divergence_known_values_and_torch_twin():
    assert S.js_divergence([1, 0], [1, 0]) == pytest.approx(0.0)
    assert S.js_divergence([1, 0], [0, 1]) == pytest.approx(math.log(2))
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    m = (p + q) / 2
    expected = 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    assert S.js_divergence(p, q) == pytest.approx(expected)
    twin = js_divergence_torch(torch.tensor(np.log(p)), torch.tensor(np.log(q))).item()
    assert twin == pytest.approx(expected, rel=1e-6)
    assert S.mean_js_over_target(np.array([p, p]), np.array([q, p]), mask=[True, False]) == pytest.approx(expected)


def test_exact_duplicate_conflicts_groups_and_minority_share():
    inputs = ["Is it good?", "is it good", "IS IT GOOD!", "other", "other"]
    targets = ["yes", "no", "yes", "a", "a"]
    result = S.exact_duplicate_conflicts(inputs, targets)
    assert result["group"][0] == result["group"][1] == result["group"][2] >= 0
    assert result["group"][3] == result["group"][4] == -1  # same input, same target: no conflict
    np.testing.assert_array_equal(result["disagreeing"], [1, 2, 1, 0, 0])
    np.testing.assert_allclose(result["target_share"][:3], [2 / 3, 1 / 3, 2 / 3])


def test_neighbour_conflicts_density_and_clusters():
    embeddings = np.array([[1.0, 0.0], [0.999, 0.04], [0.0, 1.0], [0.05, 1.0], [-1.0, 0.0]])
    targets = ["a", "b", "c", "c", "d"]
    result = S.neighbour_target_conflicts(embeddings, targets, threshold=0.99)
    assert result["conflicting"].tolist() == [True, True, False, False, False]
    assert result["neighbour"][0] == 1 and result["neighbour"][1] == 0
    density = S.neighbour_density(embeddings, k=1)
    assert density[0] > 0.99 and density[4] < 0.1
    labels, sizes = S.cluster_sizes(embeddings, distance_threshold=0.2)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] not in (labels[0], labels[2])
    assert sizes.tolist() == [2, 2, 2, 2, 1]


def test_order_signals_and_percentiles_and_pass_rate():
    order = S.order_signals([1, 50, np.nan], [40, 100, np.nan], total_steps=100, stage_index=[0, 1, np.nan],
                            num_stages=2)
    np.testing.assert_allclose(order["last_seen_fraction"][:2], [0.4, 1.0])
    assert np.isnan(order["last_seen_fraction"][2])
    np.testing.assert_allclose(order["stages_after"][:2], [1, 0])
    np.testing.assert_allclose(S.percentile_rank([1, 2, 3, 4]), [0.125, 0.375, 0.625, 0.875])
    assert np.isnan(S.percentile_rank([1, np.nan])[1])
    # two seeds x three attempts x two samples
    correct = np.array([[[1, 0], [1, 0], [0, 0]], [[1, 1], [1, 0], [1, 0]]], dtype=bool)
    np.testing.assert_allclose(S.pass_rate(correct), [5 / 6, 1 / 6])


def test_checkers():
    assert exact_match("The Paris.", "paris") and not exact_match("Paris, France", "paris")
    assert final_number("so she has #### 1,200") == 1200.0
    assert final_number("3 apples and 4.5 pears") == 4.5
    assert final_number("no digits") is None
    assert final_number_match("She has 1,200 apples.", "#### 1200")
    assert not final_number_match("She has 120 apples.", "#### 1200")
    assert label_match("Positive, because it is fun", "positive") and not label_match("negative", "positive")
    assert get_checker("number") is final_number_match
    with pytest.raises(ValueError, match="unknown checker"):
        get_checker("bleu")


def test_content_only_scores_the_answer_tokens_not_the_template_tail():
    from sft_core.ilp.probes import encode_completion
    from sft_core.testing import tiny_causal_lm_tokenizer

    tokenizer = tiny_causal_lm_tokenizer()
    prompt = [{"role": "user", "content": "what is the capital of france"}]
    ids, labels = encode_completion(prompt, "paris", tokenizer)
    ids_c, labels_c = encode_completion(prompt, "paris", tokenizer, content_only=True)
    assert ids == ids_c
    full = [t for t in labels if t != -100]
    content = [t for t in labels_c if t != -100]
    assert content == tokenizer("paris", add_special_tokens=False)["input_ids"]
    assert len(full) > len(content) and full[:len(content)] == content  # the end-of-turn tail is dropped
