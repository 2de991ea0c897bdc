"""Selection scores: what a policy ranks when it picks a task's mask of one tensor.

- ``importance``: the task's own importance EMA.
- ``specificity``: ``ema_t * ema_t / sum_u ema_u`` (sum over every task that holds an EMA, t included):
  the task's importance weighted by its share of all tasks' importance. A unit that matters to every
  task (large gradients everywhere) ranks lower than one that matters to t alone, so the masks of
  different tasks overlap less. EMAs are mean-normalised per tensor and task, so they are comparable.
"""

from __future__ import annotations

import torch


def selection_scores(score: str, state, others, index: int) -> torch.Tensor:
    own = state.importance[index]
    peers = [o.importance[index] for o in others if o is not state and o.importance is not None]
    if score == "importance" or not peers:
        return own
    if score != "specificity":
        raise ValueError(f"unknown selection score {score!r}")
    own = own.float()
    total = own.clone()
    for peer in peers:
        total.add_(peer.float())
    return own.square().div_(total.clamp_min_(torch.finfo(torch.float32).tiny))
