"""XFormParserModel: layout-aware backbone -> entity pooling -> SER -> label embedding -> Bi-LSTM ->
head/tail MLPs -> biaffine relation scorer (+ geometric pair features).

Reads top-down: forward() runs the backbone over every window, averages each document token's
states over the windows holding it, mean-pools entities (+ their box; optionally contextualised by a
Bi-LSTM over entities), classifies them (SER) and tags tokens (BIO; optionally through a token
Bi-LSTM), then scores (key, value) pairs. For every value candidate the RE head is a softmax over its key
candidates plus a "no key" option; the loss is the negative log of the probability mass on its gold
keys (or on "no key").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.utils import ModelOutput

from .backbones import BackboneAdapter
from .configuration_xformparser import XFormParserConfig, soft_label_mix
from .features import bio_tags
from .linking import NUM_GEOMETRIC_FEATURES, geometric_pair_features

LABEL_SOURCES = ("gold", "predicted")
OBJECTIVES = ("ser", "re")


@dataclass
class XFormParserOutput(ModelOutput):
    loss: torch.Tensor | None = None
    ser_loss: torch.Tensor | None = None
    bio_loss: torch.Tensor | None = None
    re_loss: torch.Tensor | None = None
    ser_logits: torch.Tensor | None = None  # [docs, entities, labels]
    bio_logits: torch.Tensor | None = None  # [docs, tokens, BIO tags]
    re_logits: torch.Tensor | None = None  # [docs, value entity, key entity + 1]; last column = no key
    head_candidates: torch.Tensor | None = None  # [docs, entities] bool: may be a key
    tail_candidates: torch.Tensor | None = None  # [docs, entities] bool: may be a value


def _mlp(in_size: int, hidden: int, out_size: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_size, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, out_size))


def _scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of rows of ``values [N, H]`` grouped by ``index [N]`` into ``size`` rows (0 if empty)."""
    sums = values.new_zeros(size, values.shape[-1]).index_add_(0, index, values)
    counts = values.new_zeros(size).index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    return sums / counts.clamp(min=1)[:, None]


class Biaffine(nn.Module):
    """score[i, j] = [h_i; 1]^T U [t_j; 1]: bilinear term plus linear terms and a bias."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(size + 1, size + 1) * 0.01)

    def forward(self, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        ones = heads.new_ones(*heads.shape[:-1], 1)
        heads, tails = torch.cat([heads, ones], -1), torch.cat([tails, ones], -1)
        return torch.einsum("bih,hk,bjk->bij", heads, self.weight, tails)


class XFormParserPreTrainedModel(PreTrainedModel):
    config_class = XFormParserConfig
    base_model_prefix = "xformparser"
    main_input_name = "input_ids"

    def _init_weights(self, module):
        if getattr(module, "no_reinit", False):
            return
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class XFormParserModel(XFormParserPreTrainedModel):
    def __init__(self, config: XFormParserConfig):
        super().__init__(config)
        self.backbone = BackboneAdapter(config)
        hidden, entity_size = self.backbone.hidden_size, config.entity_hidden_size
        num_labels, num_tags = len(config.labels), len(bio_tags(config.labels))
        # Pooled tokens ++ the entity's own normalised box (x0, y0, x1, y1, width, height).
        self.entity_dense = nn.Sequential(nn.Linear(hidden + 6, entity_size), nn.GELU())
        self.entity_context_for_ser = None
        if config.use_ser_context:
            self.entity_context_for_ser = nn.LSTM(entity_size, entity_size // 2, batch_first=True, bidirectional=True)
        self.ser_head = _mlp(entity_size, entity_size, num_labels, config.dropout)
        self.bio_head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(hidden, num_tags))
        self.token_context = None
        if config.use_token_context:
            self.token_context = nn.LSTM(hidden, config.token_context_size, batch_first=True, bidirectional=True)
            self.token_context_projection = nn.Linear(2 * config.token_context_size, hidden)

        relation_input = entity_size
        self.label_embedding = None
        if config.use_label_embedding:
            self.label_embedding = nn.Embedding(num_labels, config.label_embedding_size)
            relation_input += config.label_embedding_size
        context_size = 2 * config.lstm_hidden_size
        if config.use_bilstm:
            self.entity_context = nn.LSTM(relation_input, config.lstm_hidden_size, batch_first=True, bidirectional=True)
        else:
            self.entity_context = nn.Sequential(nn.Linear(relation_input, context_size), nn.GELU())
        self.head_mlp = _mlp(context_size, config.re_hidden_size, config.re_hidden_size, config.dropout)
        self.tail_mlp = _mlp(context_size, config.re_hidden_size, config.re_hidden_size, config.dropout)
        self.biaffine = Biaffine(config.re_hidden_size)
        self.no_key_scorer = nn.Linear(config.re_hidden_size, 1)
        self.geometry_mlp = None
        if config.use_geometric_features:
            self.geometry_mlp = nn.Sequential(nn.Linear(NUM_GEOMETRIC_FEATURES, 64), nn.GELU(), nn.Linear(64, 64),
                                              nn.GELU(), nn.Linear(64, 1))
        # Set by the trainer's callback each step; drives the soft-label schedule (not saved).
        self.soft_label_epoch = 0.0
        self.post_init()

    def _label_mask(self, role_labels, device) -> torch.Tensor:
        """Which label ids play a role (key or value). Built from the config on every call: a buffer
        would not survive from_pretrained's meta-device initialisation."""
        roles = {label.lower() for label in role_labels}
        return torch.tensor([label.lower() in roles for label in self.config.labels], dtype=torch.bool, device=device)

    @classmethod
    def from_backbone(cls, backbone_path: str, labels, **config_kwargs) -> "XFormParserModel":
        """A new parser whose encoder starts from pretrained weights at ``backbone_path`` (a local HF dir)."""
        encoder_config = AutoConfig.from_pretrained(backbone_path)
        config = XFormParserConfig(labels=labels, backbone_config=encoder_config.to_dict(), **config_kwargs)
        model = cls(config)
        pretrained = AutoModel.from_pretrained(backbone_path)
        missing, _ = model.backbone.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        if [name for name in missing if "pooler" not in name]:
            raise RuntimeError(f"backbone weights at {backbone_path} miss {missing[:5]}...")
        return model

    def soft_label_share(self) -> float:
        config = self.config
        return soft_label_mix(self.soft_label_epoch, config.soft_label_start_epoch,
                              config.soft_label_warmup_epochs, config.soft_label_final_mix)

    # ------------------------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids, bbox, attention_mask, window_document, window_token_position, token_entity,
        entity_boxes, entity_mask, entity_labels=None, token_bio=None, link_targets=None,
        pixel_values=None, label_source: str | None = None, objective: str | None = None, return_dict=True,
    ) -> XFormParserOutput:
        encoded = self.encode_entities(input_ids, bbox, attention_mask, window_document, window_token_position,
                                       token_entity, entity_mask, entity_boxes, pixel_values)
        has_gold = entity_labels is not None and bool((entity_labels[entity_mask] >= 0).all())
        label_source = label_source or ("gold" if self.training and has_gold else "predicted")
        re_logits, head_candidates, tail_candidates = self.score_relations(
            encoded, entity_boxes, entity_mask, entity_labels, label_source)

        ser_logits, bio_logits = encoded["ser_logits"], encoded["bio_logits"]
        losses = {}
        if entity_labels is not None:
            losses["ser"] = F.cross_entropy(ser_logits.flatten(0, 1), entity_labels.flatten(), ignore_index=-100)
        if token_bio is not None and bool((token_bio >= 0).any()):
            losses["bio"] = F.cross_entropy(bio_logits.flatten(0, 1), token_bio.flatten(), ignore_index=-100)
        if link_targets is not None:
            losses["re"] = self._relation_loss(re_logits, link_targets, head_candidates, tail_candidates)
        loss = self._combine_losses(losses, objective) if losses else None
        return XFormParserOutput(
            loss=loss, ser_loss=losses.get("ser"), bio_loss=losses.get("bio"), re_loss=losses.get("re"),
            ser_logits=ser_logits, bio_logits=bio_logits, re_logits=re_logits,
            head_candidates=head_candidates, tail_candidates=tail_candidates,
        )

    def encode_entities(self, input_ids, bbox, attention_mask, window_document, window_token_position,
                        token_entity, entity_mask, entity_boxes, pixel_values=None) -> dict[str, torch.Tensor]:
        """Backbone over all windows -> document token states -> pooled entities -> SER and BIO logits."""
        num_docs, num_tokens = token_entity.shape
        window_pixels = pixel_values[window_document] if pixel_values is not None else None
        window_states = self.backbone(input_ids, bbox, attention_mask, window_pixels)
        token_states = self._merge_windows(window_states, window_document, window_token_position, num_docs, num_tokens)
        entity_states = self._pool_entities(token_states, token_entity, entity_mask.shape[1])
        entity_features = self.entity_dense(torch.cat([entity_states, self._box_features(entity_boxes)], dim=-1))
        if self.entity_context_for_ser is not None:
            entity_features = entity_features + self._run_lstm(self.entity_context_for_ser, entity_features, entity_mask)
        bio_input = token_states
        if self.token_context is not None:
            context = self._run_lstm(self.token_context, token_states, token_entity >= 0)
            bio_input = token_states + self.token_context_projection(context)
        return {"entity_features": entity_features, "ser_logits": self.ser_head(entity_features),
                "bio_logits": self.bio_head(bio_input)}

    def score_relations(self, encoded, entity_boxes, entity_mask, entity_labels=None, label_source="predicted"):
        """RE logits ``[docs, value, key + 1]`` and the key / value candidate masks, with candidates and
        label embeddings from the gold labels (``"gold"``) or from the SER prediction (``"predicted"``)."""
        if label_source not in LABEL_SOURCES:
            raise ValueError(f"label_source must be one of {LABEL_SOURCES}")
        ser_logits = encoded["ser_logits"]
        if label_source == "gold":
            if entity_labels is None or not bool((entity_labels[entity_mask] >= 0).all()):
                raise ValueError("label_source='gold' needs entity_labels for every entity")
            label_ids = entity_labels.clamp(min=0)
        else:
            label_ids = ser_logits.argmax(-1)
        head_candidates = self._label_mask(self.config.key_labels, label_ids.device)[label_ids] & entity_mask
        tail_candidates = self._label_mask(self.config.value_labels, label_ids.device)[label_ids] & entity_mask
        re_logits = self._score_relations(encoded["entity_features"], ser_logits, label_ids, label_source,
                                          entity_boxes, entity_mask, head_candidates, tail_candidates)
        return re_logits, head_candidates, tail_candidates

    # ------------------------------------------------------------------------------------ pieces
    @staticmethod
    def _box_features(entity_boxes: torch.Tensor) -> torch.Tensor:
        boxes = entity_boxes.float() / 1000
        return torch.cat([boxes, boxes[..., 2:3] - boxes[..., 0:1], boxes[..., 3:4] - boxes[..., 1:2]], dim=-1)

    @staticmethod
    def _run_lstm(lstm: nn.LSTM, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Bi-LSTM over the entities of each document in reading order (padding excluded)."""
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = lstm(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])
        return outputs

    @staticmethod
    def _merge_windows(window_states, window_document, window_token_position, num_docs, num_tokens):
        """Average each document token's states over every window that contains it."""
        valid = window_token_position >= 0
        doc_index = window_document[:, None].expand_as(window_token_position)[valid]
        flat_index = doc_index * num_tokens + window_token_position[valid]
        merged = _scatter_mean(window_states[valid], flat_index, num_docs * num_tokens)
        return merged.view(num_docs, num_tokens, -1)

    @staticmethod
    def _pool_entities(token_states, token_entity, num_entities):
        num_docs = token_states.shape[0]
        valid = token_entity >= 0
        doc_index = torch.arange(num_docs, device=token_entity.device)[:, None].expand_as(token_entity)[valid]
        flat_index = doc_index * num_entities + token_entity[valid]
        pooled = _scatter_mean(token_states[valid], flat_index, num_docs * num_entities)
        return pooled.view(num_docs, num_entities, -1)

    def _relation_inputs(self, entity_features, ser_logits, label_ids, label_source):
        if self.label_embedding is None:
            return entity_features
        if label_source == "gold":
            embedded = self.label_embedding(label_ids)
            share = self.soft_label_share() if self.training else 0.0
            if share > 0:
                # SER probabilities are detached: RE must not pull the SER head towards its own needs.
                soft = ser_logits.detach().softmax(-1) @ self.label_embedding.weight
                embedded = (1 - share) * embedded + share * soft
        else:
            embedded = ser_logits.softmax(-1) @ self.label_embedding.weight
        return torch.cat([entity_features, embedded], dim=-1)

    def _score_relations(self, entity_features, ser_logits, label_ids, label_source, entity_boxes, entity_mask,
                         head_candidates, tail_candidates):
        relation_inputs = self._relation_inputs(entity_features, ser_logits, label_ids, label_source)
        if self.config.use_bilstm:
            context = self._run_lstm(self.entity_context, relation_inputs, entity_mask)
        else:
            context = self.entity_context(relation_inputs)
        heads, tails = self.head_mlp(context), self.tail_mlp(context)
        scores = self.biaffine(heads, tails)  # [docs, head, tail]
        if self.geometry_mlp is not None:
            features = geometric_pair_features(entity_boxes, head_candidates, tail_candidates)
            scores = scores + self.geometry_mlp(features).squeeze(-1)
        num_entities = entity_mask.shape[1]
        not_self = ~torch.eye(num_entities, dtype=torch.bool, device=scores.device)[None]
        allowed = head_candidates[:, :, None] & tail_candidates[:, None, :] & not_self
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        no_key = self.no_key_scorer(tails)  # [docs, tail, 1]
        return torch.cat([scores.transpose(1, 2), no_key], dim=-1)  # [docs, tail, head + 1]

    @staticmethod
    def _relation_loss(re_logits, link_targets, head_candidates, tail_candidates):
        """-log P(gold keys) for every value candidate; 'no key' is the target when it has none."""
        gold = (link_targets.transpose(1, 2) > 0) & head_candidates[:, None, :]  # [docs, tail, head]
        no_gold = ~gold.any(-1, keepdim=True)
        target = torch.cat([gold, no_gold], dim=-1)
        log_probs = re_logits.log_softmax(-1)
        gold_mass = log_probs.masked_fill(~target, torch.finfo(log_probs.dtype).min).logsumexp(-1)
        if not bool(tail_candidates.any()):
            return re_logits.sum() * 0.0
        return -gold_mass[tail_candidates].mean()

    def _combine_losses(self, losses: dict, objective: str | None) -> torch.Tensor:
        config = self.config
        weights = {"ser": config.ser_loss_weight, "bio": config.bio_loss_weight, "re": config.re_loss_weight}
        if objective == "ser":
            weights["re"] = 0.0
        elif objective == "re":
            weights["ser"] = weights["bio"] = 0.0
        elif objective is not None:
            raise ValueError(f"objective must be one of {OBJECTIVES} or None, got {objective!r}")
        total = next(iter(losses.values())) * 0.0
        for name, value in losses.items():
            if weights[name] > 0:
                total = total + weights[name] * value
        return total
