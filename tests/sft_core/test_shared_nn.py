"""sft_core.param_groups and sft_core.nn_utils."""

from __future__ import annotations

import torch
from torch import nn

from sft_core.nn_utils import make_mlp, mean_pool
from sft_core.param_groups import build_parameter_groups, no_decay_parameter_names
from sft_core.testing import tiny_encoder


class Scorer(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = make_mlp(4, 8, 2, dropout=0.1)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_groups_split_backbone_head_and_no_decay():
    model = Scorer()
    groups = build_parameter_groups(model, head_prefixes=("head.",), backbone_lr=1e-5, head_lr=1e-3, weight_decay=0.1)
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    members = {name: sorted(names[id(p)] for p in g["params"]) for name, g in by_name.items()}
    assert members == {
        "backbone/decay": ["backbone.0.weight"],
        "backbone/no_decay": ["backbone.0.bias", "backbone.1.bias", "backbone.1.weight"],
        "head/decay": ["head.1.weight", "head.4.weight"],
        "head/no_decay": ["head.1.bias", "head.4.bias"],
    }
    assert by_name["head/decay"]["lr"] == 1e-3 and by_name["backbone/decay"]["lr"] == 1e-5
    assert by_name["backbone/no_decay"]["weight_decay"] == 0.0 and by_name["head/decay"]["weight_decay"] == 0.1
    torch.optim.AdamW(groups)  # accepted as is


def test_no_decay_matches_transformers_on_a_real_architecture():
    from transformers import Trainer

    model, _ = tiny_encoder()
    decay_by_transformers = set(Trainer.get_decay_parameter_names(None, model))
    ours = {name for name, _ in model.named_parameters()} - no_decay_parameter_names(model)
    assert ours == decay_by_transformers


def test_no_head_prefix_puts_everything_in_the_backbone():
    groups = build_parameter_groups(Scorer(), head_prefixes=(), backbone_lr=1e-4, head_lr=1.0, weight_decay=0.0)
    assert all(g["name"].startswith("backbone/") and g["lr"] == 1e-4 for g in groups)


def test_mean_pool_ignores_padding_and_empty_rows_give_zeros():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    pooled = mean_pool(hidden, mask)
    assert torch.equal(pooled, torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


def test_make_mlp_layout_and_shape():
    mlp = make_mlp(6, 16, 3, dropout=0.0)
    assert [type(m).__name__ for m in mlp] == ["Dropout", "Linear", "GELU", "Dropout", "Linear"]
    assert mlp(torch.randn(5, 6)).shape == (5, 3)
