"""XFormParserConfig: everything needed to rebuild the parser (backbone included) from a model dir."""

from __future__ import annotations

from transformers import PretrainedConfig

BACKBONE_TYPES = ("text-layout", "layoutlmv3", "lilt")
CONTEXT_KINDS = ("attention", "bilstm")


def soft_label_mix(epoch: float, start_epoch: float, warmup_epochs: float, final_mix: float = 1.0) -> float:
    """Share of the predicted (softmax-weighted) label embedding mixed into the RE entity input.

    0 before ``start_epoch`` (gold labels only), rising linearly to ``final_mix`` over
    ``warmup_epochs``, constant afterwards. ``warmup_epochs == 0`` switches at once.
    """
    if epoch < start_epoch:
        return 0.0
    if warmup_epochs <= 0:
        return float(final_mix)
    return float(final_mix) * min(1.0, (epoch - start_epoch) / warmup_epochs)


class XFormParserConfig(PretrainedConfig):
    """Configuration of :class:`XFormParserModel`.

    Args:
        labels: entity label set (comes from the training data), e.g. ``["header", "question", "answer", "other"]``.
        key_labels / value_labels: which labels are link heads (keys) and tails (values) for RE.
        backbone_type: ``"text-layout"`` (any HF text encoder + trainable 2D layout embeddings),
            ``"layoutlmv3"`` or ``"lilt"`` (transformers' models; bbox goes in natively).
        backbone_config: the encoder's ``config.to_dict()``; the backbone is rebuilt from it on load.
        backbone_reference: where the pretrained encoder came from (offline alias such as ``minilm-l6``,
            local dir or hub id). When set, weights that stay identical to the pretrained encoder (frozen
            layers, the frozen word-embedding table) are not written by ``save_pretrained`` and are read
            back from this reference on load: a frozen-encoder checkpoint holds only what trained.
        layout_embedding_size: number of coordinate buckets (coordinates are 0-1000).
        freeze_word_embeddings: keep the encoder's word-embedding table frozen (text-layout). It is half
            of MiniLM's weights; its dense gradient and optimizer update dominated a CPU training step.
        encoder_attention_dropout: overrides the encoder's attention-probability dropout (None keeps
            the pretrained config's). 0 by default: dropout makes SDPA take its unfused path (~2x slower on CPU).
        frozen_layers: text-layout only. 0 (default): layout embeddings join the word embeddings and the
            whole encoder trains. N > 0: embeddings + bottom N layers are frozen and cached per window,
            layout embeddings are added at the input of layer N, or to the encoder output when N equals
            the number of layers (a CPU-budget option).
        use_image_branch: add a small CNN over the page image, RoI-pooled per token box, to token states.
        image_size / image_channels: page resolution fed to the CNN and its width.
        window_size / window_overlap: backbone window in tokens (incl. 2 specials) and shared tokens
            between consecutive windows for long documents.
        entity_hidden_size: width of the pooled-entity dense layer and SER MLP. The dense layer sees the
            mean of the entity's tokens and its normalised box.
        use_ser_context: add (residually) a Bi-LSTM over entities in reading order to the entity
            features before the SER MLP, so neighbouring entities inform each label.
        context_kind: how entities see their neighbours (``use_ser_context`` and ``use_bilstm``):
            ``"attention"`` (default for new models; configs saved before this option load as ``"bilstm"``): one transformer layer over each entity's ``context_neighbours``
            nearest entities with a relative-position attention bias (:class:`NeighbourAttention`);
            ``"bilstm"``: a Bi-LSTM over entities in reading order (slow on CPU: it runs step by step).
        context_neighbours / context_heads: neighbours each entity attends to; attention heads.
        use_token_context / token_context_size: a Bi-LSTM over the document's tokens feeding the BIO
            tagging head (it sees token states and layout only, never the entity grouping). Off by
            default: with the encoder fine-tuned it cost ~40% of a CPU training step (it runs token by token).
        use_label_embedding / label_embedding_size: append an embedding of the entity's SER label to its RE input.
        soft_label_start_epoch / soft_label_warmup_epochs / soft_label_final_mix: schedule for mixing
            softmax-weighted (predicted) label embeddings into training; see :func:`soft_label_mix`.
        use_bilstm / lstm_hidden_size: entity context before the head/tail MLPs (a Bi-LSTM over entities in
            reading order, or neighbour attention of width 2 * lstm_hidden_size: see ``context_kind``).
        re_hidden_size: width of the head/tail MLPs and the biaffine scorer.
        use_geometric_features: add an MLP over pairwise geometry (offsets, distance, alignment, and
            nearest-key-on-the-line / nearest-key-above indicators) to the biaffine score.
        ser_loss_weight / bio_loss_weight / re_loss_weight: loss = weighted sum of SER CE, token BIO CE, RE CE.
        dropout: dropout in the heads.
    """

    model_type = "xformparser"

    def __init__(
        self,
        labels=("header", "question", "answer", "other"),
        key_labels=("question",),
        value_labels=("answer",),
        backbone_type="text-layout",
        backbone_config=None,
        backbone_reference=None,
        layout_embedding_size=1001,
        freeze_word_embeddings=True,
        encoder_attention_dropout=0.0,
        frozen_layers=0,
        use_image_branch=False,
        image_size=256,
        image_channels=32,
        window_size=512,
        window_overlap=128,
        entity_hidden_size=256,
        use_ser_context=True,
        context_kind=None,
        context_neighbours=16,
        context_heads=4,
        use_token_context=False,
        token_context_size=128,
        use_label_embedding=True,
        label_embedding_size=32,
        soft_label_start_epoch=2.0,
        soft_label_warmup_epochs=2.0,
        soft_label_final_mix=1.0,
        use_bilstm=True,
        lstm_hidden_size=128,
        re_hidden_size=128,
        use_geometric_features=True,
        ser_loss_weight=1.0,
        bio_loss_weight=0.5,
        re_loss_weight=1.0,
        dropout=0.1,
        **kwargs,
    ):
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}")
        self.labels = list(labels)
        self.key_labels = list(key_labels)
        self.value_labels = list(value_labels)
        self.backbone_type = backbone_type
        self.backbone_config = dict(backbone_config or {})
        self.backbone_reference = backbone_reference
        self.layout_embedding_size = layout_embedding_size
        self.freeze_word_embeddings = freeze_word_embeddings
        self.encoder_attention_dropout = encoder_attention_dropout
        self.frozen_layers = frozen_layers
        self.use_image_branch = use_image_branch
        self.image_size = image_size
        self.image_channels = image_channels
        self.window_size = window_size
        self.window_overlap = window_overlap
        self.entity_hidden_size = entity_hidden_size
        self.use_ser_context = use_ser_context
        if context_kind is None:
            # A saved config (it carries transformers_version) without the key predates neighbour attention:
            # its weights are Bi-LSTMs. New configs get the current default.
            context_kind = "bilstm" if "transformers_version" in kwargs else "attention"
        if context_kind not in CONTEXT_KINDS:
            raise ValueError(f"context_kind must be one of {CONTEXT_KINDS}, got {context_kind!r}")
        self.context_kind = context_kind
        self.context_neighbours = context_neighbours
        self.context_heads = context_heads
        self.use_token_context = use_token_context
        self.token_context_size = token_context_size
        self.use_label_embedding = use_label_embedding
        self.label_embedding_size = label_embedding_size
        self.soft_label_start_epoch = soft_label_start_epoch
        self.soft_label_warmup_epochs = soft_label_warmup_epochs
        self.soft_label_final_mix = soft_label_final_mix
        self.use_bilstm = use_bilstm
        self.lstm_hidden_size = lstm_hidden_size
        self.re_hidden_size = re_hidden_size
        self.use_geometric_features = use_geometric_features
        self.ser_loss_weight = ser_loss_weight
        self.bio_loss_weight = bio_loss_weight
        self.re_loss_weight = re_loss_weight
        self.dropout = dropout
        super().__init__(**kwargs)
