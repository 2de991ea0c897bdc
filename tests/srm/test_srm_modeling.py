import torch
from transformers import AutoConfig, AutoModel

import srm
from sft_core.testing import tiny_causal_lm, tiny_encoder
from srm import SRMConfig, SRMModel
from srm.branches import LikelihoodBranch, SimilarityBranch, StyleBranch, compute_branch_features
from srm.collate import SRMCollator
from srm.data import PairLabel, ResponseGroup
from srm.trainer import group_item

from srm_test_utils import BAD, GOOD, PROMPTS


def _tiny_srm(**config_kwargs):
    encoder, tokenizer = tiny_encoder()
    similarity_model, similarity_tokenizer = tiny_encoder(seed=1)
    lm, lm_tokenizer = tiny_causal_lm(seed=2)
    branches = {"style": StyleBranch(), "similarity": SimilarityBranch(similarity_model, similarity_tokenizer, 64),
                "likelihood": LikelihoodBranch(lm, lm_tokenizer, max_length=64, max_prompt_length=32)}
    model = SRMModel.from_backbone(encoder, feature_branches=branches, max_sequence_length=64, max_prompt_length=32,
                                   **config_kwargs)
    return model, tokenizer, branches


def _batch(model, tokenizer, branches, groups):
    items = []
    for group in groups:
        features = compute_branch_features(model.config, branches, [group.prompt] * len(group.responses),
                                           group.responses)
        items.append({**group_item(group), "branch_features": features})
    return SRMCollator(tokenizer, model.config)(items)


def _pair_groups():
    return [ResponseGroup(p, [g, b], [PairLabel(0, 1, True, {"correctness": 1, "style": -1})])
            for p, g, b in zip(PROMPTS, GOOD, BAD)]


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    model, tokenizer, branches = _tiny_srm()
    batch = _batch(model, tokenizer, branches, _pair_groups())
    model.fit_feature_normalization(batch["branch_features"])
    with torch.no_grad():
        model.reward_bias.fill_(0.25)  # non-default values must survive the round trip
    model.eval()
    before = model(**batch)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    loaded = AutoModel.from_pretrained(tmp_path / "m").eval()  # one line, via the Auto registration
    assert isinstance(loaded, SRMModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), SRMConfig)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    after = loaded(**batch)
    torch.testing.assert_close(after.reward, before.reward, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.dimensions, before.dimensions, rtol=0, atol=1e-6)
    torch.testing.assert_close(after.gates, before.gates, rtol=0, atol=1e-6)
    assert loaded.config.dimension_names == model.config.dimension_names


def test_scalar_baseline_round_trip(tmp_path):
    encoder, tokenizer = tiny_encoder()
    model = SRMModel.from_backbone(encoder, scalar_baseline=True, max_sequence_length=64).eval()
    assert model.config.dimension_names == [] and not model.config.used_feature_branches
    batch = SRMCollator(tokenizer, model.config)([group_item(g) for g in _pair_groups()])
    before = model(**batch)
    assert before.dimensions is None and before.gates is None and before.reward.shape == (12,)
    assert before.loss is not None and before.loss.ndim == 0
    model.save_pretrained(tmp_path / "s")
    after = AutoModel.from_pretrained(tmp_path / "s").eval()(**batch)
    torch.testing.assert_close(after.reward, before.reward, rtol=0, atol=1e-6)


def test_gate_weights_sum_to_one_and_temperature_sharpens():
    model, tokenizer, branches = _tiny_srm()
    batch = _batch(model, tokenizer, branches, _pair_groups())
    with torch.no_grad():
        model.gate[-1].weight.normal_(0, 1.0)  # a non-trivial gate
        gates = model.eval()(**batch).gates
        assert gates.shape == (12, len(model.config.dimension_names))
        torch.testing.assert_close(gates.sum(-1), torch.ones(12), rtol=0, atol=1e-5)
        assert (gates >= 0).all()
        model.config.gate_temperature = 0.1
        sharp = model(**batch).gates
    torch.testing.assert_close(sharp.sum(-1), torch.ones(12), rtol=0, atol=1e-5)
    assert sharp.max(-1).values.mean() > gates.max(-1).values.mean()
    # chosen and rejected answers to one prompt share one gate
    torch.testing.assert_close(gates[0::2], gates[1::2])


def test_masked_dimension_labels_contribute_no_gradient():
    model, tokenizer, branches = _tiny_srm(dimension_loss_weight=1.0)
    groups = [ResponseGroup(p, [g, b], [PairLabel(0, 1, overall=False, dimensions={"correctness": 1})])
              for p, g, b in zip(PROMPTS, GOOD, BAD)]
    batch = _batch(model, tokenizer, branches, groups)
    model.train()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["heads.correctness.4.weight"].abs().sum() > 0  # the labelled dimension learns
    for name in ("instruction_following", "safety"):  # unlabelled head dimensions: exactly no gradient
        assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith(f"heads.{name}."))
    for name in ("style", "relevance", "fluency"):
        assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith(f"feature_scorers.{name}."))
    # with the overall preference masked too, the gate and reward scale get no gradient either
    assert grads["gate.4.weight"] is None or grads["gate.4.weight"].abs().sum() == 0
    assert grads["reward_scale"] is None or grads["reward_scale"].abs().sum() == 0


def test_overall_and_dimension_losses_are_both_used():
    model, tokenizer, branches = _tiny_srm()
    batch = _batch(model, tokenizer, branches, _pair_groups())
    model.eval()
    full = model(**batch).loss
    no_dims = model(**{**batch, "pair_dimension_mask": torch.zeros_like(batch["pair_dimension_mask"])}).loss
    no_pref = model(**{**batch, "pair_preference_mask": torch.zeros_like(batch["pair_preference_mask"])}).loss
    assert full > no_dims > 0 and full > no_pref > 0
    torch.testing.assert_close(full, no_dims + no_pref)


def test_margin_and_centering_terms_are_trls():
    """loss = mean(-log sigmoid(r_b - r_w - margin)) + c * mean((r_b + r_w)^2), each term checked on its own."""
    coefficient = 0.5
    model, tokenizer, branches = _tiny_srm(margin_loss=True, center_rewards_coefficient=coefficient)
    batch = _batch(model, tokenizer, branches, _pair_groups())
    batch["pair_dimension_mask"].zero_()
    batch["pair_margin"] = torch.linspace(0.5, 2.0, len(batch["pair_margin"]))
    model.eval()
    better, worse = batch["pair_indices"].T
    with torch.no_grad():
        output = model(**batch)
        reward = output.reward
        bradley_terry = -torch.nn.functional.logsigmoid(reward[better] - reward[worse] - batch["pair_margin"]).mean()
        centering = ((reward[better] + reward[worse]) ** 2).mean()
        torch.testing.assert_close(output.loss, bradley_terry + coefficient * centering)
        # Shifting every reward by 3 leaves the Bradley-Terry term unchanged: the whole change in the loss is the
        # centering term's (a model without centering would give the same loss twice).
        model.reward_bias += 3.0
        shifted = model(**batch)
        shifted_centering = ((shifted.reward[better] + shifted.reward[worse]) ** 2).mean()
        assert shifted_centering > centering + 1.0
        torch.testing.assert_close(shifted.loss - output.loss, coefficient * (shifted_centering - centering))
        without_margin = model(**{**batch, "pair_margin": torch.zeros_like(batch["pair_margin"])}).loss
    assert shifted.loss > without_margin  # a margin makes the same pairs harder to satisfy


def test_adding_a_head_dimension_adds_no_encoder_pass():
    model, tokenizer, branches = _tiny_srm()
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    batch = _batch(model, tokenizer, branches, _pair_groups())
    model.eval()(**batch)
    handle.remove()
    assert len(calls) == 2  # one joint prompt+response pass, one prompt pass for the gate


def test_config_rejects_unknown_branch_and_duplicates():
    import pytest

    with pytest.raises(ValueError, match="unknown branch"):
        SRMConfig(dimensions=[{"name": "x", "branch": "nope"}])
    with pytest.raises(ValueError, match="duplicate"):
        SRMConfig(dimensions=["a", "a"])
    assert [d.name for d in srm.DEFAULT_DIMENSIONS][:3] == ["correctness", "instruction_following", "safety"]
