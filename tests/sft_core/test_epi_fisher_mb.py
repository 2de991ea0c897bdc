"""`fisher_mb`: per-micro-batch squared gradients through tensor hooks, behind the estimator interface."""

from __future__ import annotations

import torch

from sft_core.epi import EPIConfig, attach_epi

torch.set_num_threads(1)


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 2))


def micro_batches(step: int, count: int):
    generator = torch.Generator().manual_seed(step)
    return [(torch.randn(2, 6, generator=generator), torch.randn(2, 2, generator=generator)) for _ in range(count)]


def run(saliency: str, count: int, steps: int = 3):
    model = make_model()
    isolator = attach_epi(model, None, EPIConfig(saliency=saliency, importance_dtype="float32", ema_decay=0.5,
                                                 importance_interval=1, warmup_steps=1000, replay_batches=0))
    expected = [torch.zeros(p.numel()) for p in model.parameters()]
    for step in range(steps):
        squares = [torch.zeros(p.numel()) for p in model.parameters()]
        for inputs, targets in micro_batches(step, count):
            loss = torch.nn.functional.mse_loss(model(inputs), targets) / count
            grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
            for square, g in zip(squares, grads):
                square += g.reshape(-1).square()
            loss.backward()
        for ema, square in zip(expected, squares):
            ema.mul_(0.5).add_(square / square.mean(), alpha=0.5)
        isolator.before_step("a")
        isolator.after_step("a")
        model.zero_grad()
    return isolator, expected


def test_fisher_mb_is_the_ema_of_summed_micro_batch_squares():
    isolator, expected = run("fisher_mb", count=4)
    for ema, reference in zip(isolator.tasks["a"].importance, expected):
        torch.testing.assert_close(ema, reference, rtol=1e-5, atol=1e-7)


def test_fisher_mb_differs_from_fisher_with_accumulation_and_equals_it_without():
    accumulated, _ = run("fisher_mb", count=4)
    squared_mean, _ = run("fisher", count=4)
    assert any(not torch.allclose(a, b) for a, b in zip(accumulated.tasks["a"].importance,
                                                        squared_mean.tasks["a"].importance))
    single, _ = run("fisher_mb", count=1)
    fisher, _ = run("fisher", count=1)
    for a, b in zip(single.tasks["a"].importance, fisher.tasks["a"].importance):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fisher_mb_ignores_backward_passes_during_replay_and_removes_its_hooks_on_close():
    model = make_model()
    isolator = attach_epi(model, None, EPIConfig(saliency="fisher_mb", warmup_steps=1000, replay_batches=0))
    collector = isolator.collector
    with collector.paused():
        model(torch.randn(3, 6)).sum().backward()
    assert collector.take() is None
    model.zero_grad()
    model(torch.randn(3, 6)).sum().backward()
    assert collector.take() is not None
    isolator.close()
    model(torch.randn(3, 6)).sum().backward()
    assert collector.take() is None
    assert isolator.collector is None
