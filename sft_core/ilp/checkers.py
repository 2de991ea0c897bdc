"""Answer checkers: does a generated answer reproduce the training target?

A checker is any ``callable(prediction: str, target: str) -> bool``. Built in:

- ``exact``  (default) normalised exact match (lowercase, no punctuation/articles, squeezed spaces);
- ``number`` the final number of each side (GSM8K ``#### 42`` or the last number in the text), compared
  numerically, so ``"... so she has 1,200 apples."`` matches ``"#### 1200"``;
- ``label``  classification: the prediction's first normalised word(s) equal the target label, so
  ``"Positive, because ..."`` matches ``"positive"``.
"""

from __future__ import annotations

import re
from typing import Callable

from .signals import normalize_text

Checker = Callable[[str, str], bool]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def exact_match(prediction: str, target: str) -> bool:
    return normalize_text(prediction) == normalize_text(target)


def final_number(text: str) -> float | None:
    """The answer number of a GSM8K-style text: what follows the last ``####`` if present, else the last
    number in the text; thousands separators are ignored. None when there is no number."""
    text = str(text)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def final_number_match(prediction: str, target: str) -> bool:
    expected, got = final_number(target), final_number(prediction)
    return expected is not None and got is not None and abs(expected - got) <= 1e-6 * max(1.0, abs(expected))


def label_match(prediction: str, target: str) -> bool:
    label = normalize_text(target).split()
    words = normalize_text(prediction).split()
    return bool(label) and words[:len(label)] == label


CHECKERS: dict[str, Checker] = {"exact": exact_match, "number": final_number_match, "label": label_match}


def get_checker(checker: str | Checker) -> Checker:
    """A checker by name (``exact``, ``number``, ``label``) or the callable itself."""
    if callable(checker):
        return checker
    try:
        return CHECKERS[checker]
    except KeyError:
        raise ValueError(f"unknown checker {checker!r}; expected one of {', '.join(CHECKERS)} "
                         "or a callable(prediction, target) -> bool") from None
