"""Backbone adapters: one interface for every encoder.

``adapter(input_ids, bbox, attention_mask, pixel_values=None) -> token states [windows, length, hidden]``

- ``TextLayoutBackbone``: any HF text encoder (BERT-like, e.g. MiniLM) plus trainable 2D layout
  embeddings of (x0, y0, x1, y1, width, height) added to the word embeddings, LayoutLM-style. This is
  the offline default: pretrained layout models are not available on these machines.
- ``LayoutLMv3Backbone`` / ``LiltBackbone``: transformers' models, which take ``bbox`` natively.
- ``PageImageBranch`` (optional, any backbone): a small CNN over the page image; each token's box is
  RoI-pooled from the feature map with ``grid_sample`` and added to the token states.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, LayoutLMv3Config, LayoutLMv3Model, LiltConfig, LiltModel
from transformers.masking_utils import create_bidirectional_mask


def encoder_config_from_dict(config_dict: dict):
    values = dict(config_dict)
    model_type = values.pop("model_type", None)
    if not model_type:
        raise ValueError("backbone_config needs a 'model_type' (use the encoder's config.to_dict())")
    return AutoConfig.for_model(model_type, **values)


class LayoutEmbeddings(nn.Module):
    """Sum of embeddings of x0, y0, x1, y1, width and height (all bucketed on 0-1000)."""

    def __init__(self, hidden_size: int, num_buckets: int = 1001):
        super().__init__()
        self.num_buckets = num_buckets
        self.x_embedding = nn.Embedding(num_buckets, hidden_size)
        self.y_embedding = nn.Embedding(num_buckets, hidden_size)
        self.width_embedding = nn.Embedding(num_buckets, hidden_size)
        self.height_embedding = nn.Embedding(num_buckets, hidden_size)

    def forward(self, bbox: torch.Tensor) -> torch.Tensor:
        bbox = bbox.clamp(0, self.num_buckets - 1)
        x0, y0, x1, y1 = bbox.unbind(-1)
        width = (x1 - x0).clamp(0, self.num_buckets - 1)
        height = (y1 - y0).clamp(0, self.num_buckets - 1)
        return (self.x_embedding(x0) + self.y_embedding(y0) + self.x_embedding(x1) + self.y_embedding(y1)
                + self.width_embedding(width) + self.height_embedding(height))


class TextLayoutBackbone(nn.Module):
    """A text encoder with 2D layout embeddings.

    ``frozen_layers == 0``: layout embeddings are added to the word embeddings (LayoutLM-style) and the
    encoder trains (the word-embedding table stays frozen when ``freeze_word_embeddings``: it is
    most of MiniLM's weights, its gradient is dense and its optimizer step dominated a CPU step).
    ``frozen_layers == N > 0`` (BERT-like encoders): the embeddings and the bottom N layers are frozen,
    their output is computed once per distinct window and cached in this module, and the layout
    embeddings are added to the input of layer N.

    On CPU every window runs on its own, unpadded and without an attention mask: padding costs
    compute in every layer and a masked attention leaves the fused kernel.
    """

    def __init__(self, encoder_config, layout_embedding_size: int = 1001, frozen_layers: int = 0,
                 freeze_word_embeddings: bool = False, attention_dropout: float | None = None):
        super().__init__()
        if attention_dropout is not None and hasattr(encoder_config, "attention_probs_dropout_prob"):
            # Attention dropout > 0 sends SDPA down its unfused path (about 2x slower on CPU).
            encoder_config.attention_probs_dropout_prob = attention_dropout
        try:
            self.encoder = AutoModel.from_config(encoder_config, add_pooling_layer=False)
        except TypeError:  # encoders without a pooler flag
            self.encoder = AutoModel.from_config(encoder_config)
        self.hidden_size = encoder_config.hidden_size
        self.layout = LayoutEmbeddings(self.hidden_size, layout_embedding_size)
        # Start the layout embeddings small so the pretrained text encoder is not disturbed at step 0.
        for embedding in self.layout.modules():
            if isinstance(embedding, nn.Embedding):
                nn.init.normal_(embedding.weight, std=0.002)
        self.layout.no_reinit = True
        self.frozen_layers = frozen_layers
        # Frozen-layer outputs per window (key: token ids + a cheap version stamp of the frozen weights).
        # Owned by this module, so two models never share (or leak) each other's states.
        self._frozen_cache: dict[tuple, torch.Tensor] = {}
        if freeze_word_embeddings:
            self.encoder.get_input_embeddings().requires_grad_(False)
        if frozen_layers:
            layers = self._layers()
            if frozen_layers > len(layers):
                raise ValueError(f"frozen_layers={frozen_layers} but the encoder has {len(layers)} layers")
            for module in [self.encoder.embeddings, *layers[:frozen_layers]]:
                module.requires_grad_(False)

    def clear_frozen_cache(self) -> None:
        self._frozen_cache.clear()

    def _layers(self) -> nn.ModuleList:
        layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
        if layers is None or not hasattr(self.encoder, "embeddings"):
            raise ValueError("frozen_layers needs a BERT-like encoder (embeddings + encoder.layer)")
        return layers

    def _mask(self, hidden, attention_mask):
        return create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)

    def _frozen_modules(self) -> list[nn.Module]:
        return [self.encoder.embeddings, *self._layers()[: self.frozen_layers]]

    def _frozen_version(self) -> tuple:
        """Changes whenever a frozen weight is replaced or modified in place (load_state_dict, to(),
        a user's edit), without reading the weights: storage pointers and autograd version counters."""
        return tuple((p.data_ptr(), p._version) for module in self._frozen_modules() for p in module.parameters())

    @torch.no_grad()
    def _frozen_states(self, input_ids, attention_mask) -> torch.Tensor:
        if attention_mask is None:
            lengths = [input_ids.shape[1]] * input_ids.shape[0]
        else:
            lengths = attention_mask.sum(-1).tolist()
        version = self._frozen_version()
        if self._frozen_cache.get("version") != version:
            self._frozen_cache.clear()
            self._frozen_cache["version"] = version
        keys = [input_ids[row, :length].cpu().numpy().tobytes() for row, length in enumerate(lengths)]
        missing = [row for row, key in enumerate(keys) if key not in self._frozen_cache]
        if missing:
            frozen_modules = self._frozen_modules()
            modes = [module.training for module in frozen_modules]
            for module in frozen_modules:
                module.eval()  # no dropout: cached states must not depend on the step
            for row in missing:
                hidden = self.encoder.embeddings(input_ids=input_ids[row : row + 1, : lengths[row]])
                for layer in self._layers()[: self.frozen_layers]:
                    hidden = _run_layer(layer, hidden, None)
                self._frozen_cache[keys[row]] = hidden[0].detach().clone()
            for module, mode in zip(frozen_modules, modes):
                module.train(mode)
        states = input_ids.new_zeros(*input_ids.shape, self.hidden_size, dtype=torch.float)
        for row, key in enumerate(keys):
            states[row, : lengths[row]] = self._frozen_cache[key].to(states.device)
        return states

    def _encode(self, input_ids, bbox, attention_mask):
        if not self.frozen_layers:
            embeddings = self.encoder.get_input_embeddings()(input_ids) + self.layout(bbox)
            return self.encoder(inputs_embeds=embeddings, attention_mask=attention_mask).last_hidden_state
        hidden = self._frozen_states(input_ids, attention_mask) + self.layout(bbox)
        extended = self._mask(hidden, attention_mask) if attention_mask is not None else None
        for layer in self._layers()[self.frozen_layers :]:
            hidden = _run_layer(layer, hidden, extended)
        return hidden

    def forward(self, input_ids, bbox, attention_mask):
        if input_ids.device.type != "cpu" or input_ids.shape[0] == 1:
            return self._encode(input_ids, bbox, attention_mask)
        lengths = attention_mask.sum(-1).tolist()
        if all(length == input_ids.shape[1] for length in lengths):
            return self._encode(input_ids, bbox, None)
        rows = []
        for row, length in enumerate(lengths):
            states = self._encode(input_ids[row : row + 1, :length], bbox[row : row + 1, :length], None)
            rows.append(F.pad(states, (0, 0, 0, input_ids.shape[1] - length)))
        return torch.cat(rows, dim=0)


def _run_layer(layer, hidden, attention_mask):
    output = layer(hidden, attention_mask)
    return output[0] if isinstance(output, tuple) else output


class LayoutLMv3Backbone(nn.Module):
    """Text + layout path of LayoutLMv3 (its own patch-embedding image path is not used; the
    switchable image branch is shared by all backbones)."""

    def __init__(self, encoder_config):
        super().__init__()
        if not isinstance(encoder_config, LayoutLMv3Config):
            raise ValueError("layoutlmv3 backbone needs a LayoutLMv3Config")
        self.encoder = LayoutLMv3Model(encoder_config)
        self.hidden_size = encoder_config.hidden_size

    def forward(self, input_ids, bbox, attention_mask):
        output = self.encoder(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask)
        return output.last_hidden_state[:, : input_ids.shape[1]]


class LiltBackbone(nn.Module):
    def __init__(self, encoder_config):
        super().__init__()
        if not isinstance(encoder_config, LiltConfig):
            raise ValueError("lilt backbone needs a LiltConfig")
        self.encoder = LiltModel(encoder_config, add_pooling_layer=False)
        self.hidden_size = encoder_config.hidden_size

    def forward(self, input_ids, bbox, attention_mask):
        return self.encoder(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask).last_hidden_state


class PageImageBranch(nn.Module):
    """Small CNN over the (grayscale) page; per-token RoI pooling by bilinear sampling of a
    ``grid x grid`` lattice inside the token's box; projected to the encoder width."""

    def __init__(self, hidden_size: int, channels: int = 32, grid: int = 3):
        super().__init__()
        self.grid = grid
        self.cnn = nn.Sequential(
            nn.Conv2d(1, channels // 4, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(channels // 4, channels // 2, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.project = nn.Linear(channels, hidden_size)
        # Near-zero projection: the branch starts almost as a no-op and learns how much to contribute.
        nn.init.normal_(self.project.weight, std=1e-3)
        nn.init.zeros_(self.project.bias)
        self.project.no_reinit = True

    def forward(self, pixel_values: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 1, S, S] in [0, 1]; bbox [N, L, 4] on 0-1000 -> [N, L, hidden]."""
        features = self.cnn(pixel_values * 2 - 1)
        boxes = bbox.float() / 1000 * 2 - 1  # grid_sample coordinates
        x0, y0, x1, y1 = boxes.unbind(-1)
        steps = (torch.arange(self.grid, device=bbox.device, dtype=torch.float) + 0.5) / self.grid
        xs = x0[..., None] + (x1 - x0)[..., None] * steps  # [N, L, g]
        ys = y0[..., None] + (y1 - y0)[..., None] * steps
        grid = torch.stack(
            [xs[..., None, :].expand(*xs.shape[:-1], self.grid, self.grid),
             ys[..., :, None].expand(*ys.shape[:-1], self.grid, self.grid)], dim=-1,
        ).flatten(2, 3)  # [N, L, g*g, 2]
        pooled = F.grid_sample(features, grid, mode="bilinear", align_corners=False).mean(-1)  # [N, C, L]
        return self.project(pooled.transpose(1, 2))


class BackboneAdapter(nn.Module):
    """Chooses the encoder adapter from the parser config and adds the optional image branch."""

    def __init__(self, config):
        super().__init__()
        encoder_config = encoder_config_from_dict(config.backbone_config)
        if config.backbone_type == "text-layout":
            self.adapter = TextLayoutBackbone(encoder_config, config.layout_embedding_size, config.frozen_layers,
                                              config.freeze_word_embeddings, config.encoder_attention_dropout)
        elif config.frozen_layers:
            raise ValueError("frozen_layers is supported by the text-layout backbone only")
        elif config.backbone_type == "layoutlmv3":
            self.adapter = LayoutLMv3Backbone(encoder_config)
        else:
            self.adapter = LiltBackbone(encoder_config)
        self.hidden_size = self.adapter.hidden_size
        self.image_branch = (
            PageImageBranch(self.hidden_size, config.image_channels) if config.use_image_branch else None
        )

    @property
    def encoder(self) -> nn.Module:
        return self.adapter.encoder

    def forward(self, input_ids, bbox, attention_mask, pixel_values=None):
        states = self.adapter(input_ids, bbox, attention_mask)
        if self.image_branch is not None and pixel_values is not None:
            states = states + self.image_branch(pixel_values, bbox)
        return states
