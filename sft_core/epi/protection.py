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
        self._active: list[torch.Tensor | None] = []  # int64 copies of this step's indices (transient)
        self._saved: list[torch.Tensor | None] | None = None

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

    @torch.no_grad()
    def snapshot(self, task: str, tasks: dict) -> None:
        """Before ``optimizer.step()``: save protected values (and zero their gradients)."""
        saved: list[torch.Tensor | None] = []
        active: list[torch.Tensor | None] = []
        for i, (param, protected) in enumerate(zip(self.params, self.indices_for(task, tasks))):
            if protected is None:
                saved.append(None)
                active.append(None)
                continue
            protected = protected.long()  # index_copy_ needs int64; kept only until after_step
            active.append(protected)
            if self.isolation_impl == "snapshot":
                saved.append(self.unit_view(i).index_select(0, protected))
            else:
                saved.append(param.detach().clone())
            if self.zero_protected_grads and param.grad is not None:
                self.unit_view(i, param.grad).index_fill_(0, protected, 0)
        self._active = active
        self._saved = saved if any(s is not None for s in saved) else None

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

    def cache_nbytes(self, mask_tensor_ids: set[int]) -> int:
        return sum(t.numel() * t.element_size() for protection in self._cache.values() for t in protection
                   if t is not None and id(t) not in mask_tensor_ids)
