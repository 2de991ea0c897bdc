"""Images / PDFs -> OCR -> entity candidates -> SER -> RE -> key-value JSON, one dict per page.

    from xformparser.pipeline import FormParser, parse
    pages = parse(["form.png", "scan.pdf"])                      # shipped default model, rapidocr
    parser = FormParser(model_dir="runs/funsd", ocr="rapidocr", linker="model")
    pages = parser.parse(["forms/"], errors=failures)            # failures: list collects bad inputs

Steps per page (documented in docs/xformparser.md, "Pipeline"):

1. Page image: PNG/JPEG/TIFF (every frame)/BMP/WebP through Pillow (its decompression-bomb limit is
   an error, not a warning); PDF pages rendered with pypdfium2. A PDF page with a text layer gives its
   words and boxes directly (``ocr.engine == "pdf-text-layer"``); otherwise the rendering is OCR'd.
2. OCR lines, in reading order (top to bottom by vertical centre; lines whose centres lie within half
   the median line height are one row, read left to right).
3. Candidates: each line is one candidate. Merged "Key: value" lines (OCR often returns a key and its
   value as one line) are split by the colon rule (``split="colon"``, the default): after the first word
   ending in ':' (or at a ':' inside a word) when the key side is 1-6 words starting with a letter and
   the colon is not between digits (times). ``split="model"`` splits instead where the model's token
   BIO head tags a question word followed by an answer word (or the reverse); ``"both"`` takes the union.
4. SER on the candidates (the backbone runs once per page; split and merged candidates are re-pooled
   from the same token states).
5. Multi-line merge (``merge_lines=True``; off by default, see docs): a candidate is merged into the one
   right above it when both got the same label (answer, header or other), the vertical gap is under half
   a line height, their left edges are within one line height, their heights differ by under 40 %, the
   upper one does not end in ':', and no key (question) sits on the lower one's row to its left.
6. RE: the model's biaffine linker (``linker="model"``) or the geometric rule (``linker="rule"``).
"""

from __future__ import annotations

import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .features import EncodedDocument, XFormParserCollator, bio_tags, normalize_box
from .linking import rule_links
from .ocr import (JsonOcr, OcrError, OcrLine, OcrPage, OcrWord, RapidOcrOptions, make_ocr_engine, page_from_record,
                  read_ocr_json, union_box)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
PDF_SUFFIXES = (".pdf",)
JSON_SUFFIXES = (".json",)
INPUT_SUFFIXES = IMAGE_SUFFIXES + PDF_SUFFIXES + JSON_SUFFIXES
PDF_RENDER_SCALE = 2.0  # 144 dpi: enough for OCR of form text, small enough to stay fast
SPLIT_MODES = ("model", "colon", "both", "none")
LINKERS = ("model", "rule")
MAX_KEY_WORDS = 6
_TIME_COLON = re.compile(r"\d:\d")


class InputError(ValueError):
    """One input (or one page of it) could not be parsed; ``str`` is one line naming it and why."""


@dataclass
class PageImage:
    source: str
    page: int
    image: object | None  # PIL image, or None for OCR-JSON inputs without an image
    text_layer: OcrPage | None = None  # PDF text layer, when the page has one
    ocr_record: dict | None = None  # an OCR-JSON input's own page record


# =========================================================================================== inputs
def expand_inputs(inputs, stdin=None) -> list:
    """Paths, folders (their supported files, sorted, recursively), ``-`` (paths read from stdin, one
    a line) and in-memory PIL images, in order. Unsupported files inside folders are skipped; named
    files are kept whatever their suffix so that a bad one is reported, not silently dropped."""
    if isinstance(inputs, (str, Path)) or hasattr(inputs, "size") and hasattr(inputs, "mode"):
        inputs = [inputs]
    expanded = []
    for item in inputs:
        if not isinstance(item, (str, Path)):
            expanded.append(item)
            continue
        if str(item) == "-":
            stream = stdin or sys.stdin
            expanded.extend(line.strip() for line in stream.read().splitlines() if line.strip())
            continue
        path = Path(item)
        if path.is_dir():
            found = [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES]
            expanded.extend(found or [str(item)])  # an empty folder is reported by load_pages
        else:
            expanded.append(str(item))
    return expanded


def _open_image_checked(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            frames = []
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                image.load()
                frames.append(image.convert("RGB"))
            return frames
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"{path}: image too large, refused by Pillow's decompression-bomb limit "
                         f"(PIL.Image.MAX_IMAGE_PIXELS): {' '.join(str(error).split())}") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not a supported image or PDF (unrecognised file content)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"{path}: truncated or corrupt image ({error})") from None


def _pdf_pages(path: str) -> list[PageImage]:
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as error:
        if "password" in str(error).lower():
            raise InputError(f"{path}: encrypted PDF (password required); decrypt it first") from None
        raise InputError(f"{path}: corrupt or unreadable PDF ({error})") from None
    pages = []
    try:
        if len(document) == 0:
            raise InputError(f"{path}: PDF has no pages")
        for index in range(len(document)):
            page = document[index]
            try:
                image = page.render(scale=PDF_RENDER_SCALE).to_pil().convert("RGB")
                text_layer = pdf_text_layer(page, PDF_RENDER_SCALE)
            except pdfium.PdfiumError as error:
                raise InputError(f"{path}: page {index + 1} cannot be rendered ({error})") from None
            pages.append(PageImage(path, index + 1, image, text_layer))
    finally:
        document.close()
    return pages


def pdf_text_layer(page, scale: float) -> OcrPage | None:
    """Words and lines of a PDF page's text layer in rendered-pixel coordinates (None if no text).

    Characters are grouped into words at whitespace (or a gap wider than 0.3 of the character height)
    and into lines at a line break, a vertical jump, or a horizontal gap wider than two character
    heights (form fields far apart on one baseline are separate candidates, as OCR would see them)."""
    import pypdfium2.raw as pdfium_c

    started = time.perf_counter()
    textpage = page.get_textpage()
    page_height = page.get_height()
    lines: list[list[list]] = []  # lines -> words -> [text, box]
    current_line = current_word = last_box = None
    for index in range(textpage.count_chars()):
        character = chr(pdfium_c.FPDFText_GetUnicode(textpage, index))
        left, bottom, right, top = textpage.get_charbox(index)
        if character.isspace() or right <= left:
            current_word = None
            if character in "\r\n":
                current_line = last_box = None
            continue
        box = [left * scale, (page_height - top) * scale, right * scale, (page_height - bottom) * scale]
        height = max(box[3] - box[1], 1.0)
        if last_box is not None:
            same_row = abs((box[1] + box[3]) / 2 - (last_box[1] + last_box[3]) / 2) < height / 2
            gap = box[0] - last_box[2]
            if not same_row or gap > 2 * height or gap < -height:
                current_line = None
            elif gap > 0.3 * height:
                current_word = None
        if current_line is None:
            current_line, current_word = [], None
            lines.append(current_line)
        if current_word is None:
            current_word = ["", box]
            current_line.append(current_word)
        current_word[0] += character
        current_word[1] = union_box([current_word[1], box])
        last_box = box
    textpage.close()
    result = []
    for line in lines:
        words = [OcrWord(text, box) for text, box in line if text and box is not None]
        if words:
            result.append(OcrLine(" ".join(w.text for w in words), union_box(w.box for w in words), words))
    if not result:
        return None
    width, height = page.get_size()
    result.sort(key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0]))
    return OcrPage(result, round(width * scale), round(height * scale), "pdf-text-layer",
                   time.perf_counter() - started)


def load_pages(item) -> list[PageImage]:
    """Every page of one input (a path or a PIL image), or InputError naming it and the reason."""
    if not isinstance(item, (str, Path)):
        return [PageImage("<image>", 1, item.convert("RGB"))]
    path = str(item)
    file = Path(path)
    if not file.exists():
        raise InputError(f"{path}: no such file")
    if file.is_dir():
        raise InputError(f"{path}: is a folder with no supported files")
    if file.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(b"%PDF") or file.suffix.lower() in PDF_SUFFIXES:
        if not head.startswith(b"%PDF"):
            raise InputError(f"{path}: not a PDF (no %PDF header)")
        return _pdf_pages(path)
    if file.suffix.lower() in JSON_SUFFIXES:
        try:
            records = read_ocr_json(path)
        except OcrError as error:
            raise InputError(str(error)) from None
        return [PageImage(path, record["page"], None, ocr_record=record) for record in records]
    return [PageImage(path, index + 1, frame) for index, frame in enumerate(_open_image_checked(path))]


# =========================================================================================== candidates
@dataclass
class Candidate:
    """A span of OCR words (one line, part of a line, or several stacked lines) = one entity."""

    words: list[tuple[int, int]]  # (line index, word index) in the page's OCR lines
    text: str
    box: list[float]
    label: str = ""
    score: float = 0.0


def reading_order_lines(lines: list[OcrLine]) -> list[OcrLine]:
    """Top to bottom; lines whose vertical centres lie within half the median line height form one row,
    read left to right."""
    if not lines:
        return []
    tolerance = statistics.median(max(l.box[3] - l.box[1], 1.0) for l in lines) / 2
    rows, row_centre = [], None
    for line in sorted(lines, key=lambda l: (l.box[1] + l.box[3]) / 2):
        centre = (line.box[1] + line.box[3]) / 2
        if row_centre is None or centre - row_centre > tolerance:
            rows.append([line])
            row_centre = centre
        else:
            rows[-1].append(line)
    return [line for row in rows for line in sorted(row, key=lambda l: l.box[0])]


def split_words_at_inner_colons(line: OcrLine) -> OcrLine:
    """'Name:Ada' as one OCR word becomes 'Name:' + 'Ada' (box split by character count) so that the
    colon rule and the BIO head can cut between them; times like '17:46' are kept whole."""
    words = []
    for word in line.words:
        text = word.text
        position = text.find(":")
        if 0 < position < len(text) - 1 and not _TIME_COLON.search(text[position - 1 : position + 2]) \
                and text[0].isalpha():
            x0, y0, x1, y1 = word.box
            cut = x0 + (x1 - x0) * (position + 1) / len(text)
            words += [OcrWord(text[: position + 1], [x0, y0, cut, y1], word.score),
                      OcrWord(text[position + 1 :], [cut, y0, x1, y1], word.score)]
        else:
            words.append(word)
    return replace(line, words=words) if len(words) != len(line.words) else line


def colon_split_point(words: list[OcrWord]) -> int | None:
    """Index of the first value word for a "Key: value" line under the colon rule, or None."""
    for index, word in enumerate(words[:-1]):
        if word.text.endswith(":"):
            key_words = words[: index + 1]
            if len(key_words) > MAX_KEY_WORDS or not key_words[0].text[:1].isalpha():
                return None
            following = words[index + 1].text
            if word.text[-2:-1].isdigit() and following[:1].isdigit():
                return None  # '10: 30' style times
            return index + 1
    return None


def bio_split_points(word_types: list[str]) -> list[int]:
    """Word indices where a new candidate starts: a QUESTION word followed by an ANSWER word, or an
    ANSWER word followed by a QUESTION word (types are BIO tags without their B-/I- prefix)."""
    points = []
    for index in range(1, len(word_types)):
        pair = (word_types[index - 1], word_types[index])
        if pair in (("QUESTION", "ANSWER"), ("ANSWER", "QUESTION")):
            points.append(index)
    return points


def _candidate(lines: list[OcrLine], words: list[tuple[int, int]]) -> Candidate:
    chosen = [lines[l].words[w] for l, w in words]
    return Candidate(words, " ".join(w.text for w in chosen), union_box(w.box for w in chosen))


# =========================================================================================== model glue
def _encode_candidates(candidates, lines, tokenizer, width, height, doc_id, max_tokens_per_word=16):
    """EncodedDocument over candidates (every sub-token carries its word's box), plus the (line, word)
    of every token so that candidates can be regrouped without running the backbone again."""
    input_ids, token_boxes, token_entity, token_word = [], [], [], []
    cache: dict[str, list[int]] = {}
    for entity_index, candidate in enumerate(candidates):
        start = len(input_ids)
        for line_index, word_index in candidate.words:
            word = lines[line_index].words[word_index]
            pieces = cache.get(word.text)
            if pieces is None:
                pieces = tokenizer(word.text, add_special_tokens=False)["input_ids"][:max_tokens_per_word]
                cache[word.text] = pieces
            if not pieces:
                continue
            box = normalize_box(word.box, width, height)
            for piece in pieces:
                input_ids.append(piece)
                token_boxes.append(box)
                token_entity.append(entity_index)
                token_word.append((line_index, word_index))
        if len(input_ids) == start:  # untokenisable text: keep the entity with one [UNK]
            input_ids.append(tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0)
            token_boxes.append(normalize_box(candidate.box, width, height))
            token_entity.append(entity_index)
            token_word.append(candidate.words[0])
    encoded = EncodedDocument(
        doc_id=doc_id, language=None, input_ids=input_ids, token_boxes=token_boxes, token_entity=token_entity,
        token_bio=[-100] * len(input_ids), entity_ids=list(range(len(candidates))),
        entity_labels=[-100] * len(candidates),
        entity_boxes=[normalize_box(c.box, width, height) for c in candidates])
    return encoded, token_word


def _regroup(encoded: EncodedDocument, token_word, candidates, width, height) -> EncodedDocument:
    """Same tokens, new candidates: token -> candidate through each token's (line, word)."""
    owner = {word: index for index, candidate in enumerate(candidates) for word in candidate.words}
    return replace(encoded, token_entity=[owner[word] for word in token_word],
                   entity_ids=list(range(len(candidates))), entity_labels=[-100] * len(candidates),
                   entity_boxes=[normalize_box(c.box, width, height) for c in candidates])


def _pad(rows: list[list], fill, length: int | None = None) -> torch.Tensor:
    length = length or max(max((len(r) for r in rows), default=0), 1)
    return torch.tensor([list(r) + [fill] * (length - len(r)) for r in rows])


class _TokenStates:
    """Backbone output of one batch of pages, kept so candidates can be re-pooled cheaply."""

    def __init__(self, model, collator, encoded: list[EncodedDocument]):
        batch = collator(encoded)
        window_states = model.backbone(batch["input_ids"], batch["bbox"], batch["attention_mask"], None)
        self.token_states = model._merge_windows(window_states, batch["window_document"],
                                                 batch["window_token_position"], len(encoded),
                                                 batch["token_entity"].shape[1])
        self.num_tokens = batch["token_entity"].shape[1]
        self.model = model

    def bio_logits(self, encoded: list[EncodedDocument]) -> torch.Tensor:
        model = self.model
        token_entity = _pad([d.token_entity for d in encoded], -1, self.num_tokens)
        if hasattr(model, "token_bio_logits"):
            return model.token_bio_logits(self.token_states, token_entity)
        bio_input = self.token_states  # models without the helper: the same computation inline
        if model.token_context is not None:
            context = model._run_lstm(model.token_context, self.token_states, token_entity >= 0)
            bio_input = self.token_states + model.token_context_projection(context)
        return model.bio_head(bio_input)

    def entities(self, encoded: list[EncodedDocument]) -> dict[str, torch.Tensor]:
        """What ``XFormParserModel.encode_entities`` returns, for a regrouping of the same tokens."""
        model = self.model
        token_entity = _pad([d.token_entity for d in encoded], -1, self.num_tokens)
        count = max(max(len(d.entity_ids) for d in encoded), 1)
        entity_boxes = _pad([d.entity_boxes for d in encoded], [0, 0, 0, 0], count).float()
        entity_mask = _pad([[True] * len(d.entity_ids) for d in encoded], False, count).bool()
        pooled = model._pool_entities(self.token_states, token_entity, count)
        features = model.entity_dense(torch.cat([pooled, model._box_features(entity_boxes)], dim=-1))
        if hasattr(model, "ser_context"):
            features = model.ser_context(features, entity_boxes, entity_mask)
        elif model.entity_context_for_ser is not None:
            features = features + model._run_lstm(model.entity_context_for_ser, features, entity_mask)
        return {"entity_features": features, "ser_logits": model.ser_head(features),
                "entity_boxes": entity_boxes, "entity_mask": entity_mask}


# =========================================================================================== the parser
class ModelLoadError(ValueError):
    """The model folder cannot be used; one line naming it."""


def _load_model(model_dir):
    """(model, tokenizer): the shipped default when ``model_dir`` is None, else a model directory
    (a full one written by ``xformparser train`` or a backbone-delta one, see xformparser/defaults.py)."""
    try:
        from .defaults import load_model_and_tokenizer
    except ImportError:  # a version without the shipped default
        load_model_and_tokenizer = None
    if load_model_and_tokenizer is None:
        if model_dir is None:
            raise ModelLoadError("no default model is shipped in this version; pass --model DIR")
        from .evaluation import load_parser_files as load_model_and_tokenizer
    where = f"--model {model_dir}" if model_dir is not None else "default model"
    try:
        model, tokenizer = load_model_and_tokenizer(model_dir)
    except FileNotFoundError as error:
        reason = f"{error.filename}: {error.strerror}" if error.filename and error.strerror else str(error)
        raise ModelLoadError(f"{where}: {' '.join(reason.split())}") from None
    except (OSError, ValueError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        raise ModelLoadError(message if model_dir is not None and message.startswith(str(model_dir))
                             else f"{where}: {message}") from None
    return model.eval(), tokenizer


class FormParser:
    """The parse pipeline (module docstring). ``model_dir=None`` uses the shipped default model;
    ``ocr``: ``rapidocr`` | ``tesseract`` | an OCR JSON file or folder; ``linker``: ``model`` | ``rule``;
    ``split``: ``colon`` (default) | ``model`` (token BIO head, else colon rule) | ``both`` (union of the two)
    | ``none``; ``merge_lines``: the multi-line merge. Defaults = the best measured on FUNSD test
    (docs/results/xformparser_parse.md)."""

    def __init__(self, model_dir=None, ocr: str = "rapidocr", linker: str = "model", batch_size: int = 4,
                 split: str = "colon", merge_lines: bool = False, ocr_options: RapidOcrOptions | None = None,
                 model=None, tokenizer=None):
        if linker not in LINKERS:
            raise ValueError(f"linker must be one of {LINKERS}, got {linker!r}")
        if split not in SPLIT_MODES:
            raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if model is None:
            model, tokenizer = _load_model(model_dir)
        self.model, self.tokenizer = model.eval(), tokenizer
        config = model.config
        self.labels = list(config.labels)
        self.key_labels = {l.lower() for l in config.key_labels}
        self.value_labels = {l.lower() for l in config.value_labels}
        self.tags = bio_tags(self.labels)
        self.collator = XFormParserCollator(tokenizer, config.window_size, config.window_overlap, None)
        self.linker, self.batch_size, self.split, self.merge_lines = linker, batch_size, split, merge_lines
        self.ocr_spec, self.ocr_options = ocr, ocr_options
        # Created now (not on the first page) so that engine start-up is not billed to a page's OCR time.
        self.ocr_engine = make_ocr_engine(ocr, ocr_options)
        self._has_bio = any(t.endswith("QUESTION") for t in self.tags) and any(t.endswith("ANSWER") for t in self.tags)

    # ------------------------------------------------------------------------------------ public API
    def parse(self, inputs, errors: list | None = None, progress: bool = False, stdin=None) -> list[dict]:
        """Per-page result dicts (schema: docs/xformparser.md) for every input, in order.

        With ``errors=[]`` a bad input (or page) is recorded there as ``{"source", "page", "error"}`` and
        the rest is parsed; without it the first bad input raises :class:`InputError`."""
        return [result for result, _ in self.iter_parse(inputs, errors, progress, stdin)]

    def iter_parse(self, inputs, errors: list | None = None, progress: bool = False, stdin=None):
        """Yields ``(page result, page image or None)`` as batches of ``batch_size`` pages finish."""
        items = expand_inputs(inputs, stdin)
        pending = []
        iterator = items
        if progress:
            from tqdm import tqdm

            iterator = tqdm(items, desc="parse", unit="file", file=sys.stderr, dynamic_ncols=True)
        for item in iterator:
            load_started = time.perf_counter()
            try:
                pages = load_pages(item)
            except InputError as error:
                if errors is None:
                    raise
                errors.append({"source": str(item), "page": None, "error": str(error)})
                continue
            # Decoding / rendering is billed to the pages' "ocr" time: it is page acquisition.
            load_seconds = (time.perf_counter() - load_started) / max(len(pages), 1)
            for page in pages:
                try:
                    pending.append(self._ocr_page(page, load_seconds))
                except (InputError, OcrError) as error:
                    if errors is None:
                        raise InputError(str(error)) from None
                    errors.append({"source": page.source, "page": page.page, "error": str(error)})
                if len(pending) >= self.batch_size:
                    yield from self._run_model(pending)
                    pending = []
        if pending:
            yield from self._run_model(pending)

    # ------------------------------------------------------------------------------------ OCR
    def _ocr_page(self, page: PageImage, load_seconds: float = 0.0) -> dict:
        started = time.perf_counter() - load_seconds
        where = f"{page.source} page {page.page}"
        if page.ocr_record is not None:
            ocr_page = page_from_record(page.ocr_record)
        elif page.text_layer is not None:
            ocr_page = page.text_layer
        else:
            engine = self.ocr_engine
            if isinstance(engine, JsonOcr):
                ocr_page = engine.page(page.source, page.page, page.image)
            else:
                ocr_page = engine(page.image)
        lines = [split_words_at_inner_colons(l) for l in reading_order_lines([l for l in ocr_page.lines if l.words])]
        if not lines:
            raise InputError(f"{where}: no text found on the page ({ocr_page.engine})")
        return {"page": page, "ocr": ocr_page, "lines": lines, "ocr_seconds": time.perf_counter() - started}

    # ------------------------------------------------------------------------------------ model + post
    @torch.no_grad()
    def _run_model(self, items: list[dict]) -> list[dict]:
        model_started = time.perf_counter()
        post_seconds = 0.0
        docs = []
        for number, item in enumerate(items):
            ocr_page, lines = item["ocr"], item["lines"]
            candidates = [_candidate(lines, [(l, w) for w in range(len(line.words))]) for l, line in enumerate(lines)]
            encoded, token_word = _encode_candidates(candidates, lines, self.tokenizer, ocr_page.width,
                                                     ocr_page.height, f"page{number}")
            docs.append({"candidates": candidates, "encoded": encoded, "token_word": token_word})
        states = _TokenStates(self.model, self.collator, [d["encoded"] for d in docs])

        # Split merged "Key: value" lines (BIO head, else the colon rule) and re-pool.
        if self.split != "none":
            use_bio = self.split in ("model", "both") and self._has_bio
            bio = states.bio_logits([d["encoded"] for d in docs]).argmax(-1) if use_bio else None
            for row, (doc, item) in enumerate(zip(docs, items)):
                split_started = time.perf_counter()
                doc["candidates"] = self._split(doc, item["lines"], bio[row] if bio is not None else None)
                doc["encoded"] = _regroup(doc["encoded"], doc["token_word"], doc["candidates"],
                                          item["ocr"].width, item["ocr"].height)
                post_seconds += time.perf_counter() - split_started
        outputs = states.entities([d["encoded"] for d in docs])
        self._label(docs, outputs)

        if self.merge_lines:
            merge_started = time.perf_counter()
            changed = False
            for doc, item in zip(docs, items):
                merged = merge_stacked_candidates(doc["candidates"], item["lines"])
                if len(merged) != len(doc["candidates"]):
                    changed = True
                    doc["candidates"] = merged
                    doc["encoded"] = _regroup(doc["encoded"], doc["token_word"], merged,
                                              item["ocr"].width, item["ocr"].height)
            post_seconds += time.perf_counter() - merge_started
            if changed:
                outputs = states.entities([d["encoded"] for d in docs])
                self._label(docs, outputs)

        links = self._link(outputs)
        model_seconds = time.perf_counter() - model_started - post_seconds
        results = []
        for row, (doc, item) in enumerate(zip(docs, items)):
            post_started = time.perf_counter()
            result = self._page_result(item, doc["candidates"], links[row])
            post = post_seconds / len(items) + time.perf_counter() - post_started
            result["timing"] = {"ocr": round(item["ocr_seconds"], 4), "model": round(model_seconds / len(items), 4),
                                "post": round(post, 4)}
            results.append((result, item["page"].image))
        return results

    def _split(self, doc: dict, lines: list[OcrLine], bio_row) -> list[Candidate]:
        word_types: dict[tuple[int, int], str] = {}
        if bio_row is not None:
            seen = set()
            for position, word in enumerate(doc["token_word"]):
                if word not in seen:  # the first sub-token of a word carries its tag
                    seen.add(word)
                    tag = self.tags[int(bio_row[position])]
                    word_types[word] = tag[2:] if tag != "O" else "O"
        result = []
        for candidate in doc["candidates"]:
            words = candidate.words
            points = set()
            if bio_row is not None:
                points.update(bio_split_points([word_types.get(w, "O") for w in words]))
            if bio_row is None or self.split == "both":
                point = colon_split_point([lines[l].words[w] for l, w in words])
                points.update([point] if point else [])
            points = sorted(points)
            bounds = [0, *points, len(words)]
            result += [_candidate(lines, words[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]
        return result

    def _label(self, docs, outputs) -> None:
        probabilities = outputs["ser_logits"].softmax(-1)
        for row, doc in enumerate(docs):
            for index, candidate in enumerate(doc["candidates"]):
                p = probabilities[row, index]
                best = int(p.argmax())
                candidate.label, candidate.score = self.labels[best], float(p[best])

    def _link(self, outputs) -> list[list[tuple[int, int, float]]]:
        """(key index, value index, score) per page."""
        model = self.model
        mask, boxes = outputs["entity_mask"], outputs["entity_boxes"]
        probabilities = outputs["ser_logits"].softmax(-1)
        if self.linker == "rule":
            label_ids = outputs["ser_logits"].argmax(-1)
            heads = model._label_mask(model.config.key_labels, label_ids.device)[label_ids] & mask
            tails = model._label_mask(model.config.value_labels, label_ids.device)[label_ids] & mask
            chosen = rule_links(boxes, heads, tails)
            confidence = probabilities.max(-1).values
            return [[(h, t, float(min(confidence[row, h], confidence[row, t])))
                     for t, h in enumerate(chosen[row].tolist()) if h >= 0 and mask[row, t]]
                    for row in range(chosen.shape[0])]
        encoded = {"entity_features": outputs["entity_features"], "ser_logits": outputs["ser_logits"]}
        re_logits, _, tails = model.score_relations(encoded, boxes, mask, None, "predicted")
        re_probabilities = re_logits.float().softmax(-1)
        choice = re_logits.argmax(-1)
        count = mask.shape[1]
        pages = []
        for row in range(choice.shape[0]):
            pairs = []
            for tail, head in enumerate(choice[row].tolist()):
                if head < count and bool(tails[row, tail]):
                    pairs.append((head, tail, float(re_probabilities[row, tail, head])))
            pages.append(pairs)
        return pages

    def _page_result(self, item: dict, candidates: list[Candidate], links) -> dict:
        page, ocr_page = item["page"], item["ocr"]
        entities = [{"id": i, "text": c.text, "box": [round(v, 1) for v in c.box], "label": c.label,
                     "score": round(c.score, 4)} for i, c in enumerate(candidates)]
        brief = [{"id": e["id"], "text": e["text"], "box": e["box"]} for e in entities]
        pairs, key_values = [], {}
        linked_keys = set()
        for key, value, score in sorted(links, key=lambda link: (link[0], link[1])):
            pairs.append({"key": brief[key], "value": brief[value], "score": round(score, 4)})
            linked_keys.add(key)
            name = key_text(entities[key]["text"])
            if name in key_values:
                existing = key_values[name]
                key_values[name] = (existing if isinstance(existing, list) else [existing]) + [entities[value]["text"]]
            else:
                key_values[name] = entities[value]["text"]
        keys = [i for i, c in enumerate(candidates) if c.label.lower() in self.key_labels]
        return {
            "source": page.source, "page": page.page, "width": round(ocr_page.width), "height": round(ocr_page.height),
            "ocr": {"engine": ocr_page.engine, "seconds": round(ocr_page.seconds, 4)},
            "key_values": key_values, "pairs": pairs, "entities": entities,
            "unlinked_keys": [brief[i] for i in keys if i not in linked_keys],
            "headers": [brief[i] for i, c in enumerate(candidates) if c.label.lower() == "header"],
        }


def key_text(text: str) -> str:
    """Key name in ``key_values``: the key entity's text without a trailing ':' and surrounding spaces."""
    stripped = text.strip().rstrip(":：").strip()
    return stripped or text.strip()


def merge_stacked_candidates(candidates: list[Candidate], lines: list[OcrLine]) -> list[Candidate]:
    """Multi-line merge (rule 5 in the module docstring). Candidates keep their first member's place."""
    if len(candidates) < 2:
        return candidates
    line_height = statistics.median(max(c.box[3] - c.box[1], 1.0) for c in candidates)
    mergeable = {"answer", "header", "other"}
    groups = [[i] for i in range(len(candidates))]
    group_of = list(range(len(candidates)))
    group_box = [list(c.box) for c in candidates]
    last_member = list(range(len(candidates)))
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i].box[1], candidates[i].box[0]))
    keys = [c for c in candidates if c.label.lower() not in mergeable]

    def has_key_on_its_left(candidate: Candidate) -> bool:
        """A value in a column of values sits beside its own key: it is a separate entity."""
        for key in keys:
            overlap = min(key.box[3], candidate.box[3]) - max(key.box[1], candidate.box[1])
            height = min(key.box[3] - key.box[1], candidate.box[3] - candidate.box[1])
            if key.box[2] <= candidate.box[0] + 5 and overlap >= 0.5 * max(height, 1.0):
                return True
        return False

    for lower in order:
        below = candidates[lower]
        if below.label.lower() not in mergeable or has_key_on_its_left(below):
            continue
        best, best_gap = None, None
        for upper in order:
            group = group_of[upper]
            if group == group_of[lower] or last_member[group] != upper:
                continue
            above = candidates[upper]
            if above.label != below.label or above.text.rstrip().endswith(":"):
                continue
            gap = below.box[1] - above.box[3]
            heights = (max(above.box[3] - above.box[1], 1.0), max(below.box[3] - below.box[1], 1.0))
            if not (-0.25 * line_height <= gap <= 0.5 * line_height):
                continue
            if abs(below.box[0] - above.box[0]) > line_height or max(heights) / min(heights) > 1.4:
                continue
            if best_gap is None or gap < best_gap:
                best, best_gap = upper, gap
        if best is None:
            continue
        target, source = group_of[best], group_of[lower]
        if source != lower or len(groups[source]) != 1:
            continue  # the lower candidate already heads a merged group below it: keep it simple
        groups[target].append(lower)
        groups[source] = []
        group_of[lower] = target
        last_member[target] = lower
        group_box[target] = union_box([group_box[target], below.box])
    merged = []
    for members in groups:
        if not members:
            continue
        first = candidates[members[0]]
        if len(members) == 1:
            merged.append(first)
            continue
        words = [w for m in members for w in candidates[m].words]
        combined = _candidate(lines, words)
        combined.label = first.label
        merged.append(combined)
    return merged


def parse(inputs, model_dir=None, ocr: str = "rapidocr", linker: str = "model", errors: list | None = None,
          **options) -> list[dict]:
    """One-call API: ``parse(["form.png"])`` -> per-page dicts (JSON-ready; no page images)."""
    parser = FormParser(model_dir=model_dir, ocr=ocr, linker=linker, **options)
    return parser.parse(inputs, errors=errors)


__all__ = ["FormParser", "InputError", "ModelLoadError", "LINKERS", "SPLIT_MODES", "bio_split_points", "colon_split_point",
           "expand_inputs", "key_text", "load_pages", "merge_stacked_candidates", "parse", "pdf_text_layer",
           "reading_order_lines", "split_words_at_inner_colons"]
