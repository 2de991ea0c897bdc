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
from pathlib import Path

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
ENCODER_PREFIX = "backbone.adapter.encoder."


def load_backbone_state(reference: str) -> dict[str, torch.Tensor]:
    """The pretrained encoder's state dict, from an offline alias, a local dir or a hub id."""
    from sft_core.hub import resolve_model

    path = resolve_model(reference)
    try:
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
    except TypeError:
        encoder = AutoModel.from_pretrained(path)
    return encoder.state_dict()
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


class NeighbourAttention(nn.Module):
    """One pre-norm transformer layer over a document's entities in which every entity attends to its
    ``neighbours`` nearest entities (box gap; itself included), with a per-head attention bias computed
    from their relative position (offsets of centres, box gap, same-line overlap). All entities are
    processed at once: unlike a Bi-LSTM over the reading order, nothing runs step by step, and the
    context follows the page's 2-D layout rather than one reading order."""

    def __init__(self, size: int, heads: int = 4, neighbours: int = 16, dropout: float = 0.1):
        super().__init__()
        if size % heads:
            raise ValueError(f"context size {size} is not divisible by {heads} heads")
        self.heads, self.neighbours = heads, neighbours
        self.norm = nn.LayerNorm(size)
        self.qkv = nn.Linear(size, 3 * size)
        self.out = nn.Linear(size, size)
        self.position_bias = nn.Sequential(nn.Linear(5, 32), nn.GELU(), nn.Linear(32, heads))
        self.feed_forward = nn.Sequential(nn.LayerNorm(size), nn.Linear(size, 2 * size), nn.GELU(),
                                          nn.Dropout(dropout), nn.Linear(2 * size, size))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def relative_position(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair features [B, E, E, 5] (query i, key j) on a ~unit scale, and the box gap [B, E, E]."""
        boxes = boxes.float() / 1000
        x0, y0, x1, y1 = (b[:, :, None] for b in boxes.unbind(-1))
        u0, v0, u1, v1 = (b[:, None, :] for b in boxes.unbind(-1))
        dx, dy = (u0 + u1 - x0 - x1) / 2, (v0 + v1 - y0 - y1) / 2
        gap_x = torch.maximum(x0 - u1, u0 - x1).clamp(min=0)
        gap_y = torch.maximum(y0 - v1, v0 - y1).clamp(min=0)
        gap = torch.sqrt(gap_x**2 + gap_y**2)
        overlap = (torch.minimum(y1, v1) - torch.maximum(y0, v0)).clamp(min=0)
        same_line = overlap / torch.minimum(y1 - y0, v1 - v0).clamp(min=1e-3)
        return torch.stack([dx * 5, dy * 5, gap * 5, torch.log1p(gap * 100), same_line.clamp(max=1)], -1), gap

    def forward(self, features: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, count, size = features.shape
        relative, gap = self.relative_position(boxes)
        eye = torch.eye(count, dtype=torch.bool, device=features.device)[None]
        valid = (mask[:, :, None] & mask[:, None, :]) | eye
        distance = gap.masked_fill(~valid, float("inf")).masked_fill(eye, -1.0)
        k = min(self.neighbours, count)
        nearest = distance.topk(k, dim=-1, largest=False).indices
        allowed = torch.zeros_like(valid).scatter_(-1, nearest, True) & valid
        bias = self.position_bias(relative).permute(0, 3, 1, 2)  # [B, heads, E, E]
        bias = bias.masked_fill(~allowed[:, None], torch.finfo(bias.dtype).min)
        q, k_, v = self.qkv(self.norm(features)).view(batch, count, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k_, v, attn_mask=bias)
        features = features + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, count, size)))
        return features + self.dropout(self.feed_forward(features))


class XFormParserPreTrainedModel(PreTrainedModel):
    config_class = XFormParserConfig
    base_model_prefix = "xformparser"
    main_input_name = "input_ids"
    # Encoder weights that equal the pretrained backbone are not saved (see XFormParserConfig.
    # backbone_reference); from_pretrained reads them back from the reference and checks nothing else is missing.
    _keys_to_ignore_on_load_missing = [r"^backbone\.adapter\.encoder\."]

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
        if config.use_ser_context and config.context_kind == "attention":
            self.entity_context_for_ser = NeighbourAttention(entity_size, config.context_heads, config.context_neighbours,
                                                             config.dropout)
        elif config.use_ser_context:
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
        if config.use_bilstm and config.context_kind == "attention":
            self.entity_context = nn.Sequential(nn.Linear(relation_input, context_size), NeighbourAttention(
                context_size, config.context_heads, config.context_neighbours, config.dropout))
        elif config.use_bilstm:
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
        self._keys_to_ignore_on_save = set(self.backbone_derived_keys()) if config.backbone_reference else set()

    def backbone_derived_keys(self) -> list[str]:
        """State-dict keys of frozen encoder weights: equal to the pretrained backbone's, so a checkpoint
        that names the backbone (``config.backbone_reference``) need not store them."""
        return [name for name, parameter in self.named_parameters()
                if name.startswith(ENCODER_PREFIX) and not parameter.requires_grad]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` + encoder weights the checkpoint left out (frozen, equal to
        the backbone) read from ``config.backbone_reference``. Safetensors only."""
        kwargs.setdefault("use_safetensors", True)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        weights = Path(pretrained_model_name_or_path) / "model.safetensors"
        if weights.exists():
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as handle:
                saved = set(handle.keys())
            missing = [name for name in model.state_dict() if name not in saved]
            model.restore_backbone_weights(missing, source=str(weights))
        return model

    def restore_backbone_weights(self, names: list[str], source: str = "checkpoint") -> None:
        """Fill encoder weights ``names`` from the pretrained backbone the config names."""
        if not names:
            return
        outside = [name for name in names if not name.startswith(ENCODER_PREFIX)]
        if outside or not self.config.backbone_reference:
            raise ValueError(f"{source}: weights missing and not recoverable from a backbone: {(outside or names)[:3]}")
        backbone = load_backbone_state(self.config.backbone_reference)
        state = {}
        for name in names:
            key = name[len(ENCODER_PREFIX):]
            if key not in backbone:
                raise ValueError(f"{source}: {name} is neither saved nor in backbone {self.config.backbone_reference!r}")
            state[name] = backbone[key]
        self.load_state_dict(state, strict=False)

    def _label_mask(self, role_labels, device) -> torch.Tensor:
        """Which label ids play a role (key or value). Built from the config on every call: a buffer
        would not survive from_pretrained's meta-device initialisation."""
        roles = {label.lower() for label in role_labels}
        return torch.tensor([label.lower() in roles for label in self.config.labels], dtype=torch.bool, device=device)

    @classmethod
    def from_backbone(cls, backbone_path: str, labels, backbone_reference: str | None = None,
                      **config_kwargs) -> "XFormParserModel":
        """A new parser whose encoder starts from pretrained weights at ``backbone_path`` (a local HF dir);
        ``backbone_reference`` (default: the path) is what a saved checkpoint names to recover them."""
        encoder_config = AutoConfig.from_pretrained(backbone_path)
        config = XFormParserConfig(labels=labels, backbone_config=encoder_config.to_dict(),
                                   backbone_reference=backbone_reference or str(backbone_path), **config_kwargs)
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
        entity_features = self.ser_context(entity_features, entity_boxes, entity_mask)
        return {"entity_features": entity_features, "ser_logits": self.ser_head(entity_features),
                "bio_logits": self.token_bio_logits(token_states, token_entity)}

    def ser_context(self, entity_features, entity_boxes, entity_mask) -> torch.Tensor:
        """Entity features informed by their neighbours (``use_ser_context``; kind per ``context_kind``)."""
        module = self.entity_context_for_ser
        if module is None:
            return entity_features
        if isinstance(module, NeighbourAttention):
            return module(entity_features, entity_boxes, entity_mask)
        return entity_features + self._run_lstm(module, entity_features, entity_mask)

    def token_bio_logits(self, token_states, token_entity) -> torch.Tensor:
        """BIO tag logits per document token (through the token Bi-LSTM when ``use_token_context``)."""
        bio_input = token_states
        if self.token_context is not None:
            context = self._run_lstm(self.token_context, token_states, token_entity >= 0)
            bio_input = token_states + self.token_context_projection(context)
        return self.bio_head(bio_input)

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
        if isinstance(self.entity_context, nn.LSTM):
            context = self._run_lstm(self.entity_context, relation_inputs, entity_mask)
        elif self.config.use_bilstm and self.config.context_kind == "attention":
            context = self.entity_context[1](self.entity_context[0](relation_inputs), entity_boxes, entity_mask)
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
            # Zero that keeps the graph; only the finite "no key" column (masked pairs hold finfo.min,
            # whose sum overflows to -inf and times 0 gives NaN).
            return (re_logits[..., -1] * 0.0).sum()
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
