"""Fixes from the EPI review (issue 9): overlap default, importance normalisation and storage, task-specific
selection, absent-task refresh from a replay buffer, the random-mask control, compact state."""

from __future__ import annotations

import pytest
import torch

from sft_core.epi import EPIConfig, ParameterIsolator, attach_epi, read_drift_log
from sft_core.epi.importance import ImportanceAccumulator, get_estimator

torch.set_num_threads(1)


class QuadraticTasks(torch.nn.Module):
    """loss = sum_i coeffs_i * (w_i - targets_i)^2: each task is a (coeffs, targets) batch, and the model
    returns its own scalar loss (so replay works with the default loss)."""

    def __init__(self, n: int = 40, init: torch.Tensor | None = None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(n) if init is None else init.clone())

    def forward(self, coeffs, targets):
        return (coeffs * (self.w - targets) ** 2).sum()


def quadratic_step(model, isolator, optimizer, task, coeffs, targets):
    model(coeffs=coeffs, targets=targets).backward()
    isolator.step(task)
    optimizer.zero_grad()


def two_task_overlap_run(overlap: str):
    """Task a owns coordinates 0-9 (its mask); task b's gradient is largest on the same coordinates."""
    model = QuadraticTasks(n=40, init=torch.zeros(40))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    config = EPIConfig(isolation_ratio=0.25, warmup_steps=2, update_interval=2, overlap=overlap, replay_batches=0)
    isolator = attach_epi(model, optimizer, config)
    coeffs_a, targets_a = torch.zeros(40), torch.zeros(40)
    coeffs_a[:10], targets_a[:10] = 1.0, 1.0
    for _ in range(4):
        quadratic_step(model, isolator, optimizer, "a", coeffs_a, targets_a)
    mask_a = isolator.mask("a", "w").clone()
    before = model.w.detach().clone()
    coeffs_b, targets_b = torch.ones(40), torch.full((40,), -3.0)
    targets_b[:10] = -30.0  # b pulls hardest on a's coordinates: they land in b's own mask too
    for _ in range(6):
        quadratic_step(model, isolator, optimizer, "b", coeffs_b, targets_b)
    overlap_ab = isolator.mask_overlap("a", "b")["overlap"]
    moved = int((model.w.detach() != before)[mask_a].sum())
    return mask_a, moved, overlap_ab


def test_default_overlap_freezes_units_protected_by_another_task():
    assert EPIConfig().overlap == "freeze"
    mask_a, moved, overlap_ab = two_task_overlap_run(EPIConfig().overlap)
    assert mask_a.sum() == 10 and overlap_ab > 0.5  # the masks do overlap ...
    assert moved == 0  # ... and still nothing of a's mask moves while b trains


def test_share_overlap_lets_another_task_rewrite_a_mask():
    mask_a, moved, overlap_ab = two_task_overlap_run("share")
    assert overlap_ab > 0.5 and moved == int(mask_a.sum())  # the erosion `freeze` exists to prevent


def test_importance_is_normalised_by_the_tensor_mean_and_nothing_with_a_gradient_underflows():
    param = torch.nn.Parameter(torch.zeros(1000))
    grad = torch.logspace(-8, 2, 1000)  # saliency g^2 spans 20 orders of magnitude
    config = EPIConfig()
    accumulator = ImportanceAccumulator(get_estimator(config.saliency), "element", config.ema_decay, torch.bfloat16)
    ema = accumulator.new_emas([1000], [param])
    accumulator.update(ema, [param], [grad])
    assert ema[0].dtype == torch.bfloat16
    assert (ema[0] > 0).all(), "a unit with a non-zero gradient must keep a positive importance"
    assert float(ema[0].float().mean()) == pytest.approx(1 - config.ema_decay, rel=0.01)  # mean-normalised
    # the old storage (fp16 of max-normalised values) lost the small units entirely
    old = (grad.square() / grad.square().max() * (1 - config.ema_decay)).half()
    assert int((old == 0).sum()) > 300


def test_float16_importance_saturates_instead_of_overflowing_and_is_floored():
    param = torch.nn.Parameter(torch.zeros(100_000))
    grad = torch.full((100_000,), 1e-3)
    grad[0] = 1e4  # one huge outlier: its normalised saliency exceeds fp16's range
    accumulator = ImportanceAccumulator(get_estimator("fisher"), "element", 0.0, torch.float16)
    ema = accumulator.new_emas([100_000], [param])
    accumulator.update(ema, [param], [grad])
    assert torch.isfinite(ema[0]).all() and float(ema[0][0]) == torch.finfo(torch.float16).max
    assert (ema[0][1:] > 0).all()


def test_ema_skips_non_finite_gradients():
    param = torch.nn.Parameter(torch.zeros(8))
    accumulator = ImportanceAccumulator(get_estimator("fisher"), "element", 0.5, torch.float32)
    ema = accumulator.new_emas([8], [param])
    accumulator.update(ema, [param], [torch.ones(8)])
    accumulator.update(ema, [param], [torch.full((8,), float("inf"))])  # an overflowed AMP step
    assert torch.allclose(ema[0], torch.full((8,), 0.5)) and torch.isfinite(ema[0]).all()


def specificity_masks(selection_score: str):
    """Both tasks have large gradients on the shared coordinates 0-9; a also on 10-19, b on 20-29."""
    model = QuadraticTasks(n=40, init=torch.zeros(40))
    isolator = ParameterIsolator(model, EPIConfig(isolation_ratio=0.25, warmup_steps=4, update_interval=4,
                                                  selection_score=selection_score, replay_batches=0))
    for step in range(4):
        task = "ab"[step % 2]
        grad = torch.zeros(40)
        grad[:10] = 3.0
        grad[10:20] = 1.0 if task == "a" else 0.0
        grad[20:30] = 1.0 if task == "b" else 0.0
        model.w.grad = grad
        isolator.before_step(task)
        isolator.after_step(task)
    return isolator


def test_specificity_score_separates_the_tasks_masks():
    plain = specificity_masks("importance")
    assert plain.mask_overlap("a", "b")["overlap"] == 1.0  # both protect the shared coordinates
    specific = specificity_masks("specificity")
    assert specific.mask_overlap("a", "b")["overlap"] == 0.0
    assert specific.mask("a", "w")[10:20].all() and specific.mask("b", "w")[20:30].all()


def absent_task_run(replay_batches: int, tmp_path=None):
    """Task a trains (coordinates 0-3 off target), then only task b, which drags coordinates 10-13 away
    from a's targets: a's replayed importance must move a's mask onto them."""
    init = torch.ones(40)
    init[:4] = 0.0
    model = QuadraticTasks(n=40, init=init)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = EPIConfig(isolation_ratio=0.1, warmup_steps=4, update_interval=4, release_patience=1,
                       replay_batches=replay_batches)
    isolator = attach_epi(model, optimizer, config, drift_log_path=None if tmp_path is None else tmp_path / "d.jsonl")
    coeffs_a, targets_a = torch.ones(40), torch.ones(40)
    for _ in range(4):
        quadratic_step(model, isolator, optimizer, "a", coeffs_a, targets_a)
    first_mask = torch.nonzero(isolator.mask("a", "w")).flatten().tolist()
    coeffs_b, targets_b = torch.zeros(40), torch.zeros(40)
    coeffs_b[10:14], targets_b[10:14] = 1.0, 20.0
    for _ in range(12):
        quadratic_step(model, isolator, optimizer, "b", coeffs_b, targets_b)
    return isolator, model, first_mask


def test_absent_task_re_estimates_importance_on_its_replay_buffer(tmp_path):
    isolator, model, first_mask = absent_task_run(replay_batches=2, tmp_path=tmp_path)
    assert first_mask == [0, 1, 2, 3]
    state = isolator.tasks["a"]
    assert state.replays == 3 and len(state.replay.batches) == 2  # refreshes at steps 8, 12, 16
    assert torch.nonzero(isolator.mask("a", "w")).flatten().tolist() == [10, 11, 12, 13]
    records = [r for r in read_drift_log(tmp_path / "d.jsonl") if r["task"] == "a"]
    assert records[-1]["replays"] == 3 and sum(r["added"] for r in records[1:]) == 4
    # a now protects 10-13: b stopped moving them before reaching its targets
    assert float(model.w.detach()[10:14].max()) < 19.0

    without, _, _ = absent_task_run(replay_batches=0)
    assert torch.nonzero(without.mask("a", "w")).flatten().tolist() == [0, 1, 2, 3]  # the old, static behaviour


def test_replay_leaves_the_current_steps_gradients_alone():
    isolator, model, _ = absent_task_run(replay_batches=2)
    coeffs, targets = torch.ones(40), torch.zeros(40)
    model(coeffs=coeffs, targets=targets).backward()
    grad = model.w.grad.clone()
    importance = isolator.tasks["a"].importance[0].clone()
    assert isolator.replay_importance(isolator.tasks["a"])
    assert torch.equal(model.w.grad, grad)
    assert not torch.equal(isolator.tasks["a"].importance[0], importance)


def test_replay_is_switched_off_when_the_model_returns_no_loss():
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    isolator = attach_epi(model, optimizer, EPIConfig(warmup_steps=2, update_interval=2, replay_batches=1))
    for task in ["a", "a", "b", "b", "b", "b"]:
        model(torch.randn(3, 4)).sum().backward()
        isolator.step(task)
        optimizer.zero_grad()
    assert not isolator.uses_replay and isolator.tasks["a"].has_mask


def test_resume_with_replay_buffers_is_bit_exact(tmp_path):
    def fresh():
        init = torch.ones(40)
        init[:4] = 0.0
        model = QuadraticTasks(n=40, init=init)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        config = EPIConfig(isolation_ratio=0.1, warmup_steps=2, update_interval=3, replay_batches=2)
        return model, optimizer, attach_epi(model, optimizer, config)

    generator = torch.Generator().manual_seed(0)
    schedule = [("a", torch.rand(40, generator=generator)) for _ in range(5)] + \
               [("b", torch.rand(40, generator=generator)) for _ in range(10)]

    def train(model, optimizer, isolator, steps):
        for task, coeffs in steps:
            quadratic_step(model, isolator, optimizer, task, coeffs, torch.full((40,), 3.0 if task == "b" else 1.0))

    model, optimizer, isolator = fresh()
    train(model, optimizer, isolator, schedule)
    first = fresh()
    train(*first, schedule[:7])
    first[2].save(tmp_path)
    optimizer_state, weights = first[1].state_dict(), first[0].w.detach().clone()
    resumed_model, resumed_optimizer, resumed = fresh()
    with torch.no_grad():
        resumed_model.w.copy_(weights)
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load(tmp_path)
    assert len(resumed.tasks["a"].replay.batches) == 2
    train(resumed_model, resumed_optimizer, resumed, schedule[7:])
    assert resumed.tasks["a"].replays == isolator.tasks["a"].replays > 0
    assert torch.equal(resumed_model.w, model.w)
    for task in ("a", "b"):
        assert all(torch.equal(x, y) for x, y in zip(resumed.tasks[task].masks, isolator.tasks[task].masks))


def static_and_random(method: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    head_b = torch.nn.Linear(4, 2)  # a parameter only task b ever touches
    container = torch.nn.ModuleDict({"body": model, "head_b": head_b})
    optimizer = torch.optim.SGD(container.parameters(), lr=0.01)
    isolator = attach_epi(container, optimizer, EPIConfig(method=method, isolation_ratio=0.2, probe_steps=3,
                                                          warmup_steps=3, update_interval=3))
    generator = torch.Generator().manual_seed(1)
    for step in range(12):
        task = "ab"[step % 2]
        out = model(torch.randn(8, 16, generator=generator))
        loss = out.square().mean() if task == "a" else head_b(out).square().mean()
        loss.backward()
        isolator.step(task)
        optimizer.zero_grad()
    return isolator


def test_random_control_has_the_static_mask_size_per_tensor_but_other_units():
    static, random_control = static_and_random("static"), static_and_random("random")
    for task in ("a", "b"):
        assert random_control.tasks[task].frozen
        assert random_control.tasks[task].protected_counts == static.tasks[task].protected_counts
    assert static.tasks["a"].protected_counts[-1] == 0  # a never touched head_b: nothing to protect there
    assert random_control.mask_overlap("a", "a")["overlap"] == 1.0
    differing = [not torch.equal(x, y) for x, y in zip(static.tasks["a"].masks, random_control.tasks["a"].masks)
                 if x.numel() > 4]
    assert differing and all(differing)
    again = static_and_random("random")  # seeded: reproducible
    assert all(torch.equal(x, y) for x, y in zip(again.tasks["a"].masks, random_control.tasks["a"].masks))


def test_protection_indices_are_int32_and_state_fits_the_budget():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    isolator = attach_epi(model, optimizer, EPIConfig(warmup_steps=2, update_interval=2))
    for step in range(12):
        model(torch.randn(4, 64)).square().mean().backward()
        isolator.step("abc"[step % 3])
        optimizer.zero_grad()
    protection = isolator.protector.indices_for("a", isolator.tasks)
    assert all(p is None or p.dtype == torch.int32 for p in protection) and any(p is not None for p in protection)
    nbytes = isolator.state_nbytes()
    n_params = sum(p.numel() for p in model.parameters())
    assert nbytes["importance"] == 2 * 3 * n_params  # bf16 by default
    assert nbytes["protection_cache"] > 0  # a's protection is the union of b's and c's masks
    assert (nbytes["persistent_total"] - nbytes["replay"]) <= 3 * n_params * (4 + 1 / 8)


def test_importance_interval_updates_every_kth_step_of_a_task():
    model = QuadraticTasks(n=8)
    isolator = ParameterIsolator(model, EPIConfig(importance_interval=3, warmup_steps=100, ema_decay=0.5,
                                                  importance_dtype="float32", replay_batches=0))
    values = []
    for _ in range(4):
        model.w.grad = torch.ones(8)
        isolator.before_step("a")
        isolator.after_step("a")
        values.append(float(isolator.tasks["a"].importance[0][0]))
    assert values == pytest.approx([0.5, 0.5, 0.5, 0.75])  # steps 1 and 4 update


def test_replay_is_switched_off_when_the_forward_cannot_be_replayed_from_captured_tensors():
    class NeedsFlag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x, *, mode):  # a non-tensor argument the capture does not keep
            return self.linear(x).square().mean() if mode == "loss" else self.linear(x)

    model = NeedsFlag()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    isolator = attach_epi(model, optimizer, EPIConfig(warmup_steps=2, update_interval=2, replay_batches=1))
    for task in ["a", "a", "b", "b", "b", "b"]:
        model(torch.randn(3, 4), mode="loss").backward()
        isolator.step(task)
        optimizer.zero_grad()
    assert not isolator.uses_replay and isolator.tasks["a"].has_mask


def test_multitask_trainer_replays_absent_tasks_in_a_sequential_schedule(tmp_path):
    from sft_core.sft_data import CausalLMCollator, SFTDataset
    from sft_core.testing import tiny_causal_lm
    from sft_core.trainer import MultiTaskTrainer, MultiTaskTrainingArguments

    model, tokenizer = tiny_causal_lm(seed=0)
    records = [{"task": task, "messages": [{"role": "user", "content": f"the movie {i} is {task}"},
                                           {"role": "assistant", "content": answer}]}
               for task, answer in (("pos", "positive"), ("neg", "negative")) for i in range(8)]
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=8,
                                      learning_rate=5e-3, save_strategy="no", report_to=[], disable_tqdm=True,
                                      task_schedule="sequential", task_proportions={"pos": 1, "neg": 1}, use_cpu=True)
    trainer = MultiTaskTrainer(model=model, args=args, train_dataset=SFTDataset(records, tokenizer, max_length=48),
                               data_collator=CausalLMCollator(tokenizer.pad_token_id),
                               epi_config=EPIConfig(warmup_steps=2, update_interval=2, replay_batches=2))
    trainer.train()
    first = trainer.isolator.tasks["pos"]
    assert trainer.isolator.uses_replay and len(first.replay.batches) == 2
    assert set(first.replay.batches[0]) >= {"input_ids", "labels"}  # captured from the Trainer's forward
    assert first.replays == 2  # refreshes at steps 6 and 8, while only "neg" trains
    records = [r for r in read_drift_log(tmp_path / "epi_drift.jsonl") if r["task"] == "pos"]
    assert records[-1]["replays"] == 2
