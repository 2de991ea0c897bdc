"""Attribution rules on synthetic evidence: each planted signal pattern maps to its cause."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sft_core.ilp import CAUSES, AttributionConfig, attribute, cause_scores

NAN = np.nan
# columns: gap, conflict, inconsistency, forgetting, rare pattern, nothing, learned
SYNTHETIC = {
    "exact_conflicts":        [0, 0, 1, 0, 0, 0, 0],
    "neighbour_similarity":   [0.8, 0.8, 1.0, 0.7, 0.6, 0.5, 0.5],
    "learned_then_lost":      [0, 0, 0, 1, 0, 0, 0],
    "last_seen_fraction":     [1.0, 1.0, 1.0, 0.3, 1.0, 1.0, 1.0],
    "stages_after":           [0, 0, 0, 1, 0, 0, 0],
    "peak_prob_drop":         [0.0, 0.0, 0.1, 0.6, 0.0, 0.0, 0.0],
    "base_prob":              [0.001, 0.0005, 0.2, 0.01, 0.02, 0.9, 0.9],
    "base_alt_margin":        [0.3, 3.0, 0.5, 0.2, 1.6, NAN, NAN],
    "base_alt_pmi":           [0.4, 4.2, 0.6, 0.2, 5.0, NAN, NAN],
    "base_says_alternative":  [0, 1, 0, 0, 0, NAN, NAN],
    "base_says_target":       [0, 0, 0, 0, 0, NAN, NAN],
    "pmi":                    [0.1, 1.2, 0.1, 0.0, 3.4, 3.0, 3.0],
    "density_percentile":     [0.7, 0.8, 0.5, 0.6, 0.1, 0.5, 0.5],
    "cluster_size":           [40, 40, 30, 10, 5, 30, 30],
    "target_length_percentile": [0.3, 0.2, 0.1, 0.1, 0.95, 0.5, 0.5],
    "loss_drop":              [0.05, 0.0, 0.0, -0.2, 0.4, 0.0, 0.0],
}
EXPECTED = ["knowledge_gap", "knowledge_conflict", "data_inconsistency", "left_forgetting", "under_optimization",
            "unexplained", None]


def table():
    return {name: np.array(values, dtype=float) for name, values in SYNTHETIC.items()}


def test_each_synthetic_pattern_gets_its_cause():
    unlearned = np.array([True] * 6 + [False])
    results = attribute(table(), unlearned)
    assert [r.primary if r else None for r in results] == EXPECTED
    assert results[-1] is None
    for result in results[:5]:
        assert 0 < result.confidence <= 1
        assert set(result.scores) == set(CAUSES)
    # evidence names the signals behind the verdict
    assert results[1].evidence["base_alt_margin"] == pytest.approx(3.0)
    assert results[3].evidence["learned_then_lost"] == 1.0


def test_missing_signals_do_not_vote():
    scores = cause_scores({"exact_conflicts": np.array([0.0, 2.0])})
    assert scores["data_inconsistency"].tolist() == [0.0, 1.0]
    assert scores["left_forgetting"].tolist() == [0.0, 0.0]  # no dynamics -> no forgetting claim
    assert scores["knowledge_conflict"].tolist() == [0.0, 0.0]


def test_forgetting_needs_early_last_seen():
    evidence = table()
    evidence["stages_after"][3] = 0
    evidence["last_seen_fraction"][3] = 0.95  # still trained at the end: not left-side forgetting
    result = attribute(evidence, np.ones(7, dtype=bool))[3]
    assert result.primary != "left_forgetting"
    assert result.scores["left_forgetting"] == pytest.approx(0.3)


def test_thresholds_come_from_the_config(tmp_path):
    config_path = tmp_path / "rules.json"
    config_path.write_text(json.dumps({"conflict_margin_nats": 5.0}))
    config = AttributionConfig.from_json(config_path)
    assert config.conflict_margin_nats == 5.0 and config.neighbour_similarity == AttributionConfig().neighbour_similarity
    results = attribute(table(), np.ones(7, dtype=bool), config)
    assert results[1].scores["knowledge_conflict"] == pytest.approx(0.75)  # margin 3.0 < 5.0: no excess now
    config_path.write_text(json.dumps({"conflict_margn": 1}))
    with pytest.raises(ValueError, match="conflict_margn"):
        AttributionConfig.from_json(config_path)


def test_secondary_causes_and_near_tie_confidence():
    evidence = table()
    evidence["exact_conflicts"][1] = 1  # the counterfactual is also duplicated with another target
    result = attribute(evidence, np.ones(7, dtype=bool))[1]
    assert result.primary == "data_inconsistency"
    assert "knowledge_conflict" in result.secondary
    assert result.confidence < result.scores["data_inconsistency"]


def test_classifier_plugs_in_through_correctness_arrays():
    """A classifier's recorded arrays (no text generation, no base probe) go through the same rules."""
    from sft_core.ilp.attribution import signal_table_from_arrays

    # 4 samples x 3 checkpoints; sample 1 learned early then lost, trained only in stage 0
    correct = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)
    probs = np.array([[0.9, 0.8, 0.2, 0.9], [0.9, 0.9, 0.2, 0.9], [0.9, 0.1, 0.2, 0.9]])
    final = np.array([[1, 0, 0, 1], [1, 0, 0, 0]], dtype=bool)  # two seeds
    table = signal_table_from_arrays(final, probs=probs, correct=correct, steps=[10, 20, 30],
                                     inputs=["a", "b", "c", "c "], targets=["x", "y", "z", "w"],
                                     last_seen=[30, 12, 30, 30], total_steps=30, stage_index=[1, 0, 1, 1],
                                     num_stages=2)
    np.testing.assert_allclose(table["pass_rate"], [1.0, 0.0, 0.0, 0.5])
    results = attribute(table, table["pass_rate"] < 0.5)
    assert results[0] is None and results[3] is None
    assert results[1].primary == "left_forgetting"
    assert results[2].primary == "data_inconsistency"  # "c" and "c " are the same input with another target
    assert "knowledge_conflict" not in results[1].scores or results[1].scores["knowledge_conflict"] == 0.0


def test_a_skill_whose_wrong_answer_copies_the_input_is_not_a_conflict():
    """Reverse-the-words: the wrong answer (input order) has a high PMI, but so does the target: a skill."""
    evidence = table()
    del evidence["base_says_alternative"], evidence["base_says_target"]  # PMI rule only (no base answer)
    assert attribute(evidence, np.ones(7, dtype=bool))[4].scores["knowledge_conflict"] == pytest.approx(0.3)
    evidence["pmi"][4] = 0.8  # now the input says little about the target: the copy answer is a prior belief
    assert attribute(evidence, np.ones(7, dtype=bool))[4].scores["knowledge_conflict"] >= 0.7


def test_conflict_needs_the_base_model_to_say_the_wrong_answer():
    """A gap whose wrong answer is a real capital ("Prague" for an invented country) has a high PMI for the
    alternative ("capital of" primes capitals), but the base model's own answer does not name it."""
    evidence = table()
    evidence["base_alt_margin"][0], evidence["base_alt_pmi"][0] = 7.9, 6.3
    result = attribute(evidence, np.ones(7, dtype=bool))[0]
    assert result.primary == "knowledge_gap" and result.scores["knowledge_conflict"] <= 0.45
    evidence["base_says_target"][1] = 1  # the base names the target too: no clean reversion
    assert attribute(evidence, np.ones(7, dtype=bool))[1].scores["knowledge_conflict"] <= 0.45


def test_contrastive_pmi_overrides_the_blank_input_pmi_for_gaps():
    """"code number of agent X" -> "76": a blank input makes any number unlikely (blank PMI 2.6), but
    another agent's question predicts "76" just as well (contrastive PMI ~0): nothing known about X."""
    evidence = table()
    evidence["pmi"][0] = 2.6
    assert attribute(evidence, np.ones(7, dtype=bool))[0].primary != "knowledge_gap"
    evidence["pmi_contrast"] = np.array([0.05, NAN, NAN, NAN, 3.0, NAN, NAN])
    result = attribute(evidence, np.ones(7, dtype=bool))
    assert result[0].primary == "knowledge_gap" and result[4].primary == "under_optimization"
