"""OCR for the parse pipeline: page image -> text lines with word boxes.

Engines (all return :class:`OcrPage`, boxes in page pixels ``[x0, y0, x1, y1]``):

- ``rapidocr`` (default): PP-OCR detection + recognition on onnxruntime. The ONNX models ship inside
  the ``rapidocr`` wheel; the engine is pointed at that folder explicitly, so nothing is downloaded at
  run time (``tests/xformparser/test_ocr.py`` proves it with networking disabled).
- ``tesseract``: through ``pytesseract`` when the ``tesseract`` binary is installed.
- bring-your-own OCR JSON (:func:`read_ocr_json`): the documented schema below, or FUNSD / XFUND
  annotation files (labels and links are ignored; each entity becomes one line).

BYO OCR schema (one file; ``pages`` may be omitted for a single page)::

    {"pages": [{"page": 1, "width": 1240, "height": 1754,
                "lines": [{"text": "Name: Ada", "box": [100, 80, 260, 104],
                           "words": [{"text": "Name:", "box": [100, 80, 170, 104]},
                                     {"text": "Ada", "box": [180, 80, 260, 104]}]}]}]}

``box`` may also be a 4-point polygon under ``points`` (``[[x, y], ...]``). ``words`` is optional (word
boxes are then estimated by splitting the line box by character count). A page may instead hold only
``words`` (no ``lines``); they are grouped into lines by :func:`group_words_into_lines`. ``width`` /
``height`` default to the image's size, else to the extent of the boxes. ``source`` (a file name) on a
page lets one JSON serve several images; pages are matched by file name and page number.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from xformparser.formats import split_words_by_characters

OCR_ENGINES = ("rapidocr", "tesseract")


class OcrError(ValueError):
    """OCR input or engine problem; the message is one line naming the item."""


@dataclass
class OcrWord:
    text: str
    box: list[float]
    score: float = 1.0


@dataclass
class OcrLine:
    text: str
    box: list[float]
    words: list[OcrWord] = field(default_factory=list)
    score: float = 1.0


@dataclass
class OcrPage:
    lines: list[OcrLine]
    width: float
    height: float
    engine: str
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ geometry helpers
def polygon_to_box(points) -> list[float]:
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def union_box(boxes) -> list[float]:
    boxes = list(boxes)
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def split_line_into_words(text: str, box: list[float], score: float = 1.0) -> list[OcrWord]:
    """Word boxes estimated by splitting the line box in proportion to character counts."""
    return [OcrWord(word.text, word.box, score) for word in split_words_by_characters(text, box)]


def align_pieces_to_words(text: str, pieces: list[OcrWord]) -> list[OcrWord]:
    """Word boxes from OCR pieces, with words defined by the spaces in the line text.

    rapidocr's word pieces sometimes cut a word in two ('tom' + 'orrow'); pieces are concatenated until
    they spell the next space-separated word of the line. Returns [] when they cannot be aligned."""
    words, position = [], 0
    for token in text.split():
        spelled, members = "", []
        while position < len(pieces) and len(spelled) < len(token):
            members.append(pieces[position])
            spelled += pieces[position].text.replace(" ", "")
            position += 1
        if spelled != token or not members:
            return []
        words.append(OcrWord(token, union_box(m.box for m in members), min(m.score for m in members)))
    return words if position == len(pieces) else []


def group_words_into_lines(words: list[OcrWord]) -> list[OcrLine]:
    """Words -> lines: a word joins the line whose vertical centre is within half the median word
    height of its own and which ends less than two median heights to its left; lines are returned
    top to bottom, words left to right."""
    if not words:
        return []
    median_height = statistics.median(max(w.box[3] - w.box[1], 1.0) for w in words)
    lines: list[list[OcrWord]] = []
    for word in sorted(words, key=lambda w: (w.box[0], w.box[1])):
        centre = (word.box[1] + word.box[3]) / 2
        best = None
        for line in lines:
            last = line[-1]
            line_centre = (last.box[1] + last.box[3]) / 2
            gap = word.box[0] - last.box[2]
            if abs(centre - line_centre) <= median_height / 2 and -median_height <= gap <= 2 * median_height:
                best = line
                break
        if best is None:
            lines.append([word])
        else:
            best.append(word)
    result = [OcrLine(" ".join(w.text for w in line), union_box(w.box for w in line), line,
                      min(w.score for w in line)) for line in lines]
    return sorted(result, key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0]))


# ------------------------------------------------------------------------------------ rapidocr
@dataclass
class RapidOcrOptions:
    """Latency knobs (measured in docs/results/xformparser_parse.md).

    ``threads``: onnxruntime intra-op threads per session. ``det_limit_side_len`` / ``det_limit_type``:
    the detector resizes the page so that its ``min`` (or ``max``) side is this long. ``rec_batch_num``:
    text lines recognised per onnxruntime call (lines are sorted by aspect ratio first, so larger
    batches pad little). ``use_cls``: the 180-degree line classifier (off: scanned forms are upright)."""

    threads: int = 1
    det_limit_side_len: int = 736
    det_limit_type: str = "min"
    rec_batch_num: int = 6
    use_cls: bool = False
    text_score: float = 0.5


def rapidocr_model_dir() -> Path:
    import rapidocr

    return Path(rapidocr.__file__).resolve().parent / "models"


class RapidOcrEngine:
    name = "rapidocr"

    def __init__(self, options: RapidOcrOptions | None = None):
        try:
            from rapidocr import RapidOCR
        except ImportError as error:  # pragma: no cover - a core dependency
            raise OcrError(f"rapidocr is not installed ({error}); pip install rapidocr onnxruntime") from error
        self.options = options or RapidOcrOptions()
        models = rapidocr_model_dir()
        bundled = {p.name for p in models.glob("*.onnx")}
        if not any("det" in name for name in bundled) or not any("rec" in name for name in bundled):
            raise OcrError(f"rapidocr models missing in {models} (expected the wheel's bundled det/rec .onnx files)")
        o = self.options
        params = {
            "Global.log_level": "error", "Global.use_cls": o.use_cls, "Global.text_score": o.text_score,
            "Global.model_root_dir": str(models),
            "EngineConfig.onnxruntime.intra_op_num_threads": o.threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            "Det.limit_side_len": o.det_limit_side_len, "Det.limit_type": o.det_limit_type,
            "Rec.rec_batch_num": o.rec_batch_num,
        }
        self._engine = RapidOCR(params=params)

    def __call__(self, image) -> OcrPage:
        import numpy as np

        rgb = np.asarray(image.convert("RGB"))[:, :, ::-1]  # rapidocr expects OpenCV's BGR order
        started = time.perf_counter()
        result = self._engine(np.ascontiguousarray(rgb), return_word_box=True)
        seconds = time.perf_counter() - started
        lines = []
        texts = getattr(result, "txts", None) or ()
        boxes = getattr(result, "boxes", None)
        scores = getattr(result, "scores", None) or ()
        word_results = getattr(result, "word_results", None) or ()
        # rapidocr drops empty word lists when it filters by score, so word lists only line up with the
        # text lines when the counts agree; otherwise word boxes are estimated from the line box.
        words_aligned = len(word_results) == len(texts)
        for index, text in enumerate(texts):
            if not text.strip():
                continue
            box = polygon_to_box(boxes[index])
            score = float(scores[index]) if index < len(scores) else 1.0
            words = []
            if words_aligned:
                pieces = [OcrWord(str(t), polygon_to_box(b), float(s)) for t, s, b in word_results[index]
                          if str(t).strip() and b is not None]
                words = align_pieces_to_words(text, pieces)
            if not words:
                words = split_line_into_words(text, box, score)
            lines.append(OcrLine(text.strip(), box, words, score))
        width, height = image.size
        return OcrPage(lines, width, height, self.name, seconds)


# ------------------------------------------------------------------------------------ tesseract
def tesseract_available() -> bool:
    if shutil.which("tesseract") is None:
        return False
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        return False
    return True


class TesseractEngine:
    name = "tesseract"

    def __init__(self, lang: str = "eng"):
        if shutil.which("tesseract") is None:
            raise OcrError("--ocr tesseract: the tesseract binary is not installed (apt-get install tesseract-ocr)")
        try:
            import pytesseract
        except ImportError as error:
            raise OcrError("--ocr tesseract: pytesseract is not installed (pip install pytesseract)") from error
        self._tesseract, self.lang = pytesseract, lang

    def __call__(self, image) -> OcrPage:
        started = time.perf_counter()
        data = self._tesseract.image_to_data(image.convert("RGB"), lang=self.lang,
                                             output_type=self._tesseract.Output.DICT)
        seconds = time.perf_counter() - started
        grouped: dict[tuple, list[OcrWord]] = {}
        for i, text in enumerate(data["text"]):
            text = str(text).strip()
            confidence = float(data["conf"][i])
            if not text or confidence < 0:
                continue
            x, y, w, h = (float(data[k][i]) for k in ("left", "top", "width", "height"))
            key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
            grouped.setdefault(key, []).append(OcrWord(text, [x, y, x + w, y + h], confidence / 100))
        lines = [OcrLine(" ".join(w.text for w in words), union_box(w.box for w in words), words,
                         min(w.score for w in words)) for words in grouped.values()]
        lines.sort(key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0]))
        width, height = image.size
        return OcrPage(lines, width, height, self.name, seconds)


# ------------------------------------------------------------------------------------ bring your own
def _box_from(record: dict, where: str) -> list[float]:
    if "box" in record:
        box = record["box"]
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            if box[2] < box[0] or box[3] < box[1]:
                raise OcrError(f"{where}: box {box} has x1 < x0 or y1 < y0")
            return [float(v) for v in box]
        if isinstance(box, list) and box and all(isinstance(p, list) and len(p) == 2 for p in box):
            return polygon_to_box(box)
        raise OcrError(f"{where}: box must be [x0, y0, x1, y1] or [[x, y], ...], got {box!r}")
    if "points" in record:
        try:
            return polygon_to_box(record["points"])
        except (TypeError, ValueError, IndexError) as error:
            raise OcrError(f"{where}: points must be [[x, y], ...]") from error
    raise OcrError(f"{where}: no 'box' or 'points'")


def _text_from(record: dict, where: str) -> str:
    text = record.get("text", record.get("transcription", ""))
    if not isinstance(text, str):
        raise OcrError(f"{where}: text must be a string")
    return text


def _words_from(records, where: str) -> list[OcrWord]:
    words = []
    for index, record in enumerate(records or []):
        if not isinstance(record, dict):
            raise OcrError(f"{where}, word {index}: must be an object")
        text = _text_from(record, f"{where}, word {index}")
        if text.strip():
            words.append(OcrWord(text.strip(), _box_from(record, f"{where}, word {index}"),
                                 float(record.get("score", 1.0))))
    return words


def _lines_from(records, where: str) -> list[OcrLine]:
    lines = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise OcrError(f"{where}, line {index}: must be an object")
        line_where = f"{where}, line {record.get('id', index)}"
        text = _text_from(record, line_where)
        if not text.strip():
            continue
        box = _box_from(record, line_where)
        words = _words_from(record.get("words"), line_where) or split_line_into_words(text, box)
        lines.append(OcrLine(text.strip(), box, words, float(record.get("score", 1.0))))
    return lines


def _page_from(record: dict, where: str, number: int) -> dict:
    """One page record -> {"source", "page", "width", "height", "lines"} (size may be None)."""
    if "lines" in record:
        lines = _lines_from(record["lines"], where)
    elif "words" in record:
        lines = group_words_into_lines(_words_from(record["words"], where))
    elif "form" in record or "document" in record:  # FUNSD / XFUND entity list; labels are ignored
        lines = _lines_from(record.get("form", record.get("document")), where)
    else:
        raise OcrError(f"{where}: a page needs 'lines', 'words' or a FUNSD 'form' list")
    image = record.get("img") if isinstance(record.get("img"), dict) else {}
    return {"source": record.get("source") or image.get("fname"), "page": int(record.get("page", number)),
            "width": record.get("width", image.get("width")), "height": record.get("height", image.get("height")),
            "lines": lines}


def read_ocr_json(path) -> list[dict]:
    """Pages of a BYO OCR file (schema in the module docstring; FUNSD and XFUND files are accepted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise OcrError(f"{path}: OCR file not found") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OcrError(f"{path}: not a readable OCR JSON file ({error})") from error
    if isinstance(data, list):
        data = {"lines": data}
    if not isinstance(data, dict):
        raise OcrError(f"{path}: OCR JSON must be an object")
    if "pages" in data:
        records = data["pages"]
    elif "documents" in data:  # XFUND
        records = data["documents"]
    else:
        records = [data]
    if not isinstance(records, list) or not records:
        raise OcrError(f"{path}: no pages")
    pages = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise OcrError(f"{path}, page {number}: must be an object")
        pages.append(_page_from(record, f"{path}, page {number}", number))
    return pages


class JsonOcr:
    """Precomputed OCR from a JSON file (several pages/images) or a folder of ``<image stem>.json``."""

    name = "file"

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise OcrError(f"--ocr {path}: no such OCR file or folder")
        self._single = None if self.path.is_dir() else read_ocr_json(self.path)

    def pages_for(self, source: str | None) -> list[dict]:
        if self._single is not None:
            named = [p for p in self._single if p["source"]]
            if source and named:
                stem = Path(source).stem
                matching = [p for p in self._single if p["source"] and Path(p["source"]).stem == stem]
                if not matching:
                    raise OcrError(f"{source}: no page for this file in {self.path}")
                return matching
            return self._single
        candidate = self.path / f"{Path(source or '').stem}.json"
        if not candidate.exists():
            raise OcrError(f"{source}: no OCR file {candidate.name} in {self.path}")
        return read_ocr_json(candidate)

    def page(self, source: str | None, page_number: int, image=None) -> OcrPage:
        pages = self.pages_for(source)
        chosen = [p for p in pages if p["page"] == page_number] or (pages if len(pages) == 1 else [])
        if not chosen:
            raise OcrError(f"{source}: page {page_number} missing from the OCR JSON")
        return page_from_record(chosen[0], image)


def page_from_record(record: dict, image=None) -> OcrPage:
    lines = record["lines"]
    width, height = record["width"], record["height"]
    if image is not None:
        width, height = width or image.size[0], height or image.size[1]
    if not width or not height:
        extent = union_box(l.box for l in lines) if lines else [0, 0, 1, 1]
        width, height = width or max(extent[2], 1), height or max(extent[3], 1)
    return OcrPage(lines, float(width), float(height), "file", 0.0)


def make_ocr_engine(spec: str, options: RapidOcrOptions | None = None):
    """``rapidocr`` | ``tesseract`` | a JSON file or folder of precomputed OCR."""
    if spec == "rapidocr":
        return RapidOcrEngine(options)
    if spec == "tesseract":
        return TesseractEngine(os.environ.get("SFTKIT_TESSERACT_LANG", "eng"))
    if spec.endswith(".json") or Path(spec).is_dir():
        return JsonOcr(spec)
    raise OcrError(f"--ocr {spec!r}: use rapidocr, tesseract, or an OCR JSON file / folder")


__all__ = [
    "JsonOcr", "OCR_ENGINES", "OcrError", "OcrLine", "OcrPage", "OcrWord", "RapidOcrEngine", "RapidOcrOptions",
    "TesseractEngine", "group_words_into_lines", "make_ocr_engine", "page_from_record", "read_ocr_json",
    "split_line_into_words", "tesseract_available",
]
