import json

import pytest

from xformparser.cli import main as cli_main
from xformparser.formats import (DataFormatError, detect_format, load_documents, read_funsd, read_paddle_kie,
                                 read_xfund, write_funsd, write_indformsft, write_paddle_kie, write_xfund)

from xformparser_fixtures import synthetic_form


def test_funsd_reader_dedupes_and_orients_links(tmp_path):
    record = synthetic_form(0, seed=1, pairs=3)
    # list the first link answer -> question on the answer side only: it must come back key -> value
    record["form"][1]["linking"] = []
    record["form"][2]["linking"] = [[2, 1]]
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(record))
    [document] = read_funsd(path)
    assert document.doc_id == "doc"
    assert len(document.entities) == 8
    assert sorted(document.links) == [(1, 2), (3, 4), (5, 6)]
    assert document.key_value_links() == {(1, 2), (3, 4), (5, 6)}
    # no image: page size falls back to the extent of the boxes
    assert document.width == max(e.box[2] for e in document.entities)


def test_funsd_folder_with_images_uses_image_size(tmp_path):
    from PIL import Image

    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "a.json").write_text(json.dumps(synthetic_form(0, 0)))
    Image.new("L", (800, 1000)).save(tmp_path / "images" / "a.png")
    [document] = load_documents(tmp_path)
    assert (document.width, document.height) == (800.0, 1000.0)
    assert document.image_path.endswith("a.png")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f["form"][1].pop("box"), "without 'box'"),
        (lambda f: f["form"][1].update(box=[10, 10, 5, 20]), "x1 < x0"),
        (lambda f: f["form"][1].update(label=""), "label"),
        (lambda f: f["form"][1].update(linking=[[1, 777]]), "missing entity 777"),
        (lambda f: f["form"][2].update(id=1), "duplicate entity id 1"),
        (lambda f: f["form"][1].update(words=[{"text": "x"}]), "box"),
    ],
)
def test_funsd_malformed_records_name_the_document(tmp_path, mutate, message):
    record = synthetic_form(0, seed=0)
    mutate(record)
    path = tmp_path / "broken_doc.json"
    path.write_text(json.dumps(record))
    with pytest.raises(DataFormatError) as raised:
        read_funsd(path)
    assert "broken_doc" in str(raised.value) and message in str(raised.value)


def test_funsd_invalid_json_and_collecting_errors(tmp_path):
    (tmp_path / "good.json").write_text(json.dumps(synthetic_form(0, 0)))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFormatError, match="bad.json"):
        read_funsd(tmp_path)
    errors = []
    documents = read_funsd(tmp_path, errors=errors)
    assert [d.doc_id for d in documents] == ["good"] and len(errors) == 1 and "bad.json" in errors[0]


def _xfund_payload():
    documents = []
    for index in range(2):
        documents.append({"id": f"de_train_{index}", "document": synthetic_form(index, index)["form"],
                          "img": {"fname": f"de_train_{index}.jpg", "width": 1000, "height": 800}})
    return {"lang": "de", "version": "1.0", "split": "train", "documents": documents}


def test_xfund_reader(tmp_path):
    path = tmp_path / "de.train.json"
    path.write_text(json.dumps(_xfund_payload()))
    assert detect_format(path) == "xfund"
    documents = read_xfund(path)
    assert [d.doc_id for d in documents] == ["de_train_0", "de_train_1"]
    assert all(d.language == "de" and d.width == 1000 and d.height == 800 for d in documents)
    assert documents[0].image_path.endswith("de_train_0.jpg")
    assert len(documents[0].key_value_links()) == 5


def test_xfund_malformed_document_is_named(tmp_path):
    payload = _xfund_payload()
    del payload["documents"][1]["document"]
    path = tmp_path / "de.train.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DataFormatError, match="de_train_1"):
        read_xfund(path)
    errors = []
    assert len(read_xfund(path, errors=errors)) == 1 and "de_train_1" in errors[0]
    path.write_text(json.dumps({"lang": "de"}))
    with pytest.raises(DataFormatError, match="documents"):
        read_xfund(path)


def test_indformsft_jsonl_with_own_labels(tmp_path):
    lines = []
    for index in range(2):
        form = synthetic_form(index, index)["form"]
        for entity in form:
            entity["label"] = {"question": "key", "answer": "value"}.get(entity["label"], entity["label"])
        lines.append(json.dumps({"id": f"doc{index}", "lang": ["en", "fr"][index], "document": form}))
    lines.insert(1, "{broken")
    path = tmp_path / "indform.jsonl"
    path.write_text("\n".join(lines) + "\n")
    errors = []
    documents = load_documents(path, errors=errors)
    assert [d.language for d in documents] == ["en", "fr"]
    assert "indform.jsonl:2" in errors[0]
    assert documents[0].key_value_links(["key"], ["value"]) == {(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)}


def test_paddle_kie_reader(tmp_path):
    records = [
        {"transcription": "name:", "points": [[10, 10], [90, 10], [90, 30], [10, 30]], "label": "question",
         "id": 0, "linking": [[0, 1]]},
        {"transcription": "paris london", "points": [[100, 10], [300, 10], [300, 30], [100, 30]],
         "label": "answer", "id": 1, "linking": [[0, 1]]},
    ]
    path = tmp_path / "label.txt"
    path.write_text(f"imgs/a.jpg\t{json.dumps(records)}\nimgs/b.jpg\t[{{broken\nno_tab_line\n")
    errors = []
    [document] = read_paddle_kie(path, errors=errors)
    assert document.doc_id == "a" and document.entities[1].box == [100, 10, 300, 30]
    assert [w.text for w in document.entities[1].words] == ["paris", "london"]
    assert document.entities[1].words[0].box[2] < document.entities[1].words[1].box[0]
    assert document.links == [(0, 1)]
    assert len(errors) == 2 and "document b" in errors[0] and ":3" in errors[1]
    with pytest.raises(DataFormatError, match="document b"):
        read_paddle_kie(path)


@pytest.mark.parametrize("writer, name", [(write_xfund, "out.json"), (write_paddle_kie, "out.txt"),
                                          (write_indformsft, "out.jsonl"), (write_funsd, "out_funsd")])
def test_writers_round_trip(funsd_folder, tmp_path, writer, name):
    documents = load_documents(funsd_folder)
    writer(documents, tmp_path / name)
    again = load_documents(tmp_path / name)
    assert [d.doc_id for d in again] == [d.doc_id for d in documents]
    for before, after in zip(documents, again):
        assert [e.label for e in after.entities] == [e.label for e in before.entities]
        assert set(after.links) == set(before.links)
        assert [e.box for e in after.entities] == [e.box for e in before.entities]


def test_convert_cli_continues_past_bad_documents(funsd_folder, tmp_path, capsys):
    (funsd_folder / "annotations" / "zz_broken.json").write_text('{"form": [{"id": 1}]}')
    output = tmp_path / "converted.json"
    code = cli_main(["convert", "--input", str(funsd_folder), "--output", str(output), "--output-format", "xfund"])
    assert code == 1
    err = capsys.readouterr().err
    assert "zz_broken" in err and "converted 4 document(s)" in err and "1 skipped" in err
    assert len(json.loads(output.read_text())["documents"]) == 4
