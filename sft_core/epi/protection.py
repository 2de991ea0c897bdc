"""Protection: which units a step on task t must leave unchanged, and the bit-exact snapshot/restore
around the optimizer step.

A step on t protects the union of every other task's mask. Overlap rule: ``freeze`` (default) keeps
that union frozen even where it intersects t's own mask; ``share`` lets t train units that are also
in its own mask (measured to let a later task rewrite most of an earlier task's mask: docs/epi.md).
Unit indices are cached per task as sorted int32 tensors until the next mask change (with one other
task and ``freeze`` the other task's own index tensor is used as is: no copy).
"""

from __future__ import annotations

import torch

from .masks import unit_mask_to_param_shape


def unit_bool(indices: torch.Tensor, units: int) -> torch.Tensor:
    mask = torch.zeros(units, dtype=torch.bool, device=indices.device)
    mask[indices.long()] = True
    return mask


class Protector:
    """Builds (and caches) protection index sets and applies them around ``optimizer.step()``."""

    def __init__(self, params: list[torch.Tensor], units: list[int], granularity: str, overlap: str,
                 isolation_impl: str, zero_protected_grads: bool):
        self.params, self.units = params, units
        self.granularity, self.overlap = granularity, overlap
        self.isolation_impl, self.zero_protected_grads = isolation_impl, zero_protected_grads
        self._cache: dict[str, list[torch.Tensor | None]] = {}
        self._active: list[torch.Tensor | None] = []  # int64 copies of this step's indices
        self._saved: list[torch.Tensor | None] | None = None
        # Scratch reused by every step (int64 indices per device, saved values per device and dtype): the
        # same bytes were allocated and freed every step before, and the fresh pages of a ~100 MB
        # allocation cost page faults that made the snapshot ~2x slower (smollm2-135m, CPU).
        self._index_workspace: dict = {}
        self._value_workspace: dict = {}

    def invalidate(self) -> None:
        self._cache = {}

    @property
    def holds_snapshot(self) -> bool:
        return self._saved is not None

    def unit_view(self, index: int, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """A parameter (or its gradient) as (units, ...) so that dim 0 indexes the selectable units."""
        tensor = self.params[index].data if tensor is None else tensor
        if self.granularity == "row" and tensor.dim() >= 1:
            return tensor.view(tensor.shape[0], -1)
        return tensor.view(-1)

    def indices_for(self, task: str, tasks: dict) -> list[torch.Tensor | None]:
        """Per parameter: sorted int32 unit indices a step on ``task`` must leave unchanged (None: nothing)."""
        if task in self._cache:
            return self._cache[task]
        own = tasks.get(task)
        others = [s for name, s in tasks.items() if name != task and s.has_mask]
        subtract_own = self.overlap == "share" and own is not None and own.has_mask
        protection: list[torch.Tensor | None] = []
        for i in range(len(self.params)):
            sources = [other.masks[i] for other in others if other.masks[i].numel()]
            if not sources:
                protection.append(None)
                continue
            if len(sources) == 1 and not (subtract_own and own.masks[i].numel()):
                indices = sources[0]
            else:
                union = torch.zeros(self.units[i], dtype=torch.bool, device=sources[0].device)
                for source in sources:
                    union[source.long()] = True
                if subtract_own and own.masks[i].numel():
                    union[own.masks[i].long()] = False
                indices = torch.nonzero(union).squeeze(1).int()
            protection.append(indices if indices.numel() else None)
        self._cache[task] = protection
        return protection

    def protected_bool(self, task: str, tasks: dict, index: int) -> torch.Tensor:
        protection = self.indices_for(task, tasks)[index]
        param = self.params[index]
        if protection is None:
            return torch.zeros_like(param, dtype=torch.bool)
        return unit_mask_to_param_shape(unit_bool(protection, self.units[index]), param, self.granularity)

    @staticmethod
    def _reserve(store: dict, key, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buffer = store.get(key)
        if buffer is None or buffer.numel() < size:  # grows to the largest step seen, then is reused
            buffer = store[key] = torch.empty(size, dtype=dtype, device=device)
        return buffer

    @torch.no_grad()
    def snapshot(self, task: str, tasks: dict) -> None:
        """Before ``optimizer.step()``: save protected values (and zero their gradients)."""
        protection = self.indices_for(task, tasks)
        index_offsets: dict = {}
        value_offsets: dict = {}
        if self.isolation_impl == "snapshot":
            index_need: dict = {}
            value_need: dict = {}
            for i, protected in enumerate(protection):
                if protected is not None:
                    device, dtype = protected.device, self.params[i].dtype
                    index_need[device] = index_need.get(device, 0) + protected.numel()
                    per_unit = self.params[i].numel() // self.units[i]
                    value_need[(device, dtype)] = value_need.get((device, dtype), 0) + protected.numel() * per_unit
            index_buffers = {d: self._reserve(self._index_workspace, d, n, torch.long, d) for d, n in index_need.items()}
            value_buffers = {k: self._reserve(self._value_workspace, k, n, k[1], k[0]) for k, n in value_need.items()}
        saved: list[torch.Tensor | None] = []
        active: list[torch.Tensor | None] = []
        for i, (param, protected) in enumerate(zip(self.params, protection)):
            if protected is None:
                saved.append(None)
                active.append(None)
                continue
            if self.isolation_impl == "snapshot":
                device, n = protected.device, protected.numel()
                start = index_offsets.get(device, 0)
                index_offsets[device] = start + n
                indices = index_buffers[device][start:start + n]
                indices.copy_(protected)  # int32 -> int64: index_copy_ / index_fill_ need int64
                view = self.unit_view(i)
                key = (device, param.dtype)
                count = n * (view.numel() // max(1, view.shape[0]))
                start = value_offsets.get(key, 0)
                value_offsets[key] = start + count
                values = value_buffers[key][start:start + count].view(n, *view.shape[1:])
                torch.index_select(view, 0, indices, out=values)
                saved.append(values)
            else:
                indices = protected.long()
                saved.append(param.detach().clone())
            active.append(indices)
            if self.zero_protected_grads and param.grad is not None:
                self.unit_view(i, param.grad).index_fill_(0, indices, 0)
        self._active = active
        self._saved = saved if any(t is not None for t in saved) else None

    @torch.no_grad()
    def restore(self) -> None:
        """After ``optimizer.step()``: write the protected values back (bit-identical)."""
        if self._saved is None:
            return
        for i, (protected, saved) in enumerate(zip(self._active, self._saved)):
            if saved is None:
                continue
            if self.isolation_impl == "snapshot":
                self.unit_view(i).index_copy_(0, protected, saved)
            else:
                param = self.params[i]
                keep_old = unit_mask_to_param_shape(unit_bool(protected, self.units[i]), param, self.granularity)
                param.copy_(torch.where(keep_old, saved, param))
        self._saved, self._active = None, []

    def workspace_nbytes(self) -> int:
        """Scratch reused by every snapshot (indices + saved values of one step); not part of the state."""
        return sum(t.numel() * t.element_size()
                   for store in (self._index_workspace, self._value_workspace) for t in store.values())

    def cache_nbytes(self, mask_tensor_ids: set[int]) -> int:
        return sum(t.numel() * t.element_size() for protection in self._cache.values() for t in protection
                   if t is not None and id(t) not in mask_tensor_ids)
