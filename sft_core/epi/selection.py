"""Selection scores: what a policy ranks when it picks a task's mask of one tensor.

- ``importance``: the task's own importance EMA.
- ``specificity``: ``relu(ema_t - mean_{u != t} ema_u) + 1e-3 * ema_t`` over the tasks that hold an
  EMA: how much more a unit matters to t than to the average other task. A unit every task relies on
  (large gradients everywhere) scores near 0 and is picked only after the units specific to t (the
  small ``ema_t`` term keeps the mask full and ordered by importance among them), so the masks of
  different tasks overlap less. EMAs are mean-normalised per tensor and task, so they are comparable.
"""

from __future__ import annotations

import torch

SPECIFICITY_TIE_WEIGHT = 1e-3


def selection_scores(score: str, state, others, index: int) -> torch.Tensor:
    own = state.importance[index]
    peers = [o.importance[index] for o in others if o is not state and o.importance is not None]
    if score == "importance" or not peers:
        return own
    if score != "specificity":
        raise ValueError(f"unknown selection score {score!r}")
    own = own.float()
    others_mean = torch.zeros_like(own)
    for peer in peers:
        others_mean.add_(peer.float(), alpha=1.0 / len(peers))
    return (own - others_mean).clamp_(min=0).add_(own, alpha=SPECIFICITY_TIE_WEIGHT)
