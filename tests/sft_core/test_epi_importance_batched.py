"""The accelerator path of the fisher EMA update (multi-tensor kernels) equals the per-tensor fold bit for bit."""

from __future__ import annotations

import pytest
import torch

from sft_core.epi.importance import ImportanceAccumulator, get_estimator


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_batched_fold_is_bit_identical_to_the_per_tensor_fold(dtype, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (300,), (64, 33), (1,), (0,)]
    grads = [torch.randn(shape, generator=generator) * 10 ** float(i - 2) for i, shape in enumerate(shapes)]
    grads.append(torch.zeros(4))  # no evidence: its EMA must stay untouched
    per_tensor = ImportanceAccumulator(get_estimator("fisher"), "element", 0.9, dtype)
    batched = ImportanceAccumulator(get_estimator("fisher"), "element", 0.9, dtype)
    monkeypatch.setattr(ImportanceAccumulator, "_BATCH_ELEMENTS", 400)  # several groups, one over-size tensor
    emas_a = [torch.rand(g.numel(), generator=generator).to(dtype) for g in grads]
    emas_b = [e.clone() for e in emas_a]
    for step in range(3):
        flat = [g.reshape(-1) * (step + 1) for g in grads]
        squares = [float(g.double().square().mean()) if g.numel() else 0.0 for g in flat]
        for ema, grad, mean_square in zip(emas_a, flat, squares):
            if 0 < mean_square < float("inf"):
                per_tensor._fold(ema, grad, grad, 0.9, 0.1 / mean_square)
        batched._fold_squares_batched(emas_b, flat, squares, 0.9)
    for a, b in zip(emas_a, emas_b):
        assert torch.equal(a, b)
