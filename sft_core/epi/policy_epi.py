"""``epi``: evolving masks. At every refresh a task re-ranks its importance EMA per tensor (with release
hysteresis); a task absent since the previous refresh first re-estimates its importance on its replay
buffer with the current weights (``EPIConfig.replay_batches``)."""

from __future__ import annotations

import torch

from .masks import top_k_mask
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
        """Top ``isolation_ratio`` per tensor, plus units still inside their release patience."""
        patience = isolator.config.release_patience
        per_tensor = {}
        for i in range(len(isolator.params)):
            top = top_k_mask(isolator.selection_scores(state, i), isolator.config.isolation_ratio)
            top_indices = torch.nonzero(top).squeeze(1)
            previous = state.masks[i].long()
            # Count consecutive refreshes outside the top; release once the count reaches the patience.
            outside = ~top[previous]
            counters = torch.where(outside, state.patience_counters[i] + 1, torch.zeros_like(state.patience_counters[i]))
            kept = outside & (counters < patience)
            kept_indices = previous[kept]
            merged, order = torch.sort(torch.cat([top_indices, kept_indices]))
            merged_counters = torch.cat([torch.zeros(top_indices.numel(), dtype=torch.uint8, device=top.device),
                                         counters[kept]])[order]
            state.masks[i] = merged.int()
            state.patience_counters[i] = merged_counters
            intersection = int(previous.numel() - outside.sum()) + int(kept.sum())
            union = previous.numel() + merged.numel() - intersection
            per_tensor[isolator.param_names[i]] = {
                "protected": merged.numel(), "added": merged.numel() - intersection,
                "released": previous.numel() - intersection, "intersection": intersection, "union": union,
                "jaccard": 1.0 if union == 0 else intersection / union}
        state.has_mask = True
        return per_tensor
