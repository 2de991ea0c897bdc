"""``fisher_mb``: the squared gradient of every micro-batch, summed over the step's micro-batches.

``fisher`` squares the step's accumulated (mean) gradient, so it ranks highest the elements whose
gradient points the same way in every example: often the ones every task pushes (issue 9, finding 2).
The empirical Fisher proper averages squares of per-sample gradients, E[g_i^2] = E[g_i]^2 + Var(g_i):
elements whose gradient varies with the input (data-specific ones) also score. ``fisher_mb`` takes that
average at micro-batch resolution: a tensor hook on every tracked parameter receives the gradient of
each backward pass (before it is accumulated into ``.grad``) and adds its square to a per-parameter fp32
buffer; at ``before_step`` the buffer is the step's saliency and is reset.

With one backward per optimizer step (no gradient accumulation) it equals ``fisher``; it differs with
gradient accumulation (e.g. ``per_device_train_batch_size=1``, ``gradient_accumulation_steps=8``: the
squares of 8 single-example gradients). Costs: 4 bytes per trainable parameter of working memory (the
buffer; not part of the saved state) and one extra elementwise pass per micro-batch, on every step
(the hooks cannot know whether ``importance_interval`` will use the step). Under DDP the hooks
see each rank's local gradient, so ranks' importance differ slightly and masks are taken from rank 0
(``EPIConfig.sync_masks_across_ranks``). Replay (absent tasks) has one gradient per replayed batch and
squares it, like ``fisher``.
"""

from __future__ import annotations

import contextlib

import torch

from .importance import register_estimator
from .importance_gradient import FisherEstimator


class MicroBatchSquares:
    """Sums g*g of every backward pass per parameter until ``take()``."""

    def __init__(self, params: list[torch.Tensor]):
        self.buffers: list[torch.Tensor | None] = [None] * len(params)
        self.seen = [False] * len(params)
        self._recording = True
        self._handles = [param.register_hook(self._hook(i)) for i, param in enumerate(params)]

    def _hook(self, index: int):
        def record(grad: torch.Tensor) -> None:
            if not self._recording:
                return
            with torch.no_grad():
                if self.buffers[index] is None:
                    self.buffers[index] = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
                buffer = self.buffers[index]
                if not self.seen[index]:
                    buffer.zero_()
                    self.seen[index] = True
                g = grad.float() if grad.dtype != torch.float32 else grad
                buffer.addcmul_(g, g)
        return record

    def take(self) -> list[torch.Tensor | None] | None:
        """The step's summed squares per parameter (None where no backward reached it); then reset."""
        if not any(self.seen):
            return None
        taken = [buffer if seen else None for buffer, seen in zip(self.buffers, self.seen)]
        self.seen = [False] * len(self.seen)  # buffers are zeroed lazily by the next backward
        return taken

    @contextlib.contextmanager
    def paused(self):
        previous, self._recording = self._recording, False
        try:
            yield
        finally:
            self._recording = previous

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@register_estimator
class FisherMicroBatchEstimator(FisherEstimator):
    """Sum over the step's micro-batches of the squared micro-batch gradient (see the module docstring)."""

    name = "fisher_mb"
    squared_gradient = True  # for a single gradient (replay) it is exactly fisher

    def make_collector(self, params: list[torch.Tensor]) -> MicroBatchSquares:
        return MicroBatchSquares(params)
