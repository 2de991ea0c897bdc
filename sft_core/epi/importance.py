"""Importance estimators: the small interface every estimator implements, their registry, and the
normalised moving average (EMA) that every estimator feeds.

Adding an estimator is one file: subclass :class:`ImportanceEstimator`, decorate it with
:func:`register_estimator`, and import the module in :func:`_load_builtin_estimators` (or anywhere before
``EPIConfig(saliency=...)`` is built). The built-in gradient family lives in ``importance_gradient.py``.

Normalisation and storage (one update of task t's EMA, per tensor)::

    s    = estimator.saliency(param, grad)             # >= 0, per element (summed per row for "row")
    ema  = d * ema + (1 - d) * s / mean(s)             # mean over the tensor's units, fp32 arithmetic

Dividing by the per-tensor mean makes every update count equally whatever the gradient scale, and keeps
the stored values O(1) (mean 1 - d after the first update). Values are stored in ``importance_dtype``:
``bfloat16`` has fp32's exponent range, so nothing underflows; ``float16`` saturates at its maximum and
is floored at its smallest normal number. Tensors whose saliency is all zero (or not finite, e.g. an
overflowed mixed-precision step) are skipped: no evidence, no decay.
"""

from __future__ import annotations

import torch

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ImportanceEstimator:
    """Per-element importance of one step's gradient for one tensor."""

    name: str = ""
    #: True when ``saliency`` is exactly ``grad ** 2``: the EMA update then fuses it (no temporary).
    squared_gradient: bool = False

    def saliency(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def make_collector(self, params: list[torch.Tensor]):
        """Estimators that must see every backward pass of a step (not only the accumulated gradient)
        return an object with ``take() -> list[Tensor | None] | None`` (the step's saliency per
        parameter, then reset), ``paused()`` (a context manager: backward passes inside it are not
        recorded, e.g. replay) and ``close()``. The default, None, means ``saliency(param, grad)`` on the
        step's gradient is all the estimator needs."""
        return None


ESTIMATORS: dict[str, ImportanceEstimator] = {}


def register_estimator(cls: type[ImportanceEstimator]) -> type[ImportanceEstimator]:
    if not cls.name:
        raise ValueError(f"{cls.__name__}: an importance estimator needs a non-empty name")
    ESTIMATORS[cls.name] = cls()
    return cls


def _load_builtin_estimators() -> None:
    from . import importance_gradient  # noqa: F401  (registers fisher, taylor)
    from . import importance_microbatch  # noqa: F401  (registers fisher_mb)


def estimator_names() -> tuple[str, ...]:
    _load_builtin_estimators()
    return tuple(ESTIMATORS)


def get_estimator(name: str) -> ImportanceEstimator:
    _load_builtin_estimators()
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(f"unknown importance estimator {name!r}: expected one of {', '.join(ESTIMATORS)}") from None


def storage_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


class ImportanceAccumulator:
    """Folds one step's gradients into a task's per-tensor EMAs (see the module docstring)."""

    _CHUNK = 1 << 18

    def __init__(self, estimator: ImportanceEstimator, granularity: str, decay: float, dtype: torch.dtype):
        self.estimator = estimator
        self.granularity = granularity
        self.decay = float(decay)
        self.dtype = dtype
        self._chunk_buffer: torch.Tensor | None = None
        if dtype == torch.float16:
            self._ceiling, self._floor = torch.finfo(dtype).max, torch.finfo(dtype).tiny
        elif dtype == torch.bfloat16:
            self._ceiling, self._floor = None, torch.finfo(dtype).tiny
        else:
            self._ceiling, self._floor = None, None

    def new_emas(self, units: list[int], params: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.zeros(n, dtype=self.dtype, device=p.device) for n, p in zip(units, params)]

    @torch.no_grad()
    def update(self, emas: list[torch.Tensor], params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
        indices = [i for i, g in enumerate(grads) if g is not None]
        if not indices:
            return
        keep = self.decay
        if self.estimator.squared_gradient and self.granularity == "element":
            # Fused: mean(g^2) = ||g||^2 / n, then ema = keep*ema + scale*g*g in place (no g^2 temporary).
            flat = [grads[i].reshape(-1) for i in indices]
            if flat[0].device.type == "cpu":
                # one tensor at a time: the fold re-reads the gradient the norm just brought into cache
                mean_squares = (float(torch.linalg.vector_norm(g, dtype=torch.float32)) ** 2 / g.numel()
                                for g in flat)
            else:  # accelerators: one batched norm and a single host sync
                norms = torch.stack(torch._foreach_norm(flat)).float()
                mean_squares = (norms.square() / torch.tensor([g.numel() for g in flat], dtype=torch.float32,
                                                              device=norms.device)).tolist()
                self._fold_squares_batched([emas[i] for i in indices], flat, mean_squares, keep)
                return
            for i, grad, mean_square in zip(indices, flat, mean_squares):
                if 0 < mean_square < float("inf"):  # False for NaN too: no evidence, no decay
                    self._fold(emas[i], grad, grad, keep, (1 - keep) / mean_square)
            return
        for i in indices:
            self._fold_saliency(emas[i], params[i], self.estimator.saliency(params[i], grads[i]), keep)

    @torch.no_grad()
    def update_from_saliency(self, emas: list[torch.Tensor], params: list[torch.Tensor],
                             saliencies: list[torch.Tensor | None]) -> None:
        """Fold saliencies an estimator's collector already computed (see ``make_collector``)."""
        for ema, param, saliency in zip(emas, params, saliencies):
            if saliency is not None:
                self._fold_saliency(ema, param, saliency, self.decay)

    def _fold_saliency(self, ema: torch.Tensor, param: torch.Tensor, saliency: torch.Tensor, keep: float) -> None:
        if self.granularity == "row" and param.dim() >= 1:
            saliency = saliency.reshape(param.shape[0], -1).sum(dim=1)
        saliency = saliency.reshape(-1).float()
        mean = float(saliency.mean())
        if 0 < mean < float("inf"):  # False for NaN too
            self._fold(ema, saliency, None, keep, (1 - keep) / mean)

    _BATCH_ELEMENTS = 1 << 26  # fp32 scratch per batch of tensors: 256 MB

    def _fold_squares_batched(self, emas: list[torch.Tensor], grads: list[torch.Tensor],
                              mean_squares: list[float], keep: float) -> None:
        """``_fold(ema, g, g, keep, (1 - keep) / mean_square)`` for many tensors with multi-tensor kernels.

        On an accelerator the per-tensor fold is four small kernels per parameter tensor (~1,100 launches a
        step for smollm2-135m), which dominate when processes share a GPU; the ``torch._foreach_*`` ops
        launch a few kernels per group of tensors. Same arithmetic in the same order (fp32, one rounding
        on the store): bit-identical to the per-tensor fold on CPU (tested); not timed on a GPU yet."""
        chosen = [(e, g, (1 - keep) / m) for e, g, m in zip(emas, grads, mean_squares) if 0 < m < float("inf")]
        if self.dtype == torch.float16:  # saturation and the subnormal floor: per tensor (rare dtype)
            for ema, grad, scale in chosen:
                self._fold(ema, grad, grad, keep, scale)
            return
        start = 0
        while start < len(chosen):
            stop, elements = start, 0
            while stop < len(chosen) and (stop == start or elements + chosen[stop][0].numel() <= self._BATCH_ELEMENTS):
                elements += chosen[stop][0].numel()
                stop += 1
            group = chosen[start:stop]
            targets = [ema for ema, _, _ in group]
            works = [ema.float() for ema in targets] if self.dtype != torch.float32 else targets
            torch._foreach_mul_(works, keep)
            torch._foreach_addcmul_(works, [g for _, g, _ in group], [g for _, g, _ in group],
                                    [scale for _, _, scale in group])
            if works is not targets:
                torch._foreach_copy_(targets, works)
            start = stop

    def _fold(self, ema: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None, keep: float, scale: float) -> None:
        """ema = keep * ema + scale * a * b (or scale * a), computed in fp32, stored saturated and floored.

        Low-precision EMAs on CPU go through a reused fp32 chunk buffer: mixed-dtype elementwise kernels
        are several times slower on CPU than fp32 ones, and the buffer stays in cache."""
        if ema.dtype == torch.float32:
            ema.mul_(keep)
            ema.add_(a, alpha=scale) if b is None else ema.addcmul_(a, b, value=scale)
            return
        if ema.device.type != "cpu":
            work = ema.float().mul_(keep)
            work.add_(a, alpha=scale) if b is None else work.addcmul_(a, b, value=scale)
            ema.copy_(self._clip(work))
            return
        if self._chunk_buffer is None:
            self._chunk_buffer = torch.empty(self._CHUNK, dtype=torch.float32)
        for start in range(0, ema.numel(), self._CHUNK):
            stop = min(ema.numel(), start + self._CHUNK)
            work = self._chunk_buffer[:stop - start]
            work.copy_(ema[start:stop]).mul_(keep)
            if b is None:
                work.add_(a[start:stop], alpha=scale)
            else:
                work.addcmul_(a[start:stop], b[start:stop], value=scale)
            ema[start:stop].copy_(self._clip(work))

    def _clip(self, work: torch.Tensor) -> torch.Tensor:
        if self._ceiling is not None:
            work.clamp_(max=self._ceiling)
        if self._floor is not None and self.dtype == torch.float16:
            # fp16's normal range ends at 6e-5: keep every unit that ever had evidence strictly positive
            work.copy_(torch.where((work > 0) & (work < self._floor), self._floor, work))
        return work
