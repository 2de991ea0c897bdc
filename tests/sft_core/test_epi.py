"""EPI core: bit-exact isolation, drift vs static, hysteresis, checkpoint/resume, masks and config."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sft_core.epi import EPIConfig, ParameterIsolator, attach_epi, read_drift_log
from sft_core.epi.masks import pack_bits, top_k_mask, unpack_bits

torch.set_num_threads(1)


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def task_batch(task: str, step: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed * 10_000 + step)
    inputs = torch.randn(8, 16, generator=generator)
    offset = {"a": 0.0, "b": 3.0}.get(task, -3.0)
    targets = torch.sin(inputs[:, :4] + offset)
    return inputs, targets


def train_steps(model, optimizer, isolator, schedule, seed=0, start=0, on_step=None):
    for step, task in enumerate(schedule, start=start):
        inputs, targets = task_batch(task, step, seed)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        isolator.step(task)
        if on_step is not None:
            on_step(task, before)
        optimizer.zero_grad()


OPTIMIZERS = {
    "adamw_weight_decay": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.01),
}


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("granularity,impl,overlap", [("element", "snapshot", "share"), ("row", "snapshot", "freeze"),
                                                       ("element", "full_copy", "freeze")])
def test_protected_elements_are_bit_identical_and_the_rest_moves(optimizer_name, granularity, impl, overlap):
    model = make_mlp()
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    config = EPIConfig(method="epi", isolation_ratio=0.2, warmup_steps=3, update_interval=3,
                       granularity=granularity, isolation_impl=impl, overlap=overlap)
    isolator = attach_epi(model, optimizer, config)
    names = [name for name, _ in model.named_parameters()]
    checked = {"protected": 0, "moved": 0, "free": 0}

    def check(task, before):
        for name, param, old in zip(names, model.parameters(), before):
            protected = isolator.protected_for(task, name).expand_as(param)
            assert torch.equal(param.detach()[protected], old[protected]), f"{name} protected element moved"
            checked["protected"] += int(protected.sum())
            checked["moved"] += int((param.detach() != old)[~protected].sum())
            checked["free"] += int((~protected).sum())

    # task a builds its mask, then many steps on b (with a's momentum still in the optimizer state)
    train_steps(model, optimizer, isolator, ["a"] * 6 + ["b"] * 30 + ["a", "b"] * 6, on_step=check)
    assert checked["protected"] > 0
    assert checked["moved"] > 0.9 * checked["free"]

    # across the whole b phase, a's frozen-in-time mask (a took no steps) is untouched
    mask_a = {name: isolator.mask("a", name).expand_as(p).clone() for name, p in model.named_parameters()}
    snapshot = {name: p.detach().clone() for name, p in model.named_parameters()}
    ever_in_b = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in model.named_parameters()}

    def record_b_mask(task, before):
        for name, param in model.named_parameters():
            ever_in_b[name] |= isolator.mask("b", name).expand_as(param)

    train_steps(model, optimizer, isolator, ["b"] * 12, start=100, on_step=record_b_mask)
    for name, param in model.named_parameters():
        protected = mask_a[name]
        if overlap == "share":  # b may train elements that are in its own mask at the time of the step
            protected = protected & ~ever_in_b[name]
        assert torch.equal(param.detach()[protected], snapshot[name][protected])
        assert not torch.equal(param.detach(), snapshot[name])


def linear_shift_problem(method: str, patience: int = 2):
    """Task a's gradient lives on coordinates 0-19, then (mid-training) on 100-119; task b on 200-219."""
    weights = torch.nn.Parameter(torch.zeros(300))
    model = torch.nn.Module()
    model.weights = weights
    optimizer = torch.optim.SGD([weights], lr=1e-3)
    config = EPIConfig(method=method, isolation_ratio=20 / 300, warmup_steps=4, update_interval=4, probe_steps=8,
                       release_patience=patience, ema_decay=0.5)
    return model, optimizer, config


def run_shift_problem(method: str, log_path) -> ParameterIsolator:
    model, optimizer, config = linear_shift_problem(method)
    isolator = attach_epi(model, optimizer, config, drift_log_path=log_path)
    generator = torch.Generator().manual_seed(0)
    for step in range(80):
        task = "a" if step % 2 == 0 else "b"
        start = {"a": 0 if step < 40 else 100, "b": 200}[task]
        coefficients = torch.zeros(300)
        coefficients[start:start + 20] = 1.0 + torch.rand(20, generator=generator)
        (model.weights * coefficients).sum().backward()
        isolator.step(task)
        optimizer.zero_grad()
    return isolator


def test_epi_masks_follow_shifting_importance_and_static_masks_do_not(tmp_path):
    epi = run_shift_problem("epi", tmp_path / "epi.jsonl")
    static = run_shift_problem("static", tmp_path / "static.jsonl")
    epi_mask, static_mask = epi.mask("a", "weights"), static.mask("a", "weights")
    assert epi_mask[100:120].all() and not epi_mask[0:20].any(), "EPI should move a's mask to the new coordinates"
    assert static_mask[0:20].all() and not static_mask[100:120].any(), "static mask must stay on the probe coordinates"
    assert epi.mask("b", "weights")[200:220].all()

    epi_records = [r for r in read_drift_log(tmp_path / "epi.jsonl") if r["task"] == "a"]
    static_records = [r for r in read_drift_log(tmp_path / "static.jsonl") if r["task"] == "a"]
    after_shift = [r for r in epi_records if r["step"] > 40]
    assert sum(r["released"] for r in after_shift) == 20 and sum(r["added"] for r in after_shift) == 20
    assert min(r["jaccard"] for r in after_shift) < 1.0
    assert all(r["released"] == 0 for r in static_records)
    assert all(r["jaccard"] == 1.0 for r in static_records[1:])
    assert set(epi_records[0]["tensors"]) == {"weights"}


def test_hysteresis_keeps_elements_that_dip_for_fewer_than_patience_refreshes():
    weights = torch.nn.Parameter(torch.zeros(10))
    model = torch.nn.Module()
    model.weights = weights
    isolator = ParameterIsolator(model, EPIConfig(method="epi", isolation_ratio=0.2, warmup_steps=1,
                                                  update_interval=1, release_patience=3, ema_decay=0.0,
                                                  importance_interval=1))  # every step's gradient counts

    def refresh_with_important(*indices):
        weights.grad = torch.zeros(10)
        weights.grad[list(indices)] = 1.0
        isolator.before_step("a")
        isolator.after_step("a")
        return set(torch.nonzero(isolator.mask("a", "weights")).flatten().tolist())

    assert refresh_with_important(0, 1) == {0, 1}
    assert refresh_with_important(2, 3) == {0, 1, 2, 3}      # 0,1 dip: 1 refresh outside
    assert refresh_with_important(2, 3) == {0, 1, 2, 3}      # 2 refreshes outside < patience 3: kept
    assert refresh_with_important(0, 1) == {0, 1, 2, 3}      # 0,1 back on top: their count resets
    assert refresh_with_important(4, 5) == {0, 1, 2, 3, 4, 5}
    assert refresh_with_important(4, 5) == {0, 1, 4, 5}      # 2,3: third consecutive refresh outside -> released
    assert refresh_with_important(4, 5) == {4, 5}            # 0,1: third consecutive refresh outside -> released


def save_training_state(model, optimizer, isolator, directory):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    isolator.save(directory)


@pytest.mark.parametrize("method", ["epi", "static"])
def test_resume_reproduces_uninterrupted_training(method, tmp_path):
    from safetensors.torch import load_file

    schedule = ["a", "a", "b", "a", "b", "b", "a", "b"] * 3
    config = EPIConfig(method=method, isolation_ratio=0.15, warmup_steps=4, update_interval=3, probe_steps=3)

    def fresh():
        model = make_mlp(seed=1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
        return model, optimizer, attach_epi(model, optimizer, copy.deepcopy(config))

    model, optimizer, isolator = fresh()
    train_steps(model, optimizer, isolator, schedule)

    half = len(schedule) // 2
    first_model, first_optimizer, first_isolator = fresh()
    train_steps(first_model, first_optimizer, first_isolator, schedule[:half])
    save_training_state(first_model, first_optimizer, first_isolator, tmp_path / "ckpt")
    del first_model, first_optimizer, first_isolator

    resumed_model, resumed_optimizer, resumed_isolator = fresh()
    resumed_model.load_state_dict(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "ckpt" / "optimizer.pt", weights_only=True))
    resumed_isolator.load(tmp_path / "ckpt")
    train_steps(resumed_model, resumed_optimizer, resumed_isolator, schedule[half:], start=half)

    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), f"{name} differs after resume"
    assert resumed_isolator.step_count == isolator.step_count == len(schedule)
    for task in ("a", "b"):
        original, restored = isolator.tasks[task], resumed_isolator.tasks[task]
        assert original.has_mask and restored.has_mask
        for i in range(len(isolator.params)):
            assert torch.equal(original.masks[i], restored.masks[i])
            assert torch.equal(original.patience_counters[i], restored.patience_counters[i])
            if original.importance is not None:
                assert torch.equal(original.importance[i], restored.importance[i])
    meta = json.loads((tmp_path / "ckpt" / "epi_state.json").read_text())
    assert meta["step_count"] == half and [t["name"] for t in meta["tasks"]] == ["a", "b"]


def test_static_masks_are_measured_over_probe_steps_then_frozen():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    isolator = attach_epi(model, optimizer, EPIConfig(method="static", probe_steps=4, isolation_ratio=0.1,
                                                      warmup_steps=2, update_interval=2))
    train_steps(model, optimizer, isolator, ["a"] * 3)
    assert not isolator.tasks["a"].has_mask
    train_steps(model, optimizer, isolator, ["a"], start=3)
    frozen = [m.clone() for m in isolator.tasks["a"].masks]
    assert isolator.tasks["a"].frozen and isolator.tasks["a"].importance is None
    train_steps(model, optimizer, isolator, ["a"] * 10, start=4)
    assert all(torch.equal(a, b) for a, b in zip(frozen, isolator.tasks["a"].masks))


def test_full_method_changes_nothing_about_the_update():
    reference, candidate = make_mlp(), make_mlp()
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    cand_opt = torch.optim.AdamW(candidate.parameters(), lr=1e-2, weight_decay=0.1)
    isolator = attach_epi(candidate, cand_opt, EPIConfig(method="full"))
    for step, task in enumerate(["a", "b"] * 5):
        for model, opt in ((reference, ref_opt), (candidate, cand_opt)):
            inputs, targets = task_batch(task, step)
            torch.nn.functional.mse_loss(model(inputs), targets).backward()
            if model is candidate:
                isolator.step(task)
            else:
                opt.step()
            opt.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(reference.parameters(), candidate.parameters()))
    assert isolator.state_nbytes()["persistent_total"] == sum(t.numel() for s in isolator.tasks.values() for t in s.masks)


def test_top_k_mask_is_deterministic_under_ties_and_skips_zero_scores():
    scores = torch.tensor([0.5, 1.0, 0.5, 0.5, 0.0, 0.0, 2.0, 0.5])
    mask = top_k_mask(scores, 0.5)  # k = 4: 2.0, 1.0 and the two lowest-index 0.5s
    assert mask.tolist() == [True, True, True, False, False, False, True, False]
    assert top_k_mask(torch.zeros(8), 0.5).sum() == 0


def test_bit_packing_round_trips():
    generator = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1001):
        mask = torch.rand(n, generator=generator) > 0.5
        packed = pack_bits(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(packed, n), mask)


def test_compact_state_stays_within_budget():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    isolator = attach_epi(model, optimizer, EPIConfig(method="epi", warmup_steps=2, update_interval=2,
                                                      importance_dtype="float16", isolation_ratio=0.1))
    train_steps(model, optimizer, isolator, ["a", "b", "c"] * 4)
    n_params, n_tasks = sum(p.numel() for p in model.parameters()), 3
    nbytes = isolator.state_nbytes()
    assert nbytes["importance"] == 2 * n_tasks * n_params  # fp16 EMA per task
    protected = sum(sum(s.protected_counts) for s in isolator.tasks.values())
    assert nbytes["masks"] == 4 * protected and nbytes["patience_counters"] == protected
    # the budget: at most 4 bytes + 1 bit per task and parameter
    assert nbytes["persistent_total"] <= n_tasks * n_params * (4 + 1 / 8)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="method"):
        EPIConfig(method="lora")
    with pytest.raises(ValueError, match="isolation_ratio"):
        EPIConfig(isolation_ratio=0.0)
    with pytest.raises(ValueError, match="unknown option"):
        EPIConfig.from_dict({"ratio": 0.1})
    assert EPIConfig.from_dict(EPIConfig(saliency="taylor").to_dict()).saliency == "taylor"


def test_taylor_saliency_and_protocol_errors():
    model = make_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    isolator = attach_epi(model, optimizer, EPIConfig(saliency="taylor", granularity="row", warmup_steps=1,
                                                      update_interval=1, importance_dtype="bfloat16"))
    train_steps(model, optimizer, isolator, ["a", "b", "a"])
    assert isolator.tasks["a"].importance[0].dtype == torch.bfloat16
    assert isolator.tasks["a"].importance[0].numel() == 32  # one score per row
    with pytest.raises(RuntimeError, match="does not match"):
        isolator.before_step("a")
        isolator.after_step("b")


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from sft_core.atomic_io import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "result.json").stat().st_mode) == 0o644
    assert (tmp_path / "result.json").read_text() == "{}"
