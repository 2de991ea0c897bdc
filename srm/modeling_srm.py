"""Structural Reward Model: shared encoder + side branches -> dimension scores -> prompt gate -> reward.

Data flow for a batch of N responses that belong to G prompts::

    prompt + response --encoder (one pass)--> pooled h_i --head_k--> s_ik        (head dimensions)
    frozen feature branches (cached)     --> f_i  --scorer_k--> s_ik        (feature dimensions)
    prompt alone --encoder--> pooled p_g --gate--> softmax(./T) = g_gk
    reward_i = scale * sum_k g_{g(i)k} s_ik + bias

Chosen and rejected answers to one prompt share the prompt's gate, so a pairwise reward difference splits
exactly into per-dimension contributions ``g_k * (s_ak - s_bk)`` (used by ``srm score --explain``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_srm import HEAD_BRANCH, SRMConfig


@dataclass
class SRMOutput(ModelOutput):
    """``reward``: [N]; ``dimensions``: [N, K] per-dimension scores; ``gates``: [N, K] gate weights (rows sum to
    1); ``loss``: scalar when labels were given. ``dimensions``/``gates`` are ``None`` for the scalar baseline."""

    loss: torch.FloatTensor | None = None
    reward: torch.FloatTensor | None = None
    dimensions: torch.FloatTensor | None = None
    gates: torch.FloatTensor | None = None


def _mlp(in_size: int, hidden: int, out_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_size, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_size))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    # values * mask, not values[mask]: masked entries then get exactly zero gradient, also through NaN-free paths.
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class SRMPreTrainedModel(PreTrainedModel):
    config_class = SRMConfig
    base_model_prefix = "srm"
    # The loss is a mean over pairs: let the Trainer scale it for gradient accumulation as usual.
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()


class SRMModel(SRMPreTrainedModel):
    def __init__(self, config: SRMConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.build_backbone_config())
        hidden = self.backbone.config.hidden_size
        self.dimension_names = config.dimension_names
        if config.scalar_baseline:
            self.reward_head = _mlp(hidden, config.head_hidden_size, 1, config.dropout)
        else:
            self.heads = nn.ModuleDict()
            self.feature_scorers = nn.ModuleDict()
            for spec in config.dimension_specs:
                if spec.branch == HEAD_BRANCH:
                    self.heads[spec.name] = _mlp(hidden, config.head_hidden_size, 1, config.dropout)
                else:
                    self.feature_scorers[spec.name] = _mlp(config.feature_size(spec.branch), config.head_hidden_size, 1,
                                                           config.dropout)
            self.gate = _mlp(hidden, config.gate_hidden_size, len(self.dimension_names), config.dropout)
            self.reward_scale = nn.Parameter(torch.ones(1))
            self.reward_bias = nn.Parameter(torch.zeros(1))
            feature_size = config.total_feature_size
            # Feature branches emit raw statistics (log lengths, log-probs, cosines); standardize them with
            # statistics fitted on the training data and saved with the weights.
            self.register_buffer("feature_mean", torch.zeros(feature_size))
            self.register_buffer("feature_std", torch.ones(feature_size))
        self._feature_branches = None
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.post_init()

    # ----- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone, dimensions=None, feature_branches=None, scalar_baseline: bool = False,
                      branch_settings: dict | None = None, device: str = "cpu", **config_kwargs) -> "SRMModel":
        """Build a fresh SRM around a pretrained encoder.

        ``backbone`` is an alias (``minilm-l6``), a hub id / local path, or a loaded ``PreTrainedModel``.
        ``feature_branches`` optionally maps branch kind -> ready :class:`~srm.branches.FeatureBranch`
        (otherwise they are built from ``branch_settings`` / defaults when the config needs them).
        """
        from .branches import build_feature_branches

        if isinstance(backbone, PreTrainedModel):
            encoder, name = backbone, getattr(backbone.config, "_name_or_path", "") or "in-memory"
        else:
            from sft_core.hub import resolve_model

            name = str(backbone)
            encoder = AutoModel.from_pretrained(resolve_model(name))
        config = SRMConfig(backbone_config=encoder.config.to_dict(), backbone_name_or_path=name, dimensions=dimensions,
                           feature_branches=branch_settings, scalar_baseline=scalar_baseline, **config_kwargs)
        branches = build_feature_branches(config, overrides=feature_branches, device=device)
        model = cls(config)
        missing, unexpected = model.backbone.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"backbone weights do not fit the rebuilt encoder: missing={missing} unexpected={unexpected}")
        model._feature_branches = branches
        return model

    def get_feature_branches(self, overrides=None, device: str = "cpu"):
        """The frozen feature branches this model needs (built from the config on first use)."""
        from .branches import build_feature_branches

        if self._feature_branches is None or overrides:
            self._feature_branches = build_feature_branches(self.config, overrides=overrides, device=device)
        return self._feature_branches

    def fit_feature_normalization(self, branch_features: torch.Tensor) -> None:
        if self.config.scalar_baseline or branch_features is None or branch_features.numel() == 0:
            return
        self.feature_mean.copy_(branch_features.float().mean(0))
        self.feature_std.copy_(branch_features.float().std(0, unbiased=False).clamp(min=1e-4))

    # ----- encoder passes ----------------------------------------------------------------------------------------
    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Mean-pooled encoder output (the representation heads and gate read)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            hidden = self.backbone(**kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    # ----- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        prompt_input_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.LongTensor | None = None,
        response_embeddings: torch.FloatTensor | None = None,
        prompt_embeddings: torch.FloatTensor | None = None,
        response_prompt_index: torch.LongTensor | None = None,
        branch_features: torch.FloatTensor | None = None,
        pair_indices: torch.LongTensor | None = None,
        pair_preference_mask: torch.FloatTensor | None = None,
        pair_margin: torch.FloatTensor | None = None,
        pair_dimension_labels: torch.FloatTensor | None = None,
        pair_dimension_mask: torch.FloatTensor | None = None,
        rating_targets: torch.FloatTensor | None = None,
        rating_mask: torch.FloatTensor | None = None,
        return_dict: bool | None = None,
    ) -> SRMOutput:
        r"""
        input_ids / attention_mask / token_type_ids: ``[N, L]`` joint ``prompt + response`` encoding, or give
            ``response_embeddings [N, H]`` (pooled encoder output, e.g. cached for a frozen backbone).
        prompt_input_ids / prompt_attention_mask: ``[G, Lp]`` prompt-only encoding for the gate, or
            ``prompt_embeddings [G, H]``. ``response_prompt_index [N]`` maps responses to prompt rows
            (default: row i -> prompt i).
        branch_features: ``[N, F]`` raw concatenated feature-branch vectors (see ``SRMConfig.feature_slices``).
        pair_indices: ``[P, 2]`` rows ``(better, worse)`` into the N responses. ``pair_preference_mask [P]`` says
            which pairs carry the overall preference (BT loss); ``pair_margin [P]`` is used when
            ``config.margin_loss``. ``pair_dimension_labels [P, K]`` in {+1: first better, -1: second better}
            with ``pair_dimension_mask [P, K]`` (0 = no label: no loss, no gradient).
        rating_targets / rating_mask: ``[N, K]`` per-response dimension ratings (MSE), masked.
        """
        if response_embeddings is None:
            if input_ids is None:
                raise ValueError("give input_ids (joint prompt+response encoding) or response_embeddings")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            response_embeddings = self.encode(input_ids, attention_mask, token_type_ids)
        num_responses = response_embeddings.shape[0]
        device = response_embeddings.device

        if self.config.scalar_baseline:
            reward, dimensions, gates = self.reward_head(response_embeddings).squeeze(-1), None, None
        else:
            if prompt_embeddings is None:
                if prompt_input_ids is None:
                    raise ValueError("the gate needs the prompt: give prompt_input_ids or prompt_embeddings")
                if prompt_attention_mask is None:
                    prompt_attention_mask = torch.ones_like(prompt_input_ids)
                prompt_embeddings = self.encode(prompt_input_ids, prompt_attention_mask)
            if response_prompt_index is None:
                if prompt_embeddings.shape[0] != num_responses:
                    raise ValueError("response_prompt_index is required when prompts and responses differ in number")
                response_prompt_index = torch.arange(num_responses, device=device)
            dimensions = self.dimension_scores(response_embeddings, branch_features)
            prompt_gates = torch.softmax(self.gate(prompt_embeddings).float() / self.config.gate_temperature, dim=-1)
            gates = prompt_gates[response_prompt_index]
            reward = self.reward_scale * (gates * dimensions).sum(-1) + self.reward_bias

        loss = self.compute_loss(reward, dimensions, pair_indices, pair_preference_mask, pair_margin,
                                 pair_dimension_labels, pair_dimension_mask, rating_targets, rating_mask)
        return SRMOutput(loss=loss, reward=reward, dimensions=dimensions, gates=gates)

    def dimension_scores(self, response_embeddings: torch.Tensor, branch_features: torch.Tensor | None) -> torch.Tensor:
        normalized = None
        if self.config.used_feature_branches:
            if branch_features is None:
                raise ValueError(f"this SRM needs branch_features for {self.config.used_feature_branches} "
                                 "(compute them with srm.branches.compute_branch_features)")
            normalized = (branch_features.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        slices = self.config.feature_slices() if normalized is not None else {}
        columns = []
        for spec in self.config.dimension_specs:
            if spec.branch == HEAD_BRANCH:
                columns.append(self.heads[spec.name](response_embeddings))
            else:
                columns.append(self.feature_scorers[spec.name](normalized[:, slices[spec.branch]]))
        return torch.cat(columns, dim=-1).float()

    def compute_loss(self, reward, dimensions, pair_indices, pair_preference_mask, pair_margin,
                     pair_dimension_labels, pair_dimension_mask, rating_targets, rating_mask):
        terms = []
        if pair_indices is not None and pair_indices.numel():
            better, worse = pair_indices[:, 0], pair_indices[:, 1]
            preference_mask = (pair_preference_mask if pair_preference_mask is not None
                               else torch.ones(len(better), device=reward.device))
            logits = reward[better] - reward[worse]
            if self.config.margin_loss and pair_margin is not None:
                logits = logits - pair_margin
            if preference_mask.sum() > 0:
                terms.append(masked_mean(-F.logsigmoid(logits), preference_mask))
                if self.config.center_rewards_coefficient:
                    centering = (reward[better] + reward[worse]) ** 2
                    terms.append(self.config.center_rewards_coefficient * masked_mean(centering, preference_mask))
            if dimensions is not None and pair_dimension_labels is not None and pair_dimension_mask is not None:
                mask = pair_dimension_mask * (pair_dimension_labels != 0)
                if mask.sum() > 0:
                    signed = pair_dimension_labels * (dimensions[better] - dimensions[worse])
                    terms.append(self.config.dimension_loss_weight * masked_mean(-F.logsigmoid(signed), mask))
        if dimensions is not None and rating_targets is not None and rating_mask is not None and rating_mask.sum() > 0:
            squared = (dimensions - torch.nan_to_num(rating_targets.float())) ** 2
            terms.append(self.config.dimension_loss_weight * masked_mean(squared, rating_mask))
        if not terms:
            return None if pair_indices is None and rating_targets is None else reward.sum() * 0.0
        return torch.stack([t.reshape(()) for t in terms]).sum()
