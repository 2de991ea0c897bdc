"""Per-task replay buffers: a few training batches per task, kept in the EPI state, on which a task that
is absent from the current stage re-estimates its importance with the current weights.

Batches are captured from the model's own forward inputs (a forward pre-hook that records the keyword
tensors of training-mode forwards with gradients enabled), so any training loop or Trainer works without
changes; each optimizer step offers its last micro-batch to the task's reservoir (uniform over the
task's steps, seeded). Replay computes gradients with ``torch.autograd.grad`` in eval mode, so the
current step's ``.grad`` and the dropout RNG stream are untouched.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import torch


class NoReplayLoss(ValueError):
    """The model's forward output carries no loss, so a captured batch cannot be replayed by default."""


class BatchCapture:
    """Remembers the tensor keyword arguments of the latest training forward of ``model``."""

    def __init__(self, model: torch.nn.Module):
        self.latest: dict[str, torch.Tensor] | None = None
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            batch = {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
            batch.update({f"__arg{i}": v for i, v in enumerate(args) if isinstance(v, torch.Tensor)})
            self.latest = batch or None
        return None

    def take(self) -> dict[str, torch.Tensor] | None:
        batch, self.latest = self.latest, None
        return batch

    def close(self) -> None:
        self._handle.remove()


class ReplayBuffer:
    """Reservoir of at most ``capacity`` batches (dicts of tensors) of one task."""

    def __init__(self, task: str, capacity: int, seed: int):
        self.task, self.capacity = task, int(capacity)
        self.batches: list[dict[str, torch.Tensor]] = []
        self.offered = 0
        self._generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(task.encode())) % (1 << 62))

    def offer(self, batch: Mapping[str, torch.Tensor]) -> None:
        if self.capacity <= 0:
            return
        self.offered += 1
        if len(self.batches) < self.capacity:
            slot = len(self.batches)
            self.batches.append({})
        else:
            slot = int(torch.randint(self.offered, (1,), generator=self._generator))
            if slot >= self.capacity:
                return
        self.batches[slot] = {k: v.detach().clone() for k, v in batch.items()}

    # ---- state (safetensors-friendly) ----
    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}/{b}/{key}": value.contiguous() for b, batch in enumerate(self.batches)
                for key, value in batch.items()}

    def meta(self) -> dict:
        return {"offered": self.offered, "batches": len(self.batches), "rng": self._generator.get_state().tolist()}

    def load(self, tensors: Mapping[str, torch.Tensor], prefix: str, meta: dict, device) -> None:
        self.offered = int(meta["offered"])
        self._generator.set_state(torch.tensor(meta["rng"], dtype=torch.uint8))
        self.batches = []
        for b in range(int(meta["batches"])):
            head = f"{prefix}/{b}/"
            self.batches.append({k[len(head):]: v.to(device) for k, v in tensors.items() if k.startswith(head)})


def default_replay_loss(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch)``'s loss: ``.loss``, ``["loss"]`` or a scalar first output."""
    args = [batch[k] for k in sorted(k for k in batch if k.startswith("__arg"))]
    kwargs = {k: v for k, v in batch.items() if not k.startswith("__arg")}
    output = model(*args, **kwargs)
    loss = output if isinstance(output, torch.Tensor) else getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        loss = output[0]
    if loss is None or not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise NoReplayLoss("EPI replay: the model's output holds no scalar loss; pass replay_loss=fn(model, batch)")
    return loss


def replay_gradients(model: torch.nn.Module, params: list[torch.Tensor], batch: Mapping[str, torch.Tensor],
                     loss_fn: Callable | None = None) -> list[torch.Tensor | None]:
    """Gradients of the replayed loss w.r.t. ``params`` (``.grad`` untouched), computed in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            loss = (loss_fn or default_replay_loss)(model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        model.train(was_training)
    return [None if g is None else g.detach() for g in grads]
