"""`xformparser parse` end to end: rendered forms as PNG / multi-page TIFF / PDF through real rapidocr, the
PDF text-layer path, bring-your-own OCR JSON, and every bad-input case (one line each, exit code 1)."""

import json

import pytest
from PIL import Image

from pipeline_fixtures import (disable_network, gold_pairs, pair_f1, render_form, write_encrypted_looking_pdf,
                               write_rendered_funsd, write_text_pdf)
from xformparser.cli import main

# Floor for the shipped model on these 2 synthetic pages (default model v1 measured 0.34 on 3 pages; chance
# level - a random key for every value - is near 0).
SHIPPED_MODEL_MIN_PAIR_F1 = 0.2
PAGE_KEYS = {"source", "page", "width", "height", "ocr", "key_values", "pairs", "entities", "unlinked_keys",
             "headers", "timing"}


@pytest.fixture(scope="session")
def parser_model_dir(tiny_encoder_dir, tmp_path_factory):
    """A small parser trained on rendered forms (tiny random encoder, ~60 steps): it learns the layout
    (keys on the left, values on the right, header on top), which is what these forms test."""
    from xformparser.training import TrainingOptions, train_parser

    root = tmp_path_factory.mktemp("parse_model")
    write_rendered_funsd(root / "train", count=8, seed=0)
    train_parser(TrainingOptions(train_path=str(root / "train"), output_dir=str(root / "model"), backbone=tiny_encoder_dir,
                                 epochs=15, batch_size=2, learning_rate=1e-3, head_learning_rate=3e-3,
                                 show_progress=False, model_options={"window_size": 48, "window_overlap": 8}))
    return str(root / "model")


def _normalised_pairs(pairs):
    return {(" ".join(k.lower().rstrip(":").split()), " ".join(v.lower().split())) for k, v in pairs}


def _check_page_schema(page):
    assert set(page) == PAGE_KEYS
    assert set(page["ocr"]) == {"engine", "seconds"} and set(page["timing"]) == {"ocr", "model", "post"}
    assert page["width"] > 0 and page["height"] > 0 and page["page"] >= 1
    ids = {e["id"] for e in page["entities"]}
    for entity in page["entities"]:
        assert set(entity) == {"id", "text", "box", "label", "score"} and 0 <= entity["score"] <= 1
        x0, y0, x1, y1 = entity["box"]
        assert 0 <= x0 <= x1 <= page["width"] + 1 and 0 <= y0 <= y1 <= page["height"] + 1
    for pair in page["pairs"]:
        assert set(pair) == {"key", "value", "score"} and {pair["key"]["id"], pair["value"]["id"]} <= ids
        assert set(pair["key"]) == {"id", "text", "box"}
    for key, value in page["key_values"].items():
        assert isinstance(key, str) and isinstance(value, (str, list))
    assert all(k["id"] in ids for k in page["unlinked_keys"] + page["headers"])


def _page_pairs(page):
    return {(p["key"]["text"], p["value"]["text"]) for p in page["pairs"]}


def test_parse_png_tiff_and_scanned_pdf_with_rapidocr(parser_model_dir, tmp_path, capsys):
    """Pages, OCR, candidates, schema, overlays and the output file, with the tiny fixture model (its
    labels are not what is tested here; pair quality is tested with the shipped model below)."""
    forms = [render_form(seed) for seed in (500, 501, 502, 503)]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    forms[0][0].save(inputs / "form.png")
    forms[1][0].save(inputs / "pages.tiff", save_all=True, append_images=[forms[2][0]])
    forms[3][0].save(inputs / "scan.pdf", resolution=144.0)  # image-only PDF: rendered back at 144 dpi, OCR'd
    gold = {("form.png", 1): forms[0][1], ("pages.tiff", 1): forms[1][1], ("pages.tiff", 2): forms[2][1],
            ("scan.pdf", 1): forms[3][1]}
    output, overlays = tmp_path / "parsed.json", tmp_path / "overlays"
    assert main(["parse", str(inputs), "--model", parser_model_dir, "--output", str(output), "--split", "colon",
                 "--visualize", str(overlays), "--no-progress"]) == 0
    document = json.loads(output.read_text())
    assert document["failed"] == [] and document["summary"]["pages"] == 4
    for page in document["pages"]:
        _check_page_schema(page)
        assert page["ocr"]["engine"] == "rapidocr" and page["timing"]["model"] > 0
        assert (page["width"], page["height"]) == (900, 620)
        name = page["source"].rsplit("/", 1)[-1]
        record = gold[(name, page["page"])]
        # every drawn field comes back as one entity (OCR + reading order + candidate rules)
        found = {" ".join(e["text"].lower().split()) for e in page["entities"]}
        expected = [" ".join(e["text"].lower().split()) for e in record["form"]]
        assert sum(text in found for text in expected) >= 0.8 * len(expected), (sorted(found), expected)
        overlay = Image.open(overlays / f"{name.rsplit('.', 1)[0]}_p{page['page']}.png")
        assert overlay.size[1] == page["height"] and overlay.size[0] > page["width"]  # page + legend panel
    assert "4 page(s) parsed, 0 failed" in capsys.readouterr().err


@pytest.fixture(scope="session")
def shipped_model_available():
    from xformparser import defaults

    if not (defaults.DEFAULT_MODEL_DIR / defaults.MANIFEST_NAME).exists():
        pytest.skip("no shipped default model in xformparser/default_model")


def test_shipped_model_parses_synthetic_forms_and_a_pdf_end_to_end(shipped_model_available, tmp_path, capsys,
                                                                     monkeypatch):
    """No --model: the shipped default model, real rapidocr, networking disabled, pair F1 against the
    generated ground truth."""
    from xformparser.formats import build_document
    from xformparser.parse_eval import pair_scores
    from xformparser.synth import render_form as render_synthetic

    forms = {f"{lang}_{seed}": render_synthetic(seed, lang) for seed, lang in ((9001, "en"), (9002, "de"))}
    names = list(forms)
    forms[names[0]].image.save(tmp_path / f"{names[0]}.png")
    forms[names[1]].image.save(tmp_path / f"{names[1]}.pdf", resolution=144.0)  # scanned PDF, same pixel grid
    disable_network(monkeypatch)
    assert main(["parse", str(tmp_path / f"{names[0]}.png"), str(tmp_path / f"{names[1]}.pdf"), "--no-progress"]) == 0
    pages = json.loads(capsys.readouterr().out)["pages"]
    assert len(pages) == 2
    gold = []
    for page in pages:
        _check_page_schema(page)
        form = forms[page["source"].rsplit("/", 1)[-1].rsplit(".", 1)[0]]
        assert (page["width"], page["height"]) == form.image.size
        gold.append(build_document(form.document["id"], form.document["document"], *form.image.size))
    scores = pair_scores(pages, gold)
    assert scores["gold"] > 10 and scores["pair_f1"] >= SHIPPED_MODEL_MIN_PAIR_F1, scores


def test_pdf_text_layer_is_used_instead_of_ocr(parser_model_dir, tmp_path, monkeypatch):
    from xformparser import pipeline

    records = [render_form(seed)[1] for seed in (600, 601)]
    pdf = write_text_pdf(tmp_path / "typed.pdf", records)

    def no_ocr(*args, **kwargs):
        raise AssertionError("OCR must not run on a page with a text layer")

    parser = pipeline.FormParser(model_dir=parser_model_dir)
    monkeypatch.setattr(parser, "ocr_engine", no_ocr)
    pages = parser.parse([str(pdf)])
    assert [p["page"] for p in pages] == [1, 2]
    for page, record in zip(pages, records):
        _check_page_schema(page)
        assert page["ocr"]["engine"] == "pdf-text-layer"
        texts = " ".join(e["text"] for e in page["entities"])
        for entity in record["form"]:  # every word of the text layer arrives, scaled to the rendering
            assert entity["text"] in texts
        assert page["width"] == 2 * 900  # PDF points rendered at scale 2


def test_bring_your_own_ocr_json_as_option_and_as_input(parser_model_dir, tmp_path, capsys):
    folder = write_rendered_funsd(tmp_path / "forms", count=2, seed=700)
    output = tmp_path / "out"
    # FUNSD annotations as BYO OCR for the images (labels ignored), output one JSON per input
    assert main(["parse", str(folder / "images"), "--ocr", str(folder / "annotations"), "--model", parser_model_dir,
                 "--split", "colon",
                 "--output", str(output), "--no-progress"]) == 0
    for index in range(2):
        result = json.loads((output / f"form{index:03d}.json").read_text())
        page = result["pages"][0]
        _check_page_schema(page)
        assert page["ocr"]["engine"] == "file"
        record = json.loads((folder / "annotations" / f"form{index:03d}.json").read_text())
        assert pair_f1(_normalised_pairs(gold_pairs(record)), _normalised_pairs(_page_pairs(page))) >= 0.6
    # an OCR JSON in the documented schema given directly as the input (no image at all)
    byo = tmp_path / "ocr.json"
    byo.write_text(json.dumps({"pages": [{"page": 1, "width": 900, "height": 620, "lines": [
        {"text": "name: paris", "box": [60, 110, 520, 135]}, {"text": "city:", "box": [60, 190, 110, 215]},
        {"text": "london", "box": [420, 190, 500, 215]}]}]}))
    assert main(["parse", str(byo), "--model", parser_model_dir, "--no-progress"]) == 0
    page = json.loads(capsys.readouterr().out)["pages"][0]
    _check_page_schema(page)
    assert {e["text"] for e in page["entities"]} >= {"city:", "london"}


def test_bad_inputs_each_get_one_line_and_the_rest_is_parsed(parser_model_dir, tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    good = write_text_pdf(tmp_path / "good.pdf", [render_form(800)[1]])
    (tmp_path / "empty.png").write_bytes(b"")
    noise = PILImage.effect_noise((90, 90), 60).convert("RGB")  # incompressible, under the lowered pixel limit
    noise.save(tmp_path / "small.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "small.png").read_bytes()[:4000])
    (tmp_path / "notes.jpg").write_text("this is not an image")
    write_encrypted_looking_pdf(tmp_path / "locked.pdf")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage without objects or xref")
    PILImage.new("RGB", (120, 120), "white").save(tmp_path / "huge.png")
    PILImage.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10_000)  # huge.png (14,400 px) is now a decompression bomb
    monkeypatch.setattr("xformparser.pipeline.PDF_RENDER_SCALE", 0.1)  # keep good.pdf's rendering under the limit
    bad = ["missing.png", "empty.png", "truncated.png", "notes.jpg", "locked.pdf", "broken.pdf", "huge.png"]
    output = tmp_path / "out.json"
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10_000)
    code = main(["parse", *[str(tmp_path / name) for name in bad], str(good), "--model", parser_model_dir,
                 "--output", str(output), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    document = json.loads(output.read_text())
    assert [p["source"] for p in document["pages"]] == [str(good)]
    reasons = {f["source"].rsplit("/", 1)[-1]: f["error"] for f in document["failed"]}
    assert set(reasons) == set(bad)
    expected = {"missing.png": "no such file", "empty.png": "empty file", "truncated.png": "truncated or corrupt image",
                "notes.jpg": "not a supported image or PDF", "locked.pdf": "encrypted PDF",
                "broken.pdf": "corrupt or unreadable PDF", "huge.png": "decompression-bomb limit"}
    for name, reason in expected.items():
        assert reason in reasons[name], reasons[name]
        line = next(l for l in err.splitlines() if name in l)
        assert line.startswith("xformparser parse: failed:") and "\n" not in reasons[name]
    assert "Traceback" not in err and "1 page(s) parsed, 7 failed" in err


def test_page_with_no_text_fails_alone(parser_model_dir, tmp_path, capsys):
    Image.new("RGB", (400, 300), "white").save(tmp_path / "blank.png")
    byo = tmp_path / "ok.json"
    byo.write_text(json.dumps({"lines": [{"text": "name: paris", "box": [10, 10, 200, 30]}], "width": 400, "height": 300}))
    assert main(["parse", str(tmp_path / "blank.png"), str(byo), "--model", parser_model_dir, "--no-progress"]) == 1
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert len(document["pages"]) == 1 and document["failed"][0]["page"] == 1
    assert "blank.png page 1: no text found on the page" in captured.err


def test_wrong_model_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "form.json").write_text(json.dumps({"lines": [{"text": "a: b", "box": [0, 0, 10, 10]}]}))
    assert main(["parse", str(tmp_path / "form.json"), "--model", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "model") in err and "Traceback" not in err


def test_python_api_matches_the_cli_schema(parser_model_dir, tmp_path):
    from xformparser.pipeline import parse

    record = render_form(900)[1]
    pdf = write_text_pdf(tmp_path / "form.pdf", [record])
    pages = parse([str(pdf)], model_dir=parser_model_dir, linker="rule")
    assert len(pages) == 1
    _check_page_schema(pages[0])
    json.dumps(pages)  # JSON-ready
