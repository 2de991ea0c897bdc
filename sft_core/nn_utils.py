"""Small neural-network pieces shared by the SRM and xformparser models."""

from __future__ import annotations

import torch
from torch import nn


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [batch, seq, dim] over the positions where ``attention_mask`` is 1 -> [batch, dim].

    A row with no unmasked position gives zeros (the count is clamped to 1), never NaN.
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def make_mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> GELU -> Dropout -> Linear.

    The layout (linear layers at indices 1 and 4) is what saved SRM and xformparser heads expect in
    their state dicts; keep it when changing this function.
    """
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, out_dim))
