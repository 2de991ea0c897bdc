"""Documents -> model inputs: reading order, tokenisation with box alignment, windows, batching.

A document is tokenised once into a flat token sequence (entities in reading order, every sub-token
carrying its word's box normalised to 0-1000). Documents longer than the backbone window are cut into
overlapping windows at batch time; the model averages each token's states over the windows that hold
it and pools entities from those, so an entity that straddles a window edge is still seen whole.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from .formats import DataFormatError, Document

OUTSIDE_LABELS = ("other", "o")


@dataclass
class EncodedDocument:
    doc_id: str
    language: str | None
    input_ids: list[int]
    token_boxes: list[list[int]]
    token_entity: list[int]  # index (reading order) of the entity each token belongs to
    token_bio: list[int]  # gold BIO id on the first sub-token of each word, -100 elsewhere
    entity_ids: list[int]  # original entity ids, reading order
    entity_labels: list[int]  # -100 when the label is unknown to the model (inference on new data)
    entity_boxes: list[list[int]]  # normalised 0-1000
    links: list[tuple[int, int]] = field(default_factory=list)  # (key index, value index)
    image_path: str | None = None


def bio_tags(labels: list[str]) -> list[str]:
    """BIO tag set for entity labels; 'other' entities are tagged O as in the FUNSD convention."""
    tags = ["O"]
    for label in labels:
        if label.lower() not in OUTSIDE_LABELS:
            tags += [f"B-{label.upper()}", f"I-{label.upper()}"]
    return tags


def word_bio_tag(label: str, is_first_word: bool) -> str:
    if label.lower() in OUTSIDE_LABELS:
        return "O"
    return f"{'B' if is_first_word else 'I'}-{label.upper()}"


def normalize_box(box, width: float, height: float) -> list[int]:
    x0, y0, x1, y1 = box
    scaled = [1000 * x0 / width, 1000 * y0 / height, 1000 * x1 / width, 1000 * y1 / height]
    return [int(min(1000, max(0, round(v)))) for v in scaled]


def reading_order(document: Document) -> list[int]:
    """Entity indices top-to-bottom, then left-to-right within a line (vertical centres within half
    the median entity height count as one line)."""
    entities = document.entities
    if not entities:
        return []
    heights = sorted(max(e.box[3] - e.box[1], 1.0) for e in entities)
    tolerance = heights[len(heights) // 2] / 2
    by_centre = sorted(range(len(entities)), key=lambda i: (entities[i].box[1] + entities[i].box[3]) / 2)
    lines, line_centre = [], None
    for index in by_centre:
        centre = (entities[index].box[1] + entities[index].box[3]) / 2
        if line_centre is None or centre - line_centre > tolerance:
            lines.append([index])
            line_centre = centre
        else:
            lines[-1].append(index)
    return [index for line in lines for index in sorted(line, key=lambda i: entities[i].box[0])]


def encode_document(document: Document, tokenizer, labels: list[str], key_labels, value_labels,
                    strict_labels: bool = True, max_tokens_per_word: int = 16) -> EncodedDocument:
    """Tokenise a document word by word (each sub-token gets its word's box).

    With ``strict_labels`` an entity label outside ``labels`` raises DataFormatError; otherwise (inference
    on data labelled differently, or unlabelled) it is encoded as unknown (-100, word tags O)."""
    label_to_id = {label: i for i, label in enumerate(labels)}
    tag_to_id = {tag: i for i, tag in enumerate(bio_tags(labels))}
    order = reading_order(document)
    input_ids, token_boxes, token_entity, token_bio = [], [], [], []
    entity_labels, entity_boxes = [], []
    for entity_index, original_index in enumerate(order):
        entity = document.entities[original_index]
        known = entity.label in label_to_id
        if not known and strict_labels:
            raise DataFormatError(
                f"document {document.doc_id}: entity {entity.id} has label {entity.label!r}, "
                f"not in the model's label set {labels}"
            )
        entity_labels.append(label_to_id[entity.label] if known else -100)
        entity_boxes.append(normalize_box(entity.box, document.width, document.height))
        words = [(w.text, w.box) for w in entity.words if w.text.strip()] or [(entity.text, entity.box)]
        entity_token_count = 0
        for word_number, (text, box) in enumerate(words):
            pieces = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens_per_word]
            if not pieces:
                continue
            normalized = normalize_box(box, document.width, document.height)
            tag = tag_to_id[word_bio_tag(entity.label, entity_token_count == 0)] if known else 0
            for piece_number, piece in enumerate(pieces):
                input_ids.append(piece)
                token_boxes.append(normalized)
                token_entity.append(entity_index)
                token_bio.append(tag if piece_number == 0 else -100)
            entity_token_count += len(pieces)
        if entity_token_count == 0:  # empty or untokenisable text: keep the entity with one [UNK]
            input_ids.append(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0)
            token_boxes.append(entity_boxes[-1])
            token_entity.append(entity_index)
            token_bio.append(-100)
    position = {original: index for index, original in enumerate(order)}
    id_to_position = {document.entities[original].id: index for original, index in position.items()}
    links = [(id_to_position[h], id_to_position[t]) for h, t in sorted(document.key_value_links(key_labels, value_labels))]
    return EncodedDocument(
        doc_id=document.doc_id, language=document.language, input_ids=input_ids, token_boxes=token_boxes,
        token_entity=token_entity, token_bio=token_bio,
        entity_ids=[document.entities[i].id for i in order], entity_labels=entity_labels,
        entity_boxes=entity_boxes, links=links, image_path=document.image_path,
    )


def split_windows(num_tokens: int, window_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Cover [0, num_tokens) with windows of at most ``window_tokens`` sharing ``overlap`` tokens."""
    if window_tokens <= 0:
        raise ValueError("window_tokens must be positive")
    overlap = max(0, min(overlap, window_tokens - 1))
    step = window_tokens - overlap
    windows, start = [], 0
    while True:
        end = min(start + window_tokens, num_tokens)
        windows.append((start, end))
        if end >= num_tokens:
            return windows
        start += step


def load_page_image(path: str | None, size: int) -> torch.Tensor:
    """Grayscale page resized to size x size in [0, 1]; a blank page if the image is missing."""
    from PIL import Image

    if path:
        try:
            with Image.open(path) as image:
                image = image.convert("L").resize((size, size))
                return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(1, size, size).float() / 255
        except OSError as error:
            warnings.warn(f"page image {path} unreadable ({error}); using a blank page")
    return torch.zeros(1, size, size)


class XFormParserCollator:
    """Batches EncodedDocuments (or dicts holding one under ``"document"``) into model inputs."""

    def __init__(self, tokenizer, window_size: int = 512, window_overlap: int = 128, image_size: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.start_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.end_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.window_tokens = window_size - 2
        self.window_overlap = window_overlap
        self.image_size = image_size

    def __call__(self, items) -> dict[str, torch.Tensor]:
        documents = [item["document"] if isinstance(item, dict) else item for item in items]
        windows = []  # (doc index, start, end)
        for doc_index, document in enumerate(documents):
            for start, end in split_windows(len(document.input_ids), self.window_tokens, self.window_overlap):
                windows.append((doc_index, start, end))
        length = max(end - start for _, start, end in windows) + 2
        num_docs = len(documents)
        max_tokens = max(len(d.input_ids) for d in documents)
        max_entities = max(max(len(d.entity_labels) for d in documents), 1)

        input_ids = torch.full((len(windows), length), self.pad_id, dtype=torch.long)
        bbox = torch.zeros((len(windows), length, 4), dtype=torch.long)
        attention_mask = torch.zeros((len(windows), length), dtype=torch.long)
        window_token_position = torch.full((len(windows), length), -1, dtype=torch.long)
        window_document = torch.tensor([w[0] for w in windows], dtype=torch.long)
        for row, (doc_index, start, end) in enumerate(windows):
            document = documents[doc_index]
            count = end - start
            input_ids[row, 0] = self.start_id
            input_ids[row, 1 : count + 1] = torch.tensor(document.input_ids[start:end])
            input_ids[row, count + 1] = self.end_id
            bbox[row, 1 : count + 1] = torch.tensor(document.token_boxes[start:end])
            bbox[row, count + 1] = 1000
            attention_mask[row, : count + 2] = 1
            window_token_position[row, 1 : count + 1] = torch.arange(start, end)

        token_entity = torch.full((num_docs, max_tokens), -1, dtype=torch.long)
        token_bio = torch.full((num_docs, max_tokens), -100, dtype=torch.long)
        entity_labels = torch.full((num_docs, max_entities), -100, dtype=torch.long)
        entity_boxes = torch.zeros((num_docs, max_entities, 4), dtype=torch.float)
        entity_mask = torch.zeros((num_docs, max_entities), dtype=torch.bool)
        link_targets = torch.zeros((num_docs, max_entities, max_entities), dtype=torch.float)
        for doc_index, document in enumerate(documents):
            tokens, entities = len(document.input_ids), len(document.entity_labels)
            token_entity[doc_index, :tokens] = torch.tensor(document.token_entity)
            token_bio[doc_index, :tokens] = torch.tensor(document.token_bio)
            if entities:
                entity_labels[doc_index, :entities] = torch.tensor(document.entity_labels)
                entity_boxes[doc_index, :entities] = torch.tensor(document.entity_boxes, dtype=torch.float)
                entity_mask[doc_index, :entities] = True
            for head, tail in document.links:
                link_targets[doc_index, head, tail] = 1.0
        batch = {
            "input_ids": input_ids, "bbox": bbox, "attention_mask": attention_mask,
            "window_document": window_document, "window_token_position": window_token_position,
            "token_entity": token_entity, "token_bio": token_bio, "entity_labels": entity_labels,
            "entity_boxes": entity_boxes, "entity_mask": entity_mask, "link_targets": link_targets,
        }
        if self.image_size:
            batch["pixel_values"] = torch.stack([load_page_image(d.image_path, self.image_size) for d in documents])
        return batch
