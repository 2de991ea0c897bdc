"""Inference over documents and the evaluation report (SER, seqeval BIO, RE with gold and predicted labels).

    parser = FormParser.from_pretrained("runs/funsd")
    predictions = parser.predict(documents)              # labels + key -> value links per document
    report = parser.evaluate(documents)                  # JSON-ready dict
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer

from .features import XFormParserCollator, bio_tags, encode_document
from .formats import Document
from .linking import rule_links
from .metrics import entity_label_scores, link_scores, seqeval_scores
from .modeling_xformparser import XFormParserModel

LINKERS = ("model", "rule", "joint")
JOINT_CANDIDATE_PROBABILITY = 0.2  # an entity this likely to be a key (value) may head (end) a link
JOINT_LINK_PROBABILITY = 0.5  # a link this likely relabels its ends as key and value


@dataclass
class DocumentPrediction:
    doc_id: str
    entity_ids: list[int]  # reading order
    entity_labels: list[str]
    word_tags: list[str]  # BIO tag per word (reading order), from the token BIO head
    links: set[tuple[int, int]] = field(default_factory=set)  # (key id, value id)


def load_parser_files(model_dir) -> tuple[XFormParserModel, object]:
    """Model (safetensors only) and tokenizer from a self-contained model directory."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not an xformparser model directory (no config.json)")
    if not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{model_dir}: no model.safetensors (only safetensors weights are loaded)")
    model = XFormParserModel.from_pretrained(str(model_dir), use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model.eval(), tokenizer


class FormParser:
    """Batch inference and evaluation with a trained :class:`XFormParserModel`."""

    def __init__(self, model: XFormParserModel, tokenizer, batch_size: int = 4, linker: str = "model",
                 rule_above_cost: str = "left_edge"):
        if linker not in LINKERS:
            raise ValueError(f"linker must be one of {LINKERS}, got {linker!r}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.linker, self.rule_above_cost = batch_size, linker, rule_above_cost
        config = model.config
        self.collator = XFormParserCollator(tokenizer, config.window_size, config.window_overlap,
                                            config.image_size if config.use_image_branch else None)
        self.tags = bio_tags(config.labels)

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs) -> "FormParser":
        model, tokenizer = load_parser_files(model_dir)
        return cls(model, tokenizer, **kwargs)

    def encode(self, documents: list[Document], strict_labels: bool = True):
        config = self.model.config
        return [encode_document(d, self.tokenizer, config.labels, config.key_labels, config.value_labels,
                                strict_labels=strict_labels) for d in documents]

    @torch.no_grad()
    def predict_modes(self, documents: list[Document], modes, encoded=None) -> dict[tuple[str, str], list[DocumentPrediction]]:
        """Predictions for several (label_source, linker) modes from one backbone pass per batch.

        ``label_source="gold"`` takes the RE candidates and label embeddings from the documents' own
        labels (an oracle setting for evaluation); ``"predicted"`` is end to end. Entity labels and
        word tags are always the model's predictions."""
        for label_source, linker in modes:
            if linker not in LINKERS or label_source not in ("gold", "predicted") or (linker, label_source) == ("joint", "gold"):
                raise ValueError(f"unknown mode {(label_source, linker)}")
        if encoded is None:
            encoded = self.encode(documents, strict_labels=any(source == "gold" for source, _ in modes))
        model, labels = self.model.eval(), self.model.config.labels
        device = next(model.parameters()).device
        results = {mode: [] for mode in modes}
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            batch = {k: v.to(device) for k, v in self.collator(chunk).items()}
            states = model.encode_entities(batch["input_ids"], batch["bbox"], batch["attention_mask"],
                                           batch["window_document"], batch["window_token_position"],
                                           batch["token_entity"], batch["entity_mask"], batch["entity_boxes"],
                                           batch.get("pixel_values"))
            tag_ids = states["bio_logits"].argmax(-1)
            for label_source, linker in modes:
                predicted_ids = states["ser_logits"].argmax(-1)
                if linker == "joint":
                    predicted_ids, chosen = self._joint_decode(states, batch)
                else:
                    chosen = self._link(states, batch, label_source, linker)
                for row, document in enumerate(chunk):
                    ids = document.entity_ids
                    count = len(ids)
                    word_positions = [i for i, tag in enumerate(document.token_bio) if tag >= 0]
                    links = {(ids[head], ids[tail]) for tail, head in enumerate(chosen[row, :count].tolist()) if head >= 0}
                    results[(label_source, linker)].append(DocumentPrediction(
                        doc_id=document.doc_id, entity_ids=ids,
                        entity_labels=[labels[i] for i in predicted_ids[row, :count].tolist()],
                        word_tags=[self.tags[i] for i in tag_ids[row, word_positions].tolist()], links=links))
        return results

    def _link(self, states, batch, label_source: str, linker: str) -> torch.Tensor:
        """Chosen key index for every entity ``[docs, entities]`` (-1: not a value, or no key)."""
        model = self.model
        if linker == "rule":
            label_ids = batch["entity_labels"].clamp(min=0) if label_source == "gold" else states["ser_logits"].argmax(-1)
            heads = model._label_mask(model.config.key_labels, label_ids.device)[label_ids] & batch["entity_mask"]
            tails = model._label_mask(model.config.value_labels, label_ids.device)[label_ids] & batch["entity_mask"]
            return rule_links(batch["entity_boxes"], heads, tails, above_cost=self.rule_above_cost)
        re_logits, _, tails = model.score_relations(states, batch["entity_boxes"], batch["entity_mask"],
                                                    batch["entity_labels"], label_source)
        choice = re_logits.argmax(-1)  # index == number of entities means "no key"
        valid = (choice < batch["entity_mask"].shape[1]) & tails
        return torch.where(valid, choice, torch.full_like(choice, -1))

    @torch.no_grad()
    def _joint_decode(self, states, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint SER + RE decoding: entities whose SER probability of being a key (value) is at least
        JOINT_CANDIDATE_PROBABILITY join the link candidates; a value candidate takes its best key (or
        none) as usual; a link between ends that SER did not label key/value is kept only if its
        probability reaches JOINT_LINK_PROBABILITY, and then its ends are relabelled key and value
        (an entity that heads a confident link is a key). Returns (label ids, chosen key per entity)."""
        model, config = self.model, self.model.config
        ser_logits, mask = states["ser_logits"], batch["entity_mask"]
        probabilities = ser_logits.softmax(-1)
        label_ids = probabilities.argmax(-1)
        key_mask = model._label_mask(config.key_labels, label_ids.device)
        value_mask = model._label_mask(config.value_labels, label_ids.device)
        is_key, is_value = key_mask[label_ids] & mask, value_mask[label_ids] & mask
        key_probability = probabilities[..., key_mask].sum(-1)
        value_probability = probabilities[..., value_mask].sum(-1)
        heads = (is_key | (key_probability >= JOINT_CANDIDATE_PROBABILITY)) & mask
        tails = (is_value | (value_probability >= JOINT_CANDIDATE_PROBABILITY)) & mask
        re_logits = model._score_relations(states["entity_features"], ser_logits, label_ids, "predicted",
                                           batch["entity_boxes"], mask, heads, tails)
        link_probability, choice = re_logits.softmax(-1).max(-1)
        count = mask.shape[1]
        linked = (choice < count) & tails
        head_index = choice.clamp(max=count - 1)
        head_was_key = torch.gather(is_key, 1, head_index)
        confident = link_probability >= JOINT_LINK_PROBABILITY
        keep = linked & ((is_value & head_was_key) | confident)
        promoted_tails = keep & ~is_value
        promoting = torch.nn.functional.one_hot(head_index, count).bool() & (keep & ~head_was_key)[..., None]
        promoted_heads = promoting.any(1)  # [docs, entity]: heads a kept link it was not labelled key for
        best_key = (probabilities + (~key_mask) * -1.0).argmax(-1)  # most likely key label
        best_value = (probabilities + (~value_mask) * -1.0).argmax(-1)
        label_ids = torch.where(promoted_heads & ~is_key, best_key, label_ids)
        label_ids = torch.where(promoted_tails, best_value, label_ids)
        return label_ids, torch.where(keep, choice, torch.full_like(choice, -1))

    def predict(self, documents: list[Document], label_source: str = "predicted", linker: str | None = None):
        """Entity labels, word BIO tags and key -> value links for every document."""
        mode = (label_source, linker or self.linker)
        return self.predict_modes(documents, [mode])[mode]

    def evaluate(self, documents: list[Document], include_rule_baseline: bool = True) -> dict:
        """SER (entity-level, gold boxes), seqeval over word BIO tags, and RE P/R/F1 over all gold
        key -> value links, with gold labels and end to end with predicted labels."""
        config = self.model.config
        encoded = self.encode(documents)
        gold_labels = [[config.labels[i] for i in d.entity_labels] for d in encoded]
        gold_tags = [[self.tags[t] for t in d.token_bio if t >= 0] for d in encoded]
        gold_links = [{(d.entity_ids[h], d.entity_ids[t]) for h, t in d.links} for d in encoded]

        modes = [("predicted", "model"), ("gold", "model"), ("predicted", "joint")]
        if include_rule_baseline:
            modes += [("gold", "rule"), ("predicted", "rule")]
        predictions = self.predict_modes(documents, modes, encoded=encoded)
        end_to_end = predictions[("predicted", "model")]
        predicted_labels = [p.entity_labels for p in end_to_end]
        entity_tags = [_entity_word_tags(d, labels) for d, labels in zip(encoded, predicted_labels)]
        report = {
            "documents": len(documents),
            "entities": sum(len(labels) for labels in gold_labels),
            "gold_links": sum(len(links) for links in gold_links),
            "ser": entity_label_scores(gold_labels, predicted_labels),
            "seqeval_bio": seqeval_scores(gold_tags, [p.word_tags for p in end_to_end]),
            "seqeval_from_entity_labels": seqeval_scores(gold_tags, entity_tags),
            "re_gold_labels": link_scores(gold_links, [p.links for p in predictions[("gold", "model")]]),
            "re_end_to_end": link_scores(gold_links, [p.links for p in end_to_end]),
            "line_splitting": line_split_scores(encoded, gold_tags, [p.word_tags for p in end_to_end]),
        }
        joint = predictions[("predicted", "joint")]
        report["joint_inference"] = {
            "ser": entity_label_scores(gold_labels, [p.entity_labels for p in joint])["micro"],
            "re_end_to_end": link_scores(gold_links, [p.links for p in joint]),
        }
        if include_rule_baseline:
            report["re_rule_gold_labels"] = link_scores(gold_links, [p.links for p in predictions[("gold", "rule")]])
            report["re_rule_end_to_end"] = link_scores(gold_links, [p.links for p in predictions[("predicted", "rule")]])
        report["f1"] = selection_f1(report)
        return report


def rule_baseline(documents: list[Document], key_labels=("question",), value_labels=("answer",),
                  above_cost: str = "left_edge") -> dict:
    """RE P/R/F1 of the geometric rule alone, on gold entities with gold labels (no model needed)."""
    from .features import normalize_box

    keys, values = {k.lower() for k in key_labels}, {v.lower() for v in value_labels}
    gold_links, predicted_links = [], []
    for document in documents:
        entities = document.entities
        gold_links.append(document.key_value_links(key_labels, value_labels))
        if not entities:
            predicted_links.append(set())
            continue
        boxes = torch.tensor([normalize_box(e.box, document.width, document.height) for e in entities],
                             dtype=torch.float)[None]
        heads = torch.tensor([e.label.lower() in keys for e in entities])[None]
        tails = torch.tensor([e.label.lower() in values for e in entities])[None]
        chosen = rule_links(boxes, heads, tails, above_cost=above_cost)[0].tolist()
        predicted_links.append({(entities[h].id, entities[t].id) for t, h in enumerate(chosen) if h >= 0})
    return link_scores(gold_links, predicted_links)


def _entity_word_tags(document, predicted_labels: list[str]) -> list[str]:
    """Word BIO tags implied by entity-level predictions on gold entity boundaries."""
    from .features import word_bio_tag

    tags, seen_entities = [], set()
    for token_index, tag in enumerate(document.token_bio):
        if tag < 0:
            continue
        entity = document.token_entity[token_index]
        tags.append(word_bio_tag(predicted_labels[entity], entity not in seen_entities))
        seen_entities.add(entity)
    return tags


def merged_line_spans(document, max_gap_heights: float = 3.0) -> list[list[int]]:
    """Runs of consecutive entities (reading order) that an OCR engine would read as one line: they
    overlap vertically by at least half the smaller height and the horizontal gap to the next is at
    most ``max_gap_heights`` line heights. Only runs of >= 2 entities are returned (entity indices)."""
    spans, current = [], [0] if document.entity_boxes else []
    for index in range(1, len(document.entity_boxes)):
        x0, y0, x1, y1 = document.entity_boxes[index - 1]
        u0, v0, u1, v1 = document.entity_boxes[index]
        height = max(min(y1 - y0, v1 - v0), 1)
        overlap = min(y1, v1) - max(y0, v0)
        gap = u0 - x1
        if overlap >= 0.5 * height and -0.5 * height <= gap <= max_gap_heights * height:
            current.append(index)
        else:
            if len(current) >= 2:
                spans.append(current)
            current = [index]
    if len(current) >= 2:
        spans.append(current)
    return spans


def line_split_scores(encoded_documents, gold_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """How well the token BIO head splits OCR-line-like merged spans (``merged_line_spans`` of gold
    entities holding at least two labelled, non-``other`` entities, e.g. "Date:" + "12/03/98").
    ``exact``: the predicted chunks inside the span equal the gold ones (boundaries and types);
    ``boundaries``: the same boundaries, types ignored."""
    from seqeval.metrics.sequence_labeling import get_entities

    spans = exact = boundaries = 0
    for document, gold, predicted in zip(encoded_documents, gold_tags, predicted_tags, strict=True):
        word_entity = [document.token_entity[i] for i, tag in enumerate(document.token_bio) if tag >= 0]
        for span in merged_line_spans(document):
            members = set(span)
            words = [i for i, entity in enumerate(word_entity) if entity in members]
            gold_chunks = get_entities([gold[i] for i in words])
            if len(gold_chunks) < 2:
                continue
            predicted_chunks = get_entities([predicted[i] for i in words])
            spans += 1
            exact += sorted(gold_chunks) == sorted(predicted_chunks)
            boundaries += sorted(c[1:] for c in gold_chunks) == sorted(c[1:] for c in predicted_chunks)
    return {"spans": spans, "exact": exact / spans if spans else 0.0,
            "boundaries": boundaries / spans if spans else 0.0}


def selection_f1(report: dict) -> float:
    """The number the best checkpoint is chosen by: mean of SER micro-F1 and end-to-end RE F1
    (SER micro-F1 alone when the evaluation data has no links)."""
    if report["gold_links"] == 0:
        return report["ser"]["micro"]["f1"]
    return (report["ser"]["micro"]["f1"] + report["re_end_to_end"]["f1"]) / 2


__all__ = ["DocumentPrediction", "FormParser", "LINKERS", "line_split_scores", "load_parser_files", "merged_line_spans",
           "rule_baseline", "selection_f1"]
