"""torch.distributed helpers: rank checks and the rank-0 broadcast of a task's masks."""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def is_main_process() -> bool:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return True


def broadcast_masks(state, params: list[torch.Tensor]) -> None:
    """Make rank 0's masks (and patience counters) of ``state`` every rank's masks."""
    device = params[0].device
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    counts = torch.tensor(state.protected_counts, dtype=torch.int64, device=device)
    torch.distributed.broadcast(counts, src=0)
    counts = counts.tolist()
    pieces = []
    for indices, counters, count in zip(state.masks, state.patience_counters, counts):
        if indices.numel() != count:  # only non-zero ranks can disagree; rank 0's values overwrite these
            indices = torch.zeros(count, dtype=torch.int32)
            counters = torch.zeros(count, dtype=torch.uint8)
        pieces += [indices.to(device, torch.int32), counters.to(device, torch.int32)]
    buffer = torch.cat(pieces)
    torch.distributed.broadcast(buffer, src=0)
    chunks = torch.split(buffer, [piece.numel() for piece in pieces])
    for i, param in enumerate(params):
        state.masks[i] = chunks[2 * i].to(param.device, torch.int32).clone()
        state.patience_counters[i] = chunks[2 * i + 1].to(param.device, torch.uint8).clone()
