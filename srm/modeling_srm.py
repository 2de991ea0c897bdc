"""Structural Reward Model: shared encoder + side branches -> dimension scores -> prompt gate -> reward.

Data flow for a batch of N responses that belong to G prompts::

    prompt + response --encoder (one pass)--> pooled h_i, pooled response segment r_i
        h_i --head_k--> s_ik                                                    (head dimensions)
        cos(p_g, r_i), [h_i, p_g*r_i, |p_g-r_i|] --> s_ik                       (shared similarity: relevance)
    frozen feature branches (cached)     --> f_i  --scorer_k--> s_ik        (feature dimensions)
    prompt alone --encoder--> pooled p_g --gate--> softmax(./T) = g_gk
    reward_i = scale * sum_k g_{g(i)k} s_ik + bias

Chosen and rejected answers to one prompt share the prompt's gate, so a pairwise reward difference splits
exactly into per-dimension contributions ``g_k * (s_ak - s_bk)`` (used by ``srm score --explain``).

Priors that keep what untrained judges already know (see docs/srm.md, "Generalization"): feature scorers are
monotone in their branch's main raw signal (a cosine or a log-likelihood can be scaled by training, never
flipped), the gate is pulled toward equal weights (``gate_prior_weight``) and trained with dimension dropout
(``gate_dropout``), so no single dimension carries the reward without evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from sft_core.nn_utils import make_mlp, mean_pool

from .configuration_srm import HEAD_BRANCH, SRMConfig


@dataclass
class SRMOutput(ModelOutput):
    """``reward``: [N]; ``dimensions``: [N, K] per-dimension scores; ``gates``: [N, K] gate weights (rows sum to
    1); ``loss``: scalar when labels were given. ``dimensions``/``gates`` are ``None`` for the scalar baseline."""

    loss: torch.FloatTensor | None = None
    reward: torch.FloatTensor | None = None
    dimensions: torch.FloatTensor | None = None
    gates: torch.FloatTensor | None = None


def _inverse_softplus(value: float) -> float:
    return math.log(math.expm1(value))


class MonotoneScorer(nn.Module):
    """Dimension score from a feature vector, non-decreasing in its designated raw signals.

    ``score = sum_j softplus(w_j) * sign_j * z_j + mlp(z_rest)``: the monotone part starts as the zero-shot
    judge (weight 1 on the standardized signal) and training can only rescale it; the MLP over the remaining
    features adds a correction but cannot see the monotone signals themselves."""

    def __init__(self, feature_size: int, monotone: list[tuple[int, int]], hidden: int, dropout: float):
        super().__init__()
        index = [int(i) for i, _ in monotone]
        rest = [i for i in range(feature_size) if i not in set(index)]
        # Plain lists, not buffers: they come from the config, and non-persistent buffers are not restored by
        # from_pretrained's meta-device initialization.
        self.monotone_index, self.rest_index = index, rest
        self.monotone_sign = [float(sign) for _, sign in monotone]
        self.raw_weight = nn.Parameter(torch.full((len(index),), _inverse_softplus(1.0)))
        self.correction = make_mlp(len(rest), hidden, 1, dropout) if rest else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sign = torch.tensor(self.monotone_sign, device=features.device, dtype=features.dtype)
        signal = features[:, self.monotone_index]
        score = (F.softplus(self.raw_weight) * sign * signal).sum(-1, keepdim=True)
        if self.correction is not None:
            score = score + self.correction(features[:, self.rest_index])
        return score


class SharedSimilarityScorer(nn.Module):
    """Relevance from the shared encoder: ``softplus(a) * (cos(p, r) - b)`` (monotone in the prompt-response
    cosine, the zero-shot judge) plus, optionally, a cross-encoder head on ``[h, p*r, |p-r|]`` (joint encoding
    and the interaction of prompt and response-segment embeddings) that off-prompt negatives can train."""

    def __init__(self, hidden_size: int, head_hidden: int, dropout: float, cross_head: bool, monotone: bool = True):
        super().__init__()
        self.monotone = monotone
        if monotone:
            self.raw_weight = nn.Parameter(torch.tensor([_inverse_softplus(5.0)]))
            self.offset = nn.Parameter(torch.tensor([0.5]))
        else:  # the pre-prior design: a free MLP over [cosine, p*r] that may learn any sign
            self.free = make_mlp(1 + hidden_size, head_hidden, 1, dropout)
        self.cross_head = make_mlp(3 * hidden_size, head_hidden, 1, dropout) if cross_head else None

    def forward(self, pooled, prompt, segment) -> torch.Tensor:
        prompt_n, segment_n = F.normalize(prompt.float(), dim=-1), F.normalize(segment.float(), dim=-1)
        cosine = (prompt_n * segment_n).sum(-1, keepdim=True)
        if self.monotone:
            score = F.softplus(self.raw_weight) * (cosine - self.offset)
        else:
            score = self.free(torch.cat([cosine, prompt_n * segment_n], -1))
        if self.cross_head is not None:
            score = score + self.cross_head(torch.cat([pooled, prompt_n * segment_n, (prompt_n - segment_n).abs()], -1))
        return score


def _base_model(model: PreTrainedModel) -> PreTrainedModel:
    """A ``*ForCausalLM`` (or any model with a head) reduced to the base model ``AutoModel`` would build."""
    inner = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return inner if isinstance(inner, PreTrainedModel) else model


DECODER_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi", "phi3", "gemma", "gemma2",
                       "olmo", "olmo2", "smollm3", "granite"}


def _is_decoder(model) -> bool:
    """Causal LMs (decoder-only) get last-token pooling; encoders mean pooling."""
    config = model.config
    architectures = getattr(config, "architectures", None) or []
    return (type(model).__name__.endswith("ForCausalLM") or getattr(config, "model_type", "") in DECODER_MODEL_TYPES
            or bool(getattr(config, "is_decoder", False)) or any(a.endswith("ForCausalLM") for a in architectures))


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
            self.reward_head = make_mlp(hidden, config.head_hidden_size, 1, config.dropout)
        else:
            self.heads = nn.ModuleDict()
            self.feature_scorers = nn.ModuleDict()
            self.similarity_scorers = nn.ModuleDict()
            for spec in config.dimension_specs:
                if spec.branch == HEAD_BRANCH:
                    self.heads[spec.name] = make_mlp(hidden, config.head_hidden_size, 1, config.dropout)
                elif spec.branch == "similarity" and config.shared_similarity:
                    self.similarity_scorers[spec.name] = SharedSimilarityScorer(
                        hidden, config.head_hidden_size, config.dropout, config.relevance_cross_head,
                        monotone=config.monotone_scorers)
                else:
                    settings = config.feature_branches.get(spec.branch, {})
                    monotone = [tuple(m) for m in settings.get("monotone", [])] if config.monotone_scorers else []
                    size = config.feature_size(spec.branch)
                    self.feature_scorers[spec.name] = (
                        MonotoneScorer(size, monotone, config.head_hidden_size, config.dropout) if monotone
                        else make_mlp(size, config.head_hidden_size, 1, config.dropout))
            self.gate = make_mlp(hidden, config.gate_hidden_size, len(self.dimension_names), config.dropout)
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

    @property
    def uses_response_segment(self) -> bool:
        """Whether the model reads the pooled response segment of the joint pass (shared similarity)."""
        return not self.config.scalar_baseline and self.config.shared_similarity

    # ----- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone, dimensions=None, feature_branches=None, scalar_baseline: bool = False,
                      branch_settings: dict | None = None, device: str = "cpu", **config_kwargs) -> "SRMModel":
        """Build a fresh SRM around a pretrained encoder or decoder.

        ``backbone`` is an alias (``minilm-l6``, ``me5-small``, ``smollm2-135m``), a hub id / local path, or a
        loaded ``PreTrainedModel`` (a ``*ForCausalLM`` is reduced to its base model). Decoders use last-token
        pooling unless ``pooling`` is given. ``feature_branches`` optionally maps branch kind -> ready
        :class:`~srm.branches.FeatureBranch` (otherwise they are built from ``branch_settings`` / defaults when
        the config needs them). A similarity branch whose model is ``"shared"`` or the backbone itself reuses
        the SRM's encoder.
        """
        from .branches import build_feature_branches

        if isinstance(backbone, PreTrainedModel):
            encoder, name = backbone, getattr(backbone.config, "_name_or_path", "") or "in-memory"
        else:
            from sft_core.hub import resolve_model

            name = str(backbone)
            encoder = AutoModel.from_pretrained(resolve_model(name))
        decoder = _is_decoder(encoder)
        encoder = _base_model(encoder)
        config_kwargs.setdefault("pooling", "last" if decoder else "mean")
        limit = getattr(encoder.config, "max_position_embeddings", None)
        if limit and config_kwargs.get("max_sequence_length", 512) > limit:
            config_kwargs["max_sequence_length"] = int(limit)
        config = SRMConfig(backbone_config=encoder.config.to_dict(), backbone_name_or_path=name, dimensions=dimensions,
                           feature_branches=branch_settings, scalar_baseline=scalar_baseline, **config_kwargs)
        if config.shared_similarity:
            config.feature_branches["similarity"] = {"model": "shared"}
        branches = build_feature_branches(config, overrides=feature_branches, device=device)
        model = cls(config)
        missing, unexpected = model.backbone.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"backbone weights do not fit the rebuilt encoder: missing={missing} unexpected={unexpected}")
        model._feature_branches = branches
        return model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """With ``config.backbone_weights == "offline"`` only heads, scorers, gate and normalization statistics
        are written (the encoder comes back from its offline alias on load)."""
        if self.config.backbone_weights == "offline" and kwargs.get("state_dict") is None:
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        config = kwargs.get("config")
        if config is None:
            config = SRMConfig.from_pretrained(pretrained_model_name_or_path)
        if getattr(config, "backbone_weights", "included") != "offline":
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        # The checkpoint holds no encoder weights by design: load the rest quietly, then the offline encoder.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        model.load_offline_backbone()
        return model

    def load_offline_backbone(self) -> None:
        from sft_core.hub import resolve_model

        encoder = _base_model(AutoModel.from_pretrained(resolve_model(self.config.backbone_name_or_path)))
        missing, unexpected = self.backbone.load_state_dict(encoder.state_dict(), strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"the offline backbone {self.config.backbone_name_or_path!r} does not fit this SRM")
        if self.config.freeze_backbone:
            self.backbone.requires_grad_(False)

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
    def _hidden(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_backbone):
            return self.backbone(**kwargs).last_hidden_state

    def _pool(self, hidden, attention_mask) -> torch.Tensor:
        if self.config.pooling == "last":  # right-padded: the last real token sits at length - 1
            last = attention_mask.long().sum(1).clamp(min=1) - 1
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return mean_pool(hidden, attention_mask)

    def encode(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Pooled encoder output (mean pooling for encoders, last token for decoders)."""
        return self._pool(self._hidden(input_ids, attention_mask, token_type_ids), attention_mask)

    def encode_joint(self, input_ids, attention_mask, token_type_ids=None, response_mask=None):
        """One pass over ``prompt + response``: (pooled output, mean-pooled response segment or ``None``)."""
        hidden = self._hidden(input_ids, attention_mask, token_type_ids)
        segment = mean_pool(hidden, response_mask * attention_mask) if response_mask is not None else None
        return self._pool(hidden, attention_mask), segment

    # ----- forward -----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        response_mask: torch.LongTensor | None = None,
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
        input_ids / attention_mask / token_type_ids: ``[N, L]`` joint ``prompt + response`` encoding (see
            ``srm.collate.tokenize_joint``; ``response_mask [N, L]`` marks the response tokens, needed by a
            shared-encoder similarity branch), or give ``response_embeddings``: ``[N, H]`` pooled encoder output,
            or ``[N, 2H]`` pooled output followed by the pooled response segment (what
            ``EncoderEmbeddingBranch("joint")`` caches for a frozen backbone).
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
        segment_embeddings = None
        if response_embeddings is None:
            if input_ids is None:
                raise ValueError("give input_ids (joint prompt+response encoding) or response_embeddings")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            if self.uses_response_segment and response_mask is None:
                raise ValueError("this SRM's similarity branch reuses the encoder: give response_mask "
                                 "(srm.collate.tokenize_joint returns it)")
            response_embeddings, segment_embeddings = self.encode_joint(
                input_ids, attention_mask, token_type_ids, response_mask if self.uses_response_segment else None)
        else:
            hidden = self.backbone.config.hidden_size
            if response_embeddings.shape[-1] == 2 * hidden:
                response_embeddings, segment_embeddings = response_embeddings[:, :hidden], response_embeddings[:, hidden:]
            elif self.uses_response_segment:
                raise ValueError(f"this SRM needs response_embeddings of width {2 * hidden} (pooled + response segment)")
        num_responses = response_embeddings.shape[0]
        device = response_embeddings.device

        if self.config.scalar_baseline:
            reward, dimensions, gates, prompt_gates = self.reward_head(response_embeddings).squeeze(-1), None, None, None
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
            dimensions = self.dimension_scores(response_embeddings, branch_features,
                                               prompt_embeddings[response_prompt_index], segment_embeddings)
            prompt_gates = self.gate_weights(prompt_embeddings)
            gates = prompt_gates[response_prompt_index]
            reward = self.reward_scale * (gates * dimensions).sum(-1) + self.reward_bias

        loss = self.compute_loss(reward, dimensions, pair_indices, pair_preference_mask, pair_margin,
                                 pair_dimension_labels, pair_dimension_mask, rating_targets, rating_mask, prompt_gates)
        return SRMOutput(loss=loss, reward=reward, dimensions=dimensions, gates=gates)

    def gate_weights(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Softmax gate per prompt. In training, each dimension is dropped with probability ``gate_dropout``
        (never all of a row), so the other dimensions must carry the reward too."""
        logits = self.gate(prompt_embeddings).float() / self.config.gate_temperature
        rate = self.config.gate_dropout
        if self.training and rate > 0 and logits.shape[-1] > 1:
            keep = torch.rand_like(logits) >= rate
            keep = keep | ~keep.any(-1, keepdim=True)
            logits = logits.masked_fill(~keep, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def dimension_scores(self, response_embeddings: torch.Tensor, branch_features: torch.Tensor | None,
                         prompt_embeddings: torch.Tensor | None = None,
                         segment_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, K]`` scores; ``prompt_embeddings`` (one row per response) and ``segment_embeddings`` feed a
        shared-encoder similarity dimension."""
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
            elif spec.name in self.similarity_scorers:
                if prompt_embeddings is None or segment_embeddings is None:
                    raise ValueError("the shared similarity dimension needs prompt and response-segment embeddings")
                columns.append(self.similarity_scorers[spec.name](response_embeddings, prompt_embeddings,
                                                                  segment_embeddings))
            else:
                columns.append(self.feature_scorers[spec.name](normalized[:, slices[spec.branch]]))
        return torch.cat([c.float() for c in columns], dim=-1)

    def compute_loss(self, reward, dimensions, pair_indices, pair_preference_mask, pair_margin,
                     pair_dimension_labels, pair_dimension_mask, rating_targets, rating_mask, prompt_gates=None):
        terms, has_preference = [], False
        if pair_indices is not None and pair_indices.numel():
            better, worse = pair_indices[:, 0], pair_indices[:, 1]
            preference_mask = (pair_preference_mask if pair_preference_mask is not None
                               else torch.ones(len(better), device=reward.device))
            logits = reward[better] - reward[worse]
            if self.config.margin_loss and pair_margin is not None:
                logits = logits - pair_margin
            if preference_mask.sum() > 0:
                has_preference = True
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
        if has_preference and prompt_gates is not None and self.config.gate_prior_weight and prompt_gates.shape[-1] > 1:
            # KL(gate || uniform) = sum g log g + log K: zero at equal weights; the data must pay for moving away.
            # Part of the preference objective: the gate only matters for the overall reward.
            kl = (prompt_gates * torch.log(prompt_gates.clamp(min=1e-8))).sum(-1) + math.log(prompt_gates.shape[-1])
            terms.append(self.config.gate_prior_weight * kl.mean())
        if not terms:
            return None if pair_indices is None and rating_targets is None else reward.sum() * 0.0
        return torch.stack([t.reshape(()) for t in terms]).sum()
