"""``static`` (CPI-FT style): importance over a task's first ``probe_steps`` steps, then a frozen mask."""

from __future__ import annotations

import logging

import torch

from .masks import top_k_indices
from .policies import MaskPolicy, register_policy

logger = logging.getLogger("sft_core.epi")


@register_policy
class StaticPolicy(MaskPolicy):
    name = "static"

    def tracks_importance(self, state) -> bool:
        return not state.frozen

    def after_importance(self, isolator, state) -> None:
        if not state.frozen and state.steps >= isolator.config.probe_steps and state.importance is not None:
            self.freeze(isolator, state)

    def select(self, isolator, state, index: int, scores: torch.Tensor) -> torch.Tensor:
        """Sorted int32 unit indices of the frozen mask of one tensor."""
        return top_k_indices(scores, isolator.config.isolation_ratio).indices.int()

    def freeze(self, isolator, state) -> None:
        for i in range(len(isolator.params)):
            state.masks[i] = self.select(isolator, state, i, isolator.selection_scores(state, i))
            state.patience_counters[i] = torch.zeros(state.masks[i].numel(), dtype=torch.uint8,
                                                     device=state.masks[i].device)
        state.has_mask = state.frozen = state.changed_since_record = True
        state.importance = None  # the probe is over: the EMA is never needed again
        isolator.masks_changed(state)
        logger.info("%s mask of task %r frozen after %d probe steps: %d units protected",
                    self.name, state.name, state.steps, sum(state.protected_counts))
