import os

import torch

from sft_core.testing import tiny_encoder
from srm import SRMModel
from srm.branches import FeatureCache, StyleBranch
from srm.data import parse_record
from srm.evaluation import evaluate_groups
from srm.scoring import SRMScorer
from srm.trainer import PREFERENCE_TASK, precompute_group_tensors, train_srm

from srm_test_utils import rmbench_records, trl_records


class CountingStyleBranch(StyleBranch):
    def __init__(self):
        self.calls = 0

    def extract(self, prompts, responses):
        self.calls += len(prompts)
        return super().extract(prompts, responses)


def _groups():
    records = trl_records(6) + rmbench_records(3)
    return [parse_record(r, f"t[{i}]", default_domain="chat", source="toy") for i, r in enumerate(records)]


def _model(**kwargs):
    encoder, tokenizer = tiny_encoder()
    model = SRMModel.from_backbone(encoder, dimensions=["correctness", "style:style"], max_sequence_length=64,
                                   max_prompt_length=32, feature_branches={"style": kwargs.pop("style", StyleBranch())},
                                   dropout=0.0, **kwargs)
    return model, tokenizer


def test_training_learns_the_toy_preferences(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = _model()
    groups = _groups()
    scorer = SRMScorer(model, tokenizer, device="cpu")
    before = evaluate_groups(scorer, groups)["accuracy"]
    trainer = train_srm(model, tokenizer, groups, str(tmp_path / "out"), num_train_epochs=8, batch_size=6,
                        head_learning_rate=1e-2, learning_rate=1e-3, show_progress=False, save_checkpoints=False)
    after = evaluate_groups(SRMScorer(model, tokenizer, device="cpu"), groups)
    assert after["accuracy"] >= 0.95 > before
    assert after["dimensions"]["correctness"]["accuracy"] >= 0.9
    assert trainer.state.global_step > 0 and os.path.exists(tmp_path / "out" / "model.safetensors")


def test_frozen_backbone_is_cached_and_unchanged_and_epi_runs(tmp_path):
    branch = CountingStyleBranch()
    model, tokenizer = _model(freeze_backbone=True, style=branch)
    groups = _groups()
    cache_path = tmp_path / "features.safetensors"
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainer = train_srm(model, tokenizer, groups, str(tmp_path / "out"), tuner="epi", feature_cache=FeatureCache(cache_path),
                        num_train_epochs=2, batch_size=4, show_progress=False, save_checkpoints=False)
    assert trainer.isolator is not None  # EPI is on: per-objective tasks are isolated
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in backbone_before.items())
    assert any(not torch.equal(p, torch.zeros_like(p)) for p in model.heads.parameters())
    first_calls = branch.calls
    assert first_calls == len({(g.prompt, r) for g in groups for r in g.responses}) and cache_path.exists()
    tensors = precompute_group_tensors(model, tokenizer, groups, FeatureCache(cache_path))  # from the file
    assert branch.calls == first_calls
    # joint pass: pooled output + pooled response segment (what the shared similarity features read)
    assert tensors[0].response_embeddings.shape == (2, 2 * model.backbone.config.hidden_size)


def test_resume_from_checkpoint(tmp_path):
    model, tokenizer = _model()
    groups = _groups()
    out = str(tmp_path / "out")
    train_srm(model, tokenizer, groups, out, num_train_epochs=1, batch_size=8, show_progress=False)
    assert any(name.startswith("checkpoint-") for name in os.listdir(os.path.join(out, "checkpoints")))
    resumed_model, _ = _model()
    trainer = train_srm(resumed_model, tokenizer, groups, out, num_train_epochs=2, batch_size=8,
                        show_progress=False, resume_from_checkpoint=True)
    assert trainer.state.epoch == 2 and trainer.state.global_step > 0
    assert PREFERENCE_TASK in {item["task"] for item in trainer.train_dataset.items}


def test_optimizer_gives_heads_their_own_rate_and_no_decay_to_biases_and_norms(tmp_path):
    from srm.trainer import make_trainer

    model, tokenizer = _model()
    trainer = make_trainer(model, tokenizer, [], str(tmp_path), learning_rate=2e-5, head_learning_rate=1e-3,
                           weight_decay=0.1, show_progress=False, save_checkpoints=False)
    optimizer = trainer.create_optimizer()
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for name, parameter in model.named_parameters():
        group = group_of[id(parameter)]
        assert group["lr"] == (2e-5 if name.startswith("backbone.") else 1e-3), name
        if name.endswith("bias") or "LayerNorm" in name:
            assert group["weight_decay"] == 0.0, name  # the SRM used to decay these too
        elif name.endswith(".weight"):
            assert group["weight_decay"] == 0.1, name
    assert {g["name"] for g in optimizer.param_groups} == {"backbone/decay", "backbone/no_decay", "head/decay",
                                                           "head/no_decay"}
    assert trainer.tuner == "full"
