"""Candidate rules of the parse pipeline: reading order, line splits, multi-line merge, key names."""

import io

from xformparser.ocr import OcrLine, OcrWord
from xformparser.pipeline import (Candidate, bio_split_points, colon_split_point, expand_inputs, key_text,
                                  merge_stacked_candidates, reading_order_lines, split_words_at_inner_colons)


def _words(*texts):
    words, x = [], 0
    for text in texts:
        words.append(OcrWord(text, [x, 0, x + 10 * len(text), 20]))
        x += 10 * len(text) + 10
    return words


def test_reading_order_rows_top_to_bottom_then_left_to_right():
    lines = [OcrLine("right", [300, 102, 400, 120]), OcrLine("below", [10, 150, 80, 170]),
             OcrLine("left", [10, 100, 80, 121]), OcrLine("title", [150, 10, 300, 40])]
    assert [l.text for l in reading_order_lines(lines)] == ["title", "left", "right", "below"]


def test_colon_rule_splits_key_value_lines_but_not_times_or_long_sentences():
    assert colon_split_point(_words("Name:", "Ada", "Lovelace")) == 1
    assert colon_split_point(_words("Date", "of", "birth:", "1815")) == 3
    assert colon_split_point(_words("10:", "30", "am")) is None  # key must start with a letter
    assert colon_split_point(_words("Name:")) is None  # nothing to the right
    assert colon_split_point(_words("one", "two", "three", "four", "five", "six", "seven:", "x")) is None
    assert colon_split_point(_words("At", "10:", "30")) is None  # '10: 30' is a time


def test_inner_colons_split_words_but_times_stay_whole():
    line = OcrLine("FAX:614-466 17:46", [0, 0, 170, 20], [OcrWord("FAX:614-466", [0, 0, 110, 20]),
                                                          OcrWord("17:46", [120, 0, 170, 20])])
    split = split_words_at_inner_colons(line)
    assert [w.text for w in split.words] == ["FAX:", "614-466", "17:46"]
    assert split.words[0].box[2] == split.words[1].box[0] and split.words[0].box[0] == 0


def test_bio_split_points_cut_between_question_and_answer_runs():
    assert bio_split_points(["QUESTION", "QUESTION", "ANSWER", "ANSWER"]) == [2]
    assert bio_split_points(["QUESTION", "ANSWER", "QUESTION", "ANSWER"]) == [1, 2, 3]
    assert bio_split_points(["ANSWER", "O", "QUESTION"]) == []  # an O word in between: no cut
    assert bio_split_points(["HEADER", "QUESTION"]) == []


def _candidate(index, box, label, text="x"):
    return Candidate([(index, 0)], text, box, label)


def test_merge_stacked_lines_of_one_answer_and_not_across_labels_or_gaps():
    lines = [OcrLine(t, b, [OcrWord(t, b)]) for t, b in [
        ("Address:", [10, 10, 90, 30]), ("12 Long Street", [120, 10, 260, 30]), ("Springfield", [121, 33, 230, 53]),
        ("far below", [120, 120, 200, 140]), ("Phone:", [10, 60, 70, 80])]]
    candidates = [_candidate(0, lines[0].box, "question", "Address:"), _candidate(1, lines[1].box, "answer", "12 Long Street"),
                  _candidate(2, lines[2].box, "answer", "Springfield"), _candidate(3, lines[3].box, "answer", "far below"),
                  _candidate(4, lines[4].box, "question", "Phone:")]
    merged = merge_stacked_candidates(candidates, lines)
    texts = [c.text for c in merged]
    assert "12 Long Street Springfield" in texts  # two stacked answer lines, small gap, aligned left edges
    assert "far below" in texts and "Address:" in texts and "Phone:" in texts
    assert len(merged) == 4
    combined = next(c for c in merged if c.text.startswith("12"))
    assert combined.box == [120, 10, 260, 53] and combined.words == [(1, 0), (2, 0)]


def test_merge_does_not_join_a_key_line_or_different_labels():
    lines = [OcrLine(t, b, [OcrWord(t, b)]) for t, b in [("Total:", [10, 10, 70, 30]), ("12.00", [10, 33, 60, 53])]]
    candidates = [_candidate(0, lines[0].box, "answer", "Total:"), _candidate(1, lines[1].box, "answer", "12.00")]
    assert len(merge_stacked_candidates(candidates, lines)) == 2  # the upper one ends in ':'
    candidates = [_candidate(0, lines[0].box, "question", "Total"), _candidate(1, lines[1].box, "answer", "12.00")]
    assert len(merge_stacked_candidates(candidates, lines)) == 2


def test_key_text_drops_the_trailing_colon():
    assert key_text("Date of birth: ") == "Date of birth"
    assert key_text("氏名：") == "氏名"
    assert key_text(":") == ":"


def test_expand_inputs_reads_paths_from_stdin_and_walks_folders(tmp_path):
    (tmp_path / "forms" / "sub").mkdir(parents=True)
    for name in ("b.png", "a.pdf", "sub/c.tiff", "notes.txt"):
        (tmp_path / "forms" / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    stdin = io.StringIO("one.png\n\n two.jpg \n")
    expanded = expand_inputs(["-", str(tmp_path / "forms"), str(tmp_path / "empty"), "x.bmp"], stdin=stdin)
    assert expanded == ["one.png", "two.jpg", str(tmp_path / "forms" / "a.pdf"), str(tmp_path / "forms" / "b.png"),
                        str(tmp_path / "forms" / "sub" / "c.tiff"), str(tmp_path / "empty"), "x.bmp"]


def test_merge_keeps_a_column_of_values_beside_their_keys_apart():
    boxes = [("Name:", [10, 10, 70, 30], "question"), ("Ada", [120, 10, 170, 30], "answer"),
             ("Phone:", [10, 33, 70, 53], "question"), ("555 0100", [120, 33, 200, 53], "answer")]
    lines = [OcrLine(t, b, [OcrWord(t, b)]) for t, b, _ in boxes]
    candidates = [_candidate(i, b, label, t) for i, (t, b, label) in enumerate(boxes)]
    assert [c.text for c in merge_stacked_candidates(candidates, lines)] == ["Name:", "Ada", "Phone:", "555 0100"]
    # the same two values without keys beside them are one two-line value
    merged = merge_stacked_candidates([candidates[1], candidates[3]], lines)
    assert [c.text for c in merged] == ["Ada 555 0100"]
