"""Attribution: map every unlearned sample to a primary cause (plus secondary ones), with the evidence and
a confidence, by transparent rules over the signal table.

The signal table is a dict of ``[N]`` arrays (missing signals are NaN and simply do not vote). Names:

=========================  ===========================================================================
``exact_conflicts``        members of its normalised-duplicate-input group with a different target
``neighbour_similarity``   highest input cosine to a sample with a different target
``learned_then_lost``      1 if reproduced at some checkpoint but not at the last (NaN: no dynamics)
``last_seen_fraction``     last step the sample was trained / total steps
``stages_after``           later stages that trained without it
``peak_prob_drop``         best target probability during training minus the final one
``base_prob``              base model's geometric-mean probability of the target
``pmi``                    base mean log-prob/token of the target with the input minus with a blank input
``pmi_contrast``           the same with the inputs of the 2 most similar samples instead of a blank input
                           (the gap / under-optimisation rules use the smaller of the two)
``base_alt_pmi``           the same PMI for the tuned model's wrong answer the input raises most
``base_alt_margin``        ``base_alt_pmi - pmi``: how much more the input points to that answer than to the target
``base_says_alternative``  1 if the base model's own answer names one of the tuned model's wrong answers
``base_says_target``       1 if the base model's own answer names the target
``density_percentile``     percentile of input-embedding density (mean cosine to the k nearest samples)
``cluster_size``           size of the sample's input cluster
``target_length_percentile`` percentile of the target's token count
``loss_drop``              relative fall of the loss over the last checkpoints (still falling if large)
=========================  ===========================================================================

:func:`cause_scores` turns the table into one score in [0, 1] per cause and sample;
:func:`attribute` picks the primary cause and the secondary ones. The rules (docs/ilp.md has the table):

- data_inconsistency: an exactly duplicated input with another target -> 1.0; otherwise an embedding
  neighbour with another target at cosine >= ``neighbour_similarity`` -> 0.8..1.0.
- left_forgetting: learned then lost, and no longer trained late (last seen before
  ``early_last_seen_fraction`` of the schedule, or later stages trained without it) -> 0.9 + 0.1 x
  (probability lost / 0.5); learned then lost while still being trained -> 0.3.
- knowledge_conflict: the base model's own free-form answer names a wrong answer the tuned model gave and not
  the target (``base_says_alternative`` and not ``base_says_target``) -> 0.75 + 0.15 x (PMI margin excess);
  otherwise at most 0.45. Without the base answer (NaN, e.g. classifiers) the PMI rule decides: the input
  points the base to a wrong answer more than to the target (``base_alt_margin`` >= ``conflict_margin_nats``),
  that answer is input-specific (``base_alt_pmi`` >= ``conflict_alternative_pmi``) and the target is not built
  from the input (``pmi`` < ``skill_target_pmi``) -> 0.7 + 0.2 x (margin excess); the margin alone -> 0.3.
- knowledge_gap: the base does not know the target (``base_prob`` < ``base_knows_prob``), the conflict
  score is below 0.7, and the input tells it nothing about the target (the smaller of ``pmi`` and
  ``pmi_contrast`` < ``gap_max_pmi_nats``) -> 0.7 + 0.1 x (not rare) + 0.1 x (how far it is below the
  threshold, per nat).
- under_optimization: needs one of rare (low density or small cluster), loss still falling, long target;
  then 0.3 x rare + 0.25 x still falling + 0.15 x long target + 0.3 x the input does inform the target
  (``pmi`` >= ``gap_max_pmi_nats``: a learnable skill, not missing knowledge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import CAUSES, UNEXPLAINED, AttributionConfig

#: which signals are shown as evidence for each cause
EVIDENCE = {
    "data_inconsistency": ("exact_conflicts", "neighbour_similarity", "neighbour_index"),
    "left_forgetting": ("learned_then_lost", "last_seen_fraction", "stages_after", "peak_prob_drop",
                        "forgetting_events"),
    "knowledge_conflict": ("base_says_alternative", "base_says_target", "base_alt_margin", "base_alt_pmi", "pmi"),
    "knowledge_gap": ("base_prob", "pmi_contrast", "pmi", "base_says_alternative", "base_matches"),
    "under_optimization": ("density_percentile", "cluster_size", "loss_drop", "target_length_percentile",
                           "pmi_contrast", "pmi"),
}
#: tie-break order: the more specific, more directly observed cause first
PRIORITY = ("data_inconsistency", "left_forgetting", "knowledge_conflict", "knowledge_gap", "under_optimization")


@dataclass
class Attribution:
    primary: str
    secondary: list[str]
    confidence: float
    scores: dict[str, float]
    evidence: dict[str, float] = field(default_factory=dict)


def _get(table: dict, name: str, n: int) -> np.ndarray:
    value = table.get(name)
    if value is None:
        return np.full(n, np.nan)
    return np.asarray(value, dtype=float)


def _flag(values: np.ndarray) -> np.ndarray:
    """1.0 / 0.0, NaN stays NaN (a missing signal)."""
    return np.where(np.isnan(values), np.nan, (values > 0).astype(float))


def _clip01(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0.0, 1.0)


def cause_scores(table: dict, config: AttributionConfig | None = None) -> dict[str, np.ndarray]:
    """``{cause: [N] scores in [0, 1]}`` from the signal table (see the module docstring for the rules)."""
    config = config or AttributionConfig()
    n = len(next(iter(table.values()))) if table else 0
    g = lambda name: _get(table, name, n)  # noqa: E731
    nan0 = lambda values: np.nan_to_num(values, nan=0.0)  # noqa: E731

    # data inconsistency
    exact = nan0(g("exact_conflicts")) > 0
    similarity = g("neighbour_similarity")
    near = nan0(similarity) >= config.neighbour_similarity
    span = max(1e-6, 1.0 - config.neighbour_similarity)
    inconsistency = np.where(exact, 1.0, np.where(near, 0.8 + 0.2 * _clip01((nan0(similarity) - config.neighbour_similarity) / span), 0.0))

    # left-side forgetting
    lost = nan0(g("learned_then_lost")) > 0
    early = (nan0(g("stages_after")) >= 1) | (np.nan_to_num(g("last_seen_fraction"), nan=1.0)
                                              <= config.early_last_seen_fraction)
    drop = _clip01(nan0(g("peak_prob_drop")) / 0.5)
    forgetting = np.where(lost & early, 0.9 + 0.1 * drop, np.where(lost, 0.3, 0.0))

    # knowledge conflict
    margin = g("base_alt_margin")
    pmi = g("pmi")
    prefers_other = nan0(margin) >= config.conflict_margin_nats
    plausible = (nan0(g("base_alt_pmi")) >= config.conflict_alternative_pmi) & \
                (np.nan_to_num(pmi, nan=-np.inf) < config.skill_target_pmi)
    excess = _clip01((nan0(margin) - config.conflict_margin_nats) / max(config.conflict_margin_nats, 1e-6))
    pmi_rule = np.where(prefers_other & plausible, 0.7 + 0.2 * excess, np.where(prefers_other, 0.3, 0.0))
    # With the base model's own answer available, it decides: the tuned model's wrong answer is what the
    # base says (and the base does not say the target). Without it (e.g. classifiers), the PMI rule alone.
    says_alt, says_target = g("base_says_alternative"), g("base_says_target")
    reverts = (nan0(says_alt) > 0) & ~(nan0(says_target) > 0)
    conflict = np.where(np.isnan(says_alt), pmi_rule,
                        np.where(reverts, 0.75 + 0.15 * excess, np.minimum(pmi_rule, 0.45)))

    # rarity (shared by gap and under-optimisation)
    rare = (np.nan_to_num(g("density_percentile"), nan=1.0) <= config.rare_density_percentile) | \
           (np.nan_to_num(g("cluster_size"), nan=np.inf) <= config.rare_cluster_size)
    # Does the input inform the target? Only if it does both against a blank input and against similar inputs
    # (the contrastive PMI, where measured): either test failing means no usable link.
    contrast = g("pmi_contrast")
    link = np.where(np.isnan(contrast), pmi, np.fmin(pmi, contrast))
    informs = nan0(link) >= config.gap_max_pmi_nats

    # knowledge gap
    base_prob = g("base_prob")
    base_unknown = np.nan_to_num(base_prob, nan=0.0) < config.base_knows_prob
    no_alternative = conflict < 0.7
    below = np.where(np.isnan(link), 0.5, _clip01((config.gap_max_pmi_nats - nan0(link)) / 1.0))
    # >= 0.7: without a link from input to target, a rare or slow sample is still missing knowledge first.
    gap = np.where(base_unknown & no_alternative & ~informs, 0.7 + 0.1 * (~rare) + 0.1 * below, 0.0)

    # under-optimisation of rare / complex patterns
    falling = nan0(g("loss_drop")) >= config.still_falling_drop
    long_target = nan0(g("target_length_percentile")) >= config.long_target_percentile
    pattern = rare | falling | long_target  # at least one sign of a rare or complex, under-trained pattern
    under = np.where(pattern, 0.3 * rare + 0.25 * falling + 0.15 * long_target + 0.3 * (informs & ~np.isnan(link)), 0.0)

    return {"knowledge_gap": gap, "knowledge_conflict": conflict, "data_inconsistency": inconsistency,
            "left_forgetting": forgetting, "under_optimization": under}


def attribute(table: dict, unlearned, config: AttributionConfig | None = None) -> list[Attribution | None]:
    """One :class:`Attribution` per unlearned sample (None for learned ones).

    Primary = highest score (ties broken by :data:`PRIORITY`); secondary = the other causes scoring at
    least ``secondary_min_score``; confidence = primary score x (1 - 0.5 x runner-up / primary), so a
    clear winner keeps its score and a near tie halves it. Below ``min_primary_score`` the primary is
    ``"unexplained"``.
    """
    config = config or AttributionConfig()
    scores = cause_scores(table, config)
    unlearned = np.asarray(unlearned, dtype=bool)
    results: list[Attribution | None] = []
    for i in range(len(unlearned)):
        if not unlearned[i]:
            results.append(None)
            continue
        row = {cause: float(scores[cause][i]) for cause in CAUSES}
        ranked = sorted(PRIORITY, key=lambda c: (-row[c], PRIORITY.index(c)))
        best, runner_up = row[ranked[0]], row[ranked[1]]
        primary = ranked[0] if best >= config.min_primary_score else UNEXPLAINED
        secondary = [c for c in ranked[1:] if row[c] >= config.secondary_min_score] if primary != UNEXPLAINED else \
            [c for c in ranked if row[c] >= config.secondary_min_score]
        confidence = best * (1.0 - 0.5 * runner_up / best) if best > 0 else 0.0
        evidence = {}
        for cause in ([primary] if primary in EVIDENCE else []) + secondary:
            for name in EVIDENCE[cause]:
                if name in table:
                    value = table[name][i]
                    evidence[name] = value.item() if hasattr(value, "item") else value
        results.append(Attribution(primary=primary, secondary=secondary, confidence=round(confidence, 4),
                                   scores={c: round(v, 4) for c, v in row.items()}, evidence=evidence))
    return results


def signal_table_from_arrays(correct_final, *, probs=None, correct=None, losses=None, steps=None, inputs=None,
                             targets=None, embeddings=None, last_seen=None, total_steps=None, stage_index=None,
                             num_stages=None, base_prob=None, config: AttributionConfig | None = None) -> dict:
    """The signal table for any model type from recorded arrays (how classifiers plug in).

    Args:
        correct_final: ``[..., N]`` bool, correctness of the final model per seed/attempt (-> ``pass_rate``).
        probs, correct, losses: ``[C, N]`` gold-label probability / correctness / loss at checkpoints.
        steps: ``[C]`` checkpoint steps. inputs, targets: ``[N]`` strings (exact-duplicate conflicts).
        embeddings: ``[N, D]`` input embeddings (neighbour conflicts, density, clusters).
        last_seen, total_steps, stage_index, num_stages: order signals.
        base_prob: ``[N]`` the untuned model's probability of the gold label.
    Every argument is optional except ``correct_final``; what is missing stays out of the table.
    """
    from . import signals as S

    config = config or AttributionConfig()
    table = {"pass_rate": S.pass_rate(correct_final)}
    if probs is not None and correct is not None:
        table.update(S.cartography(probs, correct))
        table["peak_prob_drop"] = S.peak_minus_final(probs)
    if correct is not None:
        table["forgetting_events"] = S.forgetting_events(correct).astype(float)
        table["learned_then_lost"] = S.learned_then_lost(correct).astype(float)
        if steps is not None:
            table["step_first_learned"] = S.step_first_learned(correct, steps)
    if losses is not None and steps is not None:
        table["loss_drop"] = S.relative_loss_drop(losses, steps)
    if inputs is not None and targets is not None:
        table["exact_conflicts"] = S.exact_duplicate_conflicts(inputs, targets)["disagreeing"].astype(float)
    if embeddings is not None and targets is not None:
        table["neighbour_similarity"] = S.neighbour_target_conflicts(embeddings, targets,
                                                                     config.neighbour_similarity)["similarity"]
    if embeddings is not None:
        density = S.neighbour_density(embeddings)
        table["density_percentile"] = S.percentile_rank(density)
        table["cluster_size"] = S.cluster_sizes(embeddings, config.cluster_distance)[1].astype(float)
    if last_seen is not None and total_steps:
        order = S.order_signals(last_seen, last_seen, total_steps, stage_index, num_stages)
        table["last_seen_fraction"] = order["last_seen_fraction"]
        if "stages_after" in order:
            table["stages_after"] = order["stages_after"]
    if base_prob is not None:
        table["base_prob"] = np.asarray(base_prob, dtype=float)
    return table
