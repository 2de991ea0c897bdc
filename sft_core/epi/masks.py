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


_EXACT_SELECTION_LIMIT = 1 << 20
_SAMPLE_SIZE = 1 << 18


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """Exact k-th largest entry of a flat float tensor (1 <= k <= n).

    ``torch.kthvalue`` on tens of millions of elements copies and partially sorts the whole tensor; for
    large tensors a strided sample brackets the answer, two comparison passes count and extract the band,
    and the exact value is selected inside the (small) band. Falls back to the full selection whenever the
    bracket misses, so the result is always exact and depends only on the values.
    """
    n = values.numel()
    if n <= _EXACT_SELECTION_LIMIT:
        return torch.kthvalue(values, n - k + 1).values
    stride = n // _SAMPLE_SIZE
    sample = values[::stride].contiguous()
    m = sample.numel()
    fraction = k / n
    margin = 6.0 * math.sqrt(max(fraction * (1 - fraction), 1.0 / m) / m) + 2.0 / m
    upper_rank = max(1, math.floor((fraction - margin) * m))  # ranks counted from the top of the sample
    lower_rank = min(m, math.ceil((fraction + margin) * m))
    upper = torch.kthvalue(sample, m - upper_rank + 1).values
    lower = torch.kthvalue(sample, m - lower_rank + 1).values
    above = int((values > upper).sum())
    if above < k:
        band = values[(values > lower) & (values <= upper)]
        need = k - above
        if 0 < need <= band.numel():
            return torch.kthvalue(band, band.numel() - need + 1).values
    return torch.kthvalue(values, n - k + 1).values


def top_k_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Flat bool mask of the top ``ceil(ratio * n)`` strictly positive scores.

    Ties at the threshold go to the lowest flat index, so the result depends only on the score
    values: identical scores on every rank give identical masks (``torch.topk`` makes no such promise).
    Units with zero score are never selected: they carry no evidence of importance.
    """
    flat = scores.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    n = flat.numel()
    k = min(n, math.ceil(ratio * n))
    if k == 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    threshold = kth_largest(flat, k)
    if threshold <= 0:  # fewer than k positive scores: take them all
        return flat > 0
    mask = flat > threshold
    remaining = k - int(mask.sum())
    if remaining > 0:
        tied = torch.nonzero(flat == threshold).squeeze(1)[:remaining]
        mask[tied] = True
    return mask
