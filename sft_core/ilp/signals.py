"""ILP signals: pure functions over numpy arrays (no model, no torch), usable on any model's records.

Conventions (the shapes every function documents):

- ``C`` checkpoints x ``N`` samples for training dynamics: ``losses[c, i]`` mean target-token NLL,
  ``probs[c, i]`` the probability the model gives the target (geometric mean over target tokens),
  ``correct[c, i]`` whether sample ``i`` was reproduced at checkpoint ``c``; ``steps[c]`` the optimizer
  step of each checkpoint (ascending).
- Per-sample outputs are float arrays of length ``N``; "not available" is ``NaN`` (never a silent 0).

Following cleanlab, each function takes arrays and returns arrays (or a dict of arrays), so recorded
signals from a classifier, a reward model or a causal LM all go through the same code.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import defaultdict

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD-style answer normalisation: NFKC, lowercase, drop punctuation and English articles, squeeze
    whitespace. ``"The  Paris."`` and ``"paris"`` normalise to the same string."""
    text = unicodedata.normalize("NFKC", str(text)).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


# ---------------------------------------------------------------- training dynamics (cartography)

def _as_2d(array, name: str, dtype=float) -> np.ndarray:
    array = np.asarray(array, dtype=dtype)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (checkpoints x samples), got shape {array.shape}")
    return array


def cartography(probs, correct) -> dict[str, np.ndarray]:
    """Dataset cartography (Swayamdipta et al., 2020) over checkpoints.

    Args:
        probs: ``[C, N]`` probability of the target at each checkpoint.
        correct: ``[C, N]`` bool, target reproduced at each checkpoint.
    Returns:
        ``confidence`` = mean probability, ``variability`` = its (population) standard deviation,
        ``correctness`` = fraction of checkpoints correct; each ``[N]``. NaN entries are ignored.
    """
    probs = _as_2d(probs, "probs")
    correct = _as_2d(correct, "correct")
    with np.errstate(invalid="ignore"):
        return {"confidence": np.nanmean(probs, axis=0) if probs.size else np.full(probs.shape[1], np.nan),
                "variability": np.nanstd(probs, axis=0) if probs.size else np.full(probs.shape[1], np.nan),
                "correctness": np.nanmean(correct, axis=0) if correct.size else np.full(correct.shape[1], np.nan)}


def forgetting_events(correct) -> np.ndarray:
    """Number of correct -> incorrect transitions between consecutive checkpoints (Toneva et al., 2019),
    ``[C, N]`` bool -> ``[N]`` int."""
    correct = _as_2d(correct, "correct", dtype=bool)
    if correct.shape[0] < 2:
        return np.zeros(correct.shape[1], dtype=int)
    return np.sum(correct[:-1] & ~correct[1:], axis=0).astype(int)


def step_first_learned(correct, steps) -> np.ndarray:
    """The step of the first checkpoint at which each sample was correct; NaN if never. ``[N]`` float."""
    correct = _as_2d(correct, "correct", dtype=bool)
    steps = np.asarray(steps, dtype=float)
    if steps.shape != (correct.shape[0],):
        raise ValueError(f"steps has shape {steps.shape}; expected ({correct.shape[0]},)")
    first = np.full(correct.shape[1], np.nan)
    ever = correct.any(axis=0)
    first[ever] = steps[np.argmax(correct[:, ever], axis=0)]
    return first


def learned_then_lost(correct) -> np.ndarray:
    """True where a sample was correct at some checkpoint but is wrong at the last one. ``[N]`` bool."""
    correct = _as_2d(correct, "correct", dtype=bool)
    if correct.shape[0] < 2:
        return np.zeros(correct.shape[1], dtype=bool)
    return correct[:-1].any(axis=0) & ~correct[-1]


def peak_minus_final(values) -> np.ndarray:
    """``max over checkpoints - last checkpoint`` per sample (e.g. of probs: how much was lost). ``[N]``."""
    values = _as_2d(values, "values")
    if values.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    return np.nanmax(values, axis=0) - values[-1]


def relative_loss_drop(losses, steps, window: int = 3) -> np.ndarray:
    """How fast each sample's loss was still falling at the end of training.

    Fits a least-squares line to the last ``window`` checkpoints' losses and returns the fall it predicts
    over that span relative to the span's mean loss: ``-slope * (steps[-1] - steps[-window]) / mean``.
    0.3 means "the loss dropped by about 30% over the last window": optimisation had not converged for
    that sample. Negative values mean the loss was rising. NaN with fewer than 2 checkpoints.
    """
    losses = _as_2d(losses, "losses")
    steps = np.asarray(steps, dtype=float)
    window = min(int(window), losses.shape[0])
    if window < 2:
        return np.full(losses.shape[1], np.nan)
    x = steps[-window:]
    y = losses[-window:]
    x_centered = x - x.mean()
    denominator = float(np.sum(x_centered ** 2))
    if denominator == 0:
        return np.full(losses.shape[1], np.nan)
    slope = (x_centered[:, None] * (y - y.mean(axis=0))).sum(axis=0) / denominator
    mean = np.maximum(y.mean(axis=0), 1e-8)
    return -slope * (x[-1] - x[0]) / mean


# ---------------------------------------------------------------- distributions

def js_divergence(p, q, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Jensen-Shannon divergence (natural log, so in ``[0, ln 2]``) between probability vectors along
    ``axis``. Inputs are renormalised; zeros are fine."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    p = p / np.maximum(p.sum(axis=axis, keepdims=True), eps)
    q = q / np.maximum(q.sum(axis=axis, keepdims=True), eps)
    m = 0.5 * (p + q)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * (np.log(np.maximum(a, eps)) - np.log(np.maximum(b, eps))), 0.0)
        return terms.sum(axis=axis)

    return np.clip(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0, np.log(2.0))


def mean_js_over_target(p_base, p_tuned, mask=None) -> float:
    """Mean JS divergence between two models' next-token distributions ``[T, V]`` over the target
    positions selected by ``mask`` (``[T]`` bool; all positions if None)."""
    divergences = js_divergence(p_base, p_tuned, axis=-1)
    if mask is not None:
        divergences = divergences[np.asarray(mask, dtype=bool)]
    return float(divergences.mean()) if divergences.size else float("nan")


# ---------------------------------------------------------------- data consistency

def exact_duplicate_conflicts(inputs, targets, normalize=normalize_text) -> dict[str, np.ndarray]:
    """Inputs that are identical after ``normalize`` but carry different (normalised) targets.

    Returns ``group`` (``[N]`` int: a conflict group id shared by all members, -1 when the sample is in no
    conflict), ``disagreeing`` (``[N]`` int: members of its group whose target differs from its own) and
    ``target_share`` (``[N]`` float: the fraction of its group that agrees with its target; NaN outside
    groups; < 0.5 marks the minority target).
    """
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    n = len(inputs)
    by_input = defaultdict(list)
    normalized_targets = [normalize(t) for t in targets]
    for index, text in enumerate(inputs):
        by_input[normalize(text)].append(index)
    group = np.full(n, -1, dtype=int)
    disagreeing = np.zeros(n, dtype=int)
    share = np.full(n, np.nan)
    next_group = 0
    for members in by_input.values():
        if len({normalized_targets[i] for i in members}) < 2:
            continue
        for i in members:
            same = sum(normalized_targets[j] == normalized_targets[i] for j in members)
            group[i] = next_group
            disagreeing[i] = len(members) - same
            share[i] = same / len(members)
        next_group += 1
    return {"group": group, "disagreeing": disagreeing, "target_share": share}


def _unit_rows(embeddings) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=float)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (samples x dims), got shape {embeddings.shape}")
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def cosine_similarity_matrix(embeddings) -> np.ndarray:
    """``[N, D]`` -> ``[N, N]`` cosine similarities (diagonal = 1)."""
    unit = _unit_rows(embeddings)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def neighbour_target_conflicts(embeddings, targets, threshold: float = 0.95,
                               normalize=normalize_text) -> dict[str, np.ndarray]:
    """Embedding-space near-duplicate inputs (cosine >= ``threshold``) whose targets disagree.

    Returns ``similarity`` (``[N]``: the highest cosine to any sample with a different normalised target;
    NaN when N < 2), ``neighbour`` (``[N]`` int: that sample's index, -1 if none) and ``conflicting``
    (``[N]`` bool: ``similarity >= threshold``).
    """
    n = len(targets)
    similarity = np.full(n, np.nan)
    neighbour = np.full(n, -1, dtype=int)
    if n < 2:
        return {"similarity": similarity, "neighbour": neighbour, "conflicting": np.zeros(n, bool)}
    matrix = cosine_similarity_matrix(embeddings)
    normalized = np.array([normalize(t) for t in targets], dtype=object)
    different = normalized[:, None] != normalized[None, :]
    masked = np.where(different, matrix, -np.inf)
    neighbour = np.argmax(masked, axis=1)
    best = masked[np.arange(n), neighbour]
    has_any = np.isfinite(best)
    similarity[has_any] = best[has_any]
    neighbour[~has_any] = -1
    return {"similarity": similarity, "neighbour": neighbour,
            "conflicting": np.nan_to_num(similarity, nan=-1.0) >= threshold}


# ---------------------------------------------------------------- order in the schedule

def order_signals(first_seen, last_seen, total_steps: float, stage_index=None,
                  num_stages: int | None = None) -> dict[str, np.ndarray]:
    """Where in the schedule each sample was trained.

    Args:
        first_seen, last_seen: ``[N]`` optimizer step at which the sample was first / last in a batch
            (NaN: never seen).
        total_steps: steps in the whole schedule.
        stage_index: optional ``[N]`` int, the stage (0-based) in which the sample was last trained.
    Returns:
        ``first_seen_fraction``, ``last_seen_fraction`` (steps / total_steps, in [0, 1]) and, with stages,
        ``stages_after`` (how many later stages trained without it; 0 for the final stage).
    """
    total = float(total_steps) if total_steps else float("nan")
    result = {"first_seen_fraction": np.asarray(first_seen, dtype=float) / total,
              "last_seen_fraction": np.asarray(last_seen, dtype=float) / total}
    if stage_index is not None:
        stage_index = np.asarray(stage_index, dtype=float)
        last_stage = (num_stages - 1) if num_stages else np.nanmax(stage_index)
        result["stages_after"] = last_stage - stage_index
    return result


# ---------------------------------------------------------------- rarity / complexity

def neighbour_density(embeddings, k: int = 5) -> np.ndarray:
    """Mean cosine similarity to the ``k`` nearest other samples (``[N]``): high = a well-populated
    region of input space, low = a rare pattern."""
    unit = _unit_rows(embeddings)
    n = unit.shape[0]
    if n < 2:
        return np.full(n, np.nan)
    k = max(1, min(int(k), n - 1))
    matrix = unit @ unit.T
    np.fill_diagonal(matrix, -np.inf)
    top = -np.sort(-matrix, axis=1)[:, :k]
    return top.mean(axis=1)


def cluster_sizes(embeddings, distance_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Average-linkage agglomerative clusters on cosine distance cut at ``distance_threshold``.

    Returns ``(labels [N], size_of_own_cluster [N])``: small clusters are rare patterns.
    """
    unit = _unit_rows(embeddings)
    n = unit.shape[0]
    if n < 2:
        return np.zeros(n, dtype=int), np.ones(n, dtype=int)
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                     distance_threshold=float(distance_threshold)).fit_predict(unit)
    counts = np.bincount(labels)
    return labels, counts[labels]


def percentile_rank(values) -> np.ndarray:
    """Fraction of the (non-NaN) values that are strictly smaller, plus half the ties: ``[N]`` in [0, 1]
    (NaN stays NaN). Makes signals on different scales comparable within one dataset."""
    values = np.asarray(values, dtype=float)
    result = np.full(values.shape, np.nan)
    valid = ~np.isnan(values)
    pool = np.sort(values[valid])
    if pool.size == 0:
        return result
    below = np.searchsorted(pool, values[valid], side="left")
    through = np.searchsorted(pool, values[valid], side="right")
    result[valid] = (below + 0.5 * (through - below)) / pool.size
    return result


def pass_rate(correct, axis=None) -> np.ndarray:
    """Mean over attempts (and runs/seeds) of a bool array: ``[..., N]`` -> ``[N]`` by averaging every
    axis but the last unless ``axis`` is given. This is how classifiers plug in: give their per-sample
    correctness per seed/attempt."""
    correct = np.asarray(correct, dtype=float)
    if correct.ndim == 1:
        return correct
    if axis is None:
        axis = tuple(range(correct.ndim - 1))
    return np.nanmean(correct, axis=axis)
