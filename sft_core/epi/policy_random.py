"""``random``: the control for "some units are frozen". At the moment ``static`` would freeze a task's
mask, it freezes instead a uniformly random set of units of exactly the same size in every tensor (the
size static's top-k would have chosen there, so tensors a task never touched stay unprotected)."""

from __future__ import annotations

import zlib

import torch

from .masks import top_k_indices
from .policies import register_policy
from .policy_static import StaticPolicy


@register_policy
class RandomPolicy(StaticPolicy):
    name = "random"

    def select(self, isolator, state, index: int, scores: torch.Tensor) -> torch.Tensor:
        count = top_k_indices(scores, isolator.config.isolation_ratio).indices.numel()
        seed = (isolator.config.replay_seed * 1_000_003 + zlib.crc32(f"{state.name}/{index}".encode())) % (1 << 62)
        generator = torch.Generator().manual_seed(seed)
        chosen = torch.randperm(scores.numel(), generator=generator)[:count]
        return torch.sort(chosen).values.int().to(scores.device)
