"""Mask arithmetic: deterministic top-k selection, bit packing, saliency reduction per unit."""

from __future__ import annotations

import math

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor (any shape) -> flat uint8 tensor of ceil(numel / 8) bytes (little-endian bits)."""
    flat = mask.reshape(-1).to(torch.uint8)
    padding = (-flat.numel()) % 8
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    weights = _BIT_WEIGHTS.to(flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: flat bool tensor with ``numel`` entries."""
    shifts = _BIT_SHIFTS.to(packed.device)
    bits = packed.unsqueeze(1).bitwise_right_shift(shifts).bitwise_and_(1)
    return bits.view(-1)[:numel].bool()


def units_of(param: torch.Tensor, granularity: str) -> int:
    """Number of selectable units of a tensor: its elements, or its rows (dim 0)."""
    if granularity == "row" and param.dim() >= 1:
        return param.shape[0]
    return param.numel()


def unit_mask_to_param_shape(unit_mask: torch.Tensor, param: torch.Tensor, granularity: str) -> torch.Tensor:
    """A flat bool mask over units -> a bool tensor broadcastable against ``param``."""
    if granularity == "row" and param.dim() >= 1:
        return unit_mask.view(param.shape[0], *([1] * (param.dim() - 1)))
    return unit_mask.view(param.shape)


def top_k_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Flat bool mask of the top ``ceil(ratio * n)`` strictly positive scores.

    Ties at the threshold go to the lowest flat index, so the result depends only on the score
    values: identical scores on every rank give identical masks (``torch.topk`` makes no such promise).
    Units with zero or non-finite score are never selected: they carry no evidence of importance.
    """
    flat = torch.nan_to_num(scores.reshape(-1).float(), nan=0.0, posinf=0.0, neginf=0.0)
    n = flat.numel()
    k = min(n, math.ceil(ratio * n))
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, n - k + 1).values
    mask = flat > threshold
    remaining = k - int(mask.sum())
    if remaining > 0:
        tied = torch.nonzero(flat == threshold).squeeze(1)[:remaining]
        mask[tied] = True
    return mask & (flat > 0)


def mask_drift(previous: torch.Tensor, current: torch.Tensor) -> dict:
    """Counts comparing two flat bool masks of one tensor (one refresh to the next)."""
    intersection = int((previous & current).sum())
    union = int((previous | current).sum())
    return {
        "protected": int(current.sum()),
        "added": int((current & ~previous).sum()),
        "released": int((previous & ~current).sum()),
        "intersection": intersection,
        "union": union,
        "jaccard": 1.0 if union == 0 else intersection / union,
    }
