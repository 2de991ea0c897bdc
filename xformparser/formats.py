"""Form-understanding data formats: one in-memory document model, readers and writers.

Supported on disk:
- ``funsd``: one JSON per document ``{"form": [entity, ...]}`` (a folder with ``annotations/`` and
  ``images/``, a folder of JSON files, or one JSON file).
- ``xfund``: one JSON per language/split ``{"lang": "de", "documents": [{"id", "document": [entity, ...],
  "img": {"fname", "width", "height"}}]}``.
- ``indformsft``: XFUND-like with its own label set; also accepted as JSONL (one document per line).
- ``paddle-kie``: PaddleOCR KIE label file, one line per image:
  ``image_path<TAB>[{"transcription", "points", "label", "id", "linking"}, ...]``.

Links are undirected in all of these files (each link is listed by both of its entities). Readers
deduplicate them and orient each one key -> value when the labels say which side is the key
(``question``/``key`` -> ``answer``/``value``); other links keep the first direction seen.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from sft_core.atomic_io import atomic_write_text

DEFAULT_KEY_LABELS = ("question", "key")
DEFAULT_VALUE_LABELS = ("answer", "value")
FORMATS = ("funsd", "xfund", "indformsft", "paddle-kie")


class DataFormatError(ValueError):
    """A record that cannot be read; the message names the document (and file) and the reason."""


@dataclass
class Word:
    text: str
    box: list[float]  # [x0, y0, x1, y1] in page pixels


@dataclass
class Entity:
    id: int
    text: str
    box: list[float]  # [x0, y0, x1, y1] in page pixels
    label: str
    words: list[Word] = field(default_factory=list)


@dataclass
class Document:
    doc_id: str
    entities: list[Entity]
    links: list[tuple[int, int]]  # entity ids, deduplicated, key -> value where the labels tell
    width: float
    height: float
    image_path: str | None = None
    language: str | None = None

    def entity_by_id(self) -> dict[int, Entity]:
        return {entity.id: entity for entity in self.entities}

    def key_value_links(self, key_labels=DEFAULT_KEY_LABELS, value_labels=DEFAULT_VALUE_LABELS) -> set[tuple[int, int]]:
        """Links whose first entity has a key label and second a value label (the RE targets)."""
        keys, values = _lower_set(key_labels), _lower_set(value_labels)
        by_id = self.entity_by_id()
        return {
            (head, tail)
            for head, tail in self.links
            if by_id[head].label.lower() in keys and by_id[tail].label.lower() in values
        }


def _lower_set(labels: Iterable[str]) -> set[str]:
    return {label.lower() for label in labels}


# ----------------------------------------------------------------------------------------- validation
def _as_box(value, where: str) -> list[float]:
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        x0, y0, x1, y1 = (float(v) for v in value)
        if x1 < x0 or y1 < y0:
            raise DataFormatError(f"{where}: box {value} has x1 < x0 or y1 < y0")
        return [x0, y0, x1, y1]
    raise DataFormatError(f"{where}: box must be [x0, y0, x1, y1] numbers, got {value!r}")


def _points_to_box(points, where: str) -> list[float]:
    try:
        xs = [float(p[0]) for p in points]
        ys = [float(p[1]) for p in points]
    except (TypeError, ValueError, IndexError) as error:
        raise DataFormatError(f"{where}: points must be a list of [x, y] pairs, got {points!r}") from error
    if not xs:
        raise DataFormatError(f"{where}: empty points")
    return [min(xs), min(ys), max(xs), max(ys)]


def split_words_by_characters(text: str, box: list[float]) -> list[Word]:
    """Approximate word boxes for formats without them: split the line box by character count."""
    tokens = text.split()
    if not tokens:
        return []
    total_chars = sum(len(token) for token in tokens) + len(tokens) - 1
    x0, y0, x1, y1 = box
    per_char = (x1 - x0) / max(total_chars, 1)
    words, cursor = [], x0
    for token in tokens:
        end = cursor + per_char * len(token)
        words.append(Word(token, [cursor, y0, end, y1]))
        cursor = end + per_char
    return words


def _parse_entity(record, where: str, points_key: str | None = None) -> tuple[Entity, list]:
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: entity must be an object, got {type(record).__name__}")
    text_key = "transcription" if "transcription" in record else "text"
    if "id" not in record:
        raise DataFormatError(f"{where}: entity without 'id'")
    try:
        entity_id = int(record["id"])
    except (TypeError, ValueError) as error:
        raise DataFormatError(f"{where}: entity id {record['id']!r} is not an integer") from error
    where = f"{where}, entity {entity_id}"
    text = record.get(text_key, "")
    if not isinstance(text, str):
        raise DataFormatError(f"{where}: text must be a string")
    label = record.get("label")
    if not isinstance(label, str) or not label:
        raise DataFormatError(f"{where}: missing or empty 'label'")
    if points_key:
        box = _points_to_box(record.get(points_key), where)
    else:
        if "box" not in record:
            raise DataFormatError(f"{where}: entity without 'box'")
        box = _as_box(record["box"], where)
    words = []
    raw_words = record.get("words")
    if raw_words:
        if not isinstance(raw_words, list):
            raise DataFormatError(f"{where}: 'words' must be a list")
        for word in raw_words:
            if not isinstance(word, dict) or not isinstance(word.get("text"), str):
                raise DataFormatError(f"{where}: every word needs a 'text' string and a 'box'")
            words.append(Word(word["text"], _as_box(word.get("box"), where)))
    else:
        words = split_words_by_characters(text, box)
    linking = record.get("linking", []) or []
    if not isinstance(linking, list) or any(
        not isinstance(pair, (list, tuple)) or len(pair) != 2 for pair in linking
    ):
        raise DataFormatError(f"{where}: 'linking' must be a list of [from_id, to_id] pairs")
    return Entity(entity_id, text, box, label, words), linking


def build_document(
    doc_id: str,
    records: list,
    width: float | None,
    height: float | None,
    image_path: str | None = None,
    language: str | None = None,
    points_key: str | None = None,
    key_labels=DEFAULT_KEY_LABELS,
    value_labels=DEFAULT_VALUE_LABELS,
) -> Document:
    """Validate raw entity records and normalise the (undirected) links to key -> value."""
    if not isinstance(records, list):
        raise DataFormatError(f"document {doc_id}: entity list must be a JSON array")
    entities, raw_links = [], []
    for record in records:
        entity, linking = _parse_entity(record, f"document {doc_id}", points_key)
        entities.append(entity)
        raw_links.extend(linking)
    by_id: dict[int, Entity] = {}
    for entity in entities:
        if entity.id in by_id:
            raise DataFormatError(f"document {doc_id}: duplicate entity id {entity.id}")
        by_id[entity.id] = entity
    keys, values = _lower_set(key_labels), _lower_set(value_labels)
    links, seen = [], set()
    for pair in raw_links:
        try:
            first, second = int(pair[0]), int(pair[1])
        except (TypeError, ValueError) as error:
            raise DataFormatError(f"document {doc_id}: link {pair!r} has non-integer ids") from error
        for entity_id in (first, second):
            if entity_id not in by_id:
                raise DataFormatError(f"document {doc_id}: link {pair!r} points to missing entity {entity_id}")
        if first == second or frozenset((first, second)) in seen:
            continue
        seen.add(frozenset((first, second)))
        if by_id[first].label.lower() in values and by_id[second].label.lower() in keys:
            first, second = second, first
        links.append((first, second))
    if width is None or height is None or width <= 0 or height <= 0:
        width = max([e.box[2] for e in entities] + [1.0])
        height = max([e.box[3] for e in entities] + [1.0])
    return Document(doc_id, entities, links, float(width), float(height), image_path, language)


def _image_size(path: str | None) -> tuple[float | None, float | None]:
    if not path or not os.path.exists(path):
        return None, None
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only
            return float(image.width), float(image.height)
    except OSError:
        return None, None


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON ({error})") from error


# -------------------------------------------------------------------------------------------- readers
def read_funsd(path, errors: list | None = None, **roles) -> list[Document]:
    """FUNSD: a folder (``annotations/`` + ``images/``, or JSON files) or one JSON file."""
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        folder = path / "annotations" if (path / "annotations").is_dir() else path
        files = sorted(folder.glob("*.json"))
        if not files:
            raise DataFormatError(f"{path}: no FUNSD JSON files found")
    documents = []
    for file in files:
        try:
            data = _load_json(file)
            if not isinstance(data, dict) or "form" not in data:
                raise DataFormatError(f"document {file.stem} ({file}): missing 'form' list")
            image = None
            for candidate in (file.parent.parent / "images", file.parent):
                for suffix in (".png", ".jpg", ".jpeg"):
                    if (candidate / f"{file.stem}{suffix}").exists():
                        image = str(candidate / f"{file.stem}{suffix}")
                        break
                if image:
                    break
            width, height = _image_size(image)
            documents.append(build_document(file.stem, data["form"], width, height, image, None, **roles))
        except DataFormatError as error:
            if errors is None:
                raise
            errors.append(str(error))
    return documents


def _read_xfund_document(raw, index: int, base_dir: Path, language, source: str, roles) -> Document:
    if not isinstance(raw, dict):
        raise DataFormatError(f"{source}: document #{index} is not an object")
    doc_id = str(raw.get("id", raw.get("uid", f"#{index}")))
    records = raw.get("document", raw.get("form"))
    if records is None:
        raise DataFormatError(f"document {doc_id} ({source}): missing 'document' entity list")
    img = raw.get("img") or {}
    image = str(base_dir / img["fname"]) if isinstance(img, dict) and img.get("fname") else None
    width = img.get("width") if isinstance(img, dict) else None
    height = img.get("height") if isinstance(img, dict) else None
    if width is None:
        width, height = _image_size(image)
    language = raw.get("lang", language)
    return build_document(doc_id, records, width, height, image, language, **roles)


def read_xfund(path, errors: list | None = None, **roles) -> list[Document]:
    """XFUND (and InDFormSFT): ``{"lang", "documents": [...]}`` JSON, or JSONL of documents."""
    path = Path(path)
    if path.suffix == ".jsonl":
        raws, language = [], None
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    raws.append(json.loads(line))
                except json.JSONDecodeError as error:
                    message = f"{path}:{line_number}: malformed JSON line ({error.msg})"
                    if errors is None:
                        raise DataFormatError(message) from error
                    errors.append(message)
    else:
        data = _load_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
            raise DataFormatError(f"{path}: expected an object with a 'documents' list (XFUND format)")
        raws = data["documents"]
        language = data.get("lang") or path.name.split(".")[0]
    documents = []
    for index, raw in enumerate(raws):
        try:
            documents.append(_read_xfund_document(raw, index, path.parent, language, str(path), roles))
        except DataFormatError as error:
            if errors is None:
                raise
            errors.append(str(error))
    return documents


read_indformsft = read_xfund


def read_paddle_kie(path, errors: list | None = None, **roles) -> list[Document]:
    """PaddleOCR KIE label file: ``image_path<TAB>[{transcription, points, label, id, linking}]``."""
    path = Path(path)
    documents = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                image_name, separator, payload = line.rstrip("\n").partition("\t")
                if not separator:
                    raise DataFormatError(f"{path}:{line_number}: expected 'image<TAB>annotations'")
                doc_id = Path(image_name).stem or f"line{line_number}"
                try:
                    records = json.loads(payload)
                except json.JSONDecodeError as error:
                    raise DataFormatError(
                        f"document {doc_id} ({path}:{line_number}): malformed JSON ({error.msg})"
                    ) from error
                image = str(path.parent / image_name)
                width, height = _image_size(image)
                documents.append(
                    build_document(doc_id, records, width, height, image, None, points_key="points", **roles)
                )
            except DataFormatError as error:
                if errors is None:
                    raise
                errors.append(str(error))
    return documents


READERS = {"funsd": read_funsd, "xfund": read_xfund, "indformsft": read_indformsft, "paddle-kie": read_paddle_kie}


def detect_format(path) -> str:
    path = Path(path)
    if path.is_dir():
        return "funsd"
    if path.suffix == ".jsonl":
        return "indformsft"
    if path.suffix == ".json":
        data = _load_json(path)
        if isinstance(data, dict) and "documents" in data:
            return "xfund"
        if isinstance(data, dict) and "form" in data:
            return "funsd"
        raise DataFormatError(f"{path}: neither FUNSD ('form') nor XFUND ('documents') JSON")
    return "paddle-kie"


def load_documents(path, data_format: str = "auto", errors: list | None = None, **roles) -> list[Document]:
    """Read documents in any supported format. With ``errors`` given, broken documents are skipped
    and their messages appended to it; otherwise the first broken document raises DataFormatError."""
    if not Path(path).exists():
        raise DataFormatError(f"{path}: no such file or folder")
    data_format = detect_format(path) if data_format == "auto" else data_format
    if data_format not in READERS:
        raise ValueError(f"unknown format {data_format!r}; choose from {FORMATS}")
    return READERS[data_format](path, errors=errors, **roles)


def missing_image_reason(document: Document) -> str | None:
    """Why the document's page image cannot be used (None when it can): not named, not found, unreadable."""
    if not document.image_path:
        return "no page image named or found next to the annotations"
    if not os.path.isfile(document.image_path):
        return f"page image {document.image_path} not found"
    if _image_size(document.image_path) == (None, None):
        return f"page image {document.image_path} is not a readable image"
    return None


def check_page_images(documents: list[Document], *, required: bool = False, what: str = "documents",
                      warn=None) -> list[str]:
    """One warning per document whose page image is missing (page size then comes from the annotation
    or the boxes). With ``required`` (the image branch needs the pixels) raise DataFormatError instead,
    naming the first documents. Returns the warning lines."""
    problems = [(d.doc_id, reason) for d in documents if (reason := missing_image_reason(d))]
    if required and problems:
        named = "; ".join(f"document {doc_id}: {reason}" for doc_id, reason in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise DataFormatError(f"{len(problems)} of {len(documents)} {what} have no usable page image and the "
                              f"image branch needs it: {named}{more}")
    lines = [f"warning: document {doc_id}: {reason}; page size taken from the annotations" for doc_id, reason in problems]
    if warn is None:
        import sys

        def warn(line):
            print(line, file=sys.stderr)
    for line in lines:
        warn(line)
    return lines


# -------------------------------------------------------------------------------------------- writers
def _links_of(document: Document, entity_id: int) -> list[list[int]]:
    return [[a, b] for a, b in document.links if entity_id in (a, b)]


def _entity_record(document: Document, entity: Entity, paddle: bool = False) -> dict:
    record = {"id": entity.id, "label": entity.label, "linking": _links_of(document, entity.id)}
    if paddle:
        x0, y0, x1, y1 = entity.box
        record["transcription"] = entity.text
        record["points"] = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
    else:
        record["text"] = entity.text
        record["box"] = entity.box
        record["words"] = [{"text": w.text, "box": w.box} for w in entity.words]
    return record


def write_funsd(documents: list[Document], output) -> None:
    folder = Path(output) / "annotations"
    for document in documents:
        form = [_entity_record(document, entity) for entity in document.entities]
        atomic_write_text(folder / f"{document.doc_id}.json", json.dumps({"form": form}, ensure_ascii=False))


def write_xfund(documents: list[Document], output, language: str | None = None) -> None:
    language = language or next((d.language for d in documents if d.language), "en")
    payload = {"lang": language, "version": "0.1", "documents": []}
    for document in documents:
        image_name = os.path.basename(document.image_path) if document.image_path else f"{document.doc_id}.png"
        payload["documents"].append({
            "id": document.doc_id,
            "document": [_entity_record(document, entity) for entity in document.entities],
            "img": {"fname": image_name, "width": document.width, "height": document.height},
        })
    atomic_write_text(Path(output), json.dumps(payload, ensure_ascii=False))


def write_indformsft(documents: list[Document], output) -> None:
    if str(output).endswith(".jsonl"):
        lines = []
        for document in documents:
            lines.append(json.dumps({
                "id": document.doc_id, "lang": document.language,
                "document": [_entity_record(document, entity) for entity in document.entities],
                "img": {"fname": os.path.basename(document.image_path or f"{document.doc_id}.png"),
                        "width": document.width, "height": document.height},
            }, ensure_ascii=False))
        atomic_write_text(Path(output), "\n".join(lines) + "\n")
    else:
        write_xfund(documents, output)


def write_paddle_kie(documents: list[Document], output) -> None:
    lines = []
    for document in documents:
        image_name = os.path.basename(document.image_path) if document.image_path else f"{document.doc_id}.png"
        records = [_entity_record(document, entity, paddle=True) for entity in document.entities]
        lines.append(f"{image_name}\t{json.dumps(records, ensure_ascii=False)}")
    atomic_write_text(Path(output), "\n".join(lines) + "\n")


WRITERS = {"funsd": write_funsd, "xfund": write_xfund, "indformsft": write_indformsft, "paddle-kie": write_paddle_kie}
