"""``epi``: evolving masks. At every refresh a task re-ranks its importance EMA per tensor (with release
hysteresis); a task absent since the previous refresh first re-estimates its importance on its replay
buffer with the current weights (``EPIConfig.replay_batches``)."""

from __future__ import annotations

import torch

from .masks import top_k_indices
from .policies import MaskPolicy, register_policy


@register_policy
class EvolvingPolicy(MaskPolicy):
    name = "epi"

    def tracks_importance(self, state) -> bool:
        return True

    def refresh(self, isolator, state) -> dict | None:
        if state.importance is None:
            return None
        if state.steps_since_refresh == 0:  # absent since the last refresh
            if not isolator.replay_importance(state):
                return None
        per_tensor = self.rerank(isolator, state)
        isolator.masks_changed(state)
        return per_tensor

    @staticmethod
    def rerank(isolator, state) -> dict[str, dict]:
        """Top ``isolation_ratio`` per tensor, plus units still inside their release patience.

        Works on index sets (the top-k from a radix select, membership of the previous mask by value):
        nothing of a tensor's size is sorted or materialised but the one comparison in the top-k."""
        patience = isolator.config.release_patience
        per_tensor = {}
        for i in range(len(isolator.params)):
            scores = isolator.selection_scores(state, i)
            top = top_k_indices(scores, isolator.config.isolation_ratio)
            previous = state.masks[i].long()
            # Count consecutive refreshes outside the top; release once the count reaches the patience.
            outside = ~top.contains(previous, scores)
            counters = torch.where(outside, state.patience_counters[i] + 1, torch.zeros_like(state.patience_counters[i]))
            kept = outside & (counters < patience)
            kept_indices = previous[kept]
            merged, merged_counters = merge_sorted_disjoint(top.indices, kept_indices, counters[kept])
            state.masks[i] = merged.int()
            state.patience_counters[i] = merged_counters
            n_outside, n_kept = int(torch.count_nonzero(outside)), kept_indices.numel()
            intersection = previous.numel() - n_outside + n_kept
            union = previous.numel() + merged.numel() - intersection
            per_tensor[isolator.param_names[i]] = {
                "protected": merged.numel(), "added": merged.numel() - intersection,
                "released": previous.numel() - intersection, "intersection": intersection, "union": union,
                "jaccard": 1.0 if union == 0 else intersection / union}
        state.has_mask = True
        return per_tensor


def merge_sorted_disjoint(top: torch.Tensor, kept: torch.Tensor, kept_counters: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two sorted, disjoint index tensors (the new top-k with counter 0, and the units kept by
    hysteresis with their counters) into one sorted index tensor and its aligned uint8 counters."""
    counters = torch.zeros(top.numel() + kept.numel(), dtype=torch.uint8, device=top.device)
    if kept.numel() == 0:
        return top, counters
    # kept[j] lands after the top entries smaller than it and after the j kept entries before it
    slots = torch.searchsorted(top, kept) + torch.arange(kept.numel(), device=kept.device)
    is_kept = torch.zeros(counters.numel(), dtype=torch.bool, device=top.device)
    is_kept[slots] = True
    merged = torch.empty(counters.numel(), dtype=top.dtype, device=top.device)
    merged[slots] = kept
    merged[~is_kept] = top
    counters[slots] = kept_counters
    return merged, counters
