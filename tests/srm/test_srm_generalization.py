"""Generalization priors and plumbing of the SRM: head+tail truncation, monotone scorers, gate regularization,
shared-encoder similarity, decoder backbones, off-prompt negatives and offline-backbone checkpoints."""

import os

import pytest
import torch
from safetensors.torch import load_file

from sft_core.hub import ModelNotAvailableError
from sft_core.testing import tiny_causal_lm, tiny_encoder
from srm import SRMModel
from srm.branches import StyleBranch
from srm.collate import SRMCollator, head_tail, tokenize_joint, truncated_responses
from srm.data import PairLabel, ResponseGroup
from srm.modeling_srm import MonotoneScorer
from srm.negatives import offprompt_groups
from srm.trainer import group_item

from srm_test_utils import BAD, GOOD, PROMPTS

DIMENSIONS = ["correctness", "safety", "style:style", "relevance:similarity"]


def _shared_srm(**kwargs):
    encoder, tokenizer = tiny_encoder()
    kwargs.setdefault("max_sequence_length", 64)
    model = SRMModel.from_backbone(encoder, dimensions=kwargs.pop("dimensions", DIMENSIONS), max_prompt_length=32,
                                   feature_branches={"style": StyleBranch()},
                                   branch_settings={"similarity": {"model": "shared"}}, **kwargs)
    return model, tokenizer


def _batch(model, tokenizer, groups):
    items = []
    for group in groups:
        item = group_item(group)
        if model.config.used_feature_branches:
            item["branch_features"] = StyleBranch().extract([group.prompt] * len(group.responses), group.responses)
        items.append(item)
    return SRMCollator(tokenizer, model.config)(items)


def _groups():
    return [ResponseGroup(p, [g, b], [PairLabel(0, 1, True, {"correctness": 1})]) for p, g, b in zip(PROMPTS, GOOD, BAD)]


# ----- truncation ---------------------------------------------------------------------------------------------
def test_head_tail_keeps_both_ends():
    ids = list(range(10))
    assert head_tail(ids, 4) == [0, 1, 8, 9]
    assert head_tail(ids, 5, head_fraction=0.6) == [0, 1, 2, 8, 9]
    assert head_tail(ids, 20) == ids and head_tail(ids, 0) == []


def test_joint_window_keeps_the_end_of_a_long_response_and_counts_truncation():
    model, tokenizer = _shared_srm(max_sequence_length=32)
    long_answer = " ".join(["the", "cat", "is"] * 30) + " so the answer is paris"
    batch = tokenize_joint(tokenizer, model.config, ["name a city", "name a city"], [long_answer, "paris"])
    assert batch["input_ids"].shape[1] == 32
    first = tokenizer.convert_ids_to_tokens(batch["input_ids"][0][batch["response_mask"][0].bool()].tolist())
    assert first[-2:] == ["is", "paris"]  # the tail (final answer) survives
    assert first[:3] == ["the", "cat", "is"]  # and so does the head
    # the response mask covers exactly the response tokens of the short pair
    short = tokenizer.convert_ids_to_tokens(batch["input_ids"][1][batch["response_mask"][1].bool()].tolist())
    assert short == ["paris"]
    assert truncated_responses(tokenizer, model.config, ["name a city"] * 2, [long_answer, "paris"]) == [True, False]


def test_long_prompt_keeps_its_end_within_the_prompt_budget():
    model, tokenizer = _shared_srm(max_sequence_length=48)
    prompt = " ".join(["the"] * 80) + " name a cat"
    batch = tokenize_joint(tokenizer, model.config, [prompt], ["paris"])
    tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert len(tokens) <= 48 and tokens[-3:] == ["[SEP]", "paris", "[SEP]"]
    assert tokens[-5:-3] == ["a", "cat"]  # the end of the prompt (often the actual instruction) is kept


# ----- priors -------------------------------------------------------------------------------------------------
def test_monotone_scorer_cannot_flip_its_signal_even_when_trained_against_it():
    torch.manual_seed(0)
    scorer = MonotoneScorer(feature_size=3, monotone=[(0, 1)], hidden=8, dropout=0.0)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.05)
    features = torch.randn(64, 3)
    for _ in range(200):  # data that rewards a *lower* signal
        optimizer.zero_grad()
        (scorer(features).squeeze(-1) * features[:, 0]).mean().backward()
        optimizer.step()
    probe = torch.zeros(5, 3)
    probe[:, 0] = torch.linspace(-2, 2, 5)
    scores = scorer(probe).squeeze(-1)
    assert torch.all(scores[1:] >= scores[:-1])  # still non-decreasing in the signal
    assert torch.nn.functional.softplus(scorer.raw_weight).item() < 0.2  # but training could shrink it


def test_gate_dropout_drops_dimensions_only_in_training():
    torch.manual_seed(0)
    model, _ = _shared_srm(gate_dropout=0.5)
    prompts = torch.randn(200, model.backbone.config.hidden_size)
    model.train()
    gates = model.gate_weights(prompts)
    assert (gates == 0).any() and torch.all((gates > 0).any(-1))  # some dropped, never a whole row
    torch.testing.assert_close(gates.sum(-1), torch.ones(200))
    model.eval()
    assert torch.all(model.gate_weights(prompts) > 0)


def test_gate_prior_adds_exactly_the_kl_to_uniform():
    model, tokenizer = _shared_srm(gate_prior_weight=0.0, gate_dropout=0.0, dropout=0.0)
    with torch.no_grad():
        model.gate[4].bias.copy_(torch.tensor([3.0, 0.0, 0.0, -1.0]))  # a far from uniform gate
    batch = _batch(model, tokenizer, _groups())
    model.eval()
    base = model(**batch)
    model.config.gate_prior_weight = 0.5
    regularized = model(**batch)
    g = base.gates[::2]  # one row per prompt (rows of a group share the gate)
    kl = (g * g.log()).sum(-1).mean() + torch.log(torch.tensor(4.0))
    assert kl > 0.1
    torch.testing.assert_close(regularized.loss - base.loss, 0.5 * kl, rtol=1e-4, atol=1e-5)


# ----- shared encoder -----------------------------------------------------------------------------------------
def test_similarity_reuses_the_shared_encoder():
    model, tokenizer = _shared_srm()
    assert model.config.shared_similarity and "similarity" not in model.config.used_feature_branches
    assert "similarity" not in model.get_feature_branches()  # no second encoder is built
    encoders = [m for m in model.modules() if type(m).__name__ == "BertModel"]
    assert len(encoders) == 1
    # naming the backbone itself as the similarity model also means "reuse it"
    encoder, _ = tiny_encoder()
    encoder.config._name_or_path = "tiny-backbone"
    again = SRMModel.from_backbone(encoder, dimensions=["relevance:similarity"], max_sequence_length=64,
                                   branch_settings={"similarity": {"model": "tiny-backbone"}})
    assert again.config.shared_similarity


def test_cached_encoder_outputs_give_the_same_scores_as_the_full_pass():
    from srm.collate import EncoderEmbeddingBranch

    model, tokenizer = _shared_srm(freeze_backbone=True)
    model.eval()
    groups = _groups()
    full = model(**_batch(model, tokenizer, groups))
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    joint = EncoderEmbeddingBranch(model, tokenizer, "joint", show_progress=False).extract(prompts, responses)
    prompt_vectors = EncoderEmbeddingBranch(model, tokenizer, "prompt", show_progress=False).extract(
        [g.prompt for g in groups], [""] * len(groups))
    assert joint.shape[1] == 2 * model.backbone.config.hidden_size
    batch = _batch(model, tokenizer, groups)
    with torch.inference_mode():
        cached = model(response_embeddings=joint, prompt_embeddings=prompt_vectors,
                       response_prompt_index=batch["response_prompt_index"], branch_features=batch["branch_features"])
    torch.testing.assert_close(cached.reward, full.reward, rtol=1e-4, atol=1e-5)


# ----- decoder backbone ---------------------------------------------------------------------------------------
def test_decoder_backbone_uses_last_token_pooling_and_ignores_padding():
    lm, tokenizer = tiny_causal_lm()
    model = SRMModel.from_backbone(lm, dimensions=["correctness", "relevance:similarity"], max_sequence_length=64,
                                   max_prompt_length=32, dropout=0.0).eval()
    assert model.config.pooling == "last" and type(model.backbone).__name__ == "LlamaModel"
    alone = model(**_batch(model, tokenizer, _groups()[:1])).reward
    padded = model(**_batch(model, tokenizer, _groups()[:1] + [ResponseGroup(
        "what is the sum of two and two and then some more", ["the sum is 4 and that is a good answer", "no"],
        [PairLabel(0, 1)])])).reward[:2]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-5)
    ids = tokenize_joint(tokenizer, model.config, ["name a cat"], ["key"])["input_ids"][0].tolist()
    assert ids[-1] == tokenizer.eos_token_id  # pooled token: the end of the answer


# ----- off-prompt negatives -----------------------------------------------------------------------------------
def test_offprompt_negatives_pair_each_prompt_with_its_nearest_neighbours_answer():
    groups = _groups()
    vectors = {p: torch.eye(len(PROMPTS))[i] for i, p in enumerate(PROMPTS)}
    vectors[PROMPTS[1]] = vectors[PROMPTS[0]] * 0.8 + vectors[PROMPTS[1]] * 0.6  # 1 is closest to 0
    out = offprompt_groups(groups, vectors, max_cosine=0.95)
    by_prompt = {g.prompt: g for g in out}
    assert by_prompt[PROMPTS[0]].responses == [GOOD[0], GOOD[1]]
    assert by_prompt[PROMPTS[1]].responses == [GOOD[1], GOOD[0]]
    assert all(p.overall and p.dimensions == {"relevance": 1} for g in out for p in g.pairs)
    # a neighbour above max_cosine is a near-paraphrase and is skipped
    assert offprompt_groups(groups, vectors, max_cosine=0.7)[0].responses[1] != GOOD[1]


# ----- offline backbone checkpoints ---------------------------------------------------------------------------
def test_offline_backbone_checkpoint_holds_only_the_parts_on_top(tmp_path):
    encoder, tokenizer = tiny_encoder()
    encoder_dir = tmp_path / "encoder"
    encoder.save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    torch.manual_seed(0)
    model = SRMModel.from_backbone(str(encoder_dir), dimensions=DIMENSIONS, max_sequence_length=64,
                                   max_prompt_length=32, feature_branches={"style": StyleBranch()},
                                   branch_settings={"similarity": {"model": "shared"}}, backbone_weights="offline")
    batch = _batch(model, tokenizer, _groups())
    model.fit_feature_normalization(batch["branch_features"])
    model.eval()
    before = model(**batch).reward
    model.save_pretrained(tmp_path / "srm")
    saved = load_file(os.fspath(tmp_path / "srm" / "model.safetensors"))
    assert saved and not [k for k in saved if k.startswith("backbone.")]
    assert "feature_mean" in saved and any(k.startswith("gate.") for k in saved)
    loaded = SRMModel.from_pretrained(tmp_path / "srm").eval()
    torch.testing.assert_close(loaded(**batch).reward, before, rtol=0, atol=1e-6)


def test_offline_checkpoint_with_a_missing_backbone_fails_clearly(tmp_path):
    model, _ = _shared_srm(backbone_weights="offline")
    model.config.backbone_name_or_path = os.fspath(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "srm")
    with pytest.raises(ModelNotAvailableError, match="nowhere"):
        SRMModel.from_pretrained(tmp_path / "srm")
