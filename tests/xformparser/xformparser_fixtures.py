"""Synthetic FUNSD-style forms for xformparser tests (a plainly named module: tests/ is not a package)."""

from __future__ import annotations

import json
import random

QUESTION_WORDS = ["name", "date", "total", "amount", "address", "phone", "number", "station", "capital"]
ANSWER_WORDS = ["paris", "london", "today", "tomorrow", "good", "cold", "hot", "one", "two", "yes"]


def synthetic_form(doc_id: int, seed: int, pairs: int = 5) -> dict:
    """A FUNSD-style record: a header, ``pairs`` question/answer lines (linked), one 'other' note.
    Every link is listed by both of its entities, as in FUNSD."""
    rng = random.Random(seed)
    form = [{"id": 0, "text": "form", "label": "header", "box": [300, 20, 420, 50],
             "words": [{"text": "form", "box": [300, 20, 420, 50]}], "linking": []}]
    for index in range(pairs):
        y = 80 + 45 * index
        question_id, answer_id = 1 + 2 * index, 2 + 2 * index
        question = rng.choice(QUESTION_WORDS)
        answer_words = rng.sample(ANSWER_WORDS, rng.randint(1, 3))
        x = 260
        words = []
        for word in answer_words:
            words.append({"text": word, "box": [x, y, x + 60, y + 20]})
            x += 70
        link = [[question_id, answer_id]]
        form.append({"id": question_id, "text": question + ":", "label": "question", "box": [40, y, 200, y + 20],
                     "words": [{"text": question + ":", "box": [40, y, 200, y + 20]}], "linking": link})
        form.append({"id": answer_id, "text": " ".join(answer_words), "label": "answer", "box": [260, y, x, y + 20],
                     "words": words, "linking": link})
    bottom = 80 + 45 * pairs
    form.append({"id": 99, "text": "page one", "label": "other", "box": [40, bottom, 200, bottom + 20],
                 "words": [{"text": "page", "box": [40, bottom, 110, bottom + 20]},
                           {"text": "one", "box": [120, bottom, 200, bottom + 20]}], "linking": []})
    return {"form": form}


def write_funsd_folder(folder, count: int, seed: int = 0, pairs: int = 5):
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        record = synthetic_form(index, seed + index, pairs)
        (folder / "annotations" / f"doc{index:03d}.json").write_text(json.dumps(record))
    return folder
