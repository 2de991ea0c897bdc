"""Rendered forms with ground truth for the parse pipeline tests (PNG, multi-page TIFF, PDFs).

Forms are drawn with a real TrueType font so that rapidocr reads them; the FUNSD annotation written
beside each image holds the boxes measured from the drawing, so a model trained on the annotations
sees what OCR sees on the image.
"""

from __future__ import annotations

import json
import random
import socket
import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf")
QUESTIONS = ["name", "date", "total", "amount", "address", "phone", "number", "station", "city", "country"]
ANSWERS = ["paris", "london", "today", "tomorrow", "good", "cold", "hot", "one", "two", "yes", "water", "people"]
PAGE_SIZE = (900, 620)


def font(size: int = 22):
    for path in FONT_PATHS:
        if Path(path).exists():
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def form_layout(seed: int, pairs: int = 5) -> dict:
    """Entities of one form: a header, ``pairs`` 'key:' -> value lines, a footer note (label other)."""
    rng = random.Random(seed)
    keys = rng.sample(QUESTIONS, pairs)
    entities = [{"id": 0, "text": "REGISTRATION FORM", "label": "header", "x": 300, "y": 30}]
    for index, key in enumerate(keys):
        y = 110 + 80 * index
        entities.append({"id": 1 + 2 * index, "text": f"{key}:", "label": "question", "x": 60, "y": y})
        value = " ".join(rng.sample(ANSWERS, rng.randint(1, 2)))
        entities.append({"id": 2 + 2 * index, "text": value, "label": "answer", "x": 420, "y": y})
    entities.append({"id": 99, "text": "page one", "label": "other", "x": 60, "y": 110 + 80 * pairs})
    return {"entities": entities, "links": [(1 + 2 * i, 2 + 2 * i) for i in range(pairs)]}


def render_form(seed: int, pairs: int = 5, box_padding: float = 0.0):
    """(PIL image, FUNSD record) with word boxes measured from the drawing; ``box_padding`` > 0 widens
    each box by a random 0..box_padding pixels per side (OCR detectors return padded boxes: training
    on such boxes makes a small model robust to them)."""
    layout = form_layout(seed, pairs)
    pad_rng = random.Random(seed + 7919)
    image = Image.new("RGB", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    text_font = font()
    space = draw.textlength(" ", font=text_font)
    form = []
    linked = {}
    for key, value in layout["links"]:
        linked.setdefault(key, []).append([key, value])
        linked.setdefault(value, []).append([key, value])
    for entity in layout["entities"]:
        x, y = entity["x"], entity["y"]
        words = []
        for word in entity["text"].split():
            draw.text((x, y), word, fill="black", font=text_font)
            left, top, right, bottom = draw.textbbox((x, y), word, font=text_font)
            pads = [pad_rng.uniform(0, box_padding) for _ in range(4)]
            words.append({"text": word, "box": [round(left - pads[0], 1), round(top - pads[1], 1),
                                                round(right + pads[2], 1), round(bottom + pads[3], 1)]})
            x = right + space
        box = [min(w["box"][0] for w in words), min(w["box"][1] for w in words),
               max(w["box"][2] for w in words), max(w["box"][3] for w in words)]
        form.append({"id": entity["id"], "text": entity["text"], "label": entity["label"], "box": box,
                     "words": words, "linking": linked.get(entity["id"], [])})
    return image, {"form": form}


def write_rendered_funsd(folder: Path, count: int, seed: int = 0, box_padding: float = 0.0) -> Path:
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, record = render_form(seed + index, box_padding=box_padding)
        image.save(folder / "images" / f"form{index:03d}.png")
        (folder / "annotations" / f"form{index:03d}.json").write_text(json.dumps(record))
    return folder


def gold_pairs(record: dict) -> set[tuple[str, str]]:
    """(key text, value text) of every link, for comparing with a parse result."""
    by_id = {e["id"]: e for e in record["form"]}
    pairs = set()
    for entity in record["form"]:
        for key, value in entity["linking"]:
            pairs.add((by_id[key]["text"], by_id[value]["text"]))
    return pairs


def predicted_pairs(result: dict) -> set[tuple[str, str]]:
    return {(pair["key"]["text"], pair["value"]["text"]) for pair in result["pairs"]}


def pair_f1(gold: set, predicted: set) -> float:
    true_positive = len(gold & predicted)
    if not gold or not predicted or not true_positive:
        return 0.0
    precision, recall = true_positive / len(predicted), true_positive / len(gold)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------- PDF writers
def _pdf(objects: list[bytes]) -> bytes:
    """A minimal PDF file from object bodies (object i + 1 = objects[i]), with a valid xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write_text_pdf(path: Path, records: list[dict], page_size=PAGE_SIZE, font_size: float = 16) -> Path:
    """A PDF with a real text layer (Helvetica, one page per FUNSD record, positions from the record's
    entity boxes, 1 pixel = 1 point) and no images."""
    width, height = page_size
    pages = len(records)
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    font_number = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for record in records:
        commands = []
        for entity in record["form"]:
            x0, y0, x1, y1 = entity["box"]
            text = entity["text"].replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            commands.append(f"BT /F1 {font_size} Tf {x0} {height - y1 + 3} Td ({text}) Tj ET")
        stream = "\n".join(commands).encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content_number = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] /Contents {content_number} 0 R "
                       f"/Resources << /Font << /F1 {font_number} 0 R >> >> >>".encode())
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>".encode()
    path.write_bytes(_pdf(objects))
    return path


def write_encrypted_looking_pdf(path: Path) -> Path:
    """A PDF whose trailer names an /Encrypt dictionary with the standard security handler and a
    password PDFium cannot guess: opening it needs a password."""
    stream = zlib.compress(b"BT /F1 12 Tf 10 10 Td (secret) Tj ET")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
               b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Filter /Standard /V 2 /R 3 /Length 128 /P -3904 "
               b"/O <" + b"41" * 32 + b"> /U <" + b"42" * 32 + b"> >>"]
    data = _pdf(objects)
    data = data.replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Encrypt 5 0 R /ID [<0123456789abcdef0123456789abcdef> "
                                           b"<0123456789abcdef0123456789abcdef>] >>")
    path.write_bytes(data)
    return path


def disable_network(monkeypatch) -> None:
    """Make every attempt to open a network connection raise, and tell Hugging Face libraries to stay
    offline: what runs afterwards in the test must not need the network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
