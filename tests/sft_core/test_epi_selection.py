"""EPI's fast exact top-k (radix select on float bit patterns) and the index-set re-ranking: same masks
as the plain definitions (kthvalue threshold, boolean masks, sort) on every dtype, ties and edge value."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sft_core.epi import EPIConfig, attach_epi
from sft_core.epi.masks import kth_largest_positive, top_k_indices, top_k_mask
from sft_core.epi.policy_epi import EvolvingPolicy, merge_sorted_disjoint

torch.set_num_threads(1)


def reference_top_k(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """The definition: top ceil(ratio * n) strictly positive scores, ties to the lowest index."""
    flat = scores.reshape(-1).double()
    n = flat.numel()
    k = min(n, math.ceil(ratio * n))
    mask = torch.zeros(n, dtype=torch.bool)
    order = sorted(range(n), key=lambda i: (-float(flat[i]), i))[:k]
    mask[[i for i in order if flat[i] > 0]] = True
    return mask


def score_cases(dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    tiny = {torch.float32: 1e-42, torch.float16: 1e-7, torch.bfloat16: 1e-40}[dtype]  # subnormals
    for n in (1, 5, 64, 999):
        yield torch.rand(n, generator=generator)
        yield torch.randint(0, 4, (n,), generator=generator).float()  # heavy ties and zeros
        yield torch.randn(n, generator=generator)  # negatives are never selected
        yield torch.zeros(n)
        heavy = torch.randn(n, generator=generator) * torch.exp(3 * torch.randn(n, generator=generator))
        yield heavy.square()
        values = torch.full((n,), 0.5)
        values[::3] = tiny
        values[1::7] = float("inf")
        yield values


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_radix_top_k_matches_the_definition_on_ties_negatives_and_subnormals(dtype):
    checked = 0
    for values in score_cases(dtype):
        scores = values.to(dtype)
        for ratio in (0.01, 0.1, 0.5, 1.0):
            expected = reference_top_k(scores, ratio)
            assert torch.equal(top_k_mask(scores, ratio), expected), (dtype, scores.numel(), ratio)
            top = top_k_indices(scores, ratio)
            assert torch.equal(top.indices, torch.nonzero(expected).squeeze(1))
            assert torch.equal(top.contains(torch.arange(scores.numel()), scores), expected)
            checked += 1
    assert checked == 96


def test_kth_largest_positive_is_exact_for_fp32_buckets_and_none_without_enough_positives():
    values = torch.tensor([1.0, 1.0 + 2 ** -20, 1.0 + 2 ** -21, -3.0, 0.0, 2.0])  # three share a 16-bit bucket
    assert float(kth_largest_positive(values, 1)) == 2.0
    assert float(kth_largest_positive(values, 2)) == 1.0 + 2 ** -20
    assert float(kth_largest_positive(values, 3)) == 1.0 + 2 ** -21
    assert float(kth_largest_positive(values, 4)) == 1.0
    assert kth_largest_positive(values, 5) is None


def test_merge_sorted_disjoint_equals_sorting_the_union():
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        chosen = torch.randperm(500, generator=generator)[:60 + trial]
        top = torch.sort(chosen[:40]).values
        kept = torch.sort(chosen[40:]).values
        counters = torch.randint(1, 5, (kept.numel(),), generator=generator, dtype=torch.uint8)
        merged, merged_counters = merge_sorted_disjoint(top, kept, counters)
        expected, order = torch.sort(torch.cat([top, kept]))
        assert torch.equal(merged, expected)
        assert torch.equal(merged_counters, torch.cat([torch.zeros(40, dtype=torch.uint8), counters])[order])


def reference_rerank(isolator, state):
    """The re-ranking written with boolean masks and a sort (the pre-optimisation implementation)."""
    patience = isolator.config.release_patience
    for i in range(len(isolator.params)):
        top = reference_top_k(isolator.selection_scores(state, i), isolator.config.isolation_ratio)
        previous = state.masks[i].long()
        outside = ~top[previous]
        counters = torch.where(outside, state.patience_counters[i] + 1, torch.zeros_like(state.patience_counters[i]))
        kept = outside & (counters < patience)
        merged, order = torch.sort(torch.cat([torch.nonzero(top).squeeze(1), previous[kept]]))
        state.masks[i] = merged.int()
        state.patience_counters[i] = torch.cat([torch.zeros(int(top.sum()), dtype=torch.uint8), counters[kept]])[order]


@pytest.mark.parametrize("importance_dtype,selection_score", [("bfloat16", "importance"), ("float32", "specificity")])
def test_index_set_rerank_gives_the_reference_masks_and_patience_counters(importance_dtype, selection_score):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.Tanh(), torch.nn.Linear(24, 3))
    isolator = attach_epi(model, None, EPIConfig(importance_dtype=importance_dtype, selection_score=selection_score,
                                                 release_patience=3, isolation_ratio=0.2, replay_batches=0))
    held = 0
    for refresh in range(8):
        for task in ("a", "b"):
            state = isolator.register_task(task)
            if state.importance is None:
                state.importance = isolator.accumulator.new_emas(isolator.units, isolator.params)
            grads = [torch.randn_like(p) * (1 + 3 * torch.rand_like(p)) for p in isolator.params]
            if refresh % 3 == 0:
                grads = [g.round() for g in grads]  # ties at the threshold
            isolator.accumulator.update(state.importance, isolator.params, grads)
        for task in ("a", "b"):
            state = isolator.tasks[task]
            expected = copy.deepcopy(state)
            EvolvingPolicy.rerank(isolator, state)
            isolator.tasks[task] = expected  # specificity reads the other tasks through isolator.tasks
            reference_rerank(isolator, expected)
            isolator.tasks[task] = state
            for i in range(len(isolator.params)):
                assert torch.equal(state.masks[i], expected.masks[i]), (refresh, task, i)
                assert torch.equal(state.patience_counters[i], expected.patience_counters[i]), (refresh, task, i)
                held += int((state.patience_counters[i] > 0).sum())
    assert held > 0  # the hysteresis path (kept units merged back in) was exercised
