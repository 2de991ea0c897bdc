"""OCR layer: rapidocr offline (no network), BYO OCR JSON schema, word grouping, tesseract when installed."""

import json
import socket

import pytest

from pipeline_fixtures import disable_network, render_form
from xformparser.ocr import (JsonOcr, OcrError, OcrWord, RapidOcrEngine, TesseractEngine, align_pieces_to_words,
                             group_words_into_lines, rapidocr_model_dir, read_ocr_json, split_line_into_words,
                             tesseract_available)


@pytest.fixture()
def no_network(monkeypatch):
    disable_network(monkeypatch)
    with pytest.raises(OSError):  # the guard itself works
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def _normalise(text):
    return "".join(text.lower().split())


def test_rapidocr_reads_a_rendered_form_with_networking_disabled(no_network):
    engine = RapidOcrEngine()  # builds onnxruntime sessions from the wheel's bundled models
    assert sorted(p.name for p in rapidocr_model_dir().glob("*.onnx"))  # models live in the installed package
    image, record = render_form(seed=3)
    page = engine(image)
    assert page.engine == "rapidocr" and (page.width, page.height) == image.size and page.seconds > 0
    read = {_normalise(line.text) for line in page.lines}
    gold = [_normalise(entity["text"]) for entity in record["form"]]
    found = sum(text in read for text in gold)
    assert found >= 0.8 * len(gold), (sorted(read), gold)
    for line in page.lines:  # word boxes lie inside (or on the edge of) their line box
        assert line.words and " ".join(w.text for w in line.words) == " ".join(line.text.split())
        for word in line.words:
            assert word.box[0] >= line.box[0] - 2 and word.box[2] <= line.box[2] + 2


def test_align_pieces_joins_pieces_of_one_word_and_refuses_mismatches():
    pieces = [OcrWord("tom", [0, 0, 30, 10]), OcrWord("orrow", [32, 0, 80, 10]), OcrWord("hot", [90, 0, 120, 10])]
    words = align_pieces_to_words("tomorrow hot", pieces)
    assert [(w.text, w.box) for w in words] == [("tomorrow", [0, 0, 80, 10]), ("hot", [90, 0, 120, 10])]
    assert align_pieces_to_words("tomorrow cold", pieces) == []
    assert align_pieces_to_words("tomorrow", pieces) == []  # leftover piece


def test_split_line_into_words_by_character_count():
    words = split_line_into_words("ab cdef", [0, 0, 70, 10])
    assert [w.text for w in words] == ["ab", "cdef"]
    assert words[0].box == [0, 0, 20, 10] and words[1].box == [30, 0, 70, 10]


def test_group_words_into_lines_keeps_rows_and_far_apart_fields_separate():
    words = [OcrWord("Name:", [10, 10, 60, 30]), OcrWord("Ada", [70, 12, 100, 30]),
             OcrWord("Date:", [10, 50, 55, 70]), OcrWord("far", [400, 50, 430, 70])]
    lines = group_words_into_lines(words)
    assert [line.text for line in lines] == ["Name: Ada", "Date:", "far"]
    assert lines[0].box == [10, 10, 100, 30]


def test_byo_ocr_json_schema_variants(tmp_path):
    lines_file = tmp_path / "lines.json"
    lines_file.write_text(json.dumps({"pages": [{"page": 1, "width": 500, "height": 400, "lines": [
        {"text": "Name: Ada", "box": [10, 10, 100, 30],
         "words": [{"text": "Name:", "box": [10, 10, 60, 30]}, {"text": "Ada", "box": [70, 10, 100, 30]}]},
        {"text": "Date", "points": [[10, 50], [60, 50], [60, 70], [10, 70]]}]}]}))
    page = read_ocr_json(lines_file)[0]
    assert (page["width"], page["height"]) == (500, 400)
    assert [l.text for l in page["lines"]] == ["Name: Ada", "Date"]
    assert page["lines"][1].box == [10, 50, 60, 70] and [w.text for w in page["lines"][1].words] == ["Date"]

    words_file = tmp_path / "words.json"
    words_file.write_text(json.dumps({"words": [{"text": "Total:", "box": [5, 5, 50, 20]},
                                                {"text": "12.00", "box": [55, 5, 90, 20]}]}))
    assert [l.text for l in read_ocr_json(words_file)[0]["lines"]] == ["Total: 12.00"]

    _, record = render_form(seed=1)  # a FUNSD annotation: labels and links are ignored
    funsd_file = tmp_path / "form.json"
    funsd_file.write_text(json.dumps(record))
    funsd_page = read_ocr_json(funsd_file)[0]
    assert [l.text for l in funsd_page["lines"]] == [e["text"] for e in record["form"]]
    ocr = JsonOcr(funsd_file).page("form.png", 1)
    assert ocr.engine == "file" and ocr.width >= max(e["box"][2] for e in record["form"])

    folder = tmp_path / "ocr_folder"
    folder.mkdir()
    (folder / "scan.json").write_text(lines_file.read_text())
    assert [l.text for l in JsonOcr(folder).page("images/scan.png", 1).lines] == ["Name: Ada", "Date"]
    with pytest.raises(OcrError, match="no OCR file other.json"):
        JsonOcr(folder).page("other.png", 1)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable OCR JSON"),
    (json.dumps({"lines": [{"text": "x", "box": [10, 10, 5, 20]}]}), "x1 < x0"),
    (json.dumps({"lines": [{"text": "x"}]}), "no 'box' or 'points'"),
    (json.dumps({"pages": []}), "no pages"),
    (json.dumps({"something": 1}), "needs 'lines', 'words'"),
])
def test_byo_ocr_json_errors_are_one_line_and_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(OcrError, match=message) as raised:
        read_ocr_json(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.skipif(not tesseract_available(), reason="tesseract binary or pytesseract not installed")
def test_tesseract_reads_a_rendered_form():
    image, record = render_form(seed=4)
    page = TesseractEngine()(image)
    read = {_normalise(line.text) for line in page.lines}
    assert sum(_normalise(e["text"]) in read for e in record["form"]) >= 0.6 * len(record["form"])


def test_tesseract_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(OcrError, match="tesseract binary is not installed"):
        TesseractEngine()
